//! Building a WaveLink server: one Pingora `Server` with the request listener, the admin
//! listener, background tasks and the readiness probe, configured alike for every component.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{AdminEndpoints, AdminRouter};
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::{RunArgs, Server, ShutdownSignalWatch};
use pingora_core::services::background::{BackgroundService, background_service};
use pingora_core::services::listening::Service;
use pingora_proxy::ProxyHttp;

use crate::connections::{ConnectionCounters, ConnectionLimits, Guarded};
use crate::health::{Health, ListenerProbe, ProbeToken};
use crate::tls::TlsTermination;

/// Pingora retries a busy port for about 30 s before giving up on it.
const LISTENER_DEADLINE: Duration = Duration::from_secs(40);

/// A request listener's connection bounds and where it counts what they did.
pub struct Bounds {
    pub limits: ConnectionLimits,
    pub counters: Arc<ConnectionCounters>,
}

/// One request listener.
pub struct RequestListener {
    pub listen: SocketAddr,
    pub threads: usize,
    pub bounds: Bounds,
    /// On a plaintext listener, a connection that starts with the HTTP/2 preface is served as
    /// HTTP/2 (cleartext, prior knowledge), each stream a request.
    pub h2c: bool,
    /// Clients speak TLS (HTTP/2 then by ALPN).
    pub tls: Option<Arc<TlsTermination>>,
}

pub struct Assembly {
    server: Server,
}

impl Assembly {
    pub fn new(threads: usize, grace_period: Duration) -> Self {
        let mut server = Server::new_with_opt_and_conf(None, crate::server_conf(threads, grace_period));
        server.bootstrap();
        Assembly { server }
    }

    /// A request listener, served by a Pingora proxy behind the connection bounds (the proxy
    /// must call [`crate::connections::header_received`] and
    /// [`crate::connections::request_done`]).
    pub fn proxy<P>(mut self, name: &str, proxy: P, listener: RequestListener) -> Self
    where
        P: ProxyHttp + Send + Sync + 'static,
        P::CTX: Send + Sync,
    {
        let mut app = pingora_proxy::http_proxy(&self.server.configuration, proxy);
        if listener.h2c && listener.tls.is_none() {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            app.server_options = Some(options);
        }
        let mut guarded = Guarded::new(app, listener.bounds.limits, listener.bounds.counters);
        if let Some(tls) = listener.tls {
            guarded = guarded.with_tls(tls);
        }
        let mut service = Service::new(name.to_owned(), guarded);
        service.add_tcp(&listener.listen.to_string());
        service.threads = Some(listener.threads);
        self.server.add_service(service);
        self
    }

    /// The admin listener, on one thread: the shared endpoints, then the component's own.
    pub fn admin<E: AdminEndpoints>(mut self, name: &str, endpoints: E, listen: SocketAddr) -> Self {
        let mut service = Service::new(name.to_owned(), AdminRouter(endpoints));
        service.add_tcp(&listen.to_string());
        service.threads = Some(1);
        self.server.add_service(service);
        self
    }

    /// A background task on a thread of its own.
    pub fn background<T: BackgroundService + Send + Sync + 'static>(mut self, name: &str, task: T) -> Self {
        let mut service = background_service(name, task);
        service.threads = Some(1);
        self.server.add_service(service);
        self
    }

    /// Readiness: `health` turns ready once the request listener answers the probe; with
    /// `exit_if_it_fails`, the process exits if it never does.
    pub fn readiness(self, health: Arc<Health>, listen: SocketAddr, token: ProbeToken, exit_if_it_fails: bool) -> Self {
        let give_up_after = exit_if_it_fails.then_some(LISTENER_DEADLINE);
        self.background("listener probe", ListenerProbe { health, listen, token, give_up_after })
    }

    /// Runs on the calling thread (not inside a tokio runtime) until `shutdown` says to stop.
    pub fn run(self, shutdown: Box<dyn ShutdownSignalWatch>) {
        self.server.run(RunArgs { shutdown_signal: shutdown });
    }
}

/// Calls `tick` every `period` (late ticks are skipped, not bunched) until shutdown; `tick`
/// gets the tick count, starting at 1.
pub async fn every(period: Duration, mut shutdown: pingora_core::server::ShutdownWatch, mut tick: impl FnMut(u32)) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The first tick of an interval is immediate; start one period in.
    ticker.tick().await;
    let mut count = 0u32;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        count = count.wrapping_add(1);
        tick(count);
    }
}
