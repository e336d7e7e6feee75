//! One module per subcommand; shared argument parsing here.

pub mod cluster;
pub mod controller;
pub mod experiment;
pub mod image;
pub mod proxy;
pub mod simulate;
pub mod up;
pub mod wavelet;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use wavelink_core::LocalConfig;
use wavelink_server::auth::InternalAuth;
use wavelink_wavelet::containerd::ContainerdSettings;
use wavelink_wavelet::containerd::egress::Ipv4Cidr;
use wavelink_wavelet::setup::RuntimeSettings;

pub fn load_config(path: &Path) -> anyhow::Result<LocalConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    LocalConfig::from_yaml(&text).with_context(|| format!("config {}", path.display()))
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    wavelink_core::duration::parse_duration(text)
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    wavelink_core::size::parse_size(text)
}

pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (first, last) = text.split_once('-').ok_or_else(|| format!("{text:?} is not a range like 20000-29999"))?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|_| format!("{p:?} is not a port"));
    let (first, last) = (port(first)?, port(last)?);
    if first == 0 || last < first {
        return Err(format!("{text:?} is empty or starts at port 0"));
    }
    Ok((first, last))
}

/// The shared token of internal traffic (see `wavelink_server::auth`).
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// File with the token of internal traffic (proxy → Wavelet, admin calls that change
    /// state): one per line, the first sent, any accepted; read again every 10 s, so a rotated
    /// Secret takes effect without a restart. Overrides internal-token-file. Without either,
    /// such calls are accepted from anyone (`wavelink up` makes a token for its components).
    #[arg(long, env = "WAVELINK_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    pub fn auth(&self, config: &LocalConfig, component: &str) -> anyhow::Result<std::sync::Arc<InternalAuth>> {
        let file = self.token_file.as_deref().or(config.internal_token_file.as_deref());
        Ok(InternalAuth::from_optional_file(file, component)?)
    }
}

/// How a component runs instances on this machine (the Wavelet, the local backend).
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Where live instances are recorded, so a restart can kill what a crash left behind
    /// [default: $XDG_RUNTIME_DIR/wavelink/<component>-<port>, else /tmp/wavelink-<uid>/...].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Run instances as this user; only when running as root [default as root: nobody].
    #[arg(long, env = "WAVELINK_RUN_AS", value_name = "USER")]
    pub run_as: Option<String>,
    /// Memory limit per instance, enforced with a cgroup where the kernel allows; 0 for none.
    #[arg(long, default_value = "1Gi", value_name = "SIZE", value_parser = parse_size)]
    pub memory_max: u64,
    /// Loopback ports for instances; keep it outside net.ipv4.ip_local_port_range
    /// [default: 20000-29999 for a Wavelet, 30000-31999 for the local backend].
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_port_range)]
    pub port_range: Option<(u16, u16)>,
}

impl RuntimeArgs {
    /// Settings for `component` listening on `port` (which names its default state directory).
    pub fn settings(&self, component: &str, port: u16, default_ports: (u16, u16)) -> RuntimeSettings {
        let state_dir = self.state_dir.clone().unwrap_or_else(|| {
            let base = std::env::var_os("XDG_RUNTIME_DIR")
                .map(|d| PathBuf::from(d).join("wavelink"))
                .unwrap_or_else(|| std::env::temp_dir().join(format!("wavelink-{}", nix::unistd::geteuid())));
            base.join(format!("{component}-{port}"))
        });
        RuntimeSettings {
            state_dir,
            run_as: self.run_as.clone().or_else(|| nix::unistd::geteuid().is_root().then(|| "nobody".to_owned())),
            memory_max: (self.memory_max > 0).then_some(self.memory_max),
            port_range: self.port_range.unwrap_or(default_ports),
        }
    }
}

/// How instances run (Emergency Instances on a Wavelet, Regular Instances of the local backend).
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
    /// as a container with a pod's isolation; functions need an image). `wavelink up` passes
    /// it (through the environment) to the Wavelet and the controller alike.
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
    /// Outbound network of container instances: `none` (loopback only; they reach nothing) or
    /// `nat` (a veth pair each, routed and masqueraded through the Wavelet's own network
    /// namespace, so they reach what its pod reaches, but not the Wavelet or each other; needs
    /// CAP_NET_ADMIN there and `nft`). See docs/operations.md.
    #[arg(long, env = "WAVELINK_EGRESS", default_value = "none", value_name = "MODE")]
    pub egress: EgressMode,
    /// Addresses for instances' links with --egress=nat, a /31 each; seen only inside the
    /// Wavelet's namespace (traffic leaves with its address), so any prefix not otherwise
    /// routed from there will do.
    #[arg(long, default_value = "198.18.0.0/16", value_name = "CIDR")]
    pub egress_cidr: Ipv4Cidr,
}

/// Outbound network of container instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EgressMode {
    None,
    Nat,
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
            egress: (self.egress == EgressMode::Nat).then_some(self.egress_cidr),
            ..ContainerdSettings::default()
        })
    }
}
