//! Adopting a listening socket handed over by the parent: systemd's `LISTEN_FDS` protocol, as
//! the Wavelet uses it so a request can wait in the kernel backlog while the instance starts.

// Taking ownership of fd 3 is the one thing here the standard library cannot do safely.
#![allow(unsafe_code)]

use std::net::TcpListener;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use anyhow::bail;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{getsockopt, sockopt};

/// The first inherited descriptor, by the protocol.
const FIRST_FD: i32 = 3;

/// The listening socket inherited as fd 3, when `LISTEN_FDS=1` (and `LISTEN_PID`, if set, is us).
pub fn inherited_listener() -> anyhow::Result<Option<TcpListener>> {
    let Ok(count) = std::env::var("LISTEN_FDS") else { return Ok(None) };
    if let Ok(pid) = std::env::var("LISTEN_PID")
        && pid != std::process::id().to_string()
    {
        // Meant for another process (we were started by the one it was meant for).
        return Ok(None);
    }
    if count != "1" {
        bail!("LISTEN_FDS={count:?}: exactly one inherited socket (fd 3) is supported");
    }
    // SAFETY: fd 3 is only borrowed for the checks; if it is closed they fail with EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(FIRST_FD) };
    match getsockopt(&borrowed, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => bail!("LISTEN_FDS=1 but fd 3 is a socket that is not listening"),
        Err(e) => bail!("LISTEN_FDS=1 but fd 3 is not a usable socket: {e}"),
    }
    // Our own children must not inherit it.
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: fd 3 is an open listening socket (checked above) that nothing else in this process
    // owns: the protocol hands it to us, and we adopt it exactly once (the env is read once).
    let owned = unsafe { OwnedFd::from_raw_fd(FIRST_FD) };
    Ok(Some(TcpListener::from(owned)))
}
