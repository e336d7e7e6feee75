//! Preparing to run instances on this machine, shared by the Wavelet (Emergency Instances) and
//! the controller's local backend (Regular Instances): the state directory (what a crashed
//! predecessor left is killed first, or adopted for RIs), the user to run as, memory cgroups, the port range.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{info, warn};

use crate::cgroup::Cgroups;
use crate::runtime::{PortRange, ProcessRuntime, RunAs};
use crate::state::{StateDir, StateError, Survivor};

#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub state_dir: PathBuf,
    /// Run instances as this user (only possible as root).
    pub run_as: Option<String>,
    /// Memory limit per instance, enforced with a cgroup where the kernel allows.
    pub memory_max: Option<u64>,
    /// Loopback ports for instances, `(first, last)`.
    pub port_range: (u16, u16),
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("--run-as: {0}")]
    RunAs(String),
    #[error("--port-range: {0}")]
    Ports(String),
    #[error("finding this executable: {0}")]
    SelfExe(std::io::Error),
}

/// The runtime and state directory for instances whose ids start with `kind` (`ei`): what a
/// previous run left is killed, and instances die with this process.
pub fn prepare(kind: &'static str, settings: &RuntimeSettings) -> Result<(ProcessRuntime, Arc<StateDir>), SetupError> {
    let (runtime, state, _) = open(kind, settings, |_| false)?;
    Ok((runtime, state))
}

/// Like [`prepare`], for instances that outlive this process (the local backend's RIs): the
/// ones a previous run left that still run and that `wanted` accepts are returned to adopt.
pub fn prepare_adopting(
    kind: &'static str,
    settings: &RuntimeSettings,
    wanted: impl Fn(&Survivor) -> bool,
) -> Result<(ProcessRuntime, Arc<StateDir>, Vec<Survivor>), SetupError> {
    let (runtime, state, survivors) = open(kind, settings, wanted)?;
    Ok((runtime.outliving_parent(), state, survivors))
}

fn open(
    kind: &'static str,
    settings: &RuntimeSettings,
    wanted: impl Fn(&Survivor) -> bool,
) -> Result<(ProcessRuntime, Arc<StateDir>, Vec<Survivor>), SetupError> {
    let state = StateDir::open(&settings.state_dir)?;
    let (survivors, cleanup) = state.adopt_survivors(wanted);
    if cleanup.killed > 0 || cleanup.stale > 0 || !survivors.is_empty() {
        info!(adopted = survivors.len(), killed = cleanup.killed, already_gone = cleanup.stale,
              state_dir = %state.path().display(), "took over from a previous run");
    }
    let run_as = settings.run_as.as_deref().map(RunAs::lookup).transpose().map_err(SetupError::RunAs)?;
    if run_as.is_some() && !nix::unistd::geteuid().is_root() {
        return Err(SetupError::RunAs("switching users needs root; drop --run-as".into()));
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
    let ports = PortRange::new(settings.port_range.0, settings.port_range.1).map_err(SetupError::Ports)?;
    let runtime = ProcessRuntime::for_kind(kind, run_as, cgroups, ports).map_err(SetupError::SelfExe)?;
    if let Some(run_as) = runtime.run_as() {
        info!(user = %run_as.user, uid = run_as.uid, "instances run unprivileged");
    }
    Ok((runtime, Arc::new(state), survivors))
}
