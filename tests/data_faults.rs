//! Fault suite for the data path (real binaries): a dead instance, one that never answers, an
//! instance list changed under a busy instance, Wavelets full or down. Outcomes are asserted;
//! latencies only as bounds far from what a loaded machine takes.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

const HOST: &str = "hello.default.example.com";

fn function_yaml(annotations: &str, instances: &[&FnInstance]) -> String {
    let list: Vec<String> = instances.iter().map(|i| format!("\"{}\"", i.addr)).collect();
    format!("  - name: hello\n    annotations: {{ {annotations} }}\n    instances: [{}]\n", list.join(", "))
}

fn instances_of(proxy: &ProxyUnderTest) -> Vec<serde_json::Value> {
    let listing = admin_get(proxy, "/v1/functions/default/hello/instances").expect("instances");
    serde_json::from_slice(&listing.body).expect("JSON")
}

#[test]
fn a_killed_instance_costs_at_most_two_requests_and_is_then_avoided() {
    let a = start_fn("a");
    let mut b = start_fn("b");
    let proxy = start_proxy(&function_yaml("wavelink.dev/scaling-mode: async", &[&a, &b]));
    assert_eq!(get(proxy.listen, HOST, "/").unwrap().status, 200);
    b.proc.signal(Signal::SIGKILL);
    let _ = b.proc.wait_timeout(PATIENCE);

    let failed = (0..200).filter(|_| get(proxy.listen, HOST, "/").map_or(true, |r| r.status != 200)).count();
    assert!(failed <= 2, "{failed} of 200 failed after one of two instances died\n{}", proxy.log());
    let ejections = metric(proxy.admin, "wavelink_instance_ejections_total{function=\"default/hello\"}");
    assert!(ejections >= 1.0, "the dead instance was ejected");
    // 200 requests over a back-off that doubles: a handful of probes of the dead address, not
    // a share of the traffic.
    assert!(ejections <= 8.0, "the dead instance kept being tried: {ejections} ejections");
}

#[test]
fn an_instance_that_does_not_answer_in_time_gets_a_504_and_its_slot_back() {
    let a = start_fn("a");
    let proxy = start_proxy(&function_yaml(
        "wavelink.dev/scaling-mode: async, wavelink.dev/container-concurrency: \"1\", \
         wavelink.dev/response-start-timeout: 2s",
        &[&a],
    ));
    let started = Instant::now();
    let response = get(proxy.listen, HOST, "/?sleep=20000").expect("an answer");
    let took = started.elapsed();
    assert_eq!(response.status, 504, "{}", response.text());
    assert!(!response.text().trim().is_empty() && response.text().lines().count() == 1, "{:?}", response.text());
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "504 after {took:?}");
    wait_until("the slot is free", || instances_of(&proxy).iter().all(|i| i["in_flight"] == 0));
    let ejections = metric(proxy.admin, "wavelink_instance_ejections_total{function=\"default/hello\"}");
    assert_eq!(ejections, 1.0, "the instance still runs the request: it gets no other for a while");
}

#[test]
fn an_address_removed_and_re_added_while_busy_still_gets_one_request_at_a_time() {
    let a = start_fn("a");
    let proxy = start_proxy(&function_yaml(
        "wavelink.dev/scaling-mode: async, wavelink.dev/container-concurrency: \"1\", wavelink.dev/queue-timeout: 30s",
        &[&a],
    ));
    let listen = proxy.listen;
    let first = std::thread::spawn(move || get(listen, HOST, "/?sleep=1500").expect("first"));
    wait_until("the first request runs", || instances_of(&proxy).iter().any(|i| i["in_flight"] == 1));
    let put = |body: &str| assert_eq!(put_instances(&proxy, "hello", body).status, 200);
    put("[]");
    put(&format!("[\"{}\"]", a.addr));
    let second = get(listen, HOST, "/").expect("second");
    let first = first.join().expect("first request");
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(second.header("x-wavelink-in-flight"), Some("1"), "the instance served two at once");
}

#[test]
fn requests_above_the_wavelet_cap_wait_for_capacity_instead_of_failing() {
    let namespace = format!("cap-{:06x}", nonce() & 0xff_ffff);
    let _reaper = KillOnDrop(format!("WAVELINK_FUNCTION={namespace}/burst"));
    // Four EIs fit on the Wavelet; the function may ask for 100.
    let stack = Stack::new(
        &format!(
            "  - name: burst\n    namespace: {namespace}\n    command: [\"wavelink-fn\"]\n    annotations: {{ \
             wavelink.dev/scaling-mode: fast-only, wavelink.dev/emergency-max: \"100\", wavelink.dev/queue-timeout: 20s, \
             wavelink.dev/emergency-keepalive: 5s }}\n"
        ),
        &[4],
    );
    let _wavelet = stack.start_wavelet(0);
    let _proxy = stack.start_proxy();
    let host = format!("burst.{namespace}.example.com");
    let results = burst_with(stack.proxy_listen, &host, "/?sleep=300", 12, "");
    let statuses: Vec<u16> = results.iter().map(|(r, _)| r.status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "every request served as EIs freed: {statuses:?}");
    assert!(stack.wavelet_metric(0, "wavelink_wavelet_full_total") >= 1.0, "the Wavelet did say full");
}

#[test]
fn with_the_wavelet_down_requests_wait_for_the_regular_instance() {
    let a = start_fn("a");
    let namespace = "default";
    // A Wavelet is configured but not running: spills fail to connect.
    let stack = Stack::new(
        &format!(
            "  - name: hello\n    namespace: {namespace}\n    annotations: {{ wavelink.dev/container-concurrency: \"1\", \
             wavelink.dev/queue-timeout: 20s }}\n    instances: [\"{}\"]\n",
            a.addr
        ),
        &[4],
    );
    let _proxy = stack.start_proxy();
    let results = burst_with(stack.proxy_listen, HOST, "/?sleep=100", 6, "");
    for (response, _) in &results {
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("x-wavelink-track"), Some("regular"));
    }
}

/// Statuses that carry a body, to tell pipelined answers apart by their order.
fn marker_statuses(n: usize) -> Vec<u16> {
    (200..=299).filter(|s| *s != 204 && *s != 205).cycle().take(n).collect()
}

#[test]
fn a_hundred_pipelined_requests_get_a_hundred_answers_in_order() {
    let a = start_fn("a");
    let proxy = start_proxy(&function_yaml("wavelink.dev/scaling-mode: async", &[&a]));
    let statuses = marker_statuses(100);
    let batch: String =
        statuses.iter().map(|status| format!("GET /?status={status} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")).collect();
    let mut stream = std::net::TcpStream::connect(proxy.listen).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(batch.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < statuses.len() && Instant::now() < deadline {
        let mut buf = [0u8; 16 * 1024];
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
        // Take every complete response off the front.
        while let Some((status, used)) = next_response(&raw) {
            seen.push(status);
            raw.drain(..used);
        }
    }
    assert_eq!(seen, statuses, "answers, in order");
}

/// The status and length of the first complete response in `raw`.
fn next_response(raw: &[u8]) -> Option<(u16, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (raw.len() >= end + length).then_some((status, end + length))
}

/// A proxy with `settings` added to its `proxy:` section, serving `hello` on `instance`; stopped
/// when dropped.
struct BoundedProxy {
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    _proc: Proc,
    _dir: TempDir,
}

fn start_bounded_proxy(settings: &str, instance: &FnInstance) -> BoundedProxy {
    let dir = TempDir::new("bounded");
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.0.join("wavelink.yaml");
    std::fs::write(
        &config,
        format!(
            "domain: example.com\nproxy: {{ listen: \"{listen}\", admin: \"{admin}\", {settings} }}\nfunctions:\n{}",
            function_yaml("wavelink.dev/scaling-mode: async", &[instance])
        ),
    )
    .unwrap();
    let mut command = wavelink();
    command
        .args(["proxy", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let proc = Proc::spawn("proxy", &mut command);
    wait_until("proxy ready", || ready(admin));
    BoundedProxy { listen, admin, _proc: proc, _dir: dir }
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let a = start_fn("a");
    let proxy = start_bounded_proxy("keepalive-timeout: 2s", &a);
    let listen = proxy.listen;
    let mut stream = std::net::TcpStream::connect(listen).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    // Then nothing: the proxy closes the idle connection after 2 s.
    let idle = Instant::now();
    let closed = matches!(stream.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "the connection was closed");
    assert!(
        idle.elapsed() >= Duration::from_millis(1500) && idle.elapsed() < Duration::from_secs(20),
        "{:?}",
        idle.elapsed()
    );
}

#[test]
fn a_client_trickling_its_header_is_closed_after_the_header_timeout() {
    let a = start_fn("a");
    let proxy = start_bounded_proxy("header-timeout: 2s", &a);
    let mut stream = std::net::TcpStream::connect(proxy.listen).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let started = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    // One header byte every 300 ms: each read is short, the whole header never ends.
    let mut buf = [0u8; 256];
    let closed_after = (0..100).find_map(|_| {
        if stream.write_all(b"X").is_err() {
            return Some(started.elapsed());
        }
        match stream.read(&mut buf) {
            Ok(0) => Some(started.elapsed()),
            Err(e) if !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Some(started.elapsed())
            }
            _ => None,
        }
    });
    let closed_after = closed_after.expect("the trickling connection was never closed (30 s)");
    assert!(closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(20), "{closed_after:?}");
    assert_eq!(metric(proxy.admin, "wavelink_request_header_timeouts_total"), 1.0);

    // The bound is on the header only: a request whose answer takes longer than it, on a
    // kept-alive connection, is served, and so is the next one on the same connection.
    let mut stream = std::net::TcpStream::connect(proxy.listen).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    for _ in 0..2 {
        stream.write_all(format!("GET /?sleep=3000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).unwrap();
        let mut raw = Vec::new();
        while next_response(&raw).is_none() {
            let n = stream.read(&mut buf).expect("an answer");
            assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&buf[..n]);
        }
        assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
    }
    assert_eq!(metric(proxy.admin, "wavelink_request_header_timeouts_total"), 1.0);
}

#[test]
fn connections_beyond_the_cap_get_a_503_with_retry_after_and_a_closed_one_frees_its_place() {
    let a = start_fn("a");
    let proxy = start_bounded_proxy("max-connections: 2", &a);
    wait_until("no client connection open", || metric(proxy.admin, "wavelink_client_connections") == 0.0);
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let exchange = |stream: &mut std::net::TcpStream| -> String {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while next_response(&raw).is_none() {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&raw).into_owned()
    };
    let mut first = std::net::TcpStream::connect(proxy.listen).unwrap();
    let mut second = std::net::TcpStream::connect(proxy.listen).unwrap();
    assert!(exchange(&mut first).starts_with("HTTP/1.1 200"));
    assert!(exchange(&mut second).starts_with("HTTP/1.1 200"));

    let mut third = std::net::TcpStream::connect(proxy.listen).unwrap();
    let answer = exchange(&mut third);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    assert_eq!(metric(proxy.admin, "wavelink_client_connections_refused_total"), 1.0);
    assert_eq!(metric(proxy.admin, "wavelink_client_connections"), 2.0);

    drop(first);
    wait_until("the closed connection left the count", || metric(proxy.admin, "wavelink_client_connections") == 1.0);
    let mut fourth = std::net::TcpStream::connect(proxy.listen).unwrap();
    assert!(exchange(&mut fourth).starts_with("HTTP/1.1 200"));
    // The kept-alive connection still works.
    assert!(exchange(&mut second).starts_with("HTTP/1.1 200"));
}
