//! The deployable artefacts stay true: every manifest is a valid Kubernetes object of its kind
//! (no misspelt field survives a round trip through its k8s-openapi type), the kustomization
//! lists them all, the shipped config and example function are accepted by the code, the
//! manifests apply with server-side apply to a real apiserver, and the Dockerfile builds the
//! binary the way `make build` does. (RBAC against the calls the code makes is checked in
//! `kubernetes/src/access.rs`.)

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Every document of every manifest file: (file, document).
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("manifests"))
        .expect("manifests/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("manifest");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                out.push((name.clone(), value));
            }
        }
    }
    out
}

/// Parses `value` as `K` and back; any field the type does not know is lost and shows here.
fn round_trip<K: serde::de::DeserializeOwned + serde::Serialize>(file: &str, value: &Value) -> Result<(), String> {
    let typed: K = serde_json::from_value(value.clone()).map_err(|e| format!("{file}: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if &back != value {
        return Err(format!(
            "{file}: {} {} does not survive its type:\n{value:#}\nvs\n{back:#}",
            value["kind"], value["metadata"]["name"]
        ));
    }
    Ok(())
}

#[test]
fn every_manifest_is_a_valid_object_of_its_kind() {
    let docs = documents();
    assert!(docs.len() >= 15, "expected the whole base, found {} objects", docs.len());
    for (file, value) in &docs {
        let kind = value["kind"].as_str().unwrap_or_default();
        let checked = match kind {
            "Namespace" => round_trip::<Namespace>(file, value),
            "ConfigMap" => round_trip::<ConfigMap>(file, value),
            "ServiceAccount" => round_trip::<ServiceAccount>(file, value),
            "ClusterRole" => round_trip::<ClusterRole>(file, value),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(file, value),
            "Role" => round_trip::<Role>(file, value),
            "RoleBinding" => round_trip::<RoleBinding>(file, value),
            "Deployment" => round_trip::<Deployment>(file, value),
            "DaemonSet" => round_trip::<DaemonSet>(file, value),
            "Service" => round_trip::<Service>(file, value),
            "NetworkPolicy" => round_trip::<NetworkPolicy>(file, value),
            other => Err(format!("{file}: kind {other:?} has no check here; add it")),
        };
        if let Err(e) = checked {
            panic!("{e}");
        }
    }
}

#[test]
fn every_component_has_a_network_policy_naming_its_real_pods_ports_and_peers() {
    let docs = documents();
    // Each workload's pod labels and its containers' port names.
    let workloads: Vec<(Value, BTreeSet<String>)> = docs
        .iter()
        .filter(|(_, v)| v["kind"] == "Deployment" || v["kind"] == "DaemonSet")
        .map(|(_, v)| {
            let template = &v["spec"]["template"];
            let ports = template["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect();
            (template["metadata"]["labels"].clone(), ports)
        })
        .collect();
    let selects = |selector: &Value, labels: &Value| {
        selector["matchLabels"].as_object().is_some_and(|m| m.iter().all(|(k, v)| &labels[k] == v))
    };
    let policies: Vec<&Value> = docs.iter().filter(|(_, v)| v["kind"] == "NetworkPolicy").map(|(_, v)| v).collect();
    for component in ["wavelink-proxy", "wavelink-wavelet", "wavelink-controller"] {
        let policy = policies
            .iter()
            .find(|p| p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == component)
            .unwrap_or_else(|| panic!("no NetworkPolicy selects {component}"));
        let (_, ports) = workloads
            .iter()
            .find(|(labels, _)| selects(&policy["spec"]["podSelector"], labels))
            .unwrap_or_else(|| panic!("the policy of {component} selects no pod of the manifests"));
        for rule in policy["spec"]["ingress"].as_array().expect("ingress rules") {
            for port in rule["ports"].as_array().expect("every rule names its ports") {
                let name = port["port"].as_str().expect("ports by name");
                assert!(ports.contains(name), "{component}: no container port {name:?}");
            }
            for peer in rule["from"].as_array().into_iter().flatten() {
                if peer["podSelector"].is_object() {
                    assert!(
                        workloads.iter().any(|(labels, _)| selects(&peer["podSelector"], labels)),
                        "{component}: a peer selector matches no pod of the manifests: {peer}"
                    );
                }
            }
        }
    }
    // The Wavelet's request port admits proxies only (anyone could start instances otherwise).
    let wavelet = policies.iter().find(|p| p["metadata"]["name"] == "wavelink-wavelet").expect("wavelet policy");
    let rule = wavelet["spec"]["ingress"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["ports"][0]["port"] == "wavelet"))
        .expect("a rule for the wavelet port");
    assert_eq!(rule["from"].as_array().map(Vec::len), Some(1));
    assert_eq!(rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "wavelink-proxy");
}

#[test]
fn the_kustomization_lists_every_manifest_file() {
    let kustomization: Value = serde_yaml_ng::from_str(&read("manifests/kustomization.yaml")).expect("YAML");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources:")
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    let present: BTreeSet<String> = documents().into_iter().map(|(file, _)| file).collect();
    assert_eq!(listed, present);
}

#[test]
fn the_shipped_config_and_example_function_are_accepted() {
    let docs = documents();
    let config_map = docs.iter().find(|(_, v)| v["kind"] == "ConfigMap").expect("the config ConfigMap");
    let text = config_map.1["data"]["wavelink.yaml"].as_str().expect("data.wavelink.yaml");
    let config = wavelink_core::LocalConfig::from_yaml(text).expect("the shipped config is valid");
    let k8s = config.kubernetes.expect("a kubernetes: section");
    assert_eq!(config.controller.map(|c| c.backend), Some(wavelink_core::config::BackendKind::Kubernetes));
    // The Services it names exist in the base, with the port names the code looks for.
    let services = [(k8s.wavelet_service, "wavelet"), (k8s.proxy_service, "admin"), (k8s.controller_service, "admin")];
    for (setting, port) in services {
        let setting = setting.expect("service setting");
        let (namespace, name) = setting.split_once('/').expect("namespace/name");
        let service = docs
            .iter()
            .find(|(_, v)| {
                v["kind"] == "Service" && v["metadata"]["name"] == name && v["metadata"]["namespace"] == namespace
            })
            .unwrap_or_else(|| panic!("no Service {setting}"));
        assert!(
            service.1["spec"]["ports"].as_array().unwrap().iter().any(|p| p["name"] == port),
            "{setting} has no port {port}"
        );
    }
    let function = docs
        .iter()
        .find(|(_, v)| v["kind"] == "Deployment" && v["metadata"]["labels"]["wavelink.dev/function"].is_string())
        .expect("an example function");
    let deployment: Deployment = serde_json::from_value(function.1.clone()).expect("Deployment");
    let accepted = wavelink_kubernetes::catalog::function_of(&deployment).expect("labelled").expect("accepted");
    assert_eq!(accepted.def.command, ["wavelink", "fn", "--max-ms", "1000", "--max-mb", "64"]);
    // The exposed example caps what one request may ask for, with flags the workload knows.
    let parsed = <FnCommand as clap::Parser>::try_parse_from(&accepted.def.command[1..]).expect("the workload's flags");
    assert_eq!((parsed.workload.max_ms, parsed.workload.max_mb), (1000, 64));
}

/// `wavelink fn ...` as the binary parses it.
#[derive(clap::Parser)]
struct FnCommand {
    #[command(flatten)]
    workload: wavelink_loadtest::workload::FnArgs,
}

/// The API resource of each kind the test apiserver can apply; the others are reported as
/// skipped (it serves namespaces for listing only, and no RBAC, ServiceAccount or DaemonSet).
fn served(kind: &str) -> Option<ApiResource> {
    Some(match kind {
        "ConfigMap" => ApiResource::erase::<ConfigMap>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        _ => return None,
    })
}

#[test]
fn the_manifests_apply_with_server_side_apply() {
    let Some(cluster) = cluster::test_cluster("manifests") else { return };
    let params = PatchParams::apply("wavelink-manifests-test").force();
    let mut skipped = BTreeSet::new();
    // Twice: a second apply of the same objects must succeed too (no field conflicts).
    for _ in 0..2 {
        for (file, value) in documents() {
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let Some(resource) = served(&kind) else {
                skipped.insert(kind);
                continue;
            };
            let name = value["metadata"]["name"].as_str().expect("name").to_owned();
            let api: Api<DynamicObject> = match value["metadata"]["namespace"].as_str() {
                Some(ns) => Api::namespaced_with(cluster.client.clone(), ns, &resource),
                None => Api::all_with(cluster.client.clone(), &resource),
            };
            let applied = cluster.runtime.block_on(api.patch(&name, &params, &Patch::Apply(&value)));
            let applied = applied.unwrap_or_else(|e| panic!("{file}: applying {kind} {name}: {e}"));
            assert_eq!(applied.metadata.name.as_deref(), Some(name.as_str()));
        }
    }
    eprintln!(
        "note: the test apiserver cannot apply {} (see ../shared/k8s-testenv/README.md); those objects were checked by type only",
        skipped.into_iter().collect::<Vec<_>>().join(", ")
    );
}

#[test]
fn the_dockerfile_builds_the_binary_the_way_make_build_does() {
    let dockerfile = read("Dockerfile");
    let makefile = read("Makefile");
    let cargo_toml: toml_like::Manifest = toml_like::read(&read("Cargo.toml"));

    // The same cargo invocation as `make build`, for the one binary.
    let make_build = makefile
        .lines()
        .skip_while(|l| !l.starts_with("build:"))
        .nth(1)
        .expect("a build: recipe")
        .trim()
        .replace("$(CARGO)", "cargo");
    let final_build = dockerfile
        .lines()
        .rfind(|l| l.starts_with("RUN cargo build"))
        .expect("a RUN cargo build of the sources")
        .trim_start_matches("RUN ")
        .to_owned();
    assert_eq!(final_build, format!("{make_build} --bin wavelink"), "Dockerfile and Makefile build differently");

    // The dependency layer sees every workspace member's manifest and the lock file.
    assert!(dockerfile.contains("COPY Cargo.toml Cargo.lock ./"));
    for member in &cargo_toml.members {
        assert!(
            dockerfile.contains(&format!("COPY {member}/Cargo.toml {member}/")),
            "the Dockerfile misses {member}/Cargo.toml"
        );
        assert!(
            dockerfile.contains(&format!(" {member} ")) || dockerfile.contains(&format!(" {member};")),
            "no stub source for {member}"
        );
    }
    // cmake and protoc, as scripts/deps.sh installs them for Pingora's zlib-ng and containerd's API.
    let deps = read("scripts/deps.sh");
    assert!(deps.contains("cmake") && deps.contains("protobuf-compiler"));
    assert!(dockerfile.contains("install -y --no-install-recommends cmake protobuf-compiler"));
    // A toolchain at least as new as the workspace's rust-version.
    let image_version = dockerfile.lines().find_map(|l| l.strip_prefix("ARG RUST_VERSION=")).expect("ARG RUST_VERSION");
    assert!(version_at_least(image_version, &cargo_toml.rust_version), "{image_version} < {}", cargo_toml.rust_version);
    // Minimal runtime image, the one binary, a non-root user.
    let runtime = dockerfile.rsplit("\nFROM ").next().expect("a runtime stage");
    assert!(runtime.starts_with("debian:bookworm-slim"), "{runtime}");
    assert_eq!(runtime.matches("COPY --from=build").count(), 1);
    assert!(runtime.contains("COPY --from=build /src/target/release/wavelink /usr/local/bin/wavelink"));
    let user = runtime.lines().find_map(|l| l.strip_prefix("USER ")).expect("USER");
    assert!(!user.starts_with("0") && !user.starts_with("root"), "runs as {user}");
    // The manifests run the image as that user; only the Wavelet runs as root (containerd's
    // socket is root's), with every capability dropped but the three it needs.
    for (file, value) in documents() {
        let pod = &value["spec"]["template"]["spec"];
        if let Some(user_id) = pod["securityContext"]["runAsUser"].as_i64() {
            assert_eq!(user.split(':').next(), Some(user_id.to_string().as_str()), "{file}");
        }
        for container in pod["containers"].as_array().into_iter().flatten() {
            let security = &container["securityContext"];
            if security["runAsUser"].as_i64() == Some(0) {
                assert_eq!(container["name"], "wavelet", "{file}: only the Wavelet runs as root");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{file}");
                assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{file}");
                assert_eq!(
                    security["capabilities"]["add"],
                    serde_json::json!(["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"]),
                    "{file}"
                );
                assert!(security.get("privileged").is_none_or(|p| p == false), "{file}: not privileged");
            } else if !pod["securityContext"]["runAsUser"].is_i64() {
                panic!("{file}: container {} sets no user", container["name"]);
            }
        }
    }
    // target/ and .git stay out of the build context.
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

fn version_at_least(have: &str, want: &str) -> bool {
    let parts = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    let (mut have, mut want) = (parts(have), parts(want));
    have.resize(3, 0);
    want.resize(3, 0);
    have >= want
}

/// The two facts of the root Cargo.toml these tests need, read without a TOML dependency.
mod toml_like {
    pub struct Manifest {
        pub members: Vec<String>,
        pub rust_version: String,
    }

    pub fn read(text: &str) -> Manifest {
        let members_line = text.lines().find(|l| l.starts_with("members")).expect("workspace members");
        let members =
            members_line.split('"').enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, m)| m.to_owned()).collect();
        let rust_version = text
            .lines()
            .find_map(|l| l.strip_prefix("rust-version = \""))
            .map(|v| v.trim_end_matches('"').to_owned())
            .expect("rust-version");
        Manifest { members, rust_version }
    }
}
