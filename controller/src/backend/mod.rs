//! Where Regular Instances come from: a small interface the control loop drives, so the same
//! autoscaler runs on Kubernetes and on one machine.

pub mod kubernetes;
pub mod local;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use wavelink_core::{FunctionId, FunctionSpec};

/// A function under the controller's care.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedFunction {
    pub id: FunctionId,
    /// Shared: thousands of functions have a handful of different specs.
    pub spec: Arc<FunctionSpec>,
    /// RIs asked for (a Deployment's `spec.replicas`).
    pub replicas: u32,
    /// RIs ready to serve.
    pub ready: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no function {0}")]
    UnknownFunction(FunctionId),
    #[error("{operation} failed: {message}")]
    Api { operation: &'static str, message: String },
    #[error("{operation} got no answer within {after:?}")]
    Timeout { operation: &'static str, after: std::time::Duration },
}

impl BackendError {
    /// The `operation` label of the API error metric.
    pub fn operation(&self) -> &'static str {
        match self {
            BackendError::UnknownFunction(_) => "lookup",
            BackendError::Api { operation, .. } | BackendError::Timeout { operation, .. } => operation,
        }
    }
}

/// What changed among the functions to scale since the backend's previous [`Backend::changes`].
#[derive(Debug, Default)]
pub struct FunctionChanges {
    /// Functions that are new, or whose spec, RIs asked for or RIs ready changed (every
    /// function on the first call).
    pub changed: Vec<ManagedFunction>,
    /// Functions no longer there.
    pub removed: Vec<FunctionId>,
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The functions to scale that changed since the previous call (all of them on the first):
    /// the controller keeps its own copy, so a round costs in proportion to what changed and
    /// to the functions with demand, not to every configured function. The backend remembers
    /// what it reported last; every caller must apply what it gets to that shared copy.
    async fn changes(&self) -> Result<FunctionChanges, BackendError>;
    /// Asks for `replicas` RIs of a function.
    async fn scale(&self, function: &FunctionId, replicas: u32) -> Result<(), BackendError>;
    /// Periodic upkeep after each round of decisions (restarting what died, retrying pushes,
    /// reporting rejected functions). Returns the API errors met, for the metrics.
    async fn maintain(&self) -> Vec<BackendError> {
        Vec::new()
    }
    /// Whether this controller may write (leader election; always true when alone).
    fn is_leader(&self) -> bool {
        true
    }
    /// Admin addresses of the proxies to read, when the backend discovers them (`None`: the
    /// configured ones).
    fn proxies(&self) -> Option<Vec<SocketAddr>> {
        None
    }
}
