//! WaveLink on Kubernetes: the cluster as a source of functions (Deployments labelled
//! `wavelink.dev/function`) and instances (EndpointSlices), the scale write of the standard
//! track, Events for functions that cannot be used, and leader election.
//!
//! Translation is plain functions over k8s-openapi objects ([`catalog`]); the rest is kube-rs at
//! the edge. Proxy, Wavelet and controller all read the cluster through [`watch::ClusterView`].

pub mod access;
pub mod catalog;
pub mod events;
pub mod leader;
pub mod scale;
pub mod secrets;
pub mod watch;

pub use catalog::{Catalog, ClusterFunction, ClusterRejection, NamespacedName};
pub use leader::LeaderElector;
pub use watch::{ClusterView, connect};
