//! The admin API, on its own listener (never expose it to clients).
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | the process is alive |
//! | GET | `/readyz` | the client listener accepts and the proxy is not draining |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/stats` | JSON [`ProxyStats`]: a minute of one-second concurrency samples per function; `?since=<ms>`: only what is newer, for active functions; `Accept: application/vnd.wavelink.stats.v1+postcard`: the same in the compact encoding the controller reads |
//! | GET | `/v1/functions` | functions with their hosts, specs and instances; `?with-instances`: only those that have some |
//! | GET | `/v1/wavelets` | the Wavelets overflow spills to, with requests in flight on each |
//! | GET | `/v1/functions/{ns}/{name}/instances` | a function's Regular Instances, draining ones too |
//! | PUT | `/v1/functions/{ns}/{name}/instances` | replace them with a JSON list of `ip:port` (`Authorization: Bearer <internal token>`, else 401) |

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::protocols::http::ServerSession;
use serde::Serialize;
use tracing::info;
use wavelink_core::FunctionId;
use wavelink_core::config::check_instance_address;
use wavelink_core::stats::{COMPACT_STATS, FunctionStats, ProxyStats, RejectedStats, TrackCounts};

use wavelink_server::admin::{AdminEndpoints, allow, json, metrics, read_body, respond, text};
use wavelink_server::auth::InternalAuth;
use wavelink_server::health::Health;

use crate::function::FunctionState;
use crate::metrics::Track;
use crate::router::Router;
use crate::stats::SAMPLE_INTERVAL;

pub struct AdminApi {
    pub router: Arc<Router>,
    pub health: Arc<Health>,
    /// The proxy's own listeners, which no instance may be.
    pub own_listeners: Vec<SocketAddr>,
}

#[async_trait]
impl AdminEndpoints for AdminApi {
    fn health(&self) -> &Health {
        &self.health
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        // Series exist only for functions that had traffic (the others cost nothing here).
        for f in self.router.table().functions.iter() {
            if let Some(metrics) = f.metrics_if_used() {
                metrics.regular_in_flight.set(i64::from(f.load.regular.now()));
                metrics.emergency_in_flight.set(i64::from(f.load.emergency.now()));
                metrics.queued.set(i64::from(f.queued()));
                metrics.regular_instances.set(f.routing().regular.len() as i64);
            }
        }
        metrics(self.router.metrics().encode())
    }

    fn auth(&self) -> Arc<InternalAuth> {
        self.router.links().auth.load_full()
    }

    async fn serve(
        &self,
        method: &Method,
        segments: &[&str],
        session: &mut ServerSession,
    ) -> Option<Response<Vec<u8>>> {
        Some(match (method, segments) {
            (&Method::GET, ["stats"]) => match stats_since(session.req_header().uri.query()) {
                Ok(since) if accepts(session, COMPACT_STATS) => match self.stats(since).to_compact() {
                    Ok(bytes) => respond(StatusCode::OK, COMPACT_STATS, bytes),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
                },
                Ok(since) => json(StatusCode::OK, &self.stats(since)),
                Err(message) => text(StatusCode::BAD_REQUEST, &message),
            },
            (&Method::GET, ["v1", "functions"]) => {
                let query = session.req_header().uri.query().unwrap_or("");
                let with_instances = query.split('&').any(|pair| pair == "with-instances");
                json(StatusCode::OK, &self.function_list(with_instances))
            }
            (&Method::GET, ["v1", "wavelets"]) => json(StatusCode::OK, &self.wavelet_list()),
            (&Method::GET, ["v1", "functions", namespace, name, "instances"]) => match self.find(namespace, name) {
                Ok(f) => json(StatusCode::OK, &instance_list(&f)),
                Err((status, message)) => text(status, &message),
            },
            (&Method::PUT, ["v1", "functions", namespace, name, "instances"]) => {
                self.replace_instances(namespace, name, session).await
            }
            (_, ["stats"] | ["v1", "functions" | "wavelets"]) => allow(&["GET"]),
            (_, ["v1", "functions", _, _, "instances"]) => allow(&["GET", "PUT"]),
            _ => return None,
        })
    }
}

/// Whether the request's `Accept` names `media_type` (parameters and quality aside: the only
/// client that asks for a non-default type wants it).
fn accepts(session: &ServerSession, media_type: &str) -> bool {
    session.req_header().headers.get_all(http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|item| item.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(media_type)))
    })
}

/// `since=<ms since the epoch>` of a `/stats` query, if given.
fn stats_since(query: Option<&str>) -> Result<Option<u64>, String> {
    let Some(value) = query.into_iter().flat_map(|q| q.split('&')).find_map(|pair| pair.strip_prefix("since=")) else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| format!("since={value:?}: expected milliseconds since the Unix epoch\n"))
}

impl AdminApi {
    /// The function, or the status and message to answer with.
    fn find(&self, namespace: &str, name: &str) -> Result<Arc<FunctionState>, (StatusCode, String)> {
        let id = FunctionId::new(namespace, name).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
        self.router.function(&id).ok_or_else(|| (StatusCode::NOT_FOUND, format!("no function {id} is configured\n")))
    }

    /// `PUT .../instances` (the router has checked the caller's token).
    async fn replace_instances(&self, namespace: &str, name: &str, session: &mut ServerSession) -> Response<Vec<u8>> {
        let function = match self.find(namespace, name) {
            Ok(f) => f,
            Err((status, message)) => return text(status, &message),
        };
        let body = match read_body(session).await {
            Ok(body) => body,
            Err(message) => return text(StatusCode::BAD_REQUEST, &message),
        };
        let addrs: Vec<SocketAddr> = match serde_json::from_slice(&body) {
            Ok(addrs) => addrs,
            Err(e) => {
                let message = format!("expected a JSON list of \"ip:port\" strings: {e}\n");
                return text(StatusCode::BAD_REQUEST, &message);
            }
        };
        if let Some(e) = addrs.iter().find_map(|a| check_instance_address(*a, &self.own_listeners).err()) {
            return text(StatusCode::BAD_REQUEST, &format!("{e}\n"));
        }
        let change = function.set_instances(&addrs);
        info!(function = %function.id, added = change.added, removed = change.removed,
              kept = change.kept, "instances replaced");
        json(StatusCode::OK, &change)
    }

    /// Every function; with `since` (ms since the epoch), only those with samples after it or
    /// requests now, and only those samples: what a scraper that saw up to `since` lacks, so
    /// its size follows the active functions, not the configured ones.
    fn stats(&self, since: Option<u64>) -> ProxyStats {
        // Intervals first: every function's sample of a listed interval was closed before the
        // interval was listed, so it is in the functions read below, and a scraper that takes
        // the newest interval as its next `since` misses nothing.
        let sampled = self.router.sampled();
        let intervals = sampled.ends();
        let table = self.router.table();
        let functions = table
            .functions
            .iter()
            .filter_map(|f| {
                let samples = match since {
                    None => f.samples(),
                    Some(since) => f.samples_after(since),
                };
                let busy = f.load.total.now() > 0;
                if since.is_some() && samples.is_empty() && !busy {
                    return None;
                }
                let routing = f.routing();
                let metrics = f.metrics_if_used();
                Some(FunctionStats {
                    namespace: f.id.namespace.clone(),
                    name: f.id.name.clone(),
                    scaling_mode: routing.spec.scaling_mode.as_str().to_owned(),
                    regular_instances: routing.regular.len() as u32,
                    in_flight: TrackCounts {
                        regular: u64::from(f.load.regular.now()),
                        emergency: u64::from(f.load.emergency.now()),
                        queued: u64::from(f.queued()),
                    },
                    completed: TrackCounts {
                        regular: metrics.as_ref().map_or(0, |m| m.completed(Track::Regular)),
                        emergency: metrics.as_ref().map_or(0, |m| m.completed(Track::Emergency)),
                        queued: 0,
                    },
                    rejected_overload: metrics.as_ref().map_or(0, |m| m.rejected_overload()),
                    samples,
                })
            })
            .collect();
        let rejected = self
            .router
            .rejected()
            .into_iter()
            .map(|r| RejectedStats { function: r.function, error: r.error })
            .collect();
        ProxyStats {
            sample_interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
            started_unix_ms: sampled.started_unix_ms,
            intervals,
            functions,
            rejected,
        }
    }

    fn wavelet_list(&self) -> Vec<WaveletListing> {
        let wavelets = self.router.wavelets();
        wavelets.targets().iter().map(|t| WaveletListing { address: t.addr, in_flight: t.in_flight() }).collect()
    }

    /// Every function, or (`with_instances`) those with some instance, live or draining: what a
    /// controller re-asserting instance lists needs to compare, with thousands of functions
    /// almost all at zero.
    fn function_list(&self, with_instances: bool) -> Vec<FunctionListing> {
        let domain = self.router.domain();
        self.router
            .functions()
            .iter()
            .filter(|f| !with_instances || !f.routing().regular.is_empty() || !f.draining().is_empty())
            .map(|f| {
                let spec = f.spec();
                FunctionListing {
                    function: f.label.clone(),
                    host: f.id.host(domain),
                    scaling_mode: spec.scaling_mode.as_str(),
                    container_concurrency: spec.container_concurrency,
                    emergency_max: spec.emergency_max,
                    emergency_in_flight: f.load.emergency.now(),
                    queue_timeout_ms: spec.queue_timeout.as_millis() as u64,
                    instances: instance_list(f),
                }
            })
            .collect()
    }
}

#[derive(Serialize)]
struct FunctionListing {
    function: String,
    host: String,
    scaling_mode: &'static str,
    container_concurrency: u32,
    emergency_max: u32,
    emergency_in_flight: u32,
    queue_timeout_ms: u64,
    instances: Vec<InstanceListing>,
}

#[derive(Serialize)]
struct WaveletListing {
    address: SocketAddr,
    in_flight: u32,
}

#[derive(Serialize)]
struct InstanceListing {
    address: SocketAddr,
    in_flight: u32,
    draining: bool,
}

fn instance_list(f: &FunctionState) -> Vec<InstanceListing> {
    let routing = f.routing();
    let live =
        routing.regular.iter().map(|i| InstanceListing { address: i.addr, in_flight: i.in_flight(), draining: false });
    let draining =
        f.draining().into_iter().map(|i| InstanceListing { address: i.addr, in_flight: i.in_flight(), draining: true });
    live.chain(draining).collect()
}
