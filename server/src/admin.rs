//! The admin listener every component has: one router for what they share (`/healthz`,
//! `/readyz`, `/metrics`, 404 and 405 answers, and the rule that a call which is not a read
//! needs the internal token), and small-response helpers for their own endpoints.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde::Serialize;

use crate::auth::InternalAuth;
use crate::health::Health;

/// A component's own admin endpoints, served by [`AdminRouter`] after the shared ones.
#[async_trait]
pub trait AdminEndpoints: Send + Sync + 'static {
    fn health(&self) -> &Health;
    /// Prometheus text of the component's registry.
    fn metrics(&self) -> Response<Vec<u8>>;
    /// What a call that is not a read (any method but GET and HEAD) must carry.
    fn auth(&self) -> Arc<InternalAuth>;
    /// The answer for the component's own endpoint at `segments` (the path split at `/`), or
    /// `None` when it has none there (404). A path it has with another method: its own 405.
    async fn serve(&self, method: &Method, segments: &[&str], session: &mut ServerSession)
    -> Option<Response<Vec<u8>>>;
}

/// Serves the endpoints every component shares, then the component's own.
pub struct AdminRouter<E>(pub E);

#[async_trait]
impl<E: AdminEndpoints> ServeHttp for AdminRouter<E> {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let endpoints = &self.0;
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
            (&Method::GET, ["readyz"]) => health(endpoints.health().ready(), endpoints.health().reason()),
            (&Method::GET, ["metrics"]) => endpoints.metrics(),
            (_, ["healthz" | "readyz" | "metrics"]) => allow(&["GET"]),
            _ => {
                // Reads are open (health, metrics, listings); anything else changes state.
                if method != Method::GET && method != Method::HEAD {
                    let authorization = session.req_header().headers.get(http::header::AUTHORIZATION);
                    if let Some(refusal) = endpoints.auth().check_admin(authorization) {
                        return refusal;
                    }
                }
                match endpoints.serve(&method, &segments, session).await {
                    Some(response) => response,
                    None => text(StatusCode::NOT_FOUND, &format!("no admin endpoint at {path}\n")),
                }
            }
        }
    }
}

/// Largest request body an admin endpoint reads.
pub const MAX_BODY: usize = 1 << 20;

pub fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let length = body.len();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(value) = content_type.parse() {
        headers.insert(http::header::CONTENT_TYPE, value);
    }
    headers.insert(http::header::CONTENT_LENGTH, length.into());
    response
}

pub fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    respond(status, "text/plain; charset=utf-8", body.as_bytes().to_vec())
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Vec<u8>> {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            respond(status, "application/json", body)
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding JSON failed: {e}\n")),
    }
}

/// 405 with the methods the path does accept.
pub fn allow(methods: &[&str]) -> Response<Vec<u8>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    if let Ok(value) = methods.join(", ").parse() {
        response.headers_mut().insert(http::header::ALLOW, value);
    }
    response
}

/// `/healthz` and `/readyz` answers.
pub fn health(ready: bool, reason: &str) -> Response<Vec<u8>> {
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, &format!("{reason}\n"))
}

/// Prometheus text, or a 500 saying why it could not be produced.
pub fn metrics(encoded: Result<Vec<u8>, impl std::fmt::Display>) -> Response<Vec<u8>> {
    match encoded {
        Ok(body) => respond(StatusCode::OK, "text/plain; version=0.0.4", body),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding metrics failed: {e}\n")),
    }
}

/// Reads the whole request body, up to [`MAX_BODY`].
pub async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(format!("request body larger than {MAX_BODY} bytes\n"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(format!("reading the request body failed: {e}\n")),
        }
    }
}
