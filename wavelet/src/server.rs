//! Assembles a Wavelet: state directory (orphans from a crashed run are killed first), instance
//! runtime, pools, the Pingora listener for the proxy's requests, the admin listener, the
//! reaper, and drain-then-destroy-everything on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::server::ShutdownSignalWatch;
use tracing::{info, warn};
use wavelink_server::assembly::Assembly;
use wavelink_server::health::{Health, ProbeToken};
use wavelink_server::shutdown::{Drain, SignalShutdown};

use crate::admin::AdminApi;
use crate::cgroup::Cgroups;
use crate::metrics::WaveletMetrics;
use crate::pool::Pools;
use crate::reaper::Reaper;
use crate::runtime::{PortRange, ProcessRuntime, RunAs};
use crate::service::WaveletProxy;
use crate::state::{StateDir, StateError};

#[derive(Debug, Clone)]
pub struct WaveletSettings {
    /// Where the proxy sends spilled requests.
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub threads: usize,
    pub grace_period: Duration,
    /// Most Emergency Instances alive on this node at once.
    pub max_instances: u32,
    pub state_dir: PathBuf,
    /// Run instances as this user (only possible when the Wavelet runs as root).
    pub run_as: Option<String>,
    /// Memory limit per instance, enforced with a cgroup where the kernel allows.
    pub memory_max: Option<u64>,
    /// How long an instance without socket activation may take to listen on its PORT.
    pub spawn_timeout: Duration,
    /// Loopback ports for instances, `(first, last)`.
    pub port_range: (u16, u16),
}

#[derive(Debug, thiserror::Error)]
pub enum WaveletError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("--run-as: {0}")]
    RunAs(String),
    #[error("--port-range: {0}")]
    Ports(String),
    #[error("finding this executable: {0}")]
    SelfExe(std::io::Error),
    #[error("setting up metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

pub struct Wavelet {
    settings: WaveletSettings,
    pools: Arc<Pools>,
    health: Arc<Health>,
    probe_token: ProbeToken,
}

impl Wavelet {
    pub fn new(settings: WaveletSettings) -> Result<Self, WaveletError> {
        let state = StateDir::open(&settings.state_dir)?;
        let cleanup = state.clean_up_orphans();
        if cleanup.killed > 0 || cleanup.stale > 0 {
            info!(killed = cleanup.killed, already_gone = cleanup.stale, state_dir = %state.path().display(),
                  "cleaned up after a previous Wavelet");
        }
        let run_as = settings.run_as.as_deref().map(RunAs::lookup).transpose().map_err(WaveletError::RunAs)?;
        if run_as.is_some() && !nix::unistd::geteuid().is_root() {
            return Err(WaveletError::RunAs("switching users needs root; drop --run-as".into()));
        }
        let cgroups = settings.memory_max.and_then(|max| match Cgroups::setup(max) {
            Ok(cgroups) => {
                info!(memory_max = max, version = ?cgroups.version(), "instances get a memory cgroup");
                Some(cgroups)
            }
            Err(reason) => {
                warn!(%reason, "instance memory limits disabled");
                None
            }
        });
        let ports = PortRange::new(settings.port_range.0, settings.port_range.1).map_err(WaveletError::Ports)?;
        let runtime = ProcessRuntime::new(run_as, cgroups, ports).map_err(WaveletError::SelfExe)?;
        if let Some(run_as) = runtime.run_as() {
            info!(user = %run_as.user, uid = run_as.uid, "instances run unprivileged");
        }
        let metrics = Arc::new(WaveletMetrics::new()?);
        let pools = Pools::new(Arc::new(runtime), Arc::new(state), metrics, settings.max_instances);
        Ok(Wavelet { settings, pools, health: Arc::new(Health::default()), probe_token: ProbeToken::random() })
    }

    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    pub fn settings(&self) -> &WaveletSettings {
        &self.settings
    }

    /// SIGTERM: drain, destroy every instance, exit 0. SIGINT: destroy everything and stop.
    pub fn signal_shutdown(&self) -> Box<dyn ShutdownSignalWatch> {
        Box::new(SignalShutdown::new(self.pools.clone(), self.health.clone(), self.settings.grace_period))
    }

    /// Runs on the calling thread (not inside a tokio runtime) until `shutdown` says to stop;
    /// every instance is destroyed before it returns.
    pub fn run(self, shutdown: Box<dyn ShutdownSignalWatch>, exit_if_listener_fails: bool) {
        let settings = &self.settings;
        let proxy = WaveletProxy {
            pools: self.pools.clone(),
            probe_token: self.probe_token.clone(),
            spawn_timeout: settings.spawn_timeout,
        };
        let admin = AdminApi { pools: self.pools.clone(), health: self.health.clone() };
        let assembly = Assembly::new(settings.threads, settings.grace_period)
            .proxy("wavelet", proxy, settings.listen, settings.threads)
            .admin("wavelet admin", admin, settings.admin)
            .background("instance reaper", Reaper { pools: self.pools.clone() })
            .readiness(self.health.clone(), settings.listen, self.probe_token.clone(), exit_if_listener_fails);
        info!(listen = %settings.listen, admin = %settings.admin, max_instances = settings.max_instances,
              state_dir = %settings.state_dir.display(), "wavelet starting");
        assembly.run(shutdown);
        self.pools.destroy_all();
        info!("wavelet stopped");
    }
}

impl Drain for Pools {
    fn in_progress(&self) -> u64 {
        self.in_flight()
    }

    fn finish(&self) {
        self.destroy_all();
    }
}
