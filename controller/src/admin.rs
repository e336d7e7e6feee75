//! The controller's admin listener.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | the process is alive |
//! | GET | `/readyz` | a first decision round has run |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/v1/functions` | per function: RIs asked for and ready, panic, what decided last |
//! | POST | `/v1/functions/{ns}/{name}/poke` | `sync` mode (`Authorization: Bearer <internal token>`, else 401): `{"want": N}` RIs now (at most `max-scale`, or `controller.poke-ceiling` when unbounded); 409 for a function in another mode |

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::protocols::http::ServerSession;
use serde::Deserialize;
use wavelink_core::FunctionId;
use wavelink_server::admin::{AdminEndpoints, allow, json, metrics, read_body, text};
use wavelink_server::auth::InternalAuth;
use wavelink_server::health::Health;

use crate::backend::BackendError;
use crate::control::{Controller, PokeError};

pub struct AdminApi {
    pub controller: Arc<Controller>,
    pub health: Arc<Health>,
}

#[derive(Deserialize)]
struct Poke {
    want: u32,
}

#[async_trait]
impl AdminEndpoints for AdminApi {
    fn health(&self) -> &Health {
        &self.health
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        metrics(self.controller.metrics().encode())
    }

    fn auth(&self) -> Arc<InternalAuth> {
        self.controller.internal_auth().clone()
    }

    async fn serve(
        &self,
        method: &Method,
        segments: &[&str],
        session: &mut ServerSession,
    ) -> Option<Response<Vec<u8>>> {
        Some(match (method, segments) {
            (&Method::GET, ["v1", "functions"]) => match self.controller.view().await {
                Ok(view) => json(StatusCode::OK, &view),
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
            },
            (&Method::POST, ["v1", "functions", namespace, name, "poke"]) => self.poke(namespace, name, session).await,
            (_, ["v1", "functions"]) => allow(&["GET"]),
            (_, ["v1", "functions", _, _, "poke"]) => allow(&["POST"]),
            _ => return None,
        })
    }
}

impl AdminApi {
    /// `POST .../poke` (the router has checked the caller's token).
    async fn poke(&self, namespace: &str, name: &str, session: &mut ServerSession) -> Response<Vec<u8>> {
        let id = match FunctionId::new(namespace, name) {
            Ok(id) => id,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        };
        let body = match read_body(session).await {
            Ok(body) => body,
            Err(message) => return text(StatusCode::BAD_REQUEST, &message),
        };
        let poke: Poke = match serde_json::from_slice(&body) {
            Ok(poke) => poke,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("expected {{\"want\": N}}: {e}\n")),
        };
        match self.controller.poke(&id, poke.want).await {
            Ok(replicas) => json(StatusCode::OK, &serde_json::json!({ "replicas": replicas })),
            Err(e @ PokeError::Backend(BackendError::UnknownFunction(_))) => {
                text(StatusCode::NOT_FOUND, &format!("{e}\n"))
            }
            Err(e @ PokeError::Refused(..)) => text(StatusCode::CONFLICT, &format!("{e}\n")),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
        }
    }
}
