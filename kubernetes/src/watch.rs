//! A live, in-memory view of what WaveLink reads of the cluster: function Deployments and
//! EndpointSlices, listed then watched by kube-runtime watchers (resourceVersions, bookmarks,
//! relisting after a 410). Each object is projected as it arrives to the little WaveLink reads
//! of it (`WatchedDeployment`: the parsed function; `WatchedSlice`: Service, ports, ready
//! addresses) and the object itself dropped, so ten thousand functions cost kilobytes each, not
//! whole objects, and a change re-parses one Deployment, not all of them. Readers take
//! snapshots from memory; a change counter tells them when to look.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, warn};
use wavelink_core::spec::{FUNCTION_LABEL, SharedSpecs};

use crate::catalog::{Catalog, NamespacedName, SERVICE_NAME_LABEL, WatchedDeployment, WatchedSlice, ready_endpoints};

/// Coalesces bursts of watch events (a rollout touches many slices) into one refresh.
const SETTLE: Duration = Duration::from_millis(50);

/// An object's namespace and name.
type Key = (String, String);

/// The projections of one kind of object, by namespace and name: replaced whole when a
/// (re)list completes, changed one object at a time by watch events.
struct Projections<V> {
    items: RwLock<HashMap<Key, Arc<V>>>,
    /// Counts changes, so a reader can keep what it derived until the next one.
    generation: AtomicU64,
    listed: watch::Sender<bool>,
}

impl<V> Projections<V> {
    fn new() -> Arc<Self> {
        Arc::new(Projections {
            items: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            listed: watch::channel(false).0,
        })
    }

    fn values(&self) -> Vec<Arc<V>> {
        self.items.read().values().cloned().collect()
    }

    async fn wait_listed(&self) {
        let mut listed = self.listed.subscribe();
        let _ = listed.wait_for(|done| *done).await;
    }
}

/// Watches `api` and keeps `project(object)` of each object in `into`; yields once per event.
fn project<K, V>(
    api: Api<K>,
    config: watcher::Config,
    into: Arc<Projections<V>>,
    mut project: impl FnMut(&K) -> Option<V> + Send + 'static,
) -> impl Stream<Item = Result<(), watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    V: Send + Sync + 'static,
{
    let key = |object: &K| Some((object.meta().namespace.clone().unwrap_or_default(), object.meta().name.clone()?));
    // A (re)list in progress: served from the previous state until it completes.
    let mut relist: Option<HashMap<Key, Arc<V>>> = None;
    watcher::watcher(api, config).default_backoff().map(move |event| {
        match event? {
            Event::Init => relist = Some(HashMap::new()),
            Event::InitApply(object) => {
                if let (Some(items), Some(key), Some(value)) = (relist.as_mut(), key(&object), project(&object)) {
                    items.insert(key, Arc::new(value));
                }
            }
            Event::InitDone => {
                if let Some(items) = relist.take() {
                    *into.items.write() = items;
                }
                into.listed.send_replace(true);
            }
            Event::Apply(object) => {
                if let Some(key) = key(&object) {
                    match project(&object) {
                        Some(value) => into.items.write().insert(key, Arc::new(value)),
                        None => into.items.write().remove(&key),
                    };
                }
            }
            Event::Delete(object) => {
                if let Some(key) = key(&object) {
                    into.items.write().remove(&key);
                }
            }
        }
        into.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    })
}

/// A catalog and the generation of the Deployments it was built from.
type BuiltCatalog = (u64, Arc<Catalog>);

#[derive(Clone)]
pub struct ClusterView {
    deployments: Arc<Projections<WatchedDeployment>>,
    slices: Arc<Projections<WatchedSlice>>,
    catalog: Arc<Mutex<Option<BuiltCatalog>>>,
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
        let (deployments, slices) = (Projections::new(), Projections::new());
        let (notify, changes) = watch::channel(0u64);
        let deployment_events =
            project(deployments_api, watcher::Config::default().labels(FUNCTION_LABEL), deployments.clone(), {
                // Deployments of a cluster have a handful of distinct specs: one copy each.
                let mut specs = SharedSpecs::default();
                move |deployment: &Deployment| WatchedDeployment::of(deployment, &mut specs)
            })
            .map(|event| event.map_err(|e| ("deployments", e)));
        let slice_events = project(
            slices_api,
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
            slices.clone(),
            WatchedSlice::of,
        )
        .map(|event| event.map_err(|e| ("endpointslices", e)));
        let drive = async move {
            let mut events = std::pin::pin!(futures::stream::select(deployment_events, slice_events));
            while let Some(event) = events.next().await {
                match event {
                    Ok(()) => {
                        notify.send_modify(|n| *n += 1);
                    }
                    // The watcher retries with backoff; the projections keep their last state.
                    Err((resource, e)) => warn!(resource, error = %e, "watching the cluster failed; retrying"),
                }
            }
            debug!("cluster watches ended");
        };
        let view = ClusterView { deployments, slices, catalog: Arc::new(Mutex::new(None)), changes };
        (view, drive)
    }

    /// Waits until both initial lists are in (so nothing is served from an empty view).
    pub async fn ready(&self) {
        self.deployments.wait_listed().await;
        self.slices.wait_listed().await;
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

    /// The functions the cluster defines: built once per change of the Deployments, shared by
    /// every reader until the next.
    pub fn catalog(&self) -> Arc<Catalog> {
        let mut cached = self.catalog.lock();
        let generation = self.deployments.generation.load(Ordering::Relaxed);
        if let Some((built, catalog)) = cached.as_ref()
            && *built == generation
        {
            return catalog.clone();
        }
        let watched = self.deployments.values();
        let catalog = Arc::new(Catalog::from_watched(watched.iter().map(|w| w.as_ref())));
        *cached = Some((generation, catalog.clone()));
        catalog
    }

    pub fn slices(&self) -> Vec<Arc<WatchedSlice>> {
        self.slices.values()
    }

    /// Ready endpoints of a Service on its port named `port_name`.
    pub fn service_endpoints(&self, service: &NamespacedName, port_name: &str, default_port: u16) -> Vec<SocketAddr> {
        let slices = self.slices.items.read();
        ready_endpoints(slices.values().map(|s| s.as_ref()), service, Some(port_name), default_port)
    }

    /// The reference to a function Deployment, for Events about it.
    pub fn deployment_reference(&self, namespace: &str, name: &str) -> Option<ObjectReference> {
        let key = (namespace.to_owned(), name.to_owned());
        self.deployments.items.read().get(&key).map(|d| d.reference.clone())
    }
}

/// Connects with the usual rules: `KUBECONFIG` or `~/.kube/config`, else the in-cluster service
/// account.
pub async fn connect() -> Result<Client, kube::Error> {
    Client::try_default().await
}
