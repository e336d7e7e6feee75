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

use crate::service::{PROBE_HEADER, PROBE_HOST};

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
            "the client listener is not accepting yet"
        } else {
            "ready"
        }
    }

    pub fn begin_draining(&self) {
        self.draining.store(true, SeqCst);
    }
}

/// Probes the client listener until it answers with this process's token.
pub struct ListenerProbe {
    pub health: Arc<Health>,
    pub listen: SocketAddr,
    pub token: String,
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
                self.token
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
                info!(listen = %self.listen, "proxy listener ready");
                return;
            }
            if let Some(limit) = self.give_up_after
                && started.elapsed() > limit
            {
                error!(listen = %self.listen, "proxy listener did not come up (address in use?); exiting");
                std::process::exit(1);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
