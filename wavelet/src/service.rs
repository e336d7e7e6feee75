//! The Wavelet's Pingora `ProxyHttp`: requests forwarded by the proxy, each marked with
//! `x-wavelink-function`, go to an Emergency Instance of that function.
//!
//! - `early_request_filter`: the header is in (ends its deadline, see `wavelink_server::connections`);
//! - `request_filter`: find the function, take a lease on an instance (starting one if needed);
//!   at the node cap answer 503 with `x-wavelink-wavelet: full` so the proxy tries elsewhere;
//! - `upstream_peer`: the leased instance;
//! - `upstream_response_filter`: spawn-to-first-byte for requests that started their instance;
//! - `fail_to_connect`: the instance is broken; destroy it and retry once on another;
//! - `logging`: metrics, lease released.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};
use wavelink_core::FunctionId;
use wavelink_core::function::host_without_port;
use wavelink_core::spec::Protocol;
use wavelink_core::wire::{FUNCTION_HEADER, WAVELET_FULL, WAVELET_HEADER, WAVELET_UNAVAILABLE};
use wavelink_server::auth::{InternalAuth, TOKEN_HEADER};
use wavelink_server::connections;
use wavelink_server::headers::remove_internal_headers;
use wavelink_server::health::{PROBE_HEADER, ProbeToken};
use wavelink_server::replay::retry_if_replayable;
use wavelink_server::respond::respond;

use crate::pool::{AcquireError, FunctionPool, Lease, Pools};
use crate::runtime::SpawnError;

pub struct WaveletProxy {
    pub pools: Arc<Pools>,
    pub probe_token: ProbeToken,
    /// How long an instance started without socket activation may take to listen.
    pub spawn_timeout: Duration,
    /// Only the proxy may start instances here.
    pub auth: Arc<InternalAuth>,
}

#[derive(Default)]
pub struct WaveletCtx {
    pool: Option<Arc<FunctionPool>>,
    lease: Option<Lease>,
    /// Set while the request waits for the first byte from an instance it started.
    cold_since: Option<Instant>,
    retried: bool,
}

#[async_trait]
impl ProxyHttp for WaveletProxy {
    type CTX = WaveletCtx;

    fn new_ctx(&self) -> WaveletCtx {
        WaveletCtx::default()
    }

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut WaveletCtx) -> Result<()> {
        connections::header_received(session);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut WaveletCtx) -> Result<bool> {
        let header = session.req_header();
        let host = header.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).and_then(host_without_port);
        if let Some(host) = host
            && self.probe_token.is_probe(host, header.headers.get(PROBE_HEADER).map(|v| v.as_bytes()))
        {
            respond(session, 204, &[], Bytes::new()).await?;
            return Ok(true);
        }
        if !self.auth.accepts(header.headers.get(TOKEN_HEADER).map(|v| v.as_bytes())) {
            let body =
                Bytes::from_static(b"missing or wrong x-wavelink-token: requests come from the WaveLink proxy\n");
            respond(session, 401, &[], body).await?;
            return Ok(true);
        }
        let Some(function) = header.headers.get(FUNCTION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned)
        else {
            let body =
                Bytes::from_static(b"missing x-wavelink-function header: requests come from the WaveLink proxy\n");
            respond(session, 400, &[], body).await?;
            return Ok(true);
        };
        let pool = function
            .split_once('/')
            .and_then(|(namespace, name)| FunctionId::new(namespace, name).ok())
            .and_then(|id| self.pools.function(&id));
        let Some(pool) = pool else {
            let body = format!("no function {function:?} on this Wavelet\n");
            respond(session, 404, &[], Bytes::from(body)).await?;
            return Ok(true);
        };
        let pool = ctx.pool.insert(pool);
        match self.lease(pool).await {
            Ok(lease) => {
                if lease.cold {
                    ctx.cold_since = Some(lease.ei.spawned);
                }
                ctx.lease = Some(lease);
                Ok(false)
            }
            Err(AcquireError::Full(max)) => {
                let body = format!("this node already runs {max} Emergency Instances\n");
                respond(session, 503, &[(WAVELET_HEADER, WAVELET_FULL), ("retry-after", "1")], Bytes::from(body))
                    .await?;
                Ok(true)
            }
            Err(e @ AcquireError::CrashLoop { retry_in, .. }) => {
                // Unavailable here for now: the proxy tries another Wavelet, or the queue. The
                // back-off doubles from 1 s, so these values cover it (headers are 'static).
                let retry_after = match retry_in.as_secs() {
                    0..=1 => "1",
                    2..=3 => "2",
                    4..=7 => "4",
                    8..=15 => "8",
                    16..=29 => "16",
                    _ => "30",
                };
                respond(
                    session,
                    503,
                    &[(WAVELET_HEADER, WAVELET_UNAVAILABLE), ("retry-after", retry_after)],
                    Bytes::from(format!("{e}\n")),
                )
                .await?;
                Ok(true)
            }
            Err(AcquireError::Start(e)) if e.is_unavailable() => {
                // Not here yet (an image on its way): the proxy tries another Wavelet.
                let body = format!("{e}\n");
                respond(
                    session,
                    503,
                    &[(WAVELET_HEADER, WAVELET_UNAVAILABLE), ("retry-after", "1")],
                    Bytes::from(body),
                )
                .await?;
                Ok(true)
            }
            Err(e @ (AcquireError::Start(_) | AcquireError::StartBackoff { .. })) => {
                respond(session, 502, &[], Bytes::from(format!("{e}\n"))).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut WaveletCtx) -> Result<Box<HttpPeer>> {
        if ctx.lease.is_none()
            && let Some(pool) = &ctx.pool
        {
            // Retrying after a broken instance.
            ctx.lease = self.lease(pool).await.ok();
            ctx.cold_since = ctx.lease.as_ref().filter(|l| l.cold).map(|l| l.ei.spawned);
        }
        match &ctx.lease {
            Some(lease) => {
                let mut peer = lease.ei.peer.clone();
                if let Some(pool) = &ctx.pool {
                    let spec = &pool.def.load().spec;
                    if spec.protocol == Protocol::H2c {
                        // HTTP/2 with prior knowledge, as many streams as the EI takes requests.
                        peer.options.set_http_version(2, 2);
                        peer.options.max_h2_streams = spec.container_concurrency.max(1) as usize;
                    }
                }
                Ok(Box::new(peer))
            }
            None => Error::e_explain(ErrorType::HTTPStatus(502), "no instance could be started for the retry"),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut WaveletCtx,
    ) -> Result<()> {
        // x-wavelink-function (and any other of the platform's headers) is between proxy and
        // Wavelet: an Emergency Instance sees what an RI sees.
        remove_internal_headers(upstream_request);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut WaveletCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(lease) = ctx.lease.take() {
            self.pools.discard(lease);
        }
        if !ctx.retried {
            ctx.retried = true;
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut WaveletCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // A new instance that took the connection (socket activation: the kernel's backlog)
        // and died before answering: discarded, and counted towards its crash-loop back-off.
        if ctx.cold_since.is_some()
            && let Some(lease) = ctx.lease.take_if(|lease| !lease.ei.reach.alive())
        {
            self.pools.discard(lease);
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        retry_if_replayable(&mut e, session, client_reused);
        e
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut WaveletCtx,
    ) -> Result<()> {
        // Only the Wavelet itself may say "full" or "unavailable": an instance's own header of
        // that name would make the proxy replay a request that already ran.
        response.remove_header(WAVELET_HEADER);
        if let (Some(since), Some(pool)) = (ctx.cold_since.take(), &ctx.pool) {
            pool.started_fine();
            pool.metrics().first_byte.observe(since.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut WaveletCtx) {
        connections::request_done(session);
        ctx.lease = None;
        if let Some(pool) = &ctx.pool {
            pool.metrics().record_request(session.response_written().map(|r| r.status.as_u16()));
        }
    }
}

impl WaveletProxy {
    /// A lease, waiting for the instance to listen when it cannot be handed a socket.
    async fn lease(&self, pool: &Arc<FunctionPool>) -> Result<Lease, AcquireError> {
        let lease = self.pools.acquire(pool).await?;
        if lease.cold && lease.ei.must_wait_listening() && !lease.ei.reach.wait_listening(self.spawn_timeout).await {
            let error = if lease.ei.reach.alive() {
                SpawnError::NotListening(self.spawn_timeout)
            } else {
                SpawnError::ExitedEarly
            };
            self.pools.discard(lease);
            return Err(AcquireError::Start(error.into()));
        }
        Ok(lease)
    }
}
