//! One module per subcommand; shared argument parsing here.

pub mod cluster;
pub mod controller;
pub mod experiment;
pub mod image;
pub mod proxy;
pub mod up;
pub mod wavelet;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use wavelink_core::LocalConfig;
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
