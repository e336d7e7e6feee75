//! The workload's WebSocket face: a request that asks to upgrade to `websocket` gets an echo
//! of every text and binary message until the client closes (pings are answered, a close is
//! returned). The connection counts as one request in flight for as long as it is open, as an
//! ingress counts it against the instance's concurrency.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

use crate::workload::Instance;

/// Whether a request asks to switch to the WebSocket protocol.
pub fn is_websocket<B>(request: &Request<B>) -> bool {
    let has = |name: http::header::HeaderName, token: &str| {
        request
            .headers()
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token))))
    };
    has(http::header::UPGRADE, "websocket") && has(http::header::CONNECTION, "upgrade")
}

/// Agrees to the upgrade (101) and echoes on the upgraded connection in a task of its own.
pub(crate) fn accept(mut request: Request<Incoming>, instance: Arc<Instance>) -> Response<Full<Bytes>> {
    let Some(key) = request.headers().get(http::header::SEC_WEBSOCKET_KEY) else {
        let mut refused =
            Response::new(Full::new(Bytes::from_static(b"a WebSocket upgrade needs Sec-WebSocket-Key\n")));
        *refused.status_mut() = StatusCode::BAD_REQUEST;
        return refused;
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut request);
    // Counted from the 101 to the close, like a request.
    instance.in_flight.fetch_add(1, SeqCst);
    let open = OpenSocket(instance);
    tokio::spawn(async move {
        let _open = open;
        let Ok(upgraded) = upgrade.await else { return };
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        echo(socket).await;
    });
    let mut switching = Response::new(Full::new(Bytes::new()));
    *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = switching.headers_mut();
    headers.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = http::HeaderValue::from_str(&accept) {
        headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    switching
}

/// Sends back every data message until the client closes or the connection fails.
async fn echo<S>(mut socket: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(message)) = socket.next().await {
        let reply = match message {
            Message::Text(_) | Message::Binary(_) => message,
            // Pings are answered and a close returned by the protocol layer itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => break,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
    let _ = socket.close(None).await;
}

/// An open WebSocket in the instance's in-flight count.
struct OpenSocket(Arc<Instance>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}
