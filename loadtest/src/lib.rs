//! WaveLink's load tools and the `fn` function workload.
#![deny(unsafe_code)]

pub mod listen_fds;
pub mod workload;
