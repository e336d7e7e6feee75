//! The periodic sweep: destroy instances idle past their keepalive (every tick), notice exited
//! ones and sample memory (every [`FULL_SCAN_EVERY`] ticks).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use wavelink_server::assembly::every;

use crate::pool::Pools;

/// Keepalive precision: an idle instance lives at most this much longer than its keepalive.
pub const TICK: Duration = Duration::from_millis(50);
/// Memory samples and exit checks every this many ticks (half a second).
pub const FULL_SCAN_EVERY: u32 = 10;

pub struct Reaper {
    pub pools: Arc<Pools>,
}

#[async_trait]
impl BackgroundService for Reaper {
    async fn start(&self, shutdown: ShutdownWatch) {
        every(TICK, shutdown, |tick| self.pools.reap(tick % FULL_SCAN_EVERY == 0)).await;
    }
}
