//! Where Regular Instances come from: a small interface the control loop drives, so the same
//! autoscaler runs on Kubernetes and on one machine.

pub mod kubernetes;
pub mod local;

use std::net::SocketAddr;

use async_trait::async_trait;
use wavelink_core::{FunctionId, FunctionSpec};

/// A function under the controller's care.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedFunction {
    pub id: FunctionId,
    pub spec: FunctionSpec,
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

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The functions to scale, with their RIs asked for and ready.
    async fn functions(&self) -> Result<Vec<ManagedFunction>, BackendError>;
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
