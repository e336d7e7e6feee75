//! End-to-end: the `wavelink fn` workload on its own.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

fn exec_us(response: &HttpResponse) -> u64 {
    response.header("x-wavelink-exec-us").and_then(|v| v.parse().ok()).expect("x-wavelink-exec-us")
}

#[test]
fn work_parameters_do_real_work_and_every_response_reports_it() {
    let f = start_fn("worker-1");
    let burn = get(f.addr, "x", "/?ms=50").unwrap();
    assert_eq!(burn.status, 200);
    assert!(exec_us(&burn) >= 50_000, "50 ms of CPU took {} us", exec_us(&burn));
    assert_eq!(burn.header("x-wavelink-instance"), Some("worker-1"));
    assert_eq!(burn.header("x-wavelink-in-flight"), Some("1"));

    let started = Instant::now();
    let sleep = get(f.addr, "x", "/?sleep=100&mb=8").unwrap();
    assert_eq!(sleep.status, 200);
    assert!(exec_us(&sleep) >= 100_000);
    assert!(started.elapsed() >= Duration::from_millis(100));

    assert_eq!(get(f.addr, "x", "/?status=503").unwrap().status, 503);
    let bad = get(f.addr, "x", "/?ms=lots").unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("ms=\"lots\""), "{}", bad.text());
}

#[test]
fn connections_are_kept_alive_across_requests() {
    let f = start_fn("keepalive");
    let mut stream = TcpStream::connect(f.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"GET /?sleep=1 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
}

#[test]
fn an_inherited_listening_socket_is_served_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let mut command = wavelink();
    command.args(["fn", "--instance-id", "inherited"]).env("LISTEN_FDS", "1").stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto fd 3 clears close-on-exec; if it is fd 3 already, clear the flag.
            let result = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if result < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        });
    }
    // The request can be sent before the process even runs: it waits in the kernel backlog.
    let mut early = TcpStream::connect(addr).unwrap();
    early.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let _proc = Proc::spawn("inherited", &mut command);
    drop(listener);
    early.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut raw = Vec::new();
    early.read_to_end(&mut raw).unwrap();
    let response = parse_response(&raw).expect("response");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-wavelink-instance"), Some("inherited"));
}

#[test]
fn port_from_the_environment_and_a_clear_error_without_any_address() {
    let port = free_port();
    let mut command = wavelink();
    command.args(["fn"]).env("PORT", port.to_string()).env("HOST", "127.0.0.1").stdout(Stdio::null());
    let _proc = Proc::spawn("env-port", &mut command);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("fn listens on $PORT", || get(addr, "x", "/").map(|r| r.status == 200).unwrap_or(false));

    let output = wavelink().arg("fn").env_remove("PORT").env_remove("LISTEN_FDS").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no address to listen on"), "{stderr}");
    let output = wavelink().args(["fn"]).env("LISTEN_FDS", "1").output().unwrap();
    assert!(!output.status.success(), "fd 3 is not a socket here");
    assert!(String::from_utf8_lossy(&output.stderr).contains("fd 3"));
}

#[test]
fn sigterm_finishes_the_running_request_then_exits() {
    let mut f = start_fn("graceful");
    let addr = f.addr;
    let request = std::thread::spawn(move || get(addr, "x", "/?sleep=500").expect("request"));
    // A second request seeing two in flight proves the first one is being served.
    wait_until("the first request is in flight", || {
        get(addr, "x", "/").map(|r| r.header("x-wavelink-in-flight") == Some("2")).unwrap_or(false)
    });
    f.proc.signal(Signal::SIGTERM);
    assert_eq!(request.join().unwrap().status, 200);
    let status = f.proc.wait_timeout(PATIENCE).expect("fn exits");
    assert!(status.success(), "{status:?}");
}
