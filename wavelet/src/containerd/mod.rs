//! The `containerd` instance runtime: an Emergency Instance is the function's own container,
//! started through the node's containerd (the runtime kubelet uses) without kubelet or the API
//! server.
//!
//! ```text
//! start:   image (cached) ─▶ snapshot prepare ─▶ container create ─▶ task create ─▶ task start
//!          └──────────── done ahead of time for prepared instances ────────────┘   (request path)
//! reach:   a socket created inside the instance's network namespace (netns.rs)
//! destroy: task kill ─▶ wait ─▶ task delete ─▶ container delete ─▶ snapshot remove
//! crash:   containers labelled with this Wavelet's owner id are removed at start
//! ```
//!
//! Every containerd call runs on this runtime's own tokio runtime, which owns the gRPC channel;
//! the Wavelet's request threads only await the results.

pub mod client;
pub mod egress;
pub mod image;
pub mod netns;
pub mod private;
pub mod spec;

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use containerd_client::services::v1::container::Runtime as ContainerRuntimeSpec;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    Container as ContainerRecord, CreateContainerRequest, CreateRequest as LeaseCreateRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteRequest as LeaseDeleteRequest, DeleteTaskRequest, KillRequest, ListContainersRequest,
    ListRequest as LeaseListRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::{self, Code};
use parking_lot::Mutex;
use prost_types::Any;
use tracing::{info, warn};
use wavelink_core::container::{OWNER_LABEL, PlanError, normalize_image, plan_process};
use wavelink_core::spec::FUNCTION_LABEL;
use wavelink_core::{FunctionDef, FunctionId};

pub use client::{ConnectError, Containerd, ContainerdSettings};
use egress::{Egress, EgressError};
use image::{ImageError, ImageInfo};
use netns::{HostNetns, NetnsConnector};
use spec::{Limits, Network};

use crate::runtime::PortRange;

/// Container removals in flight at once (each is a few calls to containerd and runc).
pub const CONCURRENT_REMOVALS: usize = 16;
/// How long a failed image resolution or pull is remembered before it is tried again.
const IMAGE_RETRY: Duration = Duration::from_secs(30);
/// Prepared instances unused for this long are destroyed (their function went quiet).
const PREPARED_IDLE: Duration = Duration::from_secs(300);

/// The phases of a container start, for the per-phase histogram.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartPhases {
    pub image: Duration,
    pub snapshot: Duration,
    pub container: Duration,
    pub task_create: Duration,
    pub task_start: Duration,
    /// Its egress link, route and resolv.conf (with `--egress=nat`).
    pub network: Duration,
    /// The instance came from the prepared pool: only the task start was on the request path.
    pub prepared: bool,
}

/// A container instance (its task created; started once handed out by [`ContainerdRuntime::start`]).
pub struct Container {
    pub id: String,
    pub pid: u32,
    pub start_ticks: u64,
    /// The instance's port on its own loopback (or on the node's, with the host network).
    pub addr: SocketAddr,
    pub started: Instant,
    /// Connects inside the instance's network namespace; `None` with the host network.
    pub connector: Option<Arc<NetnsConnector>>,
    pub phases: StartPhases,
}

impl Container {
    /// Whether the container's init process still runs (its start time tells it from a later
    /// process reusing the pid).
    pub fn alive(&self) -> bool {
        crate::procfs::running(self.pid, self.start_ticks)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("the function has no container image (image: in the config, or a pod template with one)")]
    NoImage,
    #[error("image {0} is being pulled on this node; try again shortly")]
    Pulling(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("containerd {step}: {message}")]
    Rpc { step: &'static str, message: String },
    #[error("containerd cannot be reached ({step}): {message}")]
    Unreachable { step: &'static str, message: String },
    #[error("reaching the instance's network namespace: {0}")]
    Netns(std::io::Error),
    #[error("the instance's egress: {0}")]
    Egress(#[from] EgressError),
}

impl ContainerError {
    /// This node cannot serve the function now, but may soon (an image on its way): the proxy
    /// should try elsewhere rather than report a failure.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ContainerError::Pulling(_)
                | ContainerError::Unreachable { .. }
                | ContainerError::Image(ImageError::Rpc { unreachable: true, .. })
        )
    }
}

fn rpc(step: &'static str) -> impl Fn(tonic::Status) -> ContainerError {
    move |status| {
        let message = status.message().to_owned();
        if unreachable(&status) {
            ContainerError::Unreachable { step, message }
        } else {
            ContainerError::Rpc { step, message }
        }
    }
}

/// containerd did not answer (down, restarting, its socket gone), rather than refused the call.
fn unreachable(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
}

enum ImageState {
    Ready(Arc<ImageInfo>),
    Pulling,
    Failed { error: ImageError, at: Instant },
}

/// A created, not yet started instance of a function, and what it was created from.
struct Prepared {
    container: Container,
    def: Arc<FunctionDef>,
    made: Instant,
}

struct Inner {
    client: Containerd,
    host_netns: Arc<HostNetns>,
    /// Instance ids are `<kind>-<pid>-<n>`: `ei` on a Wavelet, `ri` in the local backend.
    kind: &'static str,
    /// The node's network and a port each (the local backend's RIs), or a namespace of their own.
    host_network: Option<PortRange>,
    owner: String,
    default_memory: Option<u64>,
    /// Instances' outbound network, when enabled (never with the host network).
    egress: Option<Egress>,
    images: Mutex<HashMap<String, ImageState>>,
    prepared: Mutex<HashMap<FunctionId, Vec<Prepared>>>,
    /// Preparations under way per function, so a burst does not start a preparation per request.
    preparing: Mutex<HashMap<FunctionId, u32>>,
    /// Set at shutdown: no more preparations; one that finishes removes its container.
    stopping: AtomicBool,
    /// Bounds removals in flight, so a burst's end does not flood containerd.
    removals: tokio::sync::Semaphore,
    /// Containers whose removal failed because containerd did not answer: tried again by
    /// `maintain`, so an outage of containerd leaves nothing behind.
    unremoved: Mutex<Vec<String>>,
    next: AtomicU64,
}

pub struct ContainerdRuntime {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    version: String,
}

impl ContainerdRuntime {
    /// Connects, then removes what a previous run with the same owner left, and says so.
    /// Instance ids start with `kind` (`ei`, `ri`); with `host_network`, instances share the
    /// node's network namespace and each listens on a port of that range. `owner` identifies
    /// this Wavelet (or controller) across restarts: containers it creates carry it as a label,
    /// so a restart finds what a crashed run left.
    pub fn open(
        kind: &'static str,
        host_network: Option<PortRange>,
        settings: ContainerdSettings,
        owner: String,
        default_memory: Option<u64>,
    ) -> Result<ContainerdRuntime, ConnectError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("containerd")
            .enable_all()
            .build()
            .map_err(|e| ConnectError::Version { socket: settings.socket.clone(), message: e.to_string() })?;
        let socket = settings.socket.clone();
        let (client, version) = runtime.block_on(Containerd::connect(settings))?;
        let host_netns =
            HostNetns::current().map_err(|e| ConnectError::Version { socket, message: format!("own netns: {e}") })?;
        let egress = match client.settings.egress {
            Some(cidr) if host_network.is_none() => {
                let opened = runtime.block_on(Egress::open(cidr, host_netns.clone()));
                Some(opened.map_err(|e| ConnectError::Egress(e.to_string()))?)
            }
            _ => None,
        };
        let inner = Arc::new(Inner {
            client,
            host_netns,
            kind,
            host_network,
            owner,
            default_memory,
            egress,
            images: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            preparing: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            removals: tokio::sync::Semaphore::new(CONCURRENT_REMOVALS),
            unremoved: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        });
        let runtime = ContainerdRuntime { inner, runtime: Some(runtime), version };
        let removed = runtime.clean_up_orphans().map_err(|e| ConnectError::Orphans(e.to_string()))?;
        let settings = runtime.settings();
        info!(socket = %settings.socket.display(), namespace = %settings.namespace, version = runtime.version(),
              owner = %runtime.inner.owner, removed_orphans = removed, "instances run as containers");
        Ok(runtime)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn settings(&self) -> &ContainerdSettings {
        &self.inner.client.settings
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().map(|r| r.handle()).expect("the runtime lives as long as self")
    }

    /// Runs `future` on the containerd runtime and waits for it from any thread, inside an async
    /// context or not.
    fn block_on<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let handle = self.handle().clone();
        let task = handle.spawn(future);
        if tokio::runtime::Handle::try_current().is_ok() {
            // Blocking inside another runtime is not allowed; wait on a plain thread.
            std::thread::scope(|scope| scope.spawn(|| handle.block_on(task).ok()).join().ok().flatten())
        } else {
            handle.block_on(task).ok()
        }
    }

    /// Removes every container (with its task and snapshot) a previous run of this Wavelet left.
    pub fn clean_up_orphans(&self) -> Result<usize, ContainerError> {
        let inner = self.inner.clone();
        self.block_on(async move { inner.clean_up_orphans().await })
            .unwrap_or(Err(ContainerError::Rpc { step: "clean-up", message: "the task panicked".into() }))
    }

    /// A started instance of `def`: a prepared one if there is one, else made now.
    ///
    /// The start runs to its end on the containerd runtime even if the caller stops waiting (a
    /// request that went away); a container nobody took is removed then, never left running.
    pub async fn start(&self, def: Arc<FunctionDef>) -> Result<Container, ContainerError> {
        let inner = self.inner.clone();
        let handle = self.handle().clone();
        let (answer, started) = tokio::sync::oneshot::channel();
        self.handle().spawn(async move {
            let result = inner.start(&def).await;
            if result.is_ok() {
                Inner::refill(&inner, &handle, def);
            }
            if let Err(Ok(orphan)) = answer.send(result) {
                inner.remove(&orphan.id).await;
            }
        });
        started.await.unwrap_or_else(|_| Err(ContainerError::Rpc { step: "start", message: "the task ended".into() }))
    }

    /// Removes the instance (task, container, snapshot) in the background, then calls `done`.
    /// Removals run concurrently, at most [`CONCURRENT_REMOVALS`] at a time.
    pub fn destroy_then(&self, container: Container, done: impl FnOnce() + Send + 'static) {
        let inner = self.inner.clone();
        self.handle().spawn(async move {
            if let Ok(_permit) = inner.removals.acquire().await {
                inner.remove(&container.id).await;
            }
            done();
        });
    }

    /// Destroys the instance: task, container and snapshot. Blocks; call it off the request path.
    pub fn destroy(&self, container: Container) {
        let inner = self.inner.clone();
        self.block_on(async move { inner.remove(&container.id).await });
    }

    /// Drops prepared instances of functions that are gone, changed, or quiet; called by the
    /// reaper with the current definitions.
    pub fn maintain(&self, functions: &HashMap<FunctionId, Arc<FunctionDef>>) {
        let stale: Vec<Container> = {
            let mut prepared = self.inner.prepared.lock();
            let mut stale = Vec::new();
            prepared.retain(|id, list| {
                let current = functions.get(id);
                let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(list).into_iter().partition(|p| {
                    current.is_some_and(|def| same_instance(def, &p.def)) && p.made.elapsed() < PREPARED_IDLE
                });
                stale.extend(gone.into_iter().map(|p| p.container));
                *list = keep;
                !list.is_empty()
            });
            stale
        };
        let mut ids: Vec<String> = stale.into_iter().map(|c| c.id).collect();
        ids.append(&mut self.inner.unremoved.lock());
        if !ids.is_empty() {
            let inner = self.inner.clone();
            self.handle().spawn(async move {
                for id in ids {
                    inner.remove(&id).await;
                }
            });
        }
    }

    /// Destroys every prepared instance, and any still being prepared (shutdown).
    pub fn destroy_prepared(&self) {
        self.inner.stopping.store(true, Relaxed);
        let inner = self.inner.clone();
        self.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                // Read before draining: a preparation files its container before it counts down.
                let under_way: u32 = inner.preparing.lock().values().sum();
                let all: Vec<Container> =
                    inner.prepared.lock().drain().flat_map(|(_, list)| list.into_iter().map(|p| p.container)).collect();
                for container in all {
                    inner.remove(&container.id).await;
                }
                if under_way == 0 || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// Removes the egress rules (shutdown, after the instances).
    pub fn close_network(&self) {
        if let Some(egress) = &self.inner.egress {
            egress.close();
        }
    }

    /// Images that cannot be used now (their normalised name, and why), for reporting where
    /// users look (a Warning Event on the function on Kubernetes).
    pub fn image_failures(&self) -> Vec<(String, String)> {
        let images = self.inner.images.lock();
        images
            .iter()
            .filter_map(|(name, state)| match state {
                ImageState::Failed { error, .. } => Some((name.clone(), error.to_string())),
                _ => None,
            })
            .collect()
    }
}

impl Drop for ContainerdRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Whether an instance prepared from `old` is one `new` would start (same image, command, env).
fn same_instance(new: &FunctionDef, old: &FunctionDef) -> bool {
    new.container == old.container && new.env == old.env && new.spec.port == old.spec.port
}

impl Inner {
    async fn start(self: &Arc<Self>, def: &Arc<FunctionDef>) -> Result<Container, ContainerError> {
        let prepared = {
            let mut prepared = self.prepared.lock();
            let list = prepared.get_mut(&def.id);
            list.and_then(|list| {
                let position = list.iter().position(|p| same_instance(def, &p.def))?;
                Some(list.swap_remove(position))
            })
        };
        let mut container = match prepared {
            Some(prepared) if prepared.container.alive() => {
                let mut container = prepared.container;
                container.phases = StartPhases { prepared: true, ..StartPhases::default() };
                container
            }
            Some(dead) => {
                warn!(instance = %dead.container.id, "a prepared instance died before use; making another");
                self.remove(&dead.container.id).await;
                self.create(def).await?
            }
            None => self.create(def).await?,
        };
        let begun = Instant::now();
        let start = self.client.request(StartRequest { container_id: container.id.clone(), exec_id: String::new() });
        if let Err(e) = self.client.tasks().start(start).await {
            self.remove(&container.id).await;
            return Err(rpc("task start")(e));
        }
        container.phases.task_start = begun.elapsed();
        container.started = Instant::now();
        Ok(container)
    }

    /// Tops up the function's prepared instances in the background.
    fn refill(inner: &Arc<Inner>, handle: &tokio::runtime::Handle, def: Arc<FunctionDef>) {
        if inner.stopping.load(Relaxed) {
            return;
        }
        let want = inner.client.settings.prepared_per_function;
        let have = inner.prepared.lock().get(&def.id).map_or(0, Vec::len) as u32;
        let missing = {
            let mut preparing = inner.preparing.lock();
            let under_way = preparing.entry(def.id.clone()).or_default();
            let missing = want.saturating_sub(have + *under_way);
            *under_way += missing;
            missing
        };
        for _ in 0..missing {
            let inner = inner.clone();
            let def = def.clone();
            handle.spawn(async move {
                let made = inner.create(&def).await;
                match made {
                    // Shutting down meanwhile: nobody will take it.
                    Ok(container) if inner.stopping.load(Relaxed) => inner.remove(&container.id).await,
                    Ok(container) => {
                        let prepared = Prepared { container, def: def.clone(), made: Instant::now() };
                        inner.prepared.lock().entry(def.id.clone()).or_default().push(prepared);
                    }
                    Err(e) => warn!(function = %def.id, error = %e, "preparing an instance failed"),
                }
                // Counted down last, so shutdown, waiting for this to reach zero, finds the
                // container either prepared (and removes it) or already removed.
                if let Some(n) = inner.preparing.lock().get_mut(&def.id) {
                    *n = n.saturating_sub(1);
                }
            });
        }
    }

    /// The image's config and snapshot: cached; resolved from containerd; else pulled once in
    /// the background while requests are told it is not here yet.
    async fn image(self: &Arc<Self>, reference: &str) -> Result<Arc<ImageInfo>, ContainerError> {
        let name = normalize_image(reference);
        {
            let images = self.images.lock();
            match images.get(&name) {
                Some(ImageState::Ready(info)) => return Ok(info.clone()),
                Some(ImageState::Pulling) => return Err(ContainerError::Pulling(name)),
                Some(ImageState::Failed { error, at }) if at.elapsed() < IMAGE_RETRY => {
                    return Err(error.clone().into());
                }
                _ => {}
            }
        }
        match self.client.resolve_image(&name).await {
            Ok(info) => {
                let info = Arc::new(info);
                self.images.lock().insert(name, ImageState::Ready(info.clone()));
                Ok(info)
            }
            Err(ImageError::Absent(_)) if self.client.settings.namespace == "k8s.io" => {
                let first =
                    !matches!(self.images.lock().insert(name.clone(), ImageState::Pulling), Some(ImageState::Pulling));
                if first {
                    let inner = self.clone();
                    let image = name.clone();
                    tokio::spawn(async move { inner.pull(image).await });
                }
                Err(ContainerError::Pulling(name))
            }
            Err(e) if e.is_transient() => Err(e.into()),
            Err(e) => {
                let e = match e {
                    ImageError::Absent(image) => ImageError::Broken {
                        image,
                        message: format!(
                            "not present in containerd namespace {:?} (import it there; only in k8s.io does the \
                             Wavelet pull images, through the CRI image service)",
                            self.client.settings.namespace
                        ),
                    },
                    other => other,
                };
                warn!(error = %e, "image unusable");
                self.images.lock().insert(name, ImageState::Failed { error: e.clone(), at: Instant::now() });
                Err(e.into())
            }
        }
    }

    async fn pull(self: Arc<Self>, name: String) {
        info!(image = %name, "pulling image through the CRI image service");
        let begun = Instant::now();
        let result = match self.client.pull_through_cri(&name, self.client.settings.pull_timeout).await {
            Ok(_) => self.client.resolve_image(&name).await,
            Err(e) => Err(e),
        };
        let state = match result {
            Ok(info) => {
                info!(image = %name, seconds = begun.elapsed().as_secs_f64(), "image pulled");
                ImageState::Ready(Arc::new(info))
            }
            Err(error) => {
                warn!(image = %name, error = %error, "pulling the image failed");
                ImageState::Failed { error, at: Instant::now() }
            }
        };
        self.images.lock().insert(name, state);
    }

    /// Everything up to a created task: snapshot, container record, task (runc create).
    async fn create(self: &Arc<Self>, def: &Arc<FunctionDef>) -> Result<Container, ContainerError> {
        let template = def.container.as_ref().ok_or(ContainerError::NoImage)?;
        let mut phases = StartPhases::default();
        let begun = Instant::now();
        let image = self.image(&template.image).await?;
        phases.image = begun.elapsed();

        let id = format!("{}-{}-{}", self.kind, std::process::id(), self.next.fetch_add(1, Relaxed));
        let (port, network) = match &self.host_network {
            Some(ports) => (ports.free_port().map_err(ContainerError::Netns)?, Network::Host),
            None => (def.spec.port, Network::Own),
        };
        let platform = [
            ("PORT", port.to_string()),
            ("WAVELINK_FUNCTION", def.id.to_string()),
            ("WAVELINK_INSTANCE_ID", id.clone()),
        ];
        let plan = plan_process(template, &image.config, &def.env, &platform)?;
        let limits = Limits {
            memory_bytes: template.memory_limit.or(self.default_memory),
            cpu_millis: template.cpu_limit_millis,
        };
        let settings = &self.client.settings;
        let spec = spec::runtime_spec(&id, &plan, limits, &settings.cgroup_parent, network);
        let labels = HashMap::from([
            (OWNER_LABEL.to_owned(), self.owner.clone()),
            (FUNCTION_LABEL.to_owned(), def.id.to_string()),
        ]);

        // A new active snapshot is garbage until a container references it: hold it in a lease
        // until then (containerd collects unreferenced snapshots at any time).
        let lease = LeaseCreateRequest { id: format!("{id}-create"), labels: labels.clone() };
        let lease = self.client.leases().create(self.client.request(lease)).await.map_err(rpc("lease create"))?;
        let lease = lease.into_inner().lease.map(|l| l.id).unwrap_or_default();
        let namespace = &def.id.namespace;
        let created = self.create_in_lease(&id, port, namespace, &lease, labels, &image, &spec, phases).await;
        let delete = LeaseDeleteRequest { id: lease, sync: false };
        if let Err(e) = self.client.leases().delete(self.client.request(delete)).await {
            warn!(instance = %id, error = %e.message(), "could not delete a creation lease");
        }
        created
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_in_lease(
        &self,
        id: &str,
        port: u16,
        namespace: &str,
        lease: &str,
        labels: HashMap<String, String>,
        image: &ImageInfo,
        spec: &serde_json::Value,
        mut phases: StartPhases,
    ) -> Result<Container, ContainerError> {
        let settings = &self.client.settings;
        let id = id.to_owned();
        let step = Instant::now();
        let prepare = PrepareSnapshotRequest {
            snapshotter: settings.snapshotter.clone(),
            key: id.clone(),
            parent: image.chain_id.clone(),
            labels: labels.clone(),
        };
        let mounts = self
            .client
            .snapshots()
            .prepare(self.client.leased(prepare, lease))
            .await
            .map_err(rpc("snapshot prepare"))?;
        phases.snapshot = step.elapsed();

        let step = Instant::now();
        let record = ContainerRecord {
            id: id.clone(),
            labels,
            image: image.name.clone(),
            runtime: Some(ContainerRuntimeSpec { name: settings.runtime.clone(), options: runc_options(settings) }),
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".to_owned(),
                value: serde_json::to_vec(spec).unwrap_or_default(),
            }),
            snapshotter: settings.snapshotter.clone(),
            snapshot_key: id.clone(),
            ..Default::default()
        };
        let create = self.client.leased(CreateContainerRequest { container: Some(record) }, lease);
        if let Err(e) = self.client.containers().create(create).await {
            self.remove(&id).await;
            return Err(rpc("container create")(e));
        }
        phases.container = step.elapsed();

        let step = Instant::now();
        let task =
            CreateTaskRequest { container_id: id.clone(), rootfs: mounts.into_inner().mounts, ..Default::default() };
        let pid = match self.client.tasks().create(self.client.request(task)).await {
            Ok(created) => created.into_inner().pid,
            Err(e) => {
                self.remove(&id).await;
                return Err(rpc("task create")(e));
            }
        };
        phases.task_create = step.elapsed();
        let start_ticks = crate::runtime::start_ticks(pid).unwrap_or(0);
        let connector = match self.host_network {
            Some(_) => None,
            None => match NetnsConnector::of_process(pid, self.host_netns.clone()) {
                Ok(connector) => Some(Arc::new(connector)),
                Err(e) => {
                    self.remove(&id).await;
                    return Err(ContainerError::Netns(e));
                }
            },
        };
        if let Some(egress) = &self.egress {
            let step = Instant::now();
            if let Err(e) = egress.attach(&id, pid, namespace).await {
                self.remove(&id).await;
                return Err(e.into());
            }
            phases.network = step.elapsed();
        }
        Ok(Container {
            id,
            pid,
            start_ticks,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            started: Instant::now(),
            connector,
            phases,
        })
    }

    /// Removes a container and whatever it has: task (killed first), record, snapshot. Parts
    /// that are already gone are fine.
    async fn remove(&self, id: &str) {
        let client = &self.client;
        let mut again = false;
        let mut tolerate = |step: &str, result: Result<(), tonic::Status>| {
            if let Err(e) = result
                && e.code() != Code::NotFound
            {
                if unreachable(&e) {
                    // Tried again by `maintain` until containerd answers; one line per try is enough.
                    again = true;
                    tracing::debug!(instance = %id, step, error = %e.message(), "containerd unreachable");
                } else {
                    warn!(instance = %id, step, error = %e.message(), "removing a container");
                }
            }
        };
        let kill = KillRequest { container_id: id.to_owned(), exec_id: String::new(), signal: 9, all: true };
        let killed = client.tasks().kill(client.request(kill)).await;
        // A task that was created but never started, or already stopped, may refuse the
        // signal; the delete below still works.
        if killed.is_ok() {
            let wait = WaitRequest { container_id: id.to_owned(), exec_id: String::new() };
            let _ = tokio::time::timeout(Duration::from_secs(10), client.tasks().wait(client.request(wait))).await;
        }
        let deleted = client.tasks().delete(client.request(DeleteTaskRequest { container_id: id.to_owned() })).await;
        tolerate("task delete", deleted.map(|_| ()));
        let deleted = client.containers().delete(client.request(DeleteContainerRequest { id: id.to_owned() })).await;
        tolerate("container delete", deleted.map(|_| ()));
        let remove = RemoveSnapshotRequest { snapshotter: client.settings.snapshotter.clone(), key: id.to_owned() };
        tolerate("snapshot remove", client.snapshots().remove(client.request(remove)).await.map(|_| ()));
        if again {
            warn!(instance = %id, "containerd does not answer; removing the container later");
            self.unremoved.lock().push(id.to_owned());
        } else if let Some(egress) = &self.egress {
            egress.release(id);
        }
    }

    async fn clean_up_orphans(&self) -> Result<usize, ContainerError> {
        let filter = format!("labels.\"{OWNER_LABEL}\"=={}", self.owner);
        let list = self
            .client
            .containers()
            .list(self.client.request(ListContainersRequest { filters: vec![filter] }))
            .await
            .map_err(rpc("container list"))?;
        let containers = list.into_inner().containers;
        for container in &containers {
            info!(instance = %container.id, "removing a container left by a previous Wavelet");
            self.remove(&container.id).await;
        }
        // Creation leases of a crash between snapshot and container (their snapshots go with them).
        let filter = format!("labels.\"{OWNER_LABEL}\"=={}", self.owner);
        let leases = self.client.leases().list(self.client.request(LeaseListRequest { filters: vec![filter] })).await;
        for lease in leases.map(|l| l.into_inner().leases).unwrap_or_default() {
            let delete = LeaseDeleteRequest { id: lease.id, sync: false };
            let _ = self.client.leases().delete(self.client.request(delete)).await;
        }
        Ok(containers.len())
    }
}

/// The runc shim's options: which OCI runtime binary it calls.
fn runc_options(settings: &ContainerdSettings) -> Option<Any> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RuncOptions {
        #[prost(string, tag = "6")]
        binary_name: String,
    }
    let binary = settings.runc_binary.as_ref()?;
    let options = RuncOptions { binary_name: binary.clone() };
    Some(Any { type_url: "containerd.runc.v1.Options".to_owned(), value: prost::Message::encode_to_vec(&options) })
}
