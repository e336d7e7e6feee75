//! WaveLink's ingress proxy, built on Pingora.
//!
//! ```text
//! client ─▶ Ingress::request_filter ── Host → Router (ArcSwap, lock-free) → FunctionState
//!                 │  slot free?  yes ─▶ SlotGuard (RAII) ─▶ upstream_peer = its instance
//!                 │              no  ─▶ bounded FIFO wait (hand-off on release) ─▶ 503 + Retry-After
//!                 ▼
//!            logging: metrics, slot released
//! admin listener: /healthz /readyz /metrics /stats, PUT .../instances
//! stats sampler:  slot counters → one-second samples (avg, peak) per function
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod function;
pub mod health;
pub mod instance;
pub mod links;
pub mod metrics;
pub mod router;
pub mod server;
pub mod service;
pub mod stats;
pub mod wavelets;

pub use server::{Proxy, ProxyError, ProxySettings};
