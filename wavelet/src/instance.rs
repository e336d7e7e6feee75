//! The one interface the pools see: a runtime that starts and destroys instances, either
//! `process` (a process group on this node, the embedded default) or `containerd` (the
//! function's own container). Pools, reaper, node cap and metrics serve both alike.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::upstreams::peer::HttpPeer;
use wavelink_core::{FunctionDef, FunctionId};

use crate::containerd::netns::NetnsConnector;
use crate::containerd::{Container, ContainerError, ContainerdRuntime, StartPhases};
use crate::runtime::{Launch, Process, ProcessRuntime, SpawnError};
use crate::state::StateDir;

pub enum Runtime {
    Process(ProcessRuntime),
    Containerd(ContainerdRuntime),
}

/// An instance started for a caller that may no longer be waiting: destroyed unless claimed.
struct Unclaimed {
    instance: Option<Instance>,
    runtime: Arc<Runtime>,
    state: Arc<StateDir>,
}

impl Unclaimed {
    fn claim(mut self) -> Instance {
        self.instance.take().expect("claimed once")
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            tracing::debug!(
                instance = instance.id(),
                "an instance started for a request that went away; destroying it"
            );
            self.runtime.destroy_then(instance, &self.state, || {});
        }
    }
}

/// A process and the state log record [`Runtime::start`] wrote for it go together.
fn destroy_recorded(runtime: &ProcessRuntime, process: Process, state: &StateDir) {
    let id = process.id.clone();
    runtime.destroy(process);
    state.forget(&id);
}

/// A running instance of either runtime.
pub enum Instance {
    Process(Process),
    Container(Container),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Process(#[from] SpawnError),
    #[error(transparent)]
    Container(#[from] ContainerError),
}

impl StartError {
    /// The node cannot serve the function yet (an image being pulled): answer "unavailable" so
    /// the proxy goes elsewhere, rather than a failure.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StartError::Container(e) if e.is_unavailable())
    }
}

impl Runtime {
    /// `process` or `containerd`, the value of the metrics' `runtime` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Runtime::Process(_) => "process",
            Runtime::Containerd(_) => "containerd",
        }
    }

    /// Starts an instance. A process is started on a blocking thread and recorded in `state`
    /// there: clone/exec, its cgroup and the state log are system calls and file writes that
    /// would stall every request of this worker thread. Should the caller stop waiting (its
    /// request went away), the instance nobody took is destroyed, not left running.
    pub async fn start(
        self: &Arc<Self>,
        def: &Arc<FunctionDef>,
        state: &Arc<StateDir>,
    ) -> Result<Instance, StartError> {
        match self.as_ref() {
            Runtime::Process(process_runtime) => {
                let (runtime, def, state) = (self.clone(), def.clone(), state.clone());
                // From the spawner thread, which never exits (see `spawner`): the instance's
                // parent-death signal is tied to the thread that starts it.
                let started = process_runtime.spawner().run(move || {
                    let Runtime::Process(process_runtime) = runtime.as_ref() else { unreachable!("matched above") };
                    let launch = Launch {
                        function: &def.id,
                        command: &def.command,
                        env: &def.env,
                        socket_activation: def.socket_activation,
                    };
                    let process = process_runtime.spawn(&launch)?;
                    if let Err(e) = state.record(&process, &def.id.to_string()) {
                        tracing::warn!(instance = %process.id, error = %e,
                                       "could not record the instance; a crash would orphan it");
                    }
                    Ok::<_, SpawnError>(Unclaimed { instance: Some(Instance::Process(process)), runtime, state })
                });
                let unclaimed =
                    started.await.ok_or_else(|| SpawnError::Thread("the spawner thread is gone".into()))??;
                Ok(unclaimed.claim())
            }
            Runtime::Containerd(runtime) => Ok(Instance::Container(runtime.start(def.clone()).await?)),
        }
    }

    /// Destroys the instance whole, then calls `done`: a process at once (this blocks briefly,
    /// so call it off the request path) and its record in `state` with it (as [`Self::start`]
    /// wrote it), a container from the containerd runtime's tasks, many at a time.
    pub fn destroy_then(&self, instance: Instance, state: &StateDir, done: impl FnOnce() + Send + 'static) {
        match (self, instance) {
            (Runtime::Process(runtime), Instance::Process(process)) => {
                destroy_recorded(runtime, process, state);
                done();
            }
            (Runtime::Containerd(runtime), Instance::Container(container)) => runtime.destroy_then(container, done),
            _ => unreachable!("an instance is always destroyed by the runtime that started it"),
        }
    }

    /// Destroys the instance whole (a process's record in `state` with it), and returns once it
    /// is gone.
    pub fn destroy(&self, instance: Instance, state: &StateDir) {
        match (self, instance) {
            (Runtime::Process(runtime), Instance::Process(process)) => destroy_recorded(runtime, process, state),
            (Runtime::Containerd(runtime), Instance::Container(container)) => runtime.destroy(container),
            _ => unreachable!("an instance is always destroyed by the runtime that started it"),
        }
    }

    /// Why instances of `def` could not start on this node, if that can be told in advance.
    pub fn unreachable(&self, def: &FunctionDef) -> Option<String> {
        match self {
            Runtime::Process(runtime) => runtime.unreachable(&def.command),
            Runtime::Containerd(_) if def.container.is_none() => {
                Some("the function has no image: with --runtime containerd its EIs cannot start".to_owned())
            }
            Runtime::Containerd(_) => None,
        }
    }

    /// Periodic upkeep with the current functions (prepared containers of changed or removed
    /// functions go).
    pub fn maintain(&self, functions: &HashMap<FunctionId, Arc<FunctionDef>>) {
        if let Runtime::Containerd(runtime) = self {
            runtime.maintain(functions);
        }
    }

    /// The functions among `defs` whose instances cannot start because of their image, with why.
    pub fn image_failures<'a>(&self, defs: impl IntoIterator<Item = &'a FunctionDef>) -> Vec<(FunctionId, String)> {
        let Runtime::Containerd(runtime) = self else { return Vec::new() };
        let failed = runtime.image_failures();
        if failed.is_empty() {
            return Vec::new();
        }
        defs.into_iter()
            .filter_map(|def| {
                let image = wavelink_core::container::normalize_image(&def.container.as_ref()?.image);
                let (_, why) = failed.iter().find(|(name, _)| *name == image)?;
                Some((def.id.clone(), why.clone()))
            })
            .collect()
    }

    /// Shutdown: whatever the runtime holds beyond the live instances.
    pub fn shutdown(&self) {
        if let Runtime::Containerd(runtime) = self {
            runtime.destroy_prepared();
            runtime.close_network();
        }
    }
}

impl Instance {
    pub fn id(&self) -> &str {
        match self {
            Instance::Process(p) => &p.id,
            Instance::Container(c) => &c.id,
        }
    }

    pub fn pid(&self) -> u32 {
        match self {
            Instance::Process(p) => p.pid,
            Instance::Container(c) => c.pid,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Instance::Process(p) => p.addr,
            Instance::Container(c) => c.addr,
        }
    }

    pub fn started(&self) -> Instant {
        match self {
            Instance::Process(p) => p.started,
            Instance::Container(c) => c.started,
        }
    }

    pub fn phases(&self) -> Option<StartPhases> {
        match self {
            Instance::Process(_) => None,
            Instance::Container(c) => Some(c.phases),
        }
    }

    /// Resident memory of its main process, in bytes (0 once it is gone).
    pub fn rss_bytes(&self) -> u64 {
        crate::runtime::resident_bytes(self.pid())
    }

    /// Whether the instance is gone (a process is reaped then).
    pub fn try_exited(&mut self) -> bool {
        match self {
            Instance::Process(p) => p.try_exited(),
            Instance::Container(c) => !c.alive(),
        }
    }

    /// How to reach the instance, kept beside it so that waiting needs no lock on it.
    pub fn reach(&self) -> Reach {
        match self {
            Instance::Process(p) => Reach { addr: p.addr, connector: None, pid: p.pid, start_ticks: p.start_ticks },
            Instance::Container(c) => {
                Reach { addr: c.addr, connector: c.connector.clone(), pid: c.pid, start_ticks: c.start_ticks }
            }
        }
    }
}

/// Where an instance listens and how to get there.
#[derive(Debug, Clone)]
pub struct Reach {
    pub addr: SocketAddr,
    /// A container's network namespace; `None` for a process on the node's loopback.
    connector: Option<Arc<NetnsConnector>>,
    pid: u32,
    start_ticks: u64,
}

impl Reach {
    /// The upstream peer for requests to this instance: its own connection pool (keyed to it,
    /// so a later instance on the same address never gets its connections), and for a
    /// container, connections made inside its network namespace.
    pub fn peer(&self, connect_timeout: Duration) -> HttpPeer {
        let mut peer = HttpPeer::new(self.addr, false, String::new());
        peer.group_key = fastrand::u64(..);
        peer.options.connection_timeout = Some(connect_timeout);
        if let Some(connector) = &self.connector {
            peer.options.custom_l4 = Some(connector.clone());
        }
        peer
    }

    /// Whether the instance's main process still runs (not a later process reusing its pid,
    /// not a zombie waiting to be reaped).
    pub fn alive(&self) -> bool {
        crate::procfs::running(self.pid, self.start_ticks)
    }

    /// Waits until the instance accepts connections, when it was not handed a listening socket;
    /// `false` if it does not within `timeout`, or exits first.
    pub async fn wait_listening(&self, timeout: Duration) -> bool {
        match &self.connector {
            None => crate::runtime::wait_listening(self.addr, timeout, || self.alive()).await,
            Some(connector) => connector.wait_listening(self.addr, timeout, || self.alive()).await,
        }
    }
}
