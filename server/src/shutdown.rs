//! SIGTERM (or SIGQUIT): stop accepting, let requests in progress finish within the grace period,
//! clean up, then exit 0 as soon as none is left. SIGINT: stop at once.
//!
//! Pingora's own graceful stop sleeps for the whole grace period even when idle; this watcher
//! ends the process when the server is drained, with the grace period as the upper bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::health::Health;

/// What a server reports and does while it drains.
pub trait Drain: Send + Sync + 'static {
    /// Requests being served or waiting to be.
    fn in_progress(&self) -> u64;
    /// Runs once when drained (or when the grace period is over), just before the process exits.
    fn finish(&self) {}
}

pub struct SignalShutdown {
    drain: Arc<dyn Drain>,
    health: Arc<Health>,
    grace_period: Duration,
}

impl SignalShutdown {
    pub fn new(drain: Arc<dyn Drain>, health: Arc<Health>, grace_period: Duration) -> Self {
        SignalShutdown { drain, health, grace_period }
    }
}

/// No request may appear for this long before a server counts as drained, so a request that was
/// accepted just before the listener closed is not cut off while its headers are being read.
const QUIET_PERIOD: Duration = Duration::from_millis(100);

#[async_trait]
impl ShutdownSignalWatch for SignalShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let signals = (signal(SignalKind::terminate()), signal(SignalKind::quit()), signal(SignalKind::interrupt()));
        let (Ok(mut term), Ok(mut quit), Ok(mut interrupt)) = signals else {
            error!("cannot install signal handlers; the server will only stop when killed");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = quit.recv() => {}
            _ = interrupt.recv() => {
                info!("SIGINT: stopping now");
                self.drain.finish();
                return ShutdownSignal::FastShutdown;
            }
        }
        info!(in_progress = self.drain.in_progress(), grace_period = ?self.grace_period, "SIGTERM: draining");
        self.health.begin_draining();
        let drain = self.drain.clone();
        let grace_period = self.grace_period;
        std::thread::spawn(move || exit_when_drained(drain.as_ref(), grace_period));
        ShutdownSignal::GracefulTerminate
    }
}

fn exit_when_drained(drain: &dyn Drain, grace_period: Duration) {
    let deadline = Instant::now() + grace_period;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        if drain.in_progress() > 0 {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET_PERIOD {
            info!("drained; exiting");
            drain.finish();
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    warn!(cut_off = drain.in_progress(), "grace period over; stopping with requests in progress");
    drain.finish();
}
