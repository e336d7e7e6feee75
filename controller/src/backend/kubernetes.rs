//! The Kubernetes backend: functions are Deployments labelled `wavelink.dev/function`, read from a
//! watch-fed cache; scaling patches `deployments/<name>/scale`. Only the replica holding the Lease
//! writes anything, scale and Events alike; the others keep their histories warm so a takeover
//! decides from the same data.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use kube::Client;
use parking_lot::Mutex;
use wavelink_core::FunctionId;
use wavelink_kubernetes::catalog::{Catalog, ClusterFunction};
use wavelink_kubernetes::events::RejectionEvents;
use wavelink_kubernetes::{ClusterView, LeaderElector, NamespacedName, scale};

use super::{Backend, BackendError, FunctionChanges, ManagedFunction};

/// The admin port of a proxy pod when its Service's port named `admin` is not found.
const DEFAULT_PROXY_ADMIN_PORT: u16 = 9090;

pub struct KubernetesBackend {
    client: Client,
    view: ClusterView,
    events: RejectionEvents,
    leader: Arc<LeaderElector>,
    /// Where to find the proxies to scrape (their admin port); `None`: the configured addresses.
    proxy_service: Option<NamespacedName>,
    /// The catalog [`Backend::changes`] last reported from.
    reported: Mutex<Option<Arc<Catalog>>>,
}

impl KubernetesBackend {
    pub fn new(
        client: Client,
        view: ClusterView,
        leader: Arc<LeaderElector>,
        proxy_service: Option<NamespacedName>,
    ) -> Self {
        let events = RejectionEvents::new(client.clone(), leader.identity().to_owned());
        KubernetesBackend { client, view, events, leader, proxy_service, reported: Mutex::new(None) }
    }
}

/// What differs between two catalogs (both sorted by function id): one merge walk.
fn catalog_changes(before: Option<&Catalog>, after: &Catalog) -> FunctionChanges {
    let mut changes = FunctionChanges::default();
    let managed = |f: &ClusterFunction| ManagedFunction {
        id: f.def.id.clone(),
        spec: Arc::clone(&f.def.spec),
        replicas: f.replicas,
        ready: f.ready,
    };
    let old = before.map_or(&[][..], |c| &c.functions[..]);
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < after.functions.len() {
        match (old.get(i), after.functions.get(j)) {
            (Some(a), Some(b)) if a.def.id == b.def.id => {
                // The same projection (the Deployment did not change): nothing to compare.
                if !Arc::ptr_eq(a, b) && ((a.replicas, a.ready) != (b.replicas, b.ready) || a.def.spec != b.def.spec) {
                    changes.changed.push(managed(b));
                }
                (i, j) = (i + 1, j + 1);
            }
            (Some(a), Some(b)) if a.def.id < b.def.id => {
                changes.removed.push(a.def.id.clone());
                i += 1;
            }
            (Some(a), None) => {
                changes.removed.push(a.def.id.clone());
                i += 1;
            }
            (_, Some(b)) => {
                changes.changed.push(managed(b));
                j += 1;
            }
            (None, None) => break,
        }
    }
    changes
}

fn api_error(operation: &'static str, e: &kube::Error) -> BackendError {
    BackendError::Api { operation, message: e.to_string() }
}

#[async_trait]
impl Backend for KubernetesBackend {
    async fn changes(&self) -> Result<FunctionChanges, BackendError> {
        let catalog = self.view.catalog();
        let mut reported = self.reported.lock();
        // The catalog is rebuilt only when a watched object changed: the same one, nothing to say.
        if reported.as_ref().is_some_and(|last| Arc::ptr_eq(last, &catalog)) {
            return Ok(FunctionChanges::default());
        }
        let changes = catalog_changes(reported.as_deref(), &catalog);
        *reported = Some(catalog);
        Ok(changes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use wavelink_core::{FunctionDef, FunctionSpec};

    fn function(name: &str, replicas: u32, ready: u32) -> ClusterFunction {
        ClusterFunction {
            def: FunctionDef {
                id: FunctionId::new("default", name).unwrap(),
                spec: Arc::new(FunctionSpec::default()),
                command: vec![],
                env: vec![],
                container: None,
                instances: vec![],
                socket_activation: false,
            },
            deployment: name.to_owned(),
            replicas,
            ready,
        }
    }

    fn catalog(functions: Vec<ClusterFunction>) -> Catalog {
        Catalog { functions: functions.into_iter().map(Arc::new).collect(), rejected: vec![] }
    }

    fn names(changes: &FunctionChanges) -> (Vec<String>, Vec<String>) {
        (
            changes.changed.iter().map(|f| f.id.name.clone()).collect(),
            changes.removed.iter().map(|id| id.name.clone()).collect(),
        )
    }

    #[test]
    fn catalog_changes_are_the_new_the_changed_and_the_removed_functions() {
        let before = catalog(vec![function("a", 1, 1), function("b", 0, 0), function("c", 2, 1), function("e", 0, 0)]);
        assert_eq!(names(&catalog_changes(None, &before)).0, ["a", "b", "c", "e"], "everything at first");
        let mut slower = function("b", 0, 0);
        Arc::make_mut(&mut slower.def.spec).window = std::time::Duration::from_secs(120);
        let after = catalog(vec![function("a", 1, 1), slower, function("c", 2, 2), function("d", 0, 0)]);
        let changes = catalog_changes(Some(&before), &after);
        assert_eq!(names(&changes), (vec!["b".into(), "c".into(), "d".into()], vec!["e".into()]));
        assert_eq!(changes.changed[1].ready, 2);
        assert!(names(&catalog_changes(Some(&after), &after)).0.is_empty());
        assert_eq!(names(&catalog_changes(Some(&after), &catalog(vec![]))).1, ["a", "b", "c", "d"]);
    }
}
