//! The Wavelet's admin listener.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | the process is alive |
//! | GET | `/readyz` | the listener accepts and the Wavelet is not draining |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/v1/instances` | live Emergency Instances: function, pid, address, in flight, age, RSS |

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde::Serialize;
use wavelink_server::admin::{allow, health, json, metrics, text};
use wavelink_server::health::Health;

use crate::pool::Pools;

pub struct AdminApi {
    pub pools: Arc<Pools>,
    pub health: Arc<Health>,
}

#[derive(Serialize)]
struct InstanceListing {
    id: String,
    function: String,
    pid: u32,
    address: SocketAddr,
    in_flight: u32,
    age_ms: u64,
    rss_bytes: u64,
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        match (&method, path.trim_matches('/')) {
            (&Method::GET, "healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "readyz") => health(self.health.ready(), self.health.reason()),
            (&Method::GET, "metrics") => metrics(self.pools.metrics().encode()),
            (&Method::GET, "v1/instances") => json(StatusCode::OK, &self.instances()),
            (_, "healthz" | "readyz" | "metrics" | "v1/instances") => allow(&["GET"]),
            _ => text(StatusCode::NOT_FOUND, &format!("no admin endpoint at {path}\n")),
        }
    }
}

impl AdminApi {
    fn instances(&self) -> Vec<InstanceListing> {
        self.pools
            .every_pool()
            .iter()
            .flat_map(|pool| {
                pool.instances().into_iter().map(|ei| InstanceListing {
                    id: ei.id.clone(),
                    function: pool.id.to_string(),
                    pid: ei.pid,
                    address: ei.addr,
                    in_flight: ei.in_flight(),
                    age_ms: ei.spawned.elapsed().as_millis() as u64,
                    rss_bytes: ei.rss_bytes(),
                })
            })
            .collect()
    }
}
