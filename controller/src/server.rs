//! Runs a controller: the admin listener and the control loop; on SIGTERM, whatever the backend
//! must clean up (the local backend destroys its RIs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use tracing::info;
use wavelink_server::assembly::Assembly;
use wavelink_server::health::Health;
use wavelink_server::shutdown::{Drain, SignalShutdown};

use crate::admin::AdminApi;
use crate::control::{ControlLoop, Controller};

pub struct ControllerServer {
    controller: Arc<Controller>,
    health: Arc<Health>,
    admin: SocketAddr,
    /// Runs once when the controller stops (the local backend destroys its RIs).
    on_stop: Arc<dyn Fn() + Send + Sync>,
}

impl ControllerServer {
    pub fn new(controller: Arc<Controller>, admin: SocketAddr, on_stop: Arc<dyn Fn() + Send + Sync>) -> Self {
        ControllerServer { controller, health: Arc::new(Health::default()), admin, on_stop }
    }

    pub fn signal_shutdown(&self) -> Box<dyn ShutdownSignalWatch> {
        let drain = Arc::new(StopHook(self.on_stop.clone()));
        Box::new(SignalShutdown::new(drain, self.health.clone(), Duration::from_secs(1)))
    }

    pub fn run(self, shutdown: Box<dyn ShutdownSignalWatch>) {
        let admin = AdminApi { controller: self.controller.clone(), health: self.health.clone() };
        let assembly =
            Assembly::new(1, Duration::from_secs(1)).admin("controller admin", admin, self.admin).background(
                "control loop",
                ReadyAfterFirstRound {
                    inner: ControlLoop { controller: self.controller.clone() },
                    health: self.health.clone(),
                },
            );
        info!(admin = %self.admin, "controller starting");
        assembly.run(shutdown);
        (self.on_stop)();
        info!("controller stopped");
    }
}

/// The controller has no requests to drain; stopping only runs the hook.
struct StopHook(Arc<dyn Fn() + Send + Sync>);

impl Drain for StopHook {
    fn in_progress(&self) -> u64 {
        0
    }

    fn finish(&self) {
        (self.0)()
    }
}

/// Marks the controller ready once its loop runs.
struct ReadyAfterFirstRound {
    inner: ControlLoop,
    health: Arc<Health>,
}

#[async_trait]
impl BackgroundService for ReadyAfterFirstRound {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.health.set_ready();
        self.inner.start(shutdown).await;
    }
}
