//! What the cluster says, translated: function Deployments into [`FunctionDef`]s (or rejections
//! naming the bad annotation), EndpointSlices into instance addresses. Plain functions over
//! k8s-openapi objects; watching and writing live elsewhere.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, ObjectReference, PodSecurityContext};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use wavelink_core::spec::{FUNCTION_LABEL, SharedSpecs};
use wavelink_core::{ContainerTemplate, FunctionDef, FunctionId, FunctionSpec, RejectedFunction};

/// The label EndpointSlices carry naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `namespace/name` of an object (a Service, a Lease), as given in the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl FromStr for NamespacedName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (namespace, name) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not namespace/name (e.g. wavelink-system/wavelink-proxy)"))?;
        let id = FunctionId::new(namespace, name).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(NamespacedName { namespace: id.namespace, name: id.name })
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A function as its Deployment defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterFunction {
    pub def: FunctionDef,
    /// The Deployment's name (its scale subresource is what the controller writes).
    pub deployment: String,
    /// `spec.replicas` (1 when unset, as the apiserver defaults it).
    pub replicas: u32,
    /// `status.readyReplicas`.
    pub ready: u32,
}

/// A function Deployment whose annotations or label are not usable, with where to report it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRejection {
    pub rejected: RejectedFunction,
    pub deployment: ObjectReference,
}

/// Every function the cluster defines, in id order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// Shared with the watch's projections: a catalog built after a change copies pointers,
    /// not every function's definition.
    pub functions: Vec<Arc<ClusterFunction>>,
    pub rejected: Vec<ClusterRejection>,
}

impl Catalog {
    /// Reads the function Deployments; the first Deployment (by namespace and name) claiming a
    /// function name wins, later ones are rejected as duplicates.
    pub fn from_deployments<'a>(deployments: impl IntoIterator<Item = &'a Deployment>) -> Self {
        let mut specs = SharedSpecs::default();
        let watched: Vec<WatchedDeployment> =
            deployments.into_iter().filter_map(|d| WatchedDeployment::of(d, &mut specs)).collect();
        Catalog::from_watched(&watched)
    }

    /// The same from what the watch keeps of each Deployment.
    pub fn from_watched<'a>(deployments: impl IntoIterator<Item = &'a WatchedDeployment>) -> Self {
        let mut sorted: Vec<&WatchedDeployment> = deployments.into_iter().collect();
        sorted.sort_by(|a, b| {
            (&a.reference.namespace, &a.reference.name).cmp(&(&b.reference.namespace, &b.reference.name))
        });
        let mut catalog = Catalog::default();
        let mut seen = HashSet::new();
        for watched in sorted {
            // Only a rejection keeps the reference (for its Event); a function needs none.
            let deployment = || watched.reference.clone();
            match &watched.function {
                Ok(function) if !seen.insert(function.def.id.clone()) => {
                    catalog.rejected.push(ClusterRejection {
                        rejected: RejectedFunction {
                            function: function.def.id.to_string(),
                            error: format!(
                                "Deployment {} labels a function another Deployment already defines; the first by name is used",
                                function.deployment
                            ),
                        },
                        deployment: deployment(),
                    });
                }
                Ok(function) => catalog.functions.push(function.clone()),
                Err(rejected) => {
                    catalog.rejected.push(ClusterRejection { rejected: rejected.clone(), deployment: deployment() })
                }
            }
        }
        catalog.functions.sort_by(|a, b| a.def.id.cmp(&b.def.id));
        catalog
    }

    pub fn function(&self, id: &FunctionId) -> Option<&ClusterFunction> {
        // Sorted by id when built.
        let found = self.functions.binary_search_by(|f| f.def.id.cmp(id)).ok()?;
        self.functions.get(found).map(|f| &**f)
    }

    /// Each function's definition with its instances: the ready endpoints of its Service (named
    /// like the function, in its namespace). The slices are grouped by Service first, so this
    /// is linear in functions plus slices (10,000 of each: one pass, not 10,000).
    pub fn with_endpoints<'a>(&self, slices: impl IntoIterator<Item = &'a WatchedSlice>) -> Vec<FunctionDef> {
        let mut by_service: HashMap<(&str, &str), Vec<&WatchedSlice>> = HashMap::new();
        for slice in slices {
            by_service.entry((slice.namespace.as_str(), slice.service.as_str())).or_default().push(slice);
        }
        self.functions
            .iter()
            .map(|f| {
                let mut def = f.def.clone();
                if let Some(slices) = by_service.get(&(f.def.id.namespace.as_str(), f.def.id.name.as_str())) {
                    let service = NamespacedName { namespace: f.def.id.namespace.clone(), name: f.def.id.name.clone() };
                    def.instances = ready_endpoints(slices.iter().copied(), &service, None, f.def.spec.port);
                }
                def
            })
            .collect()
    }

    pub fn rejected_functions(&self) -> Vec<RejectedFunction> {
        self.rejected.iter().map(|r| r.rejected.clone()).collect()
    }
}

/// What the watch keeps of one function Deployment instead of the object: the function it
/// defines (or why it cannot), and the reference an Event about it needs. Parsed once per
/// change of that Deployment, not on every look at the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedDeployment {
    pub function: Result<Arc<ClusterFunction>, RejectedFunction>,
    pub reference: ObjectReference,
}

impl WatchedDeployment {
    /// `None` when the Deployment is not a function (no `wavelink.dev/function` label).
    pub fn of(deployment: &Deployment, specs: &mut SharedSpecs) -> Option<WatchedDeployment> {
        let function = function_with_shared_spec(deployment, specs)?.map(Arc::new);
        Some(WatchedDeployment { function, reference: deployment.object_ref(&()) })
    }
}

/// What the watch keeps of one EndpointSlice: its Service, its ports and the addresses of its
/// endpoints that take new requests (ready, an unset condition meaning ready as the API
/// defines it, and not terminating).
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedSlice {
    pub namespace: String,
    pub service: String,
    pub ports: Vec<(Option<String>, u16)>,
    pub ready: Vec<IpAddr>,
}

impl WatchedSlice {
    /// `None` for a slice without a namespace or a Service label.
    pub fn of(slice: &EndpointSlice) -> Option<WatchedSlice> {
        let meta = &slice.metadata;
        let service = meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
        let ports =
            slice.ports.iter().flatten().filter_map(|p| Some((p.name.clone(), u16::try_from(p.port?).ok()?))).collect();
        let ready = slice
            .endpoints
            .iter()
            .filter(|endpoint| {
                let conditions = endpoint.conditions.as_ref();
                conditions.and_then(|c| c.ready).unwrap_or(true)
                    && !conditions.and_then(|c| c.terminating).unwrap_or(false)
            })
            .flat_map(|endpoint| endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()))
            .collect();
        Some(WatchedSlice { namespace: meta.namespace.clone()?, service, ports, ready })
    }
}

/// `None` when the Deployment is not a function (no `wavelink.dev/function` label).
pub fn function_of(deployment: &Deployment) -> Option<Result<ClusterFunction, RejectedFunction>> {
    function_with_shared_spec(deployment, &mut SharedSpecs::default())
}

/// [`function_of`], its spec shared with the equal ones `specs` handed out before.
fn function_with_shared_spec(
    deployment: &Deployment,
    specs: &mut SharedSpecs,
) -> Option<Result<ClusterFunction, RejectedFunction>> {
    let meta = &deployment.metadata;
    let name = meta.labels.as_ref()?.get(FUNCTION_LABEL)?;
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let deployment_name = meta.name.clone().unwrap_or_default();
    let reject = |error: String| RejectedFunction { function: format!("{namespace}/{name}"), error };
    let id = match FunctionId::new(namespace, name) {
        Ok(id) => id,
        Err(e) => return Some(Err(reject(format!("label {FUNCTION_LABEL}: {e}")))),
    };
    let empty = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let spec = match FunctionSpec::from_annotations(annotations.iter()) {
        Ok(spec) => specs.share(spec),
        Err(e) => return Some(Err(reject(e.to_string()))),
    };
    let spec_of_deployment = deployment.spec.as_ref();
    let containers = spec_of_deployment.and_then(|s| s.template.spec.as_ref()).map(|pod| pod.containers.as_slice());
    let container = match &spec.container {
        None => containers.and_then(<[Container]>::first),
        Some(name) => match containers.and_then(|all| all.iter().find(|c| &c.name == name)) {
            Some(container) => Some(container),
            None => {
                return Some(Err(reject(format!(
                    "{}: {name:?} names no container of the pod template",
                    wavelink_core::spec::keys::CONTAINER
                ))));
            }
        },
    };
    let command = container
        .map(|c| c.command.iter().flatten().chain(c.args.iter().flatten()).cloned().collect())
        .unwrap_or_default();
    let env = container.map(literal_env).unwrap_or_default();
    let pod_security =
        spec_of_deployment.and_then(|s| s.template.spec.as_ref()).and_then(|pod| pod.security_context.as_ref());
    let template = container.and_then(|c| container_template(c, pod_security));
    let replicas = spec_of_deployment.and_then(|s| s.replicas).unwrap_or(1);
    let ready = deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    Some(Ok(ClusterFunction {
        def: FunctionDef {
            id,
            spec,
            command,
            env,
            container: template,
            instances: Vec::new(),
            // Container commands read PORT; a listening socket on fd 3 is a local-config option.
            socket_activation: false,
        },
        deployment: deployment_name,
        replicas: u32::try_from(replicas).unwrap_or(0),
        ready: u32::try_from(ready).unwrap_or(0),
    }))
}

/// The container's `env` entries with a literal `value`. Values from Secrets, ConfigMaps or the
/// downward API (`valueFrom`) are not resolved by the Wavelet (it would need read access to
/// every Secret); such variables are left out of Emergency Instances.
fn literal_env(container: &Container) -> Vec<(String, String)> {
    container
        .env
        .iter()
        .flatten()
        .filter(|e| e.value_from.is_none())
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

/// What an Emergency Instance takes from the pod template's container; `None` without an image.
fn container_template(container: &Container, pod: Option<&PodSecurityContext>) -> Option<ContainerTemplate> {
    let image = container.image.clone().filter(|i| !i.is_empty())?;
    let security = container.security_context.as_ref();
    let id = |own: Option<i64>, pod: Option<i64>| own.or(pod).and_then(|v| u32::try_from(v).ok());
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    let limit = |name: &str| limits.and_then(|l| l.get(name)).map(|q| q.0.as_str());
    Some(ContainerTemplate {
        image,
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        working_dir: container.working_dir.clone(),
        run_as_user: id(security.and_then(|s| s.run_as_user), pod.and_then(|p| p.run_as_user)),
        run_as_group: id(security.and_then(|s| s.run_as_group), pod.and_then(|p| p.run_as_group)),
        memory_limit: limit("memory").and_then(|q| wavelink_core::size::parse_size(q).ok()),
        cpu_limit_millis: limit("cpu").and_then(|q| wavelink_core::size::parse_cpu_millis(q).ok()),
    })
}

/// Addresses of a Service's endpoints that take new requests. The port is the slice's port
/// named `port_name` (any when `None`), else `default_port`.
pub fn ready_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a WatchedSlice>,
    service: &NamespacedName,
    port_name: Option<&str>,
    default_port: u16,
) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for slice in slices {
        if slice.service != service.name || slice.namespace != service.namespace {
            continue;
        }
        let port = slice
            .ports
            .iter()
            .find(|(name, _)| port_name.is_none_or(|wanted| name.as_deref() == Some(wanted)))
            .map_or(default_port, |(_, port)| *port);
        addrs.extend(slice.ready.iter().map(|ip| SocketAddr::new(*ip, port)));
    }
    addrs.sort();
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use wavelink_core::spec::keys;

    fn deployment(name: &str, function: Option<&str>, annotations: &[(&str, &str)]) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("apps".into()),
                labels: function.map(|f| BTreeMap::from([(FUNCTION_LABEL.to_owned(), f.to_owned())])),
                annotations: Some(annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                template: PodTemplateSpec {
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "fn".into(),
                            command: Some(vec!["wavelink".into()]),
                            args: Some(vec!["fn".into()]),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            }),
            status: Some(DeploymentStatus { ready_replicas: Some(2), ..Default::default() }),
        }
    }

    fn slice(service: &str, port: Option<i32>, endpoints: &[(&str, Option<bool>, Option<bool>)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("apps".into()),
                labels: Some(BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: port.map(|p| vec![EndpointPort { port: Some(p), name: Some("http".into()), ..Default::default() }]),
            endpoints: endpoints
                .iter()
                .map(|(ip, ready, terminating)| Endpoint {
                    addresses: vec![(*ip).to_owned()],
                    conditions: Some(EndpointConditions { ready: *ready, terminating: *terminating, serving: None }),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn a_labelled_deployment_is_a_function() {
        let d = deployment("hello-v2", Some("hello"), &[(keys::CONTAINER_CONCURRENCY, "4"), ("other.io/x", "y")]);
        let f = function_of(&d).unwrap().unwrap();
        assert_eq!(f.def.id, FunctionId::new("apps", "hello").unwrap());
        assert_eq!(f.deployment, "hello-v2");
        assert_eq!(f.def.spec.container_concurrency, 4);
        assert_eq!(f.def.command, ["wavelink", "fn"]);
        assert_eq!((f.replicas, f.ready), (3, 2));
        assert!(function_of(&deployment("plain", None, &[])).is_none());
    }

    #[test]
    fn what_the_watch_keeps_of_a_slice_is_its_service_ports_and_ready_addresses() {
        let full = slice("hello", Some(9000), &[("10.0.0.1", Some(true), None), ("10.0.0.2", None, Some(true))]);
        let kept = WatchedSlice::of(&full).expect("a Service's slice");
        assert_eq!((kept.namespace.as_str(), kept.service.as_str()), ("apps", "hello"));
        assert_eq!(kept.ready, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(kept.ports, [(Some("http".to_owned()), 9000)]);
        let mut unlabelled = full.clone();
        unlabelled.metadata.labels = None;
        assert!(WatchedSlice::of(&unlabelled).is_none());
    }

    #[test]
    fn what_the_watch_keeps_of_a_deployment_reads_as_the_same_catalog() {
        let deployments = [deployment("b", Some("f"), &[]), deployment("a", Some("g"), &[(keys::PORT, "x")])];
        let watched: Vec<WatchedDeployment> =
            deployments.iter().filter_map(|d| WatchedDeployment::of(d, &mut SharedSpecs::default())).collect();
        assert_eq!(Catalog::from_watched(&watched), Catalog::from_deployments(&deployments));
        assert_eq!(watched[0].reference.name.as_deref(), Some("b"));
        assert!(WatchedDeployment::of(&deployment("plain", None, &[]), &mut SharedSpecs::default()).is_none());
    }

    #[test]
    fn an_emergency_instance_takes_image_command_env_user_and_limits_from_the_pod_template() {
        use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ResourceRequirements, SecurityContext};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let mut d = deployment("boxed", Some("boxed"), &[]);
        let pod = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()).unwrap();
        pod.security_context =
            Some(PodSecurityContext { run_as_user: Some(1000), run_as_group: Some(1000), ..Default::default() });
        let container = &mut pod.containers[0];
        container.image = Some("registry.example/app:v3".into());
        container.working_dir = Some("/srv".into());
        container.env = Some(vec![
            EnvVar { name: "GREETING".into(), value: Some("hi".into()), value_from: None },
            EnvVar { name: "EMPTY".into(), value: None, value_from: None },
            EnvVar { name: "SECRET".into(), value: None, value_from: Some(EnvVarSource::default()) },
        ]);
        container.security_context = Some(SecurityContext { run_as_user: Some(2000), ..Default::default() });
        container.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([
                ("memory".to_owned(), Quantity("256Mi".into())),
                ("cpu".to_owned(), Quantity("500m".into())),
            ])),
            ..Default::default()
        });
        let f = function_of(&d).unwrap().unwrap();
        let template = f.def.container.expect("an image makes a container template");
        assert_eq!(template.image, "registry.example/app:v3");
        assert_eq!(
            (template.command.as_slice(), template.args.as_slice()),
            (&["wavelink".to_owned()][..], &["fn".to_owned()][..])
        );
        assert_eq!(template.working_dir.as_deref(), Some("/srv"));
        assert_eq!(
            (template.run_as_user, template.run_as_group),
            (Some(2000), Some(1000)),
            "the container's user wins"
        );
        assert_eq!((template.memory_limit, template.cpu_limit_millis), (Some(256 << 20), Some(500)));
        assert_eq!(
            f.def.env,
            [("GREETING".to_owned(), "hi".to_owned()), ("EMPTY".to_owned(), String::new())],
            "literal values only; valueFrom is not resolved"
        );
        assert!(function_of(&deployment("no-image", Some("x"), &[])).unwrap().unwrap().def.container.is_none());
    }

    #[test]
    fn an_annotation_picks_the_container_emergency_instances_run() {
        let mut d = deployment("two", Some("two"), &[(keys::CONTAINER, "app")]);
        let pod = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()).unwrap();
        pod.containers[0].image = Some("sidecar:1".into());
        pod.containers.push(Container { name: "app".into(), image: Some("app:2".into()), ..Default::default() });
        let f = function_of(&d).unwrap().unwrap();
        assert_eq!(f.def.container.map(|c| c.image).as_deref(), Some("app:2"));
        let missing = deployment("three", Some("three"), &[(keys::CONTAINER, "nope")]);
        let error = function_of(&missing).unwrap().unwrap_err().error;
        assert!(error.contains(keys::CONTAINER) && error.contains("\"nope\""), "{error}");
    }

    #[test]
    fn a_bad_annotation_rejects_that_function_only_and_names_key_value_and_range() {
        let good = deployment("a", Some("a"), &[]);
        let bad = deployment("b", Some("b"), &[(keys::CONTAINER_CONCURRENCY, "0")]);
        let badly_named = deployment("c", Some("Not_A_Label"), &[]);
        let catalog = Catalog::from_deployments([&good, &bad, &badly_named]);
        assert_eq!(catalog.functions.len(), 1);
        assert_eq!(catalog.rejected.len(), 2);
        let error = &catalog.rejected[0].rejected.error;
        assert!(
            error.contains(keys::CONTAINER_CONCURRENCY) && error.contains("\"0\"") && error.contains("from 1 to 1000"),
            "{error}"
        );
        assert_eq!(catalog.rejected[0].deployment.name.as_deref(), Some("b"));
        assert!(catalog.rejected[1].rejected.error.contains(FUNCTION_LABEL));
    }

    #[test]
    fn two_deployments_of_one_function_keep_the_first_by_name() {
        let catalog = Catalog::from_deployments([&deployment("z", Some("f"), &[]), &deployment("a", Some("f"), &[])]);
        assert_eq!(catalog.functions[0].deployment, "a");
        assert!(catalog.rejected[0].rejected.error.contains("already defines"));
    }

    #[test]
    fn ready_endpoints_skip_not_ready_and_terminating_ones() {
        let service = NamespacedName::from_str("apps/hello").unwrap();
        let slices = [
            slice("hello", Some(9000), &[("10.0.0.1", Some(true), None), ("10.0.0.2", Some(false), None)]),
            slice("hello", None, &[("10.0.0.3", None, None), ("10.0.0.4", Some(true), Some(true))]),
            slice("other", Some(9000), &[("10.0.0.9", None, None)]),
        ];
        let slices: Vec<WatchedSlice> = slices.iter().filter_map(WatchedSlice::of).collect();
        let addrs = ready_endpoints(&slices, &service, None, 8080);
        let expected: Vec<SocketAddr> = vec!["10.0.0.1:9000".parse().unwrap(), "10.0.0.3:8080".parse().unwrap()];
        assert_eq!(addrs, expected);
        assert_eq!(
            ready_endpoints(&slices, &service, Some("admin"), 7),
            ["10.0.0.1:7".parse().unwrap(), "10.0.0.3:7".parse().unwrap()]
        );
    }

    #[test]
    fn functions_get_their_services_endpoints() {
        let catalog = Catalog::from_deployments([&deployment("hello", Some("hello"), &[(keys::PORT, "9000")])]);
        let slices = [slice("hello", None, &[("10.0.0.1", None, None)])];
        let slices: Vec<WatchedSlice> = slices.iter().filter_map(WatchedSlice::of).collect();
        let defs = catalog.with_endpoints(&slices);
        assert_eq!(defs[0].instances, ["10.0.0.1:9000".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn namespaced_names_are_namespace_slash_name() {
        assert_eq!(NamespacedName::from_str("wavelink-system/proxy").unwrap().to_string(), "wavelink-system/proxy");
        assert!(NamespacedName::from_str("proxy").unwrap_err().contains("namespace/name"));
        assert!(NamespacedName::from_str("a/B_c").is_err());
    }
}
