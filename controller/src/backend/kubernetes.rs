//! The Kubernetes backend: functions are Deployments labelled `wavelink.dev/function`, read from a
//! watch-fed cache; scaling patches `deployments/<name>/scale`. Only the replica holding the Lease
//! writes anything, scale and Events alike; the others keep their histories warm so a takeover
//! decides from the same data.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use kube::Client;
use wavelink_core::FunctionId;
use wavelink_kubernetes::events::RejectionEvents;
use wavelink_kubernetes::{ClusterView, LeaderElector, NamespacedName, scale};

use super::{Backend, BackendError, ManagedFunction};

/// The admin port of a proxy pod when its Service's port named `admin` is not found.
const DEFAULT_PROXY_ADMIN_PORT: u16 = 9090;

pub struct KubernetesBackend {
    client: Client,
    view: ClusterView,
    events: RejectionEvents,
    leader: Arc<LeaderElector>,
    /// Where to find the proxies to scrape (their admin port); `None`: the configured addresses.
    proxy_service: Option<NamespacedName>,
}

impl KubernetesBackend {
    pub fn new(
        client: Client,
        view: ClusterView,
        leader: Arc<LeaderElector>,
        proxy_service: Option<NamespacedName>,
    ) -> Self {
        let events = RejectionEvents::new(client.clone(), leader.identity().to_owned());
        KubernetesBackend { client, view, events, leader, proxy_service }
    }
}

fn api_error(operation: &'static str, e: &kube::Error) -> BackendError {
    BackendError::Api { operation, message: e.to_string() }
}

#[async_trait]
impl Backend for KubernetesBackend {
    async fn functions(&self) -> Result<Vec<ManagedFunction>, BackendError> {
        Ok(self
            .view
            .catalog()
            .functions
            .iter()
            .map(|f| ManagedFunction {
                id: f.def.id.clone(),
                spec: f.def.spec.clone(),
                replicas: f.replicas,
                ready: f.ready,
            })
            .collect())
    }

    async fn scale(&self, function: &FunctionId, replicas: u32) -> Result<(), BackendError> {
        let catalog = self.view.catalog();
        let f = catalog.function(function).ok_or_else(|| BackendError::UnknownFunction(function.clone()))?;
        scale::set_replicas(&self.client, &function.namespace, &f.deployment, replicas)
            .await
            .map_err(|e| api_error("patch_scale", &e))
    }

    async fn maintain(&self) -> Vec<BackendError> {
        if !self.is_leader() {
            return Vec::new();
        }
        let rejected = self.view.catalog().rejected.clone();
        self.events.report(&rejected).await.iter().map(|e| api_error("create_event", e)).collect()
    }

    fn is_leader(&self) -> bool {
        self.leader.is_leader()
    }

    fn proxies(&self) -> Option<Vec<SocketAddr>> {
        let service = self.proxy_service.as_ref()?;
        Some(self.view.service_endpoints(service, "admin", DEFAULT_PROXY_ADMIN_PORT))
    }
}
