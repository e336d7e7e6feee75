//! The Wavelet: WaveLink's node agent for the expedited track.
//!
//! ```text
//! proxy ──(x-wavelink-function: ns/name)──▶ WaveletProxy::request_filter
//!                │  Pools::acquire: running instance with a free slot? ─ yes ─▶ lease
//!                │                  else under the node cap? ─ yes ─▶ ProcessRuntime::spawn ─▶ lease
//!                │                  else 503 + x-wavelink-wavelet: full (proxy tries elsewhere)
//!                ▼
//!         instance (process group; socket handed over as fd 3, request waits in its backlog)
//! reaper: idle > emergency-keepalive ─▶ destroyer thread: SIGKILL group, reap, cgroup, record
//! state dir: one record per live instance; a restarted Wavelet kills what a crashed one left
//! ```
#![deny(unsafe_code)]

pub mod admin;
pub mod cgroup;
pub mod containerd;
pub mod instance;
pub mod metrics;
pub mod pool;
pub mod procfs;
pub mod reaper;
pub mod runtime;
pub mod server;
pub mod service;
pub mod setup;
pub mod spawn;
pub mod spawner;
pub mod state;

pub use server::{Wavelet, WaveletError, WaveletSettings};
