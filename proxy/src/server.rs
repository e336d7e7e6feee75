//! Assembles the Pingora server: client listener, admin listener, stats sampler, readiness
//! probe; and runs it until a shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use wavelink_core::LocalConfig;

use crate::admin::AdminApi;
use crate::health::{Health, ListenerProbe};
use crate::instance::PeerSettings;
use crate::metrics::ProxyMetrics;
use crate::router::Router;
use crate::service::Ingress;
use crate::stats::StatsSampler;

/// How the proxy runs; the config file's `proxy:` section plus command-line overrides.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub domain: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub threads: usize,
    pub grace_period: Duration,
    pub connect_timeout: Duration,
}

impl ProxySettings {
    pub fn from_config(config: &LocalConfig) -> Self {
        ProxySettings {
            domain: config.domain.clone(),
            listen: config.proxy.listen,
            admin: config.proxy.admin,
            threads: config.proxy.threads,
            grace_period: config.proxy.grace_period,
            connect_timeout: config.proxy.connect_timeout,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("setting up metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A proxy ready to run: its routing table can be filled before and changed while it runs.
pub struct Proxy {
    settings: ProxySettings,
    router: Arc<Router>,
    health: Arc<Health>,
    probe_token: String,
}

impl Proxy {
    pub fn new(settings: ProxySettings) -> Result<Self, ProxyError> {
        let metrics = Arc::new(ProxyMetrics::new()?);
        let peer_settings = PeerSettings { connect_timeout: settings.connect_timeout };
        let router = Arc::new(Router::new(&settings.domain, metrics, peer_settings));
        let probe_token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        Ok(Proxy { settings, router, health: Arc::new(Health::default()), probe_token })
    }

    /// A proxy serving the functions of a local config; rejected ones are logged and listed.
    pub fn from_config(config: &LocalConfig) -> Result<Self, ProxyError> {
        let proxy = Proxy::new(ProxySettings::from_config(config))?;
        let (functions, rejected) = config.functions();
        proxy.router.apply(functions, rejected);
        Ok(proxy)
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// Runs on the calling thread (which must not be inside a tokio runtime) until `shutdown`
    /// says to stop.
    pub fn run(self, shutdown: Box<dyn ShutdownSignalWatch>, exit_if_listener_fails: bool) {
        let server = self.build_server(exit_if_listener_fails);
        info!(listen = %self.settings.listen, admin = %self.settings.admin, domain = %self.settings.domain,
              threads = self.settings.threads, "proxy starting");
        server.run(RunArgs { shutdown_signal: shutdown });
        info!("proxy stopped");
    }

    /// The SIGTERM/SIGINT handling of a proxy process: see [`SignalShutdown`].
    pub fn signal_shutdown(&self) -> Box<dyn ShutdownSignalWatch> {
        Box::new(SignalShutdown {
            router: self.router.clone(),
            health: self.health.clone(),
            grace_period: self.settings.grace_period,
        })
    }

    fn build_server(&self, exit_if_listener_fails: bool) -> Server {
        let conf = ServerConf {
            threads: self.settings.threads,
            // Per-thread runtimes without work stealing cost less CPU per request (measured).
            work_stealing: false,
            // Upper bound only: a draining proxy exits as soon as its requests are done.
            grace_period_seconds: Some(self.settings.grace_period.as_secs_f64().ceil() as u64),
            graceful_shutdown_timeout_seconds: Some(1),
            upstream_keepalive_pool_size: 1024,
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();

        let ingress = Ingress { router: self.router.clone(), probe_token: self.probe_token.clone() };
        let mut proxy = pingora_proxy::http_proxy_service_with_name(&server.configuration, ingress, "wavelink proxy");
        proxy.add_tcp(&self.settings.listen.to_string());
        proxy.threads = Some(self.settings.threads);
        server.add_service(proxy);

        let mut admin = Service::new(
            "wavelink admin".to_owned(),
            AdminApi { router: self.router.clone(), health: self.health.clone() },
        );
        admin.add_tcp(&self.settings.admin.to_string());
        admin.threads = Some(1);
        server.add_service(admin);

        let mut sampler = background_service("stats sampler", StatsSampler { router: self.router.clone() });
        sampler.threads = Some(1);
        server.add_service(sampler);

        let mut probe = background_service(
            "listener probe",
            ListenerProbe {
                health: self.health.clone(),
                listen: self.settings.listen,
                token: self.probe_token.clone(),
                // Pingora retries a busy port for about 30 s before giving up on it.
                give_up_after: exit_if_listener_fails.then_some(Duration::from_secs(40)),
            },
        );
        probe.threads = Some(1);
        server.add_service(probe);
        server
    }
}

/// SIGTERM (or SIGQUIT): stop accepting, let in-flight and queued requests finish within the
/// grace period, then exit 0 as soon as none is left. SIGINT: stop at once.
///
/// Pingora's own graceful stop sleeps for the whole grace period even when idle; this watcher
/// ends the process when the proxy is drained, with the grace period as the upper bound.
pub struct SignalShutdown {
    router: Arc<Router>,
    health: Arc<Health>,
    grace_period: Duration,
}

/// No request may appear for this long before the proxy counts as drained, so a request that was
/// accepted just before the listener closed is not cut off while its headers are being read.
const QUIET_PERIOD: Duration = Duration::from_millis(100);

#[async_trait]
impl ShutdownSignalWatch for SignalShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let signals = (signal(SignalKind::terminate()), signal(SignalKind::quit()), signal(SignalKind::interrupt()));
        let (Ok(mut term), Ok(mut quit), Ok(mut interrupt)) = signals else {
            error!("cannot install signal handlers; the proxy will only stop when killed");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = quit.recv() => {}
            _ = interrupt.recv() => {
                info!("SIGINT: stopping now");
                return ShutdownSignal::FastShutdown;
            }
        }
        let in_progress = self.router.requests_in_progress();
        info!(in_progress, grace_period = ?self.grace_period, "SIGTERM: draining");
        self.health.begin_draining();
        let router = self.router.clone();
        let grace_period = self.grace_period;
        std::thread::spawn(move || exit_when_drained(&router, grace_period));
        ShutdownSignal::GracefulTerminate
    }
}

fn exit_when_drained(router: &Router, grace_period: Duration) {
    let deadline = Instant::now() + grace_period;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        if router.requests_in_progress() > 0 {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET_PERIOD {
            info!("drained; exiting");
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    warn!(cut_off = router.requests_in_progress(), "grace period over; stopping with requests in progress");
}
