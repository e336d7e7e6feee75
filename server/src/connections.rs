//! Bounds on a listener's client connections, below Pingora's HTTP handling: a cap on open
//! connections (nginx's `worker_connections`, Envoy's `max_active_downstream_connections`) and
//! a deadline for a whole request header (nginx's `client_header_timeout`).
//!
//! Pingora bounds each *read* of a request header, so a client trickling one byte at a time
//! holds a connection for ever (slowloris). [`Guarded`] wraps the service's app and every
//! connection's stream: the first byte of a request header arms a deadline, the service marks
//! the header received ([`header_received`], from `early_request_filter`) and the request over
//! ([`request_done`], from `logging`); a read still waiting for the header at the deadline fails,
//! and Pingora closes the connection. This is HTTP/1's framing: an HTTP/2 connection carries
//! many requests at once, so once its preface is seen (h2c with prior knowledge) the deadline no
//! longer applies and HTTP/2's own limits do (Pingora's HTTP/2 idle timeout). The preface check
//! itself is bounded by the header deadline and decides as soon as the bytes differ, so an
//! HTTP/1 request shorter than the preface is not held up waiting for 24 bytes.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::ALPN;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::Session;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;
use tracing::warn;
use wavelink_core::slots::SlotCounter;

use crate::tls::TlsTermination;

/// How long a refused connection is given to take its 503.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(1);

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n\
Content-Length: 38\r\nConnection: close\r\n\r\ntoo many client connections, try again\n";

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open client connections beyond this are answered 503 with `Retry-After` and closed.
    pub max_connections: u32,
    /// From the first byte of a request header to its last; 0: no bound.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits { max_connections: 20_000, header_timeout: Duration::from_secs(60) }
    }
}

/// What the bounds did, for metrics.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    open: SlotCounter,
    refused: AtomicU64,
    header_timeouts: AtomicU64,
}

impl ConnectionCounters {
    pub fn open(&self) -> u64 {
        u64::from(self.open.get())
    }
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    pub fn header_timeouts(&self) -> u64 {
        self.header_timeouts.load(Ordering::Relaxed)
    }
}

/// A Pingora app behind the connection bounds (and, on a TLS listener, its TLS termination).
pub struct Guarded<A> {
    inner: Arc<A>,
    limits: ConnectionLimits,
    counters: Arc<ConnectionCounters>,
    tls: Option<Arc<TlsTermination>>,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, limits: ConnectionLimits, counters: Arc<ConnectionCounters>) -> Self {
        Guarded { inner: Arc::new(inner), limits, counters, tls: None }
    }

    /// Clients speak TLS on this listener: the handshake is done here, inside the bounds.
    pub fn with_tls(mut self, tls: Arc<TlsTermination>) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// One admitted connection in the open count, for as long as it lives.
struct Admitted(Arc<ConnectionCounters>);

impl Admitted {
    fn admit(counters: &Arc<ConnectionCounters>, max: u32) -> Option<Admitted> {
        counters.open.try_reserve(max).then(|| Admitted(counters.clone()))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.release();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let Some(_admitted) = Admitted::admit(&self.counters, self.limits.max_connections) else {
            let refused = self.counters.refused.fetch_add(1, Ordering::Relaxed);
            // One line per thousand, not one per connection, when a flood hits the cap.
            if refused % 1000 == 0 {
                warn!(
                    max_connections = self.limits.max_connections,
                    refused_so_far = refused + 1,
                    "client connection refused: too many open"
                );
            }
            // A plaintext 503 means nothing to a TLS client; it is closed at once.
            if self.tls.is_none() {
                refuse(stream).await;
            }
            return None;
        };
        let mut guarded = match &self.tls {
            Some(tls) => {
                let tls_stream = tls.handshake(stream).await?;
                let multiplexed = matches!(tls_stream.selected_alpn_proto(), Some(ALPN::H2));
                let mut guarded =
                    GuardedStream::new(Box::new(tls_stream), self.limits.header_timeout, self.counters.clone());
                // HTTP/2 by ALPN: no HTTP/1 header deadline, as for h2c.
                guarded.multiplexed = multiplexed;
                guarded
            }
            None => GuardedStream::new(stream, self.limits.header_timeout, self.counters.clone()),
        };
        guarded.tls = self.tls.is_some();
        let guarded: Stream = Box::new(guarded);
        // An HTTP app serves every keep-alive request of the connection inside one call; should
        // one hand the connection back, it is served here so that it stays counted once.
        let mut reused = self.inner.process_new(guarded, shutdown).await;
        while let Some(stream) = reused {
            reused = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// 503 with `Retry-After`, then close; reading what the client sent so that closing does not
/// reset the connection before the answer is read.
async fn refuse(mut stream: Stream) {
    let answer = async {
        stream.write_all(REFUSAL).await?;
        stream.flush().await?;
        Shutdown::shutdown(&mut *stream).await;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_DEADLINE, answer).await;
}

/// Raises this process's open-files soft limit towards what `max_connections` need (each client
/// connection may hold an upstream one too), as far as the hard limit allows; says so if it
/// stays short, since accepts beyond the limit fail with no answer at all.
pub fn raise_open_files_limit(max_connections: u32) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = u64::from(max_connections).saturating_mul(2).saturating_add(1024);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let raised = wanted.min(hard);
    let soft = if raised > soft && setrlimit(Resource::RLIMIT_NOFILE, raised, hard).is_ok() { raised } else { soft };
    if soft < wanted {
        warn!(
            open_files_limit = soft,
            max_connections,
            wanted,
            "the open-files limit is below what max-connections may need; raise it (ulimit -n) or lower max-connections"
        );
    }
}

/// Tells the connection's header deadline that the request header is complete.
pub fn header_received(session: &Session) {
    if let Some(stream) = guarded(session) {
        stream.phase.header_received();
    }
}

/// Tells the connection's header deadline that the request is over: the next byte read starts
/// the next request's header.
pub fn request_done(session: &Session) {
    if let Some(stream) = guarded(session) {
        stream.phase.request_done();
    }
}

/// Whether the client's connection is TLS (for `X-Forwarded-Proto` and redirects).
pub fn is_tls(session: &Session) -> bool {
    // An HTTP/2 stream has no stream of its own to look at; its connection's digest says it.
    guarded(session).map_or_else(|| session.digest().is_some_and(|d| d.ssl_digest.is_some()), |s| s.tls)
}

fn guarded(session: &Session) -> Option<&GuardedStream> {
    session.as_downstream().stream()?.as_any().downcast_ref::<GuardedStream>()
}

/// Where the connection is between requests; shared between the stream's reads and the
/// service's hooks (which see the stream only by reference).
#[derive(Debug, Default)]
struct Phase {
    in_request: AtomicBool,
    /// Bumped by each complete header, so that a deadline armed for one request never applies
    /// to the next.
    headers: AtomicU32,
}

impl Phase {
    fn header_received(&self) {
        self.in_request.store(true, Ordering::Release);
        self.headers.fetch_add(1, Ordering::AcqRel);
    }

    fn request_done(&self) {
        self.in_request.store(false, Ordering::Release);
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client connection's stream with its header deadline.
pub struct GuardedStream {
    inner: Stream,
    header_timeout: Duration,
    counters: Arc<ConnectionCounters>,
    phase: Phase,
    /// The running deadline and the header count it was armed at.
    deadline: Option<(u32, Pin<Box<Sleep>>)>,
    /// Bytes read to look for the HTTP/2 preface, handed to the next reads.
    peeked: Vec<u8>,
    /// An HTTP/2 connection: no HTTP/1 header deadline.
    multiplexed: bool,
    /// Arrived over TLS.
    tls: bool,
}

impl GuardedStream {
    fn new(inner: Stream, header_timeout: Duration, counters: Arc<ConnectionCounters>) -> Self {
        GuardedStream {
            inner,
            header_timeout,
            counters,
            phase: Phase::default(),
            deadline: None,
            peeked: Vec::new(),
            multiplexed: false,
            tls: false,
        }
    }

    /// Reads until the bytes are the whole HTTP/2 preface or differ from it (or the client
    /// stops sending: end of stream).
    async fn read_preface_or_less(&mut self) -> io::Result<()> {
        let mut byte = [0u8; 64];
        while self.peeked.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&self.peeked) {
            let want = H2_PREFACE.len() - self.peeked.len();
            let n = self.inner.read(&mut byte[..want]).await?;
            if n == 0 {
                break;
            }
            self.peeked.extend_from_slice(&byte[..n]);
        }
        Ok(())
    }

    /// Drops a deadline that no longer applies: its header arrived, or a request is running.
    fn settle_deadline(&mut self) {
        let headers = self.phase.headers.load(Ordering::Acquire);
        let stale = matches!(&self.deadline, Some((armed_at, _)) if *armed_at != headers);
        if stale || self.phase.in_request.load(Ordering::Acquire) {
            self.deadline = None;
        }
    }

    fn arm_deadline(&mut self) {
        if self.deadline.is_none()
            && !self.multiplexed
            && !self.header_timeout.is_zero()
            && !self.phase.in_request.load(Ordering::Acquire)
        {
            let headers = self.phase.headers.load(Ordering::Acquire);
            self.deadline = Some((headers, Box::pin(tokio::time::sleep(self.header_timeout))));
        }
    }
}

impl fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream").field("inner", &self.inner).field("phase", &self.phase).finish()
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.peeked.is_empty() {
            let n = this.peeked.len().min(buf.remaining());
            buf.put_slice(&this.peeked[..n]);
            this.peeked.drain(..n);
            return Poll::Ready(Ok(()));
        }
        this.settle_deadline();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.arm_deadline();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = match &mut this.deadline {
                    Some((_, sleep)) => sleep.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if !expired {
                    return Poll::Pending;
                }
                this.deadline = None;
                this.counters.header_timeouts.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request header timeout")))
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// Pingora peeks for the HTTP/2 preface when h2c is on: `buf` gets the bytes read (what is not
/// read stays zero, so it differs from the preface), and they are read again afterwards.
#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        // The preface is part of the first request's header: its deadline runs from here.
        self.arm_deadline();
        let read = if self.header_timeout.is_zero() {
            self.read_preface_or_less().await
        } else {
            match tokio::time::timeout(self.header_timeout, self.read_preface_or_less()).await {
                Ok(read) => read,
                Err(_) => {
                    self.counters.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "request header timeout"));
                }
            }
        };
        read?;
        let n = self.peeked.len().min(buf.len());
        buf[..n].copy_from_slice(&self.peeked[..n]);
        buf[n..].fill(0);
        self.multiplexed = self.peeked.as_slice() == H2_PREFACE;
        if self.multiplexed {
            self.deadline = None;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(200);

    fn guarded_pair() -> (GuardedStream, tokio::io::DuplexStream, Arc<ConnectionCounters>) {
        let (server, client) = tokio::io::duplex(1024);
        let counters = Arc::new(ConnectionCounters::default());
        (GuardedStream::new(Box::new(server), SHORT, counters.clone()), client, counters)
    }

    async fn read_some(stream: &mut GuardedStream) -> io::Result<usize> {
        let mut buf = [0u8; 64];
        stream.read(&mut buf).await
    }

    #[tokio::test]
    async fn a_header_that_does_not_complete_in_time_fails_the_read() {
        let (mut server, mut client, counters) = guarded_pair();
        client.write_all(b"GET / HT").await.unwrap();
        assert_eq!(read_some(&mut server).await.unwrap(), 8);
        // The rest never comes: the pending read fails at the deadline.
        let error = tokio::time::timeout(Duration::from_secs(10), read_some(&mut server)).await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(counters.header_timeouts(), 1);
    }

    #[tokio::test]
    async fn an_idle_connection_has_no_header_deadline() {
        // Between requests the keep-alive timeout applies, not the header's: no byte, no deadline.
        let (mut server, _client, counters) = guarded_pair();
        let waited = tokio::time::timeout(SHORT * 3, read_some(&mut server)).await;
        assert!(waited.is_err(), "the read should still be waiting: {waited:?}");
        assert_eq!(counters.header_timeouts(), 0);
    }

    #[tokio::test]
    async fn a_received_header_disarms_the_deadline_until_the_request_is_done() {
        let (mut server, mut client, counters) = guarded_pair();
        client.write_all(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        read_some(&mut server).await.unwrap();
        server.phase.header_received();
        // A request waiting for its body or its answer is not bounded by the header timeout.
        let waited = tokio::time::timeout(SHORT * 3, read_some(&mut server)).await;
        assert!(waited.is_err(), "the read should still be waiting: {waited:?}");
        // Body bytes during the request do not arm it either.
        client.write_all(b"body").await.unwrap();
        read_some(&mut server).await.unwrap();
        let waited = tokio::time::timeout(SHORT * 3, read_some(&mut server)).await;
        assert!(waited.is_err(), "the read should still be waiting: {waited:?}");
        // The next request's first byte arms it again.
        server.phase.request_done();
        client.write_all(b"G").await.unwrap();
        read_some(&mut server).await.unwrap();
        let error = tokio::time::timeout(Duration::from_secs(10), read_some(&mut server)).await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(counters.header_timeouts(), 1);
    }

    #[tokio::test]
    async fn an_http1_request_shorter_than_the_h2_preface_is_not_held_and_is_read_whole() {
        let (mut server, mut client, _) = guarded_pair();
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut peek = [0u8; 24];
        // Decided at the first byte that differs, not after 24 bytes that never come.
        let peeked = tokio::time::timeout(SHORT / 2, server.try_peek(&mut peek)).await.expect("decided at once");
        assert!(peeked.unwrap());
        assert_ne!(&peek, H2_PREFACE);
        assert!(!server.multiplexed);
        let mut request = vec![0u8; 18];
        server.read_exact(&mut request).await.unwrap();
        assert_eq!(request, b"GET / HTTP/1.0\r\n\r\n", "the peeked bytes are read again");
    }

    #[tokio::test]
    async fn an_h2_connection_is_recognised_and_has_no_http1_header_deadline() {
        let (mut server, mut client, counters) = guarded_pair();
        client.write_all(H2_PREFACE).await.unwrap();
        client.write_all(b"\0\0\0\x04\0\0\0\0\0").await.unwrap(); // an empty SETTINGS frame
        let mut peek = [0u8; 24];
        assert!(server.try_peek(&mut peek).await.unwrap());
        assert_eq!(&peek, H2_PREFACE);
        let mut first = vec![0u8; 33];
        server.read_exact(&mut first).await.unwrap();
        assert_eq!(&first[..24], H2_PREFACE);
        // Streams may be idle for longer than a header may take: no HTTP/1 deadline here.
        let waited = tokio::time::timeout(SHORT * 3, read_some(&mut server)).await;
        assert!(waited.is_err(), "the read should still be waiting: {waited:?}");
        assert_eq!(counters.header_timeouts(), 0);
    }

    #[tokio::test]
    async fn a_preface_that_stops_halfway_times_out() {
        let (mut server, mut client, counters) = guarded_pair();
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let mut peek = [0u8; 24];
        let result = tokio::time::timeout(Duration::from_secs(10), server.try_peek(&mut peek)).await.unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(counters.header_timeouts(), 1);
    }

    #[test]
    fn admission_stops_at_the_cap_and_a_closed_connection_frees_its_place() {
        let counters = Arc::new(ConnectionCounters::default());
        let first = Admitted::admit(&counters, 2);
        let second = Admitted::admit(&counters, 2);
        assert!(first.is_some() && second.is_some());
        assert!(Admitted::admit(&counters, 2).is_none());
        assert_eq!(counters.open(), 2);
        drop(first);
        assert!(Admitted::admit(&counters, 2).is_some());
        assert_eq!(counters.open(), 1, "the admitted connection above was dropped at once");
    }
}
