//! `wavelink fn`: the function workload every test and benchmark runs.
//!
//! Like the busy-spin "trace function" of serverless benchmark loaders: each request asks for
//! work and the instance does it for real.
//!
//! | query | effect |
//! |---|---|
//! | `ms=N` | burn N ms of this thread's CPU time (real work, so it slows down under contention) |
//! | `sleep=N` | sleep N ms |
//! | `mb=M` | allocate and touch M MiB, held for the rest of the request |
//! | `status=S` | answer with status S instead of 200 |
//! | `headers` | answer with the request's headers, one `name: value` per line (what the function saw) |
//!
//! The same port speaks HTTP/1.1 and HTTP/2 (h2c, prior knowledge), answers gRPC calls of
//! `faas.Executor/Execute` with the same work and limits (see [`crate::grpc`]), and echoes on a
//! WebSocket for a request that asks to upgrade (see [`crate::websocket`]).
//!
//! `ms` and `sleep` are capped by `--max-ms` (10 minutes by default) and `mb` by `--max-mb` (16
//! GiB): set them low for a function anyone can call.
//!
//! Every response carries `x-wavelink-exec-us` (time spent handling it), `x-wavelink-instance`
//! (a stable id of this process) and `x-wavelink-in-flight` (requests this instance was handling
//! when the request began, itself included); and `x-wavelink-message`, the value of `FN_MESSAGE`
//! when the function's environment sets it (so tests can tell which spec an instance runs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::listen_fds;

/// Upper bounds of the query parameters, so a typo cannot pin a core for a day.
const MAX_MS: u64 = 600_000;
const MAX_MB: u64 = 16_384;

/// What one request may ask for: an exposed function should allow far less than the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most `ms` (CPU) and `sleep`, each.
    pub ms: u64,
    pub mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { ms: MAX_MS, mb: MAX_MB }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct FnArgs {
    /// Address to listen on. Port 0 picks a free port. Without it, a socket inherited as fd 3
    /// (LISTEN_FDS=1) is used, else $HOST:$PORT (HOST defaults to 0.0.0.0).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Id reported in x-wavelink-instance [default: <pid>-<random>].
    #[arg(long, env = "WAVELINK_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,
    /// On SIGTERM, how long in-flight requests may take before the process exits anyway.
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub grace_period: Duration,
    /// Most milliseconds of CPU (`ms=`) or sleep (`sleep=`) one request may ask for; more is a 400.
    #[arg(long, env = "FN_MAX_MS", default_value_t = MAX_MS, value_name = "MS", value_parser = clap::value_parser!(u64).range(..=MAX_MS))]
    pub max_ms: u64,
    /// Most MiB one request may allocate (`mb=`); more is a 400.
    #[arg(long, env = "FN_MAX_MB", default_value_t = MAX_MB, value_name = "MIB", value_parser = clap::value_parser!(u64).range(..=MAX_MB))]
    pub max_mb: u64,
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    wavelink_core::duration::parse_duration(text)
}

pub(crate) struct Instance {
    pub(crate) id: String,
    pub(crate) in_flight: AtomicU32,
    /// `FN_MESSAGE` from the environment, echoed in every answer.
    message: Option<http::HeaderValue>,
    pub(crate) limits: Limits,
}

/// Runs the workload until SIGTERM or SIGINT.
pub fn run(args: FnArgs) -> anyhow::Result<()> {
    let std_listener = bind(&args)?;
    let addr = std_listener.local_addr().context("reading the listening address")?;
    std_listener.set_nonblocking(true).context("making the listener non-blocking")?;
    let id = args.instance_id.clone().unwrap_or_else(|| format!("{}-{:08x}", std::process::id(), fastrand::u32(..)));
    let message = std::env::var("FN_MESSAGE").ok().and_then(|m| http::HeaderValue::from_str(&m).ok());
    let limits = Limits { ms: args.max_ms, mb: args.max_mb };
    let instance = Arc::new(Instance { id, in_flight: AtomicU32::new(0), message, limits });
    // Printed so a caller that asked for port 0 learns the port.
    println!("listening on {addr}");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve(std_listener, instance, args.grace_period))
}

fn bind(args: &FnArgs) -> anyhow::Result<std::net::TcpListener> {
    if let Some(addr) = args.listen {
        return std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"));
    }
    if let Some(listener) = listen_fds::inherited_listener()? {
        return Ok(listener);
    }
    if let Ok(port) = std::env::var("PORT") {
        let host = std::env::var("HOST").unwrap_or_else(|_| "0.0.0.0".to_owned());
        let port: u16 = port.parse().with_context(|| format!("PORT={port:?} is not a port number"))?;
        let ip: std::net::IpAddr = host.parse().with_context(|| format!("HOST={host:?} is not an IP address"))?;
        let addr = SocketAddr::new(ip, port);
        return std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr} (from HOST/PORT)"));
    }
    bail!("no address to listen on: pass --listen ADDR, set PORT, or pass a listening socket as fd 3 with LISTEN_FDS=1")
}

async fn serve(listener: std::net::TcpListener, instance: Arc<Instance>, grace_period: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(listener).context("registering the listener")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of fds or a connection reset before accept: keep serving the others.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let instance = instance.clone();
        let service = service_fn(move |request| answer(request, instance.clone()));
        // HTTP/1.1, or HTTP/2 for a client that starts with its preface (h2c: gRPC).
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client going away mid-request is its business, not an error of the function.
            let _ = connection.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(grace_period, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace_period, "requests still running after the grace period; exiting anyway");
    }
    Ok(())
}

/// What one request asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Work {
    pub cpu_ms: u64,
    pub sleep_ms: u64,
    pub memory_mb: u64,
    pub status: Option<StatusCode>,
    pub echo_headers: bool,
}

impl Work {
    /// Parses `ms`, `sleep`, `mb`, `status` and `headers` from a query string; other parameters
    /// are ignored.
    pub fn from_query(query: &str, limits: Limits) -> Result<Work, String> {
        let mut work = Work::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |max: u64| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| format!("{key}={value:?}: expected a whole number from 0 to {max}"))
            };
            match key {
                "ms" => work.cpu_ms = number(limits.ms)?,
                "sleep" => work.sleep_ms = number(limits.ms)?,
                "mb" => work.memory_mb = number(limits.mb)?,
                "status" => {
                    let code = number(599)?;
                    let status = u16::try_from(code)
                        .ok()
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .filter(|s| s.as_u16() >= 200)
                        .ok_or_else(|| format!("status={value:?}: expected a status from 200 to 599"))?;
                    work.status = Some(status);
                }
                "headers" => work.echo_headers = true,
                _ => {}
            }
        }
        Ok(work)
    }
}

/// One request: a gRPC call (`faas.Executor/Execute`) or an HTTP request with its query.
async fn answer(
    request: Request<Incoming>,
    instance: Arc<Instance>,
) -> Result<Response<tonic::body::Body>, Infallible> {
    let in_flight = instance.in_flight.fetch_add(1, SeqCst) + 1;
    let _in_flight = DecrementOnDrop(&instance.in_flight);
    if crate::grpc::is_grpc(&request) {
        return Ok(crate::grpc::serve(request, instance.clone(), in_flight).await);
    }
    if crate::websocket::is_websocket(&request) {
        return Ok(crate::websocket::accept(request, instance.clone()).map(tonic::body::Body::new));
    }
    Ok(handle(request, &instance, in_flight).await.map(tonic::body::Body::new))
}

async fn handle(request: Request<Incoming>, instance: &Instance, in_flight: u32) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (status, body) = match Work::from_query(request.uri().query().unwrap_or(""), instance.limits) {
        Ok(work) => {
            let memory = if work.cpu_ms > 0 || work.memory_mb > 0 {
                // Blocking work runs off the event loop, so concurrent requests proceed in parallel.
                let (cpu_ms, memory_mb) = (work.cpu_ms, work.memory_mb);
                match tokio::task::spawn_blocking(move || {
                    let memory = touch_memory(memory_mb);
                    burn_cpu(Duration::from_millis(cpu_ms));
                    memory
                })
                .await
                {
                    Ok(memory) => Some(memory),
                    Err(e) => {
                        return reply(
                            instance,
                            started,
                            in_flight,
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("work failed: {e}\n"),
                        );
                    }
                }
            } else {
                None
            };
            if work.sleep_ms > 0 {
                tokio::time::sleep(Duration::from_millis(work.sleep_ms)).await;
            }
            drop(memory);
            let body = if work.echo_headers {
                let lines = request
                    .headers()
                    .iter()
                    .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
                Bytes::from(lines.collect::<String>())
            } else {
                Bytes::from_static(b"ok\n")
            };
            (work.status.unwrap_or(StatusCode::OK), body)
        }
        Err(message) => (StatusCode::BAD_REQUEST, Bytes::from(message + "\n")),
    };
    reply(instance, started, in_flight, status, body)
}

fn reply(
    instance: &Instance,
    started: Instant,
    in_flight: u32,
    status: StatusCode,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let exec_us = started.elapsed().as_micros() as u64;
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert("x-wavelink-exec-us", exec_us.into());
    headers.insert("x-wavelink-in-flight", in_flight.into());
    if let Ok(id) = http::HeaderValue::from_str(&instance.id) {
        headers.insert("x-wavelink-instance", id);
    }
    if let Some(message) = &instance.message {
        headers.insert("x-wavelink-message", message.clone());
    }
    response
}

struct DecrementOnDrop<'a>(&'a AtomicU32);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Burns `budget` of this thread's CPU time (not wall time: under contention it takes longer,
/// as real work would).
pub fn burn_cpu(budget: Duration) {
    if budget.is_zero() {
        return;
    }
    let cpu_now = || {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
            .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
    };
    let wall_start = Instant::now();
    let Ok(start) = cpu_now() else {
        // No per-thread clock: spin on wall time instead.
        while wall_start.elapsed() < budget {
            std::hint::black_box(spin(1_000));
        }
        return;
    };
    let mut state = 0u64;
    loop {
        state = std::hint::black_box(spin(state ^ 20_000));
        match cpu_now() {
            Ok(now) if now.saturating_sub(start) < budget => {}
            _ => break,
        }
    }
}

/// A little integer work the optimiser cannot remove.
fn spin(seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..2_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// Allocates `mb` MiB and writes to every page so it is really resident.
pub fn touch_memory(mb: u64) -> Vec<u8> {
    let mut memory = vec![0u8; (mb as usize) << 20];
    for page in memory.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_parsed_from_the_query() {
        let parse = |q: &str| Work::from_query(q, Limits::default());
        assert_eq!(parse(""), Ok(Work::default()));
        assert_eq!(
            parse("ms=5&sleep=10&mb=2&status=503&other=x"),
            Ok(Work {
                cpu_ms: 5,
                sleep_ms: 10,
                memory_mb: 2,
                status: Some(StatusCode::SERVICE_UNAVAILABLE),
                echo_headers: false
            })
        );
        assert!(parse("headers").unwrap().echo_headers);
        for bad in ["ms=abc", "ms=-1", "sleep=600001", "mb=99999", "status=99", "status=700", "ms"] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains(bad.split('=').next().unwrap()), "{error}");
        }
        // An exposed function's own, lower limits.
        let strict = Limits { ms: 100, mb: 8 };
        assert!(Work::from_query("ms=100&sleep=100&mb=8", strict).is_ok());
        for bad in ["ms=101", "sleep=101", "mb=9"] {
            let error = Work::from_query(bad, strict).expect_err(bad);
            assert!(error.contains("from 0 to"), "{error}");
        }
    }

    #[test]
    fn burning_cpu_uses_that_much_thread_cpu_time() {
        let cpu = || nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
        let before = cpu();
        burn_cpu(Duration::from_millis(30));
        let after = cpu();
        let used = Duration::new(after.tv_sec() as u64, after.tv_nsec() as u32)
            - Duration::new(before.tv_sec() as u64, before.tv_nsec() as u32);
        assert!(used >= Duration::from_millis(30), "{used:?}");
    }

    #[test]
    fn touched_memory_has_the_asked_size() {
        assert_eq!(touch_memory(3).len(), 3 << 20);
        assert!(touch_memory(0).is_empty());
    }
}
