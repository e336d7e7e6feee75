//! The Pingora `ProxyHttp` of the ingress: route by Host, hold a slot, forward, account.
//!
//! Phases, each doing one thing:
//! - `request_filter`: resolve the function (404 if none), take or wait for a slot (503 with
//!   `Retry-After` if none comes), watching for the client hanging up while it waits;
//! - `upstream_peer`: the slot's instance;
//! - `fail_to_connect`: retry a refused connection on another free instance;
//! - `logging`: metrics once, and the slot back as soon as the exchange is over.
//!
//! The slot lives in the request context, so it is released on every exit path even if Pingora
//! drops the request midway.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};
use wavelink_core::function::host_without_port;
use wavelink_server::health::{PROBE_HEADER, ProbeToken};

use crate::function::{FunctionState, SlotGuard};
use crate::metrics::{Rejection, Track};
use crate::router::Router;

/// How many other instances a refused connection is retried on.
const CONNECT_RETRIES: u8 = 2;

pub struct Ingress {
    pub router: Arc<Router>,
    /// Recognises this process's own readiness probe.
    pub probe_token: ProbeToken,
}

/// Per-request state.
pub struct RequestCtx {
    arrived: Instant,
    function: Option<Arc<FunctionState>>,
    slot: Option<SlotGuard>,
    track: Track,
    connect_failures: u8,
}

#[async_trait]
impl ProxyHttp for Ingress {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx { arrived: Instant::now(), function: None, slot: None, track: Track::None, connect_failures: 0 }
    }

    /// No response compression module: the ingress passes bodies through untouched.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let header = session.req_header();
        let host = header
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| header.uri.host())
            .and_then(host_without_port);
        let Some(host) = host else {
            respond(session, 400, &[], Bytes::from_static(b"missing Host header\n")).await?;
            return Ok(true);
        };
        let Some(function) = self.router.lookup(host) else {
            let probe = session.req_header().headers.get(PROBE_HEADER).map(|v| v.as_bytes());
            if self.probe_token.is_probe(host, probe) {
                respond(session, 204, &[], Bytes::new()).await?;
                return Ok(true);
            }
            self.router.metrics().unknown_host.inc();
            let body = format!("no function is served at host {host:?}\n");
            respond(session, 404, &[], Bytes::from(body)).await?;
            return Ok(true);
        };
        function.load.arrivals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let function = ctx.function.insert(function);

        let slot = match function.try_acquire() {
            Some(slot) => slot,
            None => match wait_for_slot(session, function).await {
                Some(Ok(slot)) => slot,
                Some(Err(rejection)) => {
                    let spec = function.spec();
                    let body = match rejection {
                        Rejection::QueueTimeout => format!(
                            "function {} has no free instance: waited {}\n",
                            function.id,
                            wavelink_core::duration::HumanDuration(spec.queue_timeout)
                        ),
                        Rejection::QueueFull => format!(
                            "function {} has no free instance and {} requests waiting already\n",
                            function.id, spec.queue_depth
                        ),
                    };
                    respond(session, 503, &[("retry-after", "1")], Bytes::from(body)).await?;
                    return Ok(true);
                }
                None => {
                    let gone = Error::explain(ErrorType::ConnectionClosed, "client closed while waiting for a slot");
                    return Err(gone.into_down());
                }
            },
        };
        ctx.slot = Some(slot);
        ctx.track = Track::Regular;
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        if ctx.slot.is_none() {
            // A retry after a refused connection: only an instance free right now will do.
            ctx.slot = ctx.function.as_ref().and_then(|f| f.try_acquire());
        }
        match &ctx.slot {
            Some(slot) => Ok(Box::new(slot.instance().peer.clone())),
            None => Error::e_explain(ErrorType::HTTPStatus(502), "no other instance free to retry on"),
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the instance, so another one may take the request.
        ctx.connect_failures += 1;
        if ctx.connect_failures <= CONNECT_RETRIES {
            ctx.slot = None;
            e.set_retry(true);
        }
        e
    }

    fn suppress_error_log(&self, session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client that hangs up is routine for a serverless ingress, not an error to log.
        session.response_written().is_none() && matches!(error.etype(), ErrorType::ConnectionClosed)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // The exchange is over: free the slot before the connection is wound down.
        ctx.slot = None;
        if let Some(function) = &ctx.function {
            let status = session.response_written().map(|r| r.status.as_u16());
            function.metrics.record(ctx.track, status, ctx.arrived.elapsed().as_secs_f64());
        }
    }
}

/// Waits for a slot; `None` if the client hung up meanwhile. The hang-up can only be watched
/// when the request has no body left to read (reading it here would lose it).
async fn wait_for_slot(session: &mut Session, function: &Arc<FunctionState>) -> Option<Result<SlotGuard, Rejection>> {
    let downstream = session.as_downstream_mut();
    if !downstream.is_body_done() {
        return Some(function.acquire().await);
    }
    tokio::select! {
        result = function.acquire() => Some(result),
        _ = downstream.read_body_or_idle(true) => None,
    }
}

/// Writes a complete small response.
async fn respond(
    session: &mut Session,
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: Bytes,
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(headers.len() + 2))?;
    header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    for (name, value) in headers {
        header.insert_header(*name, *value)?;
    }
    session.write_response_header(Box::new(header), body.is_empty()).await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
