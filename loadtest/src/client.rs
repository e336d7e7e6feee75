//! A minimal HTTP/1.1 client connection: write a pre-built request, read one response.
//!
//! A load generator spends its CPU where the server under test needs it too, so this does the
//! least work wrk does: headers parsed with `httparse`, bodies counted and dropped (content
//! length, chunked, or until close), keep-alive, no allocation per request beyond the buffer.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wavelink_core::spec::Track;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("write: {0}")]
    Write(std::io::Error),
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("the server closed the connection before a complete response")]
    Closed,
    /// The connection ended (closed or reset) before any byte of the response: on a kept
    /// connection, usually the server's keep-alive timeout racing the request.
    #[error("the connection ended before any byte of a response")]
    NoResponse,
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// What the load tools want to know about a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Bytes of the whole response, headers included.
    pub bytes: usize,
    /// `x-wavelink-exec-us`: the instance's own measure of its execution.
    pub exec_us: Option<u64>,
    /// `x-wavelink-track`.
    pub track: Option<Track>,
    /// The connection cannot be reused.
    pub close: bool,
}

/// Largest response header block accepted.
const MAX_HEADER: usize = 64 * 1024;

pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    start: usize,
}

impl Connection {
    pub async fn connect(addr: SocketAddr) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect(addr).await.map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Connection { stream, buf: Vec::with_capacity(8192), start: 0 })
    }

    /// Sends `request` (complete, with its final blank line) and reads the response.
    pub async fn send(&mut self, request: &[u8]) -> Result<Response, ClientError> {
        self.stream.write_all(request).await.map_err(ClientError::Write)?;
        self.read_response(request.starts_with(b"HEAD ")).await
    }

    async fn fill(&mut self) -> Result<usize, ClientError> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8192);
        }
        let n = self.stream.read_buf(&mut self.buf).await.map_err(ClientError::Read)?;
        Ok(n)
    }

    async fn read_response(&mut self, head_request: bool) -> Result<Response, ClientError> {
        let (mut response, header_len, body) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf[self.start..]) {
                Ok(httparse::Status::Complete(len)) => {
                    let response = summarise(&parsed)?;
                    let body = body_framing(&parsed, head_request)?;
                    break (response, len, body);
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() - self.start > MAX_HEADER {
                        return Err(ClientError::Malformed("response header too large".into()));
                    }
                    let nothing_yet = self.buf.len() == self.start;
                    match self.fill().await {
                        Ok(0) | Err(_) if nothing_yet => return Err(ClientError::NoResponse),
                        Ok(0) => return Err(ClientError::Closed),
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(ClientError::Malformed(e.to_string())),
            }
        };
        self.start += header_len;
        let body_bytes = match body {
            Body::Empty => 0,
            Body::Length(length) => self.skip(length).await?,
            Body::Chunked => self.skip_chunked().await?,
            Body::UntilClose => {
                response.close = true;
                self.skip_to_end().await?
            }
        };
        response.bytes = header_len + body_bytes;
        Ok(response)
    }

    /// Consumes `length` body bytes.
    async fn skip(&mut self, length: usize) -> Result<usize, ClientError> {
        let mut left = length;
        loop {
            let available = (self.buf.len() - self.start).min(left);
            self.start += available;
            left -= available;
            if left == 0 {
                return Ok(length);
            }
            if self.fill().await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    async fn skip_chunked(&mut self) -> Result<usize, ClientError> {
        let mut total = 0;
        loop {
            let line = self.line().await?;
            let size_text = line.split(';').next().unwrap_or("").trim().to_owned();
            let size = usize::from_str_radix(&size_text, 16)
                .map_err(|_| ClientError::Malformed(format!("chunk size {size_text:?}")))?;
            total += size;
            if size == 0 {
                // Trailers, then an empty line.
                while !self.line().await?.is_empty() {}
                return Ok(total);
            }
            self.skip(size).await?;
            if !self.line().await?.is_empty() {
                return Err(ClientError::Malformed("chunk not followed by CRLF".into()));
            }
        }
    }

    /// One CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> Result<String, ClientError> {
        loop {
            if let Some(end) = self.buf[self.start..].windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.start..self.start + end]).into_owned();
                self.start += end + 2;
                return Ok(line);
            }
            if self.buf.len() - self.start > MAX_HEADER {
                return Err(ClientError::Malformed("line too long".into()));
            }
            if self.fill().await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    async fn skip_to_end(&mut self) -> Result<usize, ClientError> {
        let mut total = self.buf.len() - self.start;
        self.start = self.buf.len();
        loop {
            let n = self.fill().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
            self.start = self.buf.len();
        }
    }
}

enum Body {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

fn summarise(parsed: &httparse::Response<'_, '_>) -> Result<Response, ClientError> {
    let status = parsed.code.ok_or_else(|| ClientError::Malformed("no status".into()))?;
    let mut response = Response { status, bytes: 0, exec_us: None, track: None, close: parsed.version == Some(0) };
    for header in parsed.headers.iter() {
        let value = header.value;
        if header.name.eq_ignore_ascii_case("x-wavelink-exec-us") {
            response.exec_us = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok());
        } else if header.name.eq_ignore_ascii_case("x-wavelink-track") {
            response.track = match value {
                b"regular" => Some(Track::Regular),
                b"emergency" => Some(Track::Emergency),
                _ => None,
            };
        } else if header.name.eq_ignore_ascii_case("connection") {
            response.close = value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(response)
}

fn body_framing(parsed: &httparse::Response<'_, '_>, head_request: bool) -> Result<Body, ClientError> {
    let status = parsed.code.unwrap_or(200);
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Body::Empty);
    }
    for header in parsed.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding")
            && header.value.split(|b| *b == b',').any(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        {
            return Ok(Body::Chunked);
        }
    }
    for header in parsed.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| ClientError::Malformed("bad content-length".into()))?;
            return Ok(if length == 0 { Body::Empty } else { Body::Length(length) });
        }
    }
    Ok(Body::UntilClose)
}

/// A GET request, ready to send.
pub fn get_request(path: &str, host: &str, extra_headers: &[(String, String)]) -> Vec<u8> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in extra_headers {
        if !name.eq_ignore_ascii_case("host") {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    request.push_str("\r\n");
    request.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request with the next canned response.
    async fn serve(responses: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            for response in responses {
                let _ = stream.read(&mut buf).await;
                stream.write_all(response).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_length_chunked_and_close_delimited_bodies_on_one_connection() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nx-wavelink-exec-us: 42\r\nx-wavelink-track: emergency\r\n\r\nok\n",
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nuntil close",
        ])
        .await;
        let mut conn = Connection::connect(addr).await.unwrap();
        let request = get_request("/", "x", &[]);
        let first = conn.send(&request).await.unwrap();
        assert_eq!(
            (first.status, first.exec_us, first.track, first.close),
            (200, Some(42), Some(Track::Emergency), false)
        );
        let second = conn.send(&request).await.unwrap();
        assert_eq!(second.status, 503);
        assert!(!second.close);
        assert_eq!(conn.send(&request).await.unwrap().status, 204);
        let last = conn.send(&request).await.unwrap();
        assert_eq!(last.status, 200);
        assert!(last.close);
    }

    #[tokio::test]
    async fn a_connection_closed_midway_is_an_error_not_a_response() {
        let addr = serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"]).await;
        let mut conn = Connection::connect(addr).await.unwrap();
        assert!(matches!(conn.send(&get_request("/", "x", &[])).await, Err(ClientError::Closed)));
    }

    #[tokio::test]
    async fn a_connection_closed_before_any_answer_says_so() {
        let addr = serve(vec![b""]).await;
        let mut conn = Connection::connect(addr).await.unwrap();
        assert!(matches!(conn.send(&get_request("/", "x", &[])).await, Err(ClientError::NoResponse)));
    }

    #[test]
    fn requests_carry_the_host_and_extra_headers_once() {
        let request = get_request(
            "/?ms=5",
            "f.default.example.com",
            &[("Host".into(), "ignored".into()), ("x-a".into(), "1".into())],
        );
        assert_eq!(request, b"GET /?ms=5 HTTP/1.1\r\nHost: f.default.example.com\r\nx-a: 1\r\n\r\n");
    }
}
