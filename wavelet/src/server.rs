//! Assembles a Wavelet: state directory (orphans from a crashed run are killed first), instance
//! runtime, pools, the Pingora listener for the proxy's requests, the admin listener, the
//! reaper, and drain-then-destroy-everything on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::server::ShutdownSignalWatch;
use tracing::{info, warn};
use wavelink_server::assembly::{Assembly, Bounds, RequestListener};
use wavelink_server::connections::ConnectionLimits;
use wavelink_server::health::{Health, ProbeToken};
use wavelink_server::shutdown::{Drain, SignalShutdown};

use crate::admin::AdminApi;
use crate::containerd::{ConnectError, ContainerdRuntime, ContainerdSettings};
use crate::instance::Runtime;
use crate::metrics::WaveletMetrics;
use crate::pool::Pools;
use crate::reaper::Reaper;
use crate::service::WaveletProxy;
use crate::setup::{RuntimeSettings, SetupError, prepare};
use wavelink_server::auth::InternalAuth;

#[derive(Debug, Clone)]
pub struct WaveletSettings {
    /// Where the proxy sends spilled requests.
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub threads: usize,
    pub grace_period: Duration,
    /// Most Emergency Instances alive on this node at once.
    pub max_instances: u32,
    /// How instances run: state directory, user, memory limit, ports.
    pub runtime: RuntimeSettings,
    /// How long an instance without socket activation may take to listen on its PORT.
    pub spawn_timeout: Duration,
    /// Run instances as containers through containerd; `None`: the `process` runtime.
    pub containerd: Option<ContainerdSettings>,
    /// This node's name (a DaemonSet pod's `spec.nodeName`): with the state directory, what
    /// identifies the containers this Wavelet owns across restarts and pod replacements
    /// [default: the host name].
    pub node_name: Option<String>,
    /// The token the proxy's requests must carry.
    pub auth: Arc<InternalAuth>,
}

#[derive(Debug, thiserror::Error)]
pub enum WaveletError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("setting up metrics failed")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Containerd(#[from] ConnectError),
}

pub struct Wavelet {
    settings: WaveletSettings,
    pools: Arc<Pools>,
    health: Arc<Health>,
    probe_token: ProbeToken,
}

impl Wavelet {
    pub fn new(settings: WaveletSettings) -> Result<Self, WaveletError> {
        let (process, state) = prepare("ei", &settings.runtime)?;
        let runtime = match &settings.containerd {
            None => {
                // What an instance starts and leaves behind becomes the Wavelet's child, to be
                // killed with the instance's cgroup and reaped (`Pools::reap`), rather than
                // init's, unseen.
                if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                    warn!(error = %e, "cannot become the subreaper of instances' processes");
                }
                Runtime::Process(process)
            }
            Some(containerd) => {
                let owner = owner_id(settings.node_name.as_deref(), &settings.runtime.state_dir);
                let memory = settings.runtime.memory_max;
                Runtime::Containerd(ContainerdRuntime::open("ei", None, containerd.clone(), owner, memory)?)
            }
        };
        let metrics = Arc::new(WaveletMetrics::new(runtime.kind())?);
        let runtime = Arc::new(runtime);
        let pools = Pools::new(runtime, state, metrics, settings.max_instances);
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
            auth: settings.auth.clone(),
        };
        let admin = AdminApi { pools: self.pools.clone(), health: self.health.clone(), auth: settings.auth.clone() };
        let assembly = Assembly::new(settings.threads, settings.grace_period)
            .proxy(
                "wavelet",
                proxy,
                RequestListener {
                    listen: settings.listen,
                    threads: settings.threads,
                    bounds: Bounds {
                        // Its clients are proxies: the defaults bound them, unseen by metrics.
                        limits: ConnectionLimits::default(),
                        counters: Default::default(),
                    },
                    // The proxy speaks HTTP/1.1 to Wavelets, and h2c for h2c functions.
                    h2c: true,
                    tls: None,
                },
            )
            .admin("wavelet admin", admin, settings.admin)
            .background("instance reaper", Reaper { pools: self.pools.clone() })
            .readiness(self.health.clone(), settings.listen, self.probe_token.clone(), exit_if_listener_fails);
        info!(listen = %settings.listen, admin = %settings.admin, max_instances = settings.max_instances,
              state_dir = %settings.runtime.state_dir.display(), "wavelet starting");
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

/// This Wavelet's identity in containerd labels: the same across restarts on one node (node
/// or host name, and state directory), distinct for two Wavelets on one node or sharing one
/// containerd.
pub fn owner_id(node_name: Option<&str>, state_dir: &std::path::Path) -> String {
    let host = match node_name {
        Some(node) => node.to_owned(),
        None => nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    let dir = state_dir.canonicalize().unwrap_or_else(|_| state_dir.to_owned());
    // FNV-1a: stable across builds, unlike the standard library's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in host.bytes().chain([0]).chain(dir.to_string_lossy().bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:016x}", hash)
}
