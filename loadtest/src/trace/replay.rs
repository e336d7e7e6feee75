//! Sending a schedule open loop: every invocation leaves at its time, whatever happened to the
//! ones before, on a keep-alive connection from a pool (a new one when none is idle). Its
//! end-to-end time counts from when it was meant to leave, except that the timer's own
//! lateness (tokio's has millisecond granularity) is not charged to the platform: an invocation
//! the dispatcher sent within [`TIMER_SLACK`] of its time is timed from when it left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use wavelink_core::trace::arrivals::{Invocation, Work};
use wavelink_core::trace::report::Record;

use crate::client::{ClientError, Connection, get_request};

/// Lateness up to this is the timer's; beyond it, the replay fell behind and it counts.
const TIMER_SLACK: Duration = Duration::from_millis(2);

pub struct ReplayPlan {
    pub addr: SocketAddr,
    /// Host header per function (`<name>.<namespace>.<domain>`).
    pub hosts: Vec<String>,
    pub timeout: Duration,
    /// Most connections open at once; beyond, invocations wait (and their wait counts).
    pub max_connections: usize,
    pub threads: usize,
    /// What each invocation's runtime is spent on.
    pub work: Work,
}

/// Shared counters for a progress display.
#[derive(Default)]
pub struct ReplayProgress {
    pub sent: AtomicU64,
    pub done: AtomicU64,
}

/// Replays `schedule` (sorted by time) and returns a record per invocation, in schedule order.
pub fn replay(
    plan: &ReplayPlan,
    schedule: &[Invocation],
    progress: &Arc<ReplayProgress>,
) -> Result<Vec<Record>, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("starting the replay runtime: {e}"))?;
    let records: Arc<Mutex<Vec<Option<Record>>>> = Arc::new(Mutex::new(vec![None; schedule.len()]));
    let idle: Arc<Mutex<Vec<Connection>>> = Arc::new(Mutex::new(Vec::new()));
    let permits = Arc::new(Semaphore::new(plan.max_connections.max(1)));
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        schedule
            .iter()
            .map(|i| get_request(&plan.work.query(i.runtime_ms, i.memory_mb), &plan.hosts[i.function], &[]))
            .collect(),
    );
    runtime.block_on(async {
        let start = Instant::now() + Duration::from_millis(50);
        let mut tasks = Vec::with_capacity(schedule.len());
        for (index, invocation) in schedule.iter().enumerate() {
            let intended = start + invocation.at;
            tokio::time::sleep_until(intended).await;
            let woke = Instant::now();
            let timed_from = if woke.saturating_duration_since(intended) <= TIMER_SLACK { woke } else { intended };
            let permit = match permits.clone().acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => break,
            };
            progress.sent.fetch_add(1, Relaxed);
            let (records, idle, requests, progress) =
                (records.clone(), idle.clone(), requests.clone(), progress.clone());
            let (addr, timeout, invocation) = (plan.addr, plan.timeout, *invocation);
            tasks.push(tokio::spawn(async move {
                let pooled = idle.lock().pop();
                let outcome = tokio::time::timeout(timeout, async {
                    if let Some(mut connection) = pooled {
                        // A kept connection the server closed while it was idle (its keep-alive
                        // timeout) ends before any answer: the GET is sent again on a new one,
                        // as HTTP clients do for idempotent requests (RFC 9110 §9.2.2).
                        match connection.send(&requests[index]).await {
                            Ok(response) => return Ok((connection, response)),
                            Err(ClientError::NoResponse | ClientError::Write(_)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    let mut connection = Connection::connect(addr).await?;
                    let response = connection.send(&requests[index]).await?;
                    Ok::<_, ClientError>((connection, response))
                })
                .await;
                let done = Instant::now();
                let (status, exec_us, track) = match outcome {
                    Ok(Ok((connection, response))) => {
                        if !response.close {
                            idle.lock().push(connection);
                        }
                        (Some(response.status), response.exec_us, response.track)
                    }
                    _ => (None, None, None),
                };
                drop(permit);
                records.lock()[index] = Some(Record {
                    intended_us: invocation.at.as_micros() as u64,
                    function: invocation.function,
                    requested_ms: invocation.runtime_ms,
                    exec_us,
                    e2e_us: done.saturating_duration_since(timed_from).as_micros() as u64,
                    status,
                    track,
                });
                progress.done.fetch_add(1, Relaxed);
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    let records = std::mem::take(&mut *records.lock());
    Ok(records.into_iter().flatten().collect())
}
