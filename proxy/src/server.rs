//! Assembles the Pingora server: client listener, admin listener, stats sampler, readiness
//! probe; and runs it until a shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::server::ShutdownSignalWatch;
use tracing::{info, warn};
use wavelink_core::LocalConfig;
use wavelink_core::config::TlsConfig;
use wavelink_server::assembly::{Assembly, Bounds, RequestListener};
use wavelink_server::auth::InternalAuth;
use wavelink_server::connections::{ConnectionCounters, ConnectionLimits, raise_open_files_limit};
use wavelink_server::health::{Health, ProbeToken};
use wavelink_server::shutdown::{Drain, SignalShutdown};
use wavelink_server::tls::{
    CertificateError, CertificateFiles, CertificateReloader, CertificateStore, TlsCounters, TlsTermination,
};

use crate::admin::AdminApi;
use crate::instance::PeerSettings;
use crate::metrics::ProxyMetrics;
use crate::router::Router;
use crate::service::{HttpsRedirect, Ingress};
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
    pub keepalive_timeout: Duration,
    pub max_queued: u32,
    pub connections: ConnectionLimits,
    /// Idle time after which a function's metric series are dropped (`None`: never).
    pub metrics_expiry: Option<Duration>,
    pub access_log: bool,
    pub h2c: bool,
    /// The TLS listener, if any.
    pub tls: Option<TlsConfig>,
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
            keepalive_timeout: config.proxy.keepalive_timeout,
            max_queued: config.proxy.max_queued,
            connections: ConnectionLimits {
                max_connections: config.proxy.max_connections,
                header_timeout: config.proxy.header_timeout,
            },
            metrics_expiry: Some(config.proxy.metrics_expiry).filter(|d| !d.is_zero()),
            access_log: config.proxy.access_log,
            h2c: config.proxy.h2c,
            tls: config.proxy.tls.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("setting up metrics failed")]
    Metrics(#[from] prometheus::Error),
    #[error("proxy.tls")]
    Certificate(#[from] CertificateError),
    #[error("proxy.tls")]
    Tls(#[from] rustls::Error),
}

/// The TLS listener's parts: what it serves, and the files it re-reads.
struct TlsListener {
    config: TlsConfig,
    termination: Arc<TlsTermination>,
    files: CertificateFiles,
}

/// A proxy ready to run: its routing table can be filled before and changed while it runs.
pub struct Proxy {
    settings: ProxySettings,
    router: Arc<Router>,
    health: Arc<Health>,
    probe_token: ProbeToken,
    connections: Arc<ConnectionCounters>,
    certificates: Arc<CertificateStore>,
    tls: Option<TlsListener>,
}

impl Proxy {
    pub fn new(settings: ProxySettings) -> Result<Self, ProxyError> {
        let connections = Arc::new(ConnectionCounters::default());
        let metrics = Arc::new(ProxyMetrics::with_connections(connections.clone())?);
        let certificates = Arc::new(CertificateStore::default());
        let tls = match &settings.tls {
            Some(config) => {
                let files = config.certificates.iter().map(|c| (c.cert.clone(), c.key.clone()));
                let files = CertificateFiles::load(files, &certificates)?;
                let counters = Arc::new(TlsCounters::default());
                metrics.add_tls(counters.clone(), certificates.clone())?;
                let termination =
                    TlsTermination::new(certificates.clone(), config.http2, config.handshake_timeout, counters)?;
                Some(TlsListener { config: config.clone(), termination: Arc::new(termination), files })
            }
            None => None,
        };
        let peer_settings = PeerSettings { connect_timeout: settings.connect_timeout };
        let router = Arc::new(Router::new(&settings.domain, metrics, peer_settings));
        router.links().max_queued.store(settings.max_queued, std::sync::atomic::Ordering::Relaxed);
        Ok(Proxy {
            settings,
            router,
            health: Arc::new(Health::default()),
            probe_token: ProbeToken::random(),
            connections,
            certificates,
            tls,
        })
    }

    /// A proxy serving the functions of a local config; rejected ones are logged and listed.
    pub fn from_config(config: &LocalConfig) -> Result<Self, ProxyError> {
        let proxy = Proxy::new(ProxySettings::from_config(config))?;
        let wavelets: Vec<SocketAddr> = config.wavelets.iter().map(|w| w.address).collect();
        proxy.router.set_wavelets(&wavelets);
        let controllers: Vec<SocketAddr> = config.controller.iter().map(|c| c.admin).collect();
        proxy.router.set_controllers(&controllers);
        let (functions, rejected) = config.functions();
        proxy.router.apply(functions, rejected);
        Ok(proxy)
    }

    /// The token of internal traffic: sent to Wavelets and controllers, required by the admin
    /// API's changes.
    pub fn set_internal_auth(&self, auth: Arc<InternalAuth>) {
        self.router.links().auth.store(auth);
    }

    /// What the TLS listener serves; sources other than the config's files (Kubernetes
    /// Secrets) add theirs here.
    pub fn certificates(&self) -> &Arc<CertificateStore> {
        &self.certificates
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
        let settings = &self.settings;
        let ingress = Ingress {
            router: self.router.clone(),
            probe_token: self.probe_token.clone(),
            keepalive_timeout: settings.keepalive_timeout,
            access_log: settings.access_log,
            https: self
                .tls
                .as_ref()
                .map(|tls| HttpsRedirect { all: tls.config.redirect, port: tls.config.redirect_port() }),
        };
        let admin = AdminApi {
            router: self.router.clone(),
            health: self.health.clone(),
            own_listeners: std::iter::once(settings.listen)
                .chain(std::iter::once(settings.admin))
                .chain(self.tls.as_ref().map(|t| t.config.listen))
                .collect(),
        };
        let bounds = || Bounds { limits: settings.connections, counters: self.connections.clone() };
        raise_open_files_limit(settings.connections.max_connections);
        let plaintext = RequestListener {
            listen: settings.listen,
            threads: settings.threads,
            bounds: bounds(),
            h2c: settings.h2c,
            tls: None,
        };
        let mut assembly = Assembly::new(settings.threads, settings.grace_period)
            .proxy("wavelink proxy", ingress.clone(), plaintext)
            .admin("wavelink admin", admin, settings.admin)
            .background(
                "stats sampler",
                StatsSampler { router: self.router.clone(), metrics_expiry: self.settings.metrics_expiry },
            );
        if let Some(tls) = self.tls {
            if self.certificates.is_empty() {
                warn!("the TLS listener has no certificate yet: handshakes fail until one is served");
            }
            let listener = RequestListener {
                listen: tls.config.listen,
                threads: settings.threads,
                bounds: bounds(),
                h2c: false,
                tls: Some(tls.termination),
            };
            info!(listen = %tls.config.listen, http2 = tls.config.http2, redirect = tls.config.redirect, "TLS listener");
            assembly = assembly.proxy("wavelink proxy tls", ingress, listener).background(
                "certificate files",
                CertificateReloader {
                    files: parking_lot::Mutex::new(tls.files),
                    store: self.certificates.clone(),
                    interval: tls.config.reload_interval,
                },
            );
        }
        let assembly =
            assembly.readiness(self.health.clone(), settings.listen, self.probe_token.clone(), exit_if_listener_fails);
        info!(listen = %settings.listen, admin = %settings.admin, domain = %settings.domain,
              threads = settings.threads, "proxy starting");
        assembly.run(shutdown);
        info!("proxy stopped");
    }

    /// The SIGTERM/SIGINT handling of a proxy process: drain, then exit (see [`SignalShutdown`]).
    pub fn signal_shutdown(&self) -> Box<dyn ShutdownSignalWatch> {
        Box::new(SignalShutdown::new(self.router.clone(), self.health.clone(), self.settings.grace_period))
    }
}

impl Drain for Router {
    fn in_progress(&self) -> u64 {
        self.requests_in_progress()
    }
}
