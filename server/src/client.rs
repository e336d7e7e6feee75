//! A small HTTP/1.1 client for component-to-component admin calls (the controller scraping
//! `/stats` and pushing instance lists, the proxy poking the controller). One connection per
//! call: these are a few calls a second, off every request path.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::auth::InternalAuth;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("{0}: {1}")]
    Http(SocketAddr, String),
    #[error("{0}: no answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("{addr} {path}: {status}: {body}")]
    Status { addr: SocketAddr, path: String, status: u16, body: String },
}

/// Sends one request; a non-2xx answer is an error carrying its body.
pub async fn call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    Ok(call_with(addr, method, path, body, &[], timeout).await?.body)
}

/// [`call`] carrying `auth`'s token (`Authorization: Bearer`, when there is one): a call that
/// changes state on another component.
pub async fn call_authorized(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    body: Option<Vec<u8>>,
    auth: &InternalAuth,
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    let authorization = auth.authorization();
    let headers: Vec<(http::header::HeaderName, &str)> =
        authorization.iter().map(|a| (http::header::AUTHORIZATION, a.as_str())).collect();
    Ok(call_with(addr, method, path, body, &headers, timeout).await?.body)
}

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// [`call`] with extra request headers (`Accept`, credentials), answering the content type too.
pub async fn call_with(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(http::header::HeaderName, &str)],
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| ClientError::Io(addr, e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(addr, e.to_string()))?;
        tokio::spawn(connection);
        let mut request =
            http::Request::builder().method(method).uri(path).header(http::header::HOST, addr.to_string());
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(addr, e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| ClientError::Http(addr, e.to_string()))?;
        let status = response.status();
        let content_type =
            response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes =
            response.into_body().collect().await.map_err(|e| ClientError::Http(addr, e.to_string()))?.to_bytes();
        if !status.is_success() {
            return Err(ClientError::Status {
                addr,
                path: path.to_owned(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).trim().to_owned(),
            });
        }
        Ok(Reply { content_type, body: bytes.to_vec() })
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| ClientError::Timeout(addr, timeout))?
}
