//! The test apiserver of `../shared/k8s-testenv` and a test-side kubelet.
//!
//! The apiserver has no controllers and no kubelet, so [`Kubelet`] plays their part for function
//! Deployments: it keeps `spec.replicas` local `wavelink fn` processes per Deployment, publishes
//! each as a ready endpoint in an EndpointSlice of the function's Service, and writes
//! `status.readyReplicas`. Every test works in a namespace of its own.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use std::net::SocketAddr;
use std::process::Stdio;

use crate::support::{FnInstance, Proc, TempDir, free_port, get, nonce, start_fn, wait_until, wavelink};

pub struct TestCluster {
    pub kubeconfig: PathBuf,
    pub runtime: tokio::runtime::Runtime,
    pub client: Client,
    pub namespace: String,
}

/// The test apiserver, with a fresh namespace for `test`; `None` (and a message saying why the
/// test is skipped) when the environment does not name one.
pub fn test_cluster(test: &str) -> Option<TestCluster> {
    let (Ok(kubeconfig), Ok(_)) = (std::env::var("KUBECONFIG"), std::env::var("WAVELINK_TESTENV_DIR")) else {
        eprintln!(
            "SKIPPED {test}: no test apiserver (KUBECONFIG and WAVELINK_TESTENV_DIR unset). `make test` starts \
             one from ../shared/k8s-testenv; by hand: eval \"$(../shared/k8s-testenv/start.sh)\""
        );
        return None;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let client = runtime.block_on(Client::try_default()).expect("client for the test apiserver");
    let namespace = format!("{}-{:x}", test.replace('_', "-").chars().take(40).collect::<String>(), nonce());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta { name: Some(namespace.clone()), ..Default::default() },
        ..Default::default()
    };
    runtime.block_on(namespaces.create(&PostParams::default(), &ns)).expect("create namespace");
    Some(TestCluster { kubeconfig: kubeconfig.into(), runtime, client, namespace })
}

impl TestCluster {
    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a function Deployment (`wavelink.dev/function: <name>`) with these annotations.
    pub fn create_function(&self, name: &str, replicas: i32, annotations: &[(&str, &str)]) {
        let container = serde_json::json!({ "name": "fn", "image": "wavelink", "command": ["wavelink", "fn"] });
        self.create_function_with(name, replicas, annotations, container);
    }

    /// The same, with the pod template's one container given.
    pub fn create_function_with(
        &self,
        name: &str,
        replicas: i32,
        annotations: &[(&str, &str)],
        container: serde_json::Value,
    ) {
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "labels": { "wavelink.dev/function": name },
                "annotations": annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
            },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": name } },
                "template": {
                    "metadata": { "labels": { "app": name } },
                    "spec": { "containers": [container] }
                }
            }
        }))
        .expect("deployment JSON");
        self.runtime
            .block_on(self.deployments().create(&PostParams::default(), &deployment))
            .expect("create deployment");
    }

    pub fn replicas(&self, name: &str) -> i32 {
        let d = self.runtime.block_on(self.deployments().get(name)).expect("get deployment");
        d.spec.and_then(|s| s.replicas).unwrap_or(1)
    }

    /// Publishes `addr` as the one endpoint of a Service, on a port named `port_name`.
    pub fn publish_endpoint(&self, service: &str, port_name: &str, addr: std::net::SocketAddr) {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
        let slice = endpoint_slice(&format!("{service}-{:x}", nonce()), service, port_name, addr);
        self.runtime.block_on(slices.create(&PostParams::default(), &slice)).expect("create endpoint slice");
    }

    /// Makes the test apiserver serve core/v1 Secrets, which it does not by itself: registered
    /// as `../shared/k8s-testenv/crds.py` registers the other built-in types (a schema-light
    /// resource at the real path). Such a Secret is stored as written: give `data`, not
    /// `stringData`.
    pub fn serve_secrets(&self) {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": { "name": "secrets.core", "annotations": { "api-approved.kubernetes.io": "unapproved, test environment" } },
            "spec": {
                "group": "",
                "scope": "Namespaced",
                "names": { "plural": "secrets", "singular": "secret", "kind": "Secret", "listKind": "SecretList" },
                "versions": [{ "name": "v1", "served": true, "storage": true,
                               "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } } }]
            }
        }))
        .expect("CRD JSON");
        match self.runtime.block_on(crds.create(&PostParams::default(), &crd)) {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => panic!("registering Secrets with the test apiserver: {e}"),
        }
        wait_until("Secrets are served", || {
            self.runtime.block_on(crds.get("secrets.core")).ok().and_then(|c| c.status).is_some_and(|status| {
                status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Established" && c.status == "True")
            })
        });
    }

    /// The `kubernetes:` section of a config for components working in this namespace (the
    /// Wavelets are the endpoints of Service `wavelink-wavelet`, the controllers those of
    /// `wavelink-controller-admin`).
    pub fn config_section(&self, lease_duration: &str) -> String {
        format!(
            "kubernetes: {{ namespace: {ns}, lease: {ns}/wavelink-controller, lease-duration: {lease_duration}, \
             wavelet-service: {ns}/wavelink-wavelet, controller-service: {ns}/wavelink-controller-admin }}\n",
            ns = self.namespace
        )
    }
}

/// Plays the kubelet and the endpoint controller for the function Deployments of one namespace.
pub struct Kubelet {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Kubelet {
    pub fn start(cluster: &TestCluster) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let client = cluster.client.clone();
        let namespace = cluster.namespace.clone();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let mut pods: HashMap<String, Vec<Pod>> = HashMap::new();
            while !flag.load(Ordering::SeqCst) {
                if let Err(e) = runtime.block_on(sync_once(&client, &namespace, &mut pods)) {
                    eprintln!("test kubelet: {e}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Dropping the pods kills their processes.
        });
        Kubelet { stop, thread: Some(thread) }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Pod {
    instance: FnInstance,
    slice: String,
}

async fn sync_once(client: &Client, namespace: &str, pods: &mut HashMap<String, Vec<Pod>>) -> Result<(), kube::Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let list = deployments.list(&ListParams::default().labels("wavelink.dev/function")).await?;
    for d in list.items {
        let Some(name) = d.metadata.name.clone() else { continue };
        let function =
            d.metadata.labels.as_ref().and_then(|l| l.get("wavelink.dev/function")).cloned().unwrap_or_default();
        let desired = usize::try_from(d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)).unwrap_or(0);
        let running = pods.entry(name.clone()).or_default();
        let before = running.len();
        while running.len() < desired {
            let n = running.len();
            let instance = start_fn(&format!("{name}-{n}"));
            let slice_name = format!("{name}-{n}-{:x}", nonce());
            let slice = endpoint_slice(&slice_name, &function, "http", instance.addr);
            slices.create(&PostParams::default(), &slice).await?;
            running.push(Pod { instance, slice: slice_name });
        }
        while running.len() > desired {
            let Some(pod) = running.pop() else { break };
            slices.delete(&pod.slice, &DeleteParams::default()).await?;
            drop(pod.instance);
        }
        if running.len() != before || d.status.as_ref().and_then(|s| s.ready_replicas).is_none() {
            let status = serde_json::json!({ "status": { "replicas": running.len(), "readyReplicas": running.len() } });
            deployments.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        }
    }
    Ok(())
}

/// A ready endpoint of `service` at `addr`, as the endpoint controller would write it.
fn endpoint_slice(name: &str, service: &str, port_name: &str, addr: std::net::SocketAddr) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([("kubernetes.io/service-name".to_owned(), service.to_owned())])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![addr.ip().to_string()],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some(port_name.to_owned()),
            port: Some(i32::from(addr.port())),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// Components of one test: a config file with proxy and controller addresses and the cluster.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub struct Setup {
    pub dir: TempDir,
    pub config: std::path::PathBuf,
    pub proxy_listen: SocketAddr,
    pub proxy_admin: SocketAddr,
    /// The Wavelet started for this setup, if any (the proxy waits until it knows it).
    wavelet: std::sync::Mutex<Option<SocketAddr>>,
}

pub fn setup(cluster: &TestCluster) -> Setup {
    let dir = TempDir::new("k8s");
    let (proxy_listen, proxy_admin) = (loopback(), loopback());
    let config = dir.0.join("wavelink.yaml");
    let text = format!(
        "domain: example.com\n\
         proxy: {{ listen: \"{proxy_listen}\", admin: \"{proxy_admin}\", grace-period: 1s }}\n\
         controller: {{ backend: kubernetes, scrape-interval: 1s, decide-interval: 1s }}\n{}",
        cluster.config_section("3s")
    );
    std::fs::write(&config, text).expect("config");
    Setup { dir, config, proxy_listen, proxy_admin, wavelet: std::sync::Mutex::new(None) }
}

impl Setup {
    pub fn start_proxy(&self, cluster: &TestCluster) -> Proc {
        let log = std::fs::File::create(self.dir.0.join("proxy.log")).expect("log");
        let mut command = wavelink();
        command.args(["proxy", "--config"]).arg(&self.config).env("KUBECONFIG", &cluster.kubeconfig);
        command.stdout(Stdio::null()).stderr(log);
        let proc = Proc::spawn("proxy", &mut command);
        wait_until("proxy ready", || get(self.proxy_admin, "admin", "/readyz").is_ok_and(|r| r.status == 200));
        if let Some(wavelet) = *self.wavelet.lock().expect("lock") {
            wait_until("the proxy spills to the Wavelet", || {
                get(self.proxy_admin, "admin", "/v1/wavelets").is_ok_and(|r| r.text().contains(&wavelet.to_string()))
            });
        }
        proc
    }

    /// A controller named `identity`, reading this setup's proxy; returns it and its admin address.
    pub fn start_controller(&self, cluster: &TestCluster, identity: &str) -> (Proc, SocketAddr) {
        let admin = loopback();
        let log = std::fs::File::create(self.dir.0.join(format!("controller-{identity}.log"))).expect("log");
        let mut command = wavelink();
        command
            .args(["controller", "--config"])
            .arg(&self.config)
            .args(["--admin", &admin.to_string(), "--proxy", &self.proxy_admin.to_string(), "--identity", identity])
            .env("KUBECONFIG", &cluster.kubeconfig)
            .stdout(Stdio::null())
            .stderr(log);
        let proc = Proc::spawn(identity, &mut command);
        wait_until("controller ready", || get(admin, "admin", "/readyz").is_ok_and(|r| r.status == 200));
        (proc, admin)
    }

    /// A Wavelet reading the cluster (with `extra` arguments), published as the one endpoint of
    /// Service wavelink-wavelet; call before `start_proxy`, which then spills to it.
    pub fn start_wavelet(&self, cluster: &TestCluster, extra: &[String]) -> Proc {
        let (listen, admin) = (loopback(), loopback());
        let log = std::fs::File::create(self.dir.0.join("wavelet.log")).expect("log");
        let mut command = wavelink();
        command
            .args(["wavelet", "--config"])
            .arg(&self.config)
            .args(["--listen", &listen.to_string(), "--admin", &admin.to_string(), "--state-dir"])
            .arg(self.dir.0.join("wavelet-state"))
            .args(extra)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .stdout(Stdio::null())
            .stderr(log);
        let wavelet = Proc::spawn("wavelet", &mut command);
        wait_until("wavelet ready", || get(admin, "admin", "/readyz").is_ok_and(|r| r.status == 200));
        cluster.publish_endpoint("wavelink-wavelet", "wavelet", listen);
        *self.wavelet.lock().expect("lock") = Some(listen);
        wavelet
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// An `async` function `hot` (container-concurrency 1, window 6 s, initial-scale 0,
/// queue-timeout 60 s: requests wait for RIs, so the only capacity is what the controller asks
/// Kubernetes for), its pods run by the test kubelet, served by a proxy and scaled by one
/// controller. Fields drop in order: controller, proxy, then the directory and the kubelet.
pub struct HotFunction {
    pub controller: Proc,
    pub controller_admin: SocketAddr,
    pub proxy: Proc,
    pub setup: Setup,
    pub kubelet: Kubelet,
}

pub fn serve_hot_function(cluster: &TestCluster) -> HotFunction {
    cluster.create_function(
        "hot",
        0,
        &[
            ("wavelink.dev/container-concurrency", "1"),
            ("wavelink.dev/scaling-mode", "async"),
            ("wavelink.dev/window", "6s"),
            ("wavelink.dev/initial-scale", "0"),
            ("wavelink.dev/queue-timeout", "60s"),
        ],
    );
    let kubelet = Kubelet::start(cluster);
    let setup = setup(cluster);
    let proxy = setup.start_proxy(cluster);
    let (controller, controller_admin) = setup.start_controller(cluster, "solo");
    wait_until("the proxy serves the function from the cluster", || {
        get(setup.proxy_admin, "admin", "/v1/functions").is_ok_and(|r| r.text().contains("hot"))
    });
    HotFunction { controller, controller_admin, proxy, setup, kubelet }
}
