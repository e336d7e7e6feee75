//! WaveLink's standard track: the asynchronous autoscaler of Regular Instances.
//!
//! ```text
//! proxies' /stats ──scrape (1 s)──▶ History (per function, per proxy, per second)
//!                                      │ decide (2 s): core::autoscale::Decider
//!                                      ▼
//!                         Backend::scale, only on change, with backoff
//!          local: RI processes, pushed to the proxies' admin APIs after ri-start-delay
//!          kubernetes: PATCH deployments/<name>/scale, leader-elected
//! sync mode: POST /v1/functions/{ns}/{name}/poke from a proxy ─▶ scale now
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod control;
pub mod coverage;
pub mod history;
pub mod metrics;
pub mod server;

pub use control::Controller;
pub use server::ControllerServer;
