//! The wrk-style load generator: `threads` OS threads, each with its own single-threaded
//! runtime and its share of `connections` keep-alive connections.
//!
//! Closed loop (no rate): every connection sends its next request as soon as the previous one is
//! answered, as wrk does. Open loop (`rate`): every connection follows a fixed schedule, and a
//! request held back by a slow answer to an earlier one is charged the time it waited, so a
//! stalled server shows up in the percentiles instead of silently slowing the client down
//! (wrk2's correction for coordinated omission).
//!
//! The wait is computed on a virtual timeline in which the client sends every request exactly
//! when it may (at its intended time, or when the connection's previous answer would have come
//! had that one left on time), with the service times actually observed. Lateness of the
//! client's own timer (tokio's has millisecond granularity) is thereby not charged to the
//! server, which would otherwise add up to a millisecond to every sample and cascade from one
//! request to the next. Corrected latency = virtual wait + observed service time; the
//! uncorrected latency (service time alone) is recorded too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::time::Instant as TokioInstant;

use crate::client::{ClientError, Connection};

/// Latencies are recorded in microseconds, up to an hour, with 3 significant digits.
const MAX_LATENCY_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|e| panic!("constant histogram bounds: {e}"))
}

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub addr: SocketAddr,
    /// The complete request every connection sends.
    pub request: Arc<Vec<u8>>,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    /// Requests per second over all connections; `None` for closed loop.
    pub rate: Option<f64>,
    pub timeout: Duration,
}

/// Errors by kind, as wrk reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SocketErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
}

/// What one thread (and, merged, the whole run) measured.
#[derive(Debug, Clone)]
pub struct Measurements {
    /// From the intended send time (open loop) or the actual one (closed loop) to the response.
    pub latency: Histogram<u64>,
    /// From the actual send time to the response.
    pub uncorrected: Histogram<u64>,
    pub requests: u64,
    pub bytes: u64,
    pub non_2xx_3xx: u64,
    pub errors: SocketErrors,
    /// Requests completed in each whole second, per thread (for wrk's Req/Sec stats).
    pub per_second: Vec<u64>,
    pub elapsed: Duration,
}

impl Measurements {
    fn new() -> Self {
        Measurements {
            latency: new_histogram(),
            uncorrected: new_histogram(),
            requests: 0,
            bytes: 0,
            non_2xx_3xx: 0,
            errors: SocketErrors::default(),
            per_second: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    fn record(&mut self, second: usize, latency_us: u64, uncorrected_us: u64) {
        self.latency.saturating_record(latency_us.max(1));
        self.uncorrected.saturating_record(uncorrected_us.max(1));
        self.requests += 1;
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, 0);
        }
        self.per_second[second] += 1;
    }

    fn error(&mut self, error: &ClientError) {
        match error {
            ClientError::Connect(_) => self.errors.connect += 1,
            ClientError::Write(_) => self.errors.write += 1,
            ClientError::Read(_) | ClientError::Closed | ClientError::NoResponse | ClientError::Malformed(_) => {
                self.errors.read += 1
            }
        }
    }

    /// Adds another thread's measurements (per-second counts stay per thread: see `threads`).
    fn merge(&mut self, other: &Measurements) {
        let _ = self.latency.add(&other.latency);
        let _ = self.uncorrected.add(&other.uncorrected);
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.non_2xx_3xx += other.non_2xx_3xx;
        self.errors.connect += other.errors.connect;
        self.errors.read += other.errors.read;
        self.errors.write += other.errors.write;
        self.errors.timeout += other.errors.timeout;
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

/// The merged result plus each thread's per-second request counts.
pub struct RunResult {
    pub total: Measurements,
    pub thread_seconds: Vec<Vec<u64>>,
}

/// Progress shared with a progress display.
#[derive(Default)]
pub struct Progress {
    pub requests: AtomicU64,
    pub done: AtomicBool,
}

/// Checks the target answers before the run, so an unreachable one is one clear error.
pub fn preflight(addr: SocketAddr) -> Result<(), String> {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(|_| ())
        .map_err(|e| format!("cannot connect to {addr}: {e}"))
}

/// Runs the plan on its threads and merges what they measured.
pub fn run(plan: &LoadPlan, progress: &Arc<Progress>) -> Result<RunResult, String> {
    let threads = plan.threads.clamp(1, plan.connections.max(1));
    let start = Instant::now() + Duration::from_millis(20);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            // Spread connections as evenly as possible over threads.
            let connections = plan.connections / threads + usize::from(t < plan.connections % threads);
            let plan = plan.clone();
            let progress = progress.clone();
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || run_thread(&plan, connections, start, &progress))
                .map_err(|e| format!("starting a load thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut total = Measurements::new();
    let mut thread_seconds = Vec::with_capacity(threads);
    for handle in handles {
        let measured = handle.join().map_err(|_| "a load thread panicked".to_owned())??;
        total.merge(&measured);
        thread_seconds.push(measured.per_second);
    }
    progress.done.store(true, Relaxed);
    Ok(RunResult { total, thread_seconds })
}

fn run_thread(
    plan: &LoadPlan,
    connections: usize,
    start: Instant,
    progress: &Arc<Progress>,
) -> Result<Measurements, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a load runtime: {e}"))?;
    runtime.block_on(async {
        let start = TokioInstant::from_std(start);
        let deadline = start + plan.duration;
        // Per connection, the gap between its scheduled requests.
        let interval = plan.rate.map(|rate| Duration::from_secs_f64(plan.connections as f64 / rate));
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                // Stagger first sends over one interval, so the schedule is smooth, not in waves.
                let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / connections.max(1) as f64));
                let schedule = Schedule { start, first: start + offset, deadline, interval };
                tokio::spawn(connection_loop(plan.clone(), schedule, progress.clone()))
            })
            .collect();
        let mut thread = Measurements::new();
        for task in tasks {
            if let Ok(measured) = task.await {
                thread.merge(&measured);
                for (second, count) in measured.per_second.iter().enumerate() {
                    if thread.per_second.len() <= second {
                        thread.per_second.resize(second + 1, 0);
                    }
                    thread.per_second[second] += count;
                }
            }
        }
        thread.elapsed = (TokioInstant::now().min(deadline)).saturating_duration_since(start);
        Ok(thread)
    })
}

/// When one connection sends.
#[derive(Clone, Copy)]
struct Schedule {
    /// Start of the run (seconds are counted from it).
    start: TokioInstant,
    /// This connection's first send.
    first: TokioInstant,
    deadline: TokioInstant,
    /// Gap between sends (open loop), or none (closed loop).
    interval: Option<Duration>,
}

async fn connection_loop(plan: LoadPlan, schedule: Schedule, progress: Arc<Progress>) -> Measurements {
    let Schedule { start, first, deadline, interval } = schedule;
    let mut measured = Measurements::new();
    let mut connection: Option<Connection> = None;
    let mut next = first;
    // When the previous answer would have come on the virtual, punctual timeline.
    let mut virtual_free = first;
    loop {
        let intended = match interval {
            Some(gap) => {
                let intended = next;
                next += gap;
                if intended >= deadline {
                    break;
                }
                tokio::time::sleep_until(intended).await;
                intended
            }
            None => {
                let now = TokioInstant::now();
                if now < first {
                    tokio::time::sleep_until(first).await;
                    continue;
                }
                now
            }
        };
        if intended >= deadline {
            break;
        }
        let conn = match &mut connection {
            Some(conn) => conn,
            None => match tokio::time::timeout_at(deadline, Connection::connect(plan.addr)).await {
                Ok(Ok(conn)) => connection.insert(conn),
                Ok(Err(e)) => {
                    measured.error(&e);
                    // Do not spin on a refusing server.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => break,
            },
        };
        let sent = TokioInstant::now();
        let outcome = tokio::time::timeout(plan.timeout, conn.send(&plan.request)).await;
        let done = TokioInstant::now();
        let service = done.saturating_duration_since(sent);
        // On the punctual timeline the request leaves when due, or when the connection frees.
        let ready = intended.max(virtual_free);
        virtual_free = ready + service;
        if done > deadline {
            break;
        }
        match outcome {
            Ok(Ok(response)) => {
                let second = done.saturating_duration_since(start).as_secs() as usize;
                let waited = ready.saturating_duration_since(intended);
                measured.record(second, (waited + service).as_micros() as u64, service.as_micros() as u64);
                measured.bytes += response.bytes as u64;
                if !(200..400).contains(&response.status) {
                    measured.non_2xx_3xx += 1;
                }
                progress.requests.fetch_add(1, Relaxed);
                if response.close {
                    connection = None;
                }
            }
            Ok(Err(e)) => {
                measured.error(&e);
                connection = None;
            }
            Err(_) => {
                measured.errors.timeout += 1;
                connection = None;
            }
        }
    }
    measured
}
