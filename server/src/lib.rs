//! Pingora server plumbing shared by the proxy and the Wavelet: the server configuration both
//! use, admin response helpers, readiness via a self-probe, and drain-then-exit on SIGTERM.
#![forbid(unsafe_code)]

pub mod admin;
pub mod assembly;
pub mod auth;
pub mod client;
pub mod connections;
pub mod headers;
pub mod health;
pub mod replay;
pub mod respond;
pub mod shutdown;
pub mod tls;

use std::time::Duration;

use pingora_core::server::configuration::ServerConf;

/// The Pingora configuration of every WaveLink server.
pub fn server_conf(threads: usize, grace_period: Duration) -> ServerConf {
    ServerConf {
        threads,
        // Per-thread runtimes without work stealing cost less CPU per request (measured).
        work_stealing: false,
        // Upper bound only: a draining server exits as soon as its requests are done.
        grace_period_seconds: Some(grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    }
}
