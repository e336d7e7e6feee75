//! The Pingora `ProxyHttp` of the ingress: route by Host, hold a slot, forward, account.
//!
//! Phases, each doing one thing:
//! - `early_request_filter`: the header is in (ends its deadline); pipelining, keep-alive;
//! - `request_filter`: resolve the function (404 if none), take or wait for a slot (503 with
//!   `Retry-After` if none comes), watching for the client hanging up while it waits;
//! - `upstream_peer`: the slot's instance, or its Wavelet for an emergency slot, with the
//!   function's timeouts; a request whose slot failed it waits for another like any request,
//!   for what is left of its `queue-timeout`;
//! - `upstream_request_filter`: tell the Wavelet which function (`x-wavelink-function`);
//! - `upstream_response_filter`: a Wavelet that says "full" → retry on another Wavelet, or wait;
//!   an instance that answers is healthy;
//! - `upstream_response_body_filter`: the request's whole `timeout`;
//! - `response_filter`: tell the client which track served it (`x-wavelink-track`);
//! - `fail_to_connect`: eject the instance, retry on another instance or Wavelet;
//! - `error_while_proxy`: eject an instance that reset the connection or timed out;
//! - `fail_to_proxy`: every failure a 502, 503 (with `Retry-After`) or 504 with a one-line body;
//! - `logging`: metrics once, and the slot back as soon as the exchange is over.
//!
//! The slot lives in the request context, so it is released on every exit path even if Pingora
//! drops the request midway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tracing::info;
use wavelink_core::forwarded::{REQUEST_ID_HEADER, forwarded, new_request_id, usable_request_id, x_forwarded_for};
use wavelink_core::function::host_without_port;
use wavelink_core::spec::Protocol;
use wavelink_core::tls::https_location;
use wavelink_core::wire::{
    FUNCTION_HEADER, TRACK_HEADER, WAVELET_FULL, WAVELET_HEADER, WAVELET_UNAVAILABLE, grpc_message,
    grpc_status_for_http, is_grpc,
};
use wavelink_server::auth::TOKEN_HEADER;
use wavelink_server::connections;
use wavelink_server::headers::remove_internal_headers;
use wavelink_server::health::{PROBE_HEADER, ProbeToken};
use wavelink_server::replay::retry_if_replayable;
use wavelink_server::respond::respond;

use crate::function::{FunctionState, Slot, SlotGuard};
use crate::metrics::{Rejection, Track};
use crate::router::Router;

fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// Concurrent streams on one h2c connection to a Wavelet (its EIs of one function behind it).
const WAVELET_H2_STREAMS: usize = 100;

/// How many other instances a refused connection is retried on.
const CONNECT_RETRIES: u8 = 2;

#[derive(Clone)]
pub struct Ingress {
    pub router: Arc<Router>,
    /// Recognises this process's own readiness probe.
    pub probe_token: ProbeToken,
    /// Idle client connections are closed after this (0: after each response).
    pub keepalive_timeout: std::time::Duration,
    /// One `wavelink::access` log line per request.
    pub access_log: bool,
    /// With a TLS listener: where plaintext requests are redirected, and whether all are.
    pub https: Option<HttpsRedirect>,
}

/// Redirects of plaintext requests to the TLS listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpsRedirect {
    /// Every function's (`proxy.tls.redirect`); otherwise those with `wavelink.dev/https-redirect`.
    pub all: bool,
    /// The port the `Location` names.
    pub port: u16,
}

/// Per-request state. Dropping it ends the request's count in its function's load.
pub struct RequestCtx {
    arrived: Instant,
    /// The client's `x-request-id` if usable, else a new one.
    request_id: String,
    /// The client asked to switch protocols (`Upgrade`: WebSocket and the like).
    upgrade: bool,
    /// A gRPC call: the proxy's own answers are gRPC statuses, not bare HTTP errors.
    grpc: bool,
    /// The client's connection is TLS.
    tls: bool,
    /// The status the proxy answered with itself (for a gRPC call the HTTP status is 200, so
    /// metrics and the access log count this one).
    own_status: Option<u16>,
    /// The instance agreed (101): the connection is now a tunnel, held with its slot until
    /// either side closes, and the request's `timeout` no longer applies.
    upgraded: bool,
    function: Option<Arc<FunctionState>>,
    slot: Option<SlotGuard>,
    /// The track of the slot the request was last sent on.
    track: Track,
    connect_failures: u8,
    /// The Wavelet turned the request away without running it ("full" or "unavailable"):
    /// move the emergency slot to another one.
    wavelet_refused: Option<Refusal>,
    /// Wavelets already tried for this request (empty, and not allocated, unless one failed).
    tried_wavelets: Vec<SocketAddr>,
    /// When the request was last sent upstream, for its `timeout`.
    sent: Option<Instant>,
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if let Some(function) = &self.function {
            function.load.left();
        }
    }
}

#[async_trait]
impl ProxyHttp for Ingress {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            arrived: Instant::now(),
            request_id: String::new(),
            upgrade: false,
            upgraded: false,
            grpc: false,
            tls: false,
            own_status: None,
            function: None,
            slot: None,
            track: Track::None,
            connect_failures: 0,
            wavelet_refused: None,
            tried_wavelets: Vec::new(),
            sent: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Result<()> {
        connections::header_received(session);
        // Pipelined requests are served one after another, answers in order (RFC 9112 §9.3.2),
        // rather than the connection closing after the first.
        session.set_pipelining_enabled(true);
        // HTTP/1.1 keep-alive is unbounded by default in Pingora: an idle client connection
        // would be held for ever. A client that asked to close still gets its close.
        if session.get_keepalive().is_some() {
            let seconds = self.keepalive_timeout.as_secs();
            session.set_keepalive((seconds > 0).then_some(seconds));
        }
        Ok(())
    }

    /// No response compression module: the ingress passes bodies through untouched.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let header = session.req_header();
        ctx.request_id = match header.headers.get(REQUEST_ID_HEADER) {
            Some(id) if usable_request_id(id.as_bytes()) => String::from_utf8_lossy(id.as_bytes()).into_owned(),
            _ => new_request_id(&mut fastrand::Rng::new()),
        };
        ctx.upgrade = header.headers.contains_key(http::header::UPGRADE);
        ctx.grpc = header.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| is_grpc(v.as_bytes()));
        ctx.tls = connections::is_tls(session);
        let host = header
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| header.uri.host())
            .and_then(host_without_port);
        let Some(host) = host else {
            answer(session, ctx, 400, &[], "missing Host header\n").await?;
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
            answer(session, ctx, 404, &[], &body).await?;
            return Ok(true);
        };
        if let Some(https) = self.https
            && !ctx.tls
            && (https.all || function.spec().https_redirect)
        {
            let header = session.req_header();
            let path = header.uri.path_and_query().map_or("/", |p| p.as_str());
            let location = https_location(Some(host), path, https.port);
            if let Some(location) = location {
                // 308 keeps the method and body (301 lets clients turn a POST into a GET).
                answer(session, ctx, 308, &[("location", location.as_str())], "use HTTPS\n").await?;
                return Ok(true);
            }
        }
        function.load.arrived();
        let function = ctx.function.insert(function);

        let slot = match function.try_acquire() {
            Some(slot) => slot,
            None => match wait_for_slot(session, function).await {
                Some(Ok(slot)) => slot,
                Some(Err(rejection)) => {
                    let body = format!("{}\n", rejection_message(function, rejection));
                    answer(session, ctx, 503, &[("retry-after", "1")], &body).await?;
                    return Ok(true);
                }
                None => {
                    let gone = Error::explain(ErrorType::ConnectionClosed, "client closed while waiting for a slot");
                    return Err(gone.into_down());
                }
            },
        };
        ctx.slot = Some(slot);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        if let Some(refusal) = ctx.wavelet_refused.take()
            && let Some(slot) = &mut ctx.slot
            && !move_to_another_wavelet(slot, &mut ctx.tried_wavelets, refusal == Refusal::Full)
        {
            ctx.slot = None;
            if refusal == Refusal::Unavailable {
                return Error::e_explain(
                    ErrorType::HTTPStatus(503),
                    "no Wavelet can start this function now (its image is not on their nodes yet, or their \
                     container runtime does not answer)",
                );
            }
            // Every Wavelet is at its cap: wait below for capacity like any request (a Wavelet
            // whose instances free up, or an RI).
        }
        let Some(function) = ctx.function.clone() else {
            return Error::e_explain(ErrorType::HTTPStatus(502), "no function for the request");
        };
        if ctx.slot.is_none() {
            // The slot failed the request before it ran (refused, or every Wavelet full): wait
            // for another for what is left of the queue timeout.
            let left = function.spec().queue_timeout.saturating_sub(ctx.arrived.elapsed());
            match function.acquire_within(left).await {
                Ok(slot) => ctx.slot = Some(slot),
                Err(rejection) => {
                    return Error::e_explain(ErrorType::HTTPStatus(503), rejection_message(&function, rejection));
                }
            }
        }
        let Some(slot) = &ctx.slot else {
            return Error::e_explain(ErrorType::HTTPStatus(502), "no instance for the request");
        };
        ctx.track = slot.track().into();
        ctx.sent = Some(Instant::now());
        let mut peer = slot.peer().clone();
        // Pingora has one read timeout, for the response header and for each read of the body:
        // the wait for the response to start, or the idle timeout when shorter (Knative's idle
        // timer also runs before the first byte).
        let spec = function.spec();
        peer.options.read_timeout = if ctx.upgrade {
            // The upstream read timeout is set once per connection, and an upgraded one (a
            // WebSocket) may stay quiet for long: only the function's idle-timeout bounds it.
            spec.idle_timeout
        } else {
            Some(spec.idle_timeout.map_or(spec.response_start(), |idle| idle.min(spec.response_start())))
        };
        peer.options.write_timeout = Some(spec.timeout);
        if spec.protocol == Protocol::H2c {
            // HTTP/2 with prior knowledge: an RI takes as many streams on a connection as it
            // takes requests; a Wavelet multiplexes the function's EIs behind one connection.
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = match ctx.track {
                Track::Emergency => WAVELET_H2_STREAMS,
                _ => spec.container_concurrency.max(1) as usize,
            };
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The platform's own headers come from the proxy only, on every track.
        remove_internal_headers(upstream_request);
        upstream_request.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            let header_text = |name: &str| upstream_request.headers.get(name).and_then(|v| v.to_str().ok());
            let for_list = x_forwarded_for(header_text("x-forwarded-for"), client);
            let element = forwarded(header_text("forwarded"), client, scheme(ctx.tls), header_text("host"));
            upstream_request.insert_header("x-forwarded-for", for_list)?;
            upstream_request.insert_header("forwarded", element)?;
        }
        upstream_request.insert_header("x-forwarded-proto", scheme(ctx.tls))?;
        if ctx.track == Track::Emergency
            && let Some(function) = &ctx.function
        {
            upstream_request.insert_header(FUNCTION_HEADER, function.label.as_str())?;
            if let Some(token) = self.router.links().auth.load().token() {
                upstream_request.insert_header(TOKEN_HEADER, token)?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let refusal = match response.headers.get(WAVELET_HEADER).map(|v| v.as_bytes()) {
            _ if ctx.track != Track::Emergency || response.status != http::StatusCode::SERVICE_UNAVAILABLE => None,
            Some(v) if v == WAVELET_FULL.as_bytes() => Some(Refusal::Full),
            Some(v) if v == WAVELET_UNAVAILABLE.as_bytes() => Some(Refusal::Unavailable),
            _ => None,
        };
        ctx.upgraded = response.status == http::StatusCode::SWITCHING_PROTOCOLS;
        if refusal.is_none()
            && let Some(slot) = &ctx.slot
        {
            match slot.slot() {
                Slot::Regular(instance) => instance.health.succeeded(),
                Slot::Emergency(wavelet) => wavelet.health.succeeded(),
            }
        }
        if let Some(refusal) = refusal {
            // Nothing has gone to the client yet: try the request on another Wavelet.
            ctx.wavelet_refused = Some(refusal);
            let mut e = Error::explain(ErrorType::Custom("wavelet refused"), "the Wavelet cannot take the request");
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        // The whole request's bound; each wait for bytes is bounded by the read timeout. An
        // upgraded connection is not a request any more (Knative cut WebSockets at its timeout).
        if let (Some(sent), Some(function)) = (ctx.sent, &ctx.function)
            && !ctx.upgraded
            && sent.elapsed() > function.spec().timeout
        {
            eject_instance(ctx);
            return Error::e_explain(ErrorType::ReadTimedout, "the request ran longer than its timeout");
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(track) = ctx.track.header_value() {
            response.insert_header(TRACK_HEADER, track)?;
        }
        response.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the instance or Wavelet, so another one may take the request; the
        // one that failed gets no more for a while.
        eject_instance(ctx);
        if let Some(Slot::Emergency(wavelet)) = ctx.slot.as_ref().map(|slot| slot.slot()) {
            let (_, backoff) = wavelet.health.fail();
            tracing::debug!(wavelet = %wavelet.addr, ?backoff, "Wavelet unreachable; ejected");
        }
        ctx.connect_failures += 1;
        if ctx.connect_failures <= CONNECT_RETRIES {
            let keep =
                ctx.slot.as_mut().is_some_and(|slot| move_to_another_wavelet(slot, &mut ctx.tried_wavelets, false));
            if !keep {
                ctx.slot = None;
            }
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.wavelet_refused.is_some() {
            // The Wavelet refused the request without running it: safe to send again if the
            // body can be replayed, whatever the method.
            e.set_retry(!session.as_ref().retry_buffer_truncated());
            return e;
        }
        // An instance that timed out or broke the connection is not chosen for a while (one
        // that timed out may still be running the request).
        if e.esource() == &pingora_core::ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout
                    | ErrorType::ConnectionClosed
                    | ErrorType::ReadError
                    | ErrorType::WriteError
            )
            && !client_reused
        {
            eject_instance(ctx);
        }
        if matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::WriteTimedout) {
            // It may have run: never sent again.
            e.set_retry(false);
        } else {
            retry_if_replayable(&mut e, session, client_reused);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let code = failure_status(e);
        let reason = e.context.as_ref().map(|c| c.as_str().to_owned()).unwrap_or_else(|| e.etype().as_str().to_owned());
        let body = format!("{}\n", reason.lines().next().unwrap_or_default());
        match code {
            0 => {}
            // Overload: tell the client when to come back, like the queue's 503.
            503 => {
                let _ = answer(session, ctx, 503, &[("retry-after", "1")], &body).await;
            }
            _ => {
                let _ = answer(session, ctx, code, &[], &body).await;
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        error: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        // A Wavelet at its cap, or an instance refusing while it is ejected, is routine under
        // load: counted in metrics, not logged per retry.
        matches!(error.etype(), ErrorType::Custom("wavelet refused") | ErrorType::ConnectRefused)
    }

    fn suppress_error_log(&self, session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client that hangs up is routine for a serverless ingress, not an error to log.
        session.response_written().is_none() && matches!(error.etype(), ErrorType::ConnectionClosed)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        connections::request_done(session);
        // The exchange is over: free the slot before the connection is wound down.
        ctx.slot = None;
        let status = ctx.own_status.or_else(|| session.response_written().map(|r| r.status.as_u16()));
        if let Some(function) = &ctx.function {
            function.metrics().record(ctx.track, status, ctx.arrived.elapsed().as_secs_f64());
        }
        if self.access_log {
            let request = session.req_header();
            let client = session.client_addr().map(ToString::to_string).unwrap_or_default();
            let host = request.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
            info!(target: "wavelink::access", %client, method = %request.method, host, path = %request.uri,
                  status = status.unwrap_or(0), track = ctx.track.header_value().unwrap_or("none"),
                  ms = ctx.arrived.elapsed().as_secs_f64() * 1000.0, request_id = %ctx.request_id);
        }
    }
}

/// The proxy's own answer: `status` with a one-line body, or for a gRPC call the gRPC status
/// clients understand (a trailers-only response: HTTP 200, `grpc-status`, `grpc-message`), so
/// an overloaded gRPC function is UNAVAILABLE (14) rather than an opaque HTTP 503. The status
/// is what metrics and the access log count.
async fn answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    headers: &[(&'static str, &str)],
    message: &str,
) -> Result<()> {
    ctx.own_status = Some(status);
    let mut all: Vec<(&'static str, &str)> = headers.to_vec();
    all.push((REQUEST_ID_HEADER, &ctx.request_id));
    if !ctx.grpc {
        return respond(session, status, &all, Bytes::from(message.to_owned())).await;
    }
    let code = grpc_status_for_http(status).to_string();
    let text = grpc_message(message);
    all.extend([("content-type", "application/grpc"), ("grpc-status", code.as_str()), ("grpc-message", text.as_str())]);
    respond(session, 200, &all, Bytes::new()).await
}

/// The status a failed request is answered with: the one chosen on the way, 504 for timeouts,
/// 503 when Wavelets kept refusing, 502 for other upstream or proxy failures, none (0) when the
/// client is gone, 400 for a client that sent something unusable.
fn failure_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() != &pingora_core::ErrorSource::Downstream =>
        {
            504
        }
        ErrorType::Custom("wavelet refused") => 503,
        _ => match e.esource() {
            pingora_core::ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            _ => 502,
        },
    }
}

/// Why a request got no slot, in one line.
fn rejection_message(function: &FunctionState, rejection: Rejection) -> String {
    let spec = function.spec();
    match rejection {
        Rejection::QueueTimeout => format!(
            "function {} has no free instance: waited {}",
            function.id,
            wavelink_core::duration::HumanDuration(spec.queue_timeout)
        ),
        Rejection::QueueFull => {
            format!("function {} has no free instance and {} requests waiting already", function.id, spec.queue_depth)
        }
        Rejection::ProxyQueueFull => {
            format!("function {} has no free instance and the proxy has its most requests waiting already", function.id)
        }
    }
}

/// Takes the request's Regular Instance out of the choice for a back-off.
fn eject_instance(ctx: &RequestCtx) {
    if let (Some(instance), Some(function)) = (ctx.slot.as_ref().and_then(|slot| slot.instance()), &ctx.function) {
        let (_, backoff) = instance.health.fail();
        function.metrics().ejections.inc();
        tracing::debug!(function = %function.id, instance = %instance.addr, ?backoff, "instance ejected");
    }
}

/// How a Wavelet turned a request away (its `x-wavelink-wavelet` answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// At its node cap: no function can start there for a moment.
    Full,
    /// This function cannot start there yet (its image is being pulled); others can.
    Unavailable,
}

/// Moves an emergency slot off a Wavelet that failed it (marking that Wavelet full for every
/// function when `mark_full`); false for a regular slot or when no other Wavelet is left.
fn move_to_another_wavelet(slot: &mut SlotGuard, tried: &mut Vec<SocketAddr>, mark_full: bool) -> bool {
    let Slot::Emergency(current) = slot.slot() else { return false };
    tried.push(current.addr);
    slot.move_to_another_wavelet(tried, mark_full)
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
