//! `wavelink wavelet`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use wavelink_wavelet::containerd::ContainerdSettings;
use wavelink_wavelet::pool::Pools;

use super::cluster::Cluster;
use super::{RuntimeArgs, load_config, parse_duration};

/// Instance ports of a Wavelet, by default.
pub const DEFAULT_PORTS: (u16, u16) = (20000, 29999);

#[derive(Debug, clap::Args)]
pub struct WaveletArgs {
    /// The local config file: functions (command, annotations) and the wavelets: list.
    #[arg(long, short = 'c', env = "WAVELINK_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Which entry of wavelets: this is (its address, admin and max-instances are the defaults).
    #[arg(long, default_value_t = 0, value_name = "N")]
    index: usize,
    /// Listener for the proxy's requests [default: the entry's address, else 127.0.0.1:8091].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin listener [default: the entry's admin, else 127.0.0.1:9091].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Most Emergency Instances alive at once on this node [default: the entry's, else 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_instances: Option<u32>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// How long an instance started without socket activation may take to listen on $PORT.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    spawn_timeout: Duration,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// Longest drain on SIGTERM before instances are destroyed anyway.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    grace_period: Duration,
    #[command(flatten)]
    containerd: ContainerdArgs,
}

/// How Emergency Instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// A process group of the function's command on this node (the embedded default).
    Process,
    /// The function's own container image, through containerd (what a cluster node runs).
    Containerd,
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Instance runtime")]
pub struct ContainerdArgs {
    /// How instances run: `process` (the function's command, here) or `containerd` (its image,
    /// as a container with a pod's isolation; functions need an image).
    #[arg(long, env = "WAVELINK_RUNTIME", default_value = "process", value_name = "RUNTIME")]
    pub runtime: RuntimeKind,
    /// containerd's socket.
    #[arg(
        long,
        env = "WAVELINK_CONTAINERD_SOCKET",
        default_value = "/run/containerd/containerd.sock",
        value_name = "PATH"
    )]
    pub containerd_socket: PathBuf,
    /// containerd namespace for instances and images: k8s.io on a Kubernetes node, so images
    /// kubelet pulled are found (and absent ones are pulled through the CRI image service).
    #[arg(long, env = "WAVELINK_CONTAINERD_NAMESPACE", default_value = "k8s.io", value_name = "NAME")]
    pub containerd_namespace: String,
    /// containerd snapshotter for instances' root file systems.
    #[arg(long, default_value = "overlayfs", value_name = "NAME")]
    pub snapshotter: String,
    /// OCI runtime binary the runc shim calls (runc, crun) [default: the shim's, runc].
    #[arg(long, value_name = "BINARY")]
    pub oci_runtime: Option<String>,
    /// Parent cgroup of instances (cgroupfs path).
    #[arg(long, default_value = "/wavelink", value_name = "PATH")]
    pub cgroup_parent: String,
    /// Created-but-not-started containers kept per function after its first EI, so the next
    /// cold start is only a task start; 0 disables.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub prepared: u32,
}

impl ContainerdArgs {
    /// containerd settings when the runtime is containerd.
    pub fn settings(&self) -> Option<ContainerdSettings> {
        (self.runtime == RuntimeKind::Containerd).then(|| ContainerdSettings {
            socket: self.containerd_socket.clone(),
            namespace: self.containerd_namespace.clone(),
            snapshotter: self.snapshotter.clone(),
            runc_binary: self.oci_runtime.clone(),
            cgroup_parent: self.cgroup_parent.clone(),
            prepared_per_function: self.prepared,
            ..ContainerdSettings::default()
        })
    }
}

pub fn run(args: WaveletArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    let entry = config.wavelets.get(args.index);
    if entry.is_none() && args.index > 0 {
        bail!("--index {}: the config lists {} wavelets", args.index, config.wavelets.len());
    }
    let default = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let listen = args.listen.or(entry.map(|w| w.address)).unwrap_or(default(8091));
    let admin = args.admin.or(entry.and_then(|w| w.admin)).unwrap_or(default(9091));
    let settings = wavelink_wavelet::WaveletSettings {
        listen,
        admin,
        threads: usize::from(args.threads),
        grace_period: args.grace_period,
        max_instances: args.max_instances.or(entry.map(|w| w.max_instances)).unwrap_or(256),
        runtime: args.runtime.settings("wavelet", listen.port(), DEFAULT_PORTS),
        spawn_timeout: args.spawn_timeout,
        containerd: args.containerd.settings(),
    };
    let wavelet = wavelink_wavelet::Wavelet::new(settings).context("setting up the wavelet")?;
    // Kept alive while the Wavelet runs: it feeds the function table.
    let _cluster = match &config.kubernetes {
        Some(settings) => {
            let cluster = Cluster::connect(settings)?;
            let pools = wavelet.pools().clone();
            cluster.follow(move |view| {
                pools.apply(view.catalog().functions.into_iter().map(|f| f.def).collect());
                warn_unreachable(&pools);
            });
            Some(cluster)
        }
        None => {
            let (functions, rejected) = config.functions();
            for r in &rejected {
                tracing::error!(function = %r.function, error = %r.error, "function rejected");
            }
            wavelet.pools().apply(functions);
            warn_unreachable(wavelet.pools());
            None
        }
    };
    let shutdown = wavelet.signal_shutdown();
    wavelet.run(shutdown, true);
    Ok(())
}

/// Functions whose command this node cannot run get no EIs; say so once per change.
fn warn_unreachable(pools: &Pools) {
    for (function, why) in pools.unreachable_commands() {
        tracing::warn!(%function, "{why}");
    }
}
