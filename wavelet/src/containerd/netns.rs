//! Reaching an instance inside its own network namespace.
//!
//! Each container gets a new network namespace holding only `lo` (runc creates it and brings
//! `lo` up), so by default it can reach nothing: not the node, not the Wavelet, not other
//! instances. The
//! Wavelet reaches it by creating its connection's socket *inside* that namespace (a socket
//! stays in the namespace it was created in) and connecting to the instance's port on that
//! namespace's loopback: nothing is routed to an instance, whether or not it has egress
//! (egress.rs), so nothing else can reach it.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sched::{CloneFlags, setns};
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::{Error, ErrorType, OrErr};

/// The Wavelet's own network namespace, to return to after creating a socket elsewhere.
#[derive(Debug)]
pub struct HostNetns(OwnedFd);

impl HostNetns {
    pub fn current() -> std::io::Result<Arc<HostNetns>> {
        Ok(Arc::new(HostNetns(File::open("/proc/thread-self/ns/net")?.into())))
    }

    /// Runs `make` with the calling thread inside network namespace `target`, then returns here:
    /// what `make` creates (a socket, a netlink connection) stays in `target`.
    ///
    /// `setns` switches only the calling thread, and nothing else runs on it between the two
    /// calls (`make` is synchronous). Failing to switch back would leave a worker thread of the
    /// Wavelet inside an instance's namespace, where every later socket it made would be wrong:
    /// that is not survivable, so the process aborts.
    pub fn within<T>(&self, target: BorrowedFd<'_>, make: impl FnOnce() -> T) -> std::io::Result<T> {
        setns(target, CloneFlags::CLONE_NEWNET)?;
        let made = make();
        if let Err(e) = setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
            tracing::error!(error = %e, "cannot return to the Wavelet's network namespace; aborting");
            std::process::abort();
        }
        Ok(made)
    }
}

/// Connects into one instance's network namespace.
#[derive(Debug)]
pub struct NetnsConnector {
    instance: OwnedFd,
    host: Arc<HostNetns>,
}

impl NetnsConnector {
    /// The network namespace of process `pid` (a container's init, seen from the host).
    pub fn of_process(pid: u32, host: Arc<HostNetns>) -> std::io::Result<NetnsConnector> {
        let instance = File::open(format!("/proc/{pid}/ns/net"))?.into();
        Ok(NetnsConnector { instance, host })
    }

    /// The instance's network namespace.
    pub fn netns(&self) -> BorrowedFd<'_> {
        self.instance.as_fd()
    }

    /// A TCP socket created inside the instance's namespace.
    fn socket(&self) -> std::io::Result<socket2::Socket> {
        let socket = self.host.within(self.instance.as_fd(), || {
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        })??;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        Ok(socket)
    }

    /// Connects to `addr` on the instance's loopback.
    pub async fn connect_tcp(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let socket = self.socket()?;
        let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        socket.connect(addr).await
    }

    /// Polls until the instance accepts on `addr`, giving up after `timeout` or as soon as
    /// `alive` says the instance is gone. The probe connection is closed at once.
    pub async fn wait_listening(&self, addr: SocketAddr, timeout: Duration, alive: impl Fn() -> bool) -> bool {
        crate::runtime::poll_until_accepted(|| async move { self.connect_tcp(addr).await.is_ok() }, timeout, alive)
            .await
    }
}

#[async_trait]
impl L4Connect for NetnsConnector {
    async fn connect(&self, addr: &pingora_core::protocols::l4::socket::SocketAddr) -> pingora_core::Result<Stream> {
        let Some(addr) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "instances are reached over TCP");
        };
        let stream = self.connect_tcp(*addr).await.or_err(ErrorType::ConnectRefused, "connecting to the instance")?;
        Ok(Stream::from(stream))
    }
}
