//! A live, in-memory view of the objects WaveLink reads: function Deployments and EndpointSlices,
//! kept by kube-runtime reflectors (list, then watch with resourceVersions and bookmarks, relisting
//! after a 410). Readers take snapshots from memory; a change counter tells them when to look.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{debug, warn};
use wavelink_core::spec::FUNCTION_LABEL;

use crate::catalog::{Catalog, NamespacedName, SERVICE_NAME_LABEL, ready_endpoints, slim_deployment, slim_slice};

/// Coalesces bursts of watch events (a rollout touches many slices) into one refresh.
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct ClusterView {
    deployments: Store<Deployment>,
    slices: Store<EndpointSlice>,
    changes: watch::Receiver<u64>,
}

impl ClusterView {
    /// Starts watching, in `namespace` or all namespaces, on the current tokio runtime. The
    /// returned future drives the watches; spawn it and keep it running.
    pub fn start(client: Client, namespace: Option<&str>) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (deployments_api, slices_api): (Api<Deployment>, Api<EndpointSlice>) = match namespace {
            Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client, ns)),
            None => (Api::all(client.clone()), Api::all(client)),
        };
        let (deployments, deployments_writer) = reflector::store();
        let (slices, slices_writer) = reflector::store();
        let (notify, changes) = watch::channel(0u64);
        let deployment_events = reflector::reflector(
            deployments_writer,
            // Cached slimmed: what is never read costs no memory per function.
            watcher(deployments_api, watcher::Config::default().labels(FUNCTION_LABEL))
                .modify(slim_deployment)
                .default_backoff(),
        )
        .map(|event| event.map(|_| ()).map_err(|e| ("deployments", e)));
        let slice_events = reflector::reflector(
            slices_writer,
            watcher(slices_api, watcher::Config::default().labels(SERVICE_NAME_LABEL))
                .modify(slim_slice)
                .default_backoff(),
        )
        .map(|event| event.map(|_| ()).map_err(|e| ("endpointslices", e)));
        let drive = async move {
            let mut events = std::pin::pin!(futures::stream::select(deployment_events, slice_events));
            while let Some(event) = events.next().await {
                match event {
                    Ok(()) => {
                        notify.send_modify(|n| *n += 1);
                    }
                    // The watcher retries with backoff; the store keeps its last state meanwhile.
                    Err((resource, e)) => warn!(resource, error = %e, "watching the cluster failed; retrying"),
                }
            }
            debug!("cluster watches ended");
        };
        (ClusterView { deployments, slices, changes }, drive)
    }

    /// Waits until both initial lists are in (so nothing is served from an empty view).
    pub async fn ready(&self) {
        // The writers live as long as the drive future, which outlives every reader in practice.
        let _ = self.deployments.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
    }

    /// Waits for the next change, letting a burst of changes settle first.
    pub async fn changed(&mut self) -> bool {
        if self.changes.changed().await.is_err() {
            return false;
        }
        tokio::time::sleep(SETTLE).await;
        self.changes.borrow_and_update();
        true
    }

    pub fn catalog(&self) -> Catalog {
        let deployments = self.deployments.state();
        Catalog::from_deployments(deployments.iter().map(|d| d.as_ref()))
    }

    pub fn slices(&self) -> Vec<std::sync::Arc<EndpointSlice>> {
        self.slices.state()
    }

    /// Ready endpoints of a Service on its port named `port_name`.
    pub fn service_endpoints(&self, service: &NamespacedName, port_name: &str, default_port: u16) -> Vec<SocketAddr> {
        let slices = self.slices.state();
        ready_endpoints(slices.iter().map(|s| s.as_ref()), service, Some(port_name), default_port)
    }

    /// A Deployment by namespace and name, for event references.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Deployment>> {
        self.deployments.get(&reflector::ObjectRef::new(name).within(namespace))
    }
}

/// Connects with the usual rules: `KUBECONFIG` or `~/.kube/config`, else the in-cluster service
/// account.
pub async fn connect() -> Result<Client, kube::Error> {
    Client::try_default().await
}
