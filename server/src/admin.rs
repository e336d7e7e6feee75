//! Small-response helpers for admin listeners (Pingora `ServeHttp` handlers).

use http::{Response, StatusCode};
use pingora_core::protocols::http::ServerSession;
use serde::Serialize;

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
