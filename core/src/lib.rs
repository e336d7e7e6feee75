//! WaveLink's sans-IO domain: what to do, never how to do it.
//!
//! Function specs parsed from `wavelink.dev/*` annotations (one vocabulary for Kubernetes and the
//! local config), the local config file, and the wire types components exchange. No tokio, no
//! sockets, no Kubernetes client: everything here is plain data and functions, tested directly.
#![forbid(unsafe_code)]

pub mod autoscale;
pub mod backoff;
pub mod config;
pub mod container;
pub mod duration;
pub mod forwarded;
pub mod function;
pub mod lease;
pub mod routing;
pub mod sim;
pub mod size;
pub mod slots;
pub mod spec;
pub mod stats;
pub mod tls;
pub mod trace;
pub mod wire;

pub use config::{FunctionDef, KubernetesConfig, LocalConfig, RejectedFunction};
pub use container::ContainerTemplate;
pub use function::FunctionId;
pub use spec::{FunctionSpec, InvalidSpec, ScalingMode, SpecError};
