//! Liveness and readiness. Ready means the client listener of *this* process accepts and
//! answers: Pingora binds listeners in the background and keeps retrying a port in use, so the
//! only trustworthy check is a request that carries this process's own token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{error, info};

/// Host of the readiness self-probe; `.invalid` can never be a real function's domain.
pub const PROBE_HOST: &str = "readiness.wavelink.invalid";
/// Header carrying the process's probe token, so the probe knows it reached this very process.
pub const PROBE_HEADER: &str = "x-wavelink-probe";

/// A random token per process; a request carrying it is this process's own readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeToken(String);

impl ProbeToken {
    pub fn random() -> Self {
        ProbeToken(format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)))
    }

    /// Whether a request (its host without port, and its probe header) is our own probe.
    pub fn is_probe(&self, host: &str, header: Option<&[u8]>) -> bool {
        host == PROBE_HOST && header == Some(self.0.as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Default)]
pub struct Health {
    listener_ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.listener_ready.load(SeqCst) && !self.draining.load(SeqCst)
    }

    /// Why not ready, for `/readyz`.
    pub fn reason(&self) -> &'static str {
        if self.draining.load(SeqCst) {
            "draining: shutting down"
        } else if !self.listener_ready.load(SeqCst) {
            "the listener is not accepting yet"
        } else {
            "ready"
        }
    }

    /// For components without a request listener to probe: ready from now on.
    pub fn set_ready(&self) {
        self.listener_ready.store(true, SeqCst);
    }

    pub fn begin_draining(&self) {
        self.draining.store(true, SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(SeqCst)
    }
}

/// Probes the client listener until it answers with this process's token.
pub struct ListenerProbe {
    pub health: Arc<Health>,
    pub listen: SocketAddr,
    pub token: ProbeToken,
    /// Give up (and exit the process with an error) after this long; `None` to keep trying.
    pub give_up_after: Option<Duration>,
}

impl ListenerProbe {
    fn target(&self) -> SocketAddr {
        // A wildcard listener is reachable on loopback.
        let ip = match self.listen.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
            ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        SocketAddr::new(ip, self.listen.port())
    }

    /// One probe: connect, ask, check the answer is ours.
    async fn probe_once(&self) -> bool {
        let attempt = async {
            let mut stream = TcpStream::connect(self.target()).await?;
            let request = format!(
                "GET / HTTP/1.1\r\nHost: {PROBE_HOST}\r\n{PROBE_HEADER}: {}\r\nConnection: close\r\n\r\n",
                self.token.as_str()
            );
            stream.write_all(request.as_bytes()).await?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await?;
            Ok::<_, std::io::Error>(&head == b"HTTP/1.1 204")
        };
        matches!(tokio::time::timeout(Duration::from_millis(500), attempt).await, Ok(Ok(true)))
    }
}

#[async_trait]
impl BackgroundService for ListenerProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let started = Instant::now();
        loop {
            let ok = self.probe_once().await;
            if ok {
                self.health.listener_ready.store(true, SeqCst);
                info!(listen = %self.listen, "listener ready");
                return;
            }
            if let Some(limit) = self.give_up_after
                && started.elapsed() > limit
            {
                error!(listen = %self.listen, "listener did not come up (address in use?); exiting");
                std::process::exit(1);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
