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
use pingora_core::protocols::http::ServerSession;
use serde::Serialize;
use wavelink_server::admin::{AdminEndpoints, allow, json, metrics};
use wavelink_server::auth::InternalAuth;
use wavelink_server::health::Health;

use crate::pool::Pools;

pub struct AdminApi {
    pub pools: Arc<Pools>,
    pub health: Arc<Health>,
    /// Nothing here changes state yet; the shared router requires it of anything that would.
    pub auth: Arc<InternalAuth>,
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
impl AdminEndpoints for AdminApi {
    fn health(&self) -> &Health {
        &self.health
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        metrics(self.pools.metrics().encode())
    }

    fn auth(&self) -> Arc<InternalAuth> {
        self.auth.clone()
    }

    async fn serve(
        &self,
        method: &Method,
        segments: &[&str],
        _session: &mut ServerSession,
    ) -> Option<Response<Vec<u8>>> {
        Some(match (method, segments) {
            (&Method::GET, ["v1", "instances"]) => json(StatusCode::OK, &self.instances()),
            (_, ["v1", "instances"]) => allow(&["GET"]),
            _ => return None,
        })
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
