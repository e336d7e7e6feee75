//! End-to-end: the real `wavelink proxy` in front of real `wavelink fn` instances, on loopback.

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;
use wavelink_core::stats::{COMPACT_STATS, ProxyStats};

const HOST: &str = "hello.default.example.com";

fn function_yaml(annotations: &str, instances: &[&FnInstance]) -> String {
    let list: Vec<String> = instances.iter().map(|i| format!("\"{}\"", i.addr)).collect();
    format!("  - name: hello\n    annotations: {{ {annotations} }}\n    instances: [{}]\n", list.join(", "))
}

/// The proxy's `/metrics`, after checking that it has each of `lines`.
fn assert_metric_lines(proxy: &ProxyUnderTest, lines: &[&str]) -> String {
    let metrics = admin_get(proxy, "/metrics").unwrap().text();
    for line in lines {
        assert!(metrics.contains(line), "missing {line}\n{metrics}");
    }
    metrics
}

/// Sends `n` requests at once, each on its own connection.
fn burst(addr: std::net::SocketAddr, n: usize, path: &str) -> Vec<(HttpResponse, Duration)> {
    burst_with(addr, HOST, path, n, "")
}

fn assert_no_slot_leaked(proxy: &ProxyUnderTest) {
    wait_until("no request in flight or queued", || {
        let f = proxy.function_stats("hello");
        f["in_flight"]["regular"] == 0 && f["in_flight"]["queued"] == 0
    });
}

#[test]
fn instances_with_concurrency_one_never_serve_two_requests_at_once_and_the_rest_wait() {
    let a = start_fn("a");
    let b = start_fn("b");
    let proxy = start_proxy(&function_yaml(
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/queue-timeout: 60s",
        &[&a, &b],
    ));
    let started = Instant::now();
    let results = burst(proxy.listen, 20, "/?sleep=300");
    let elapsed = started.elapsed();

    for (response, _) in &results {
        assert_eq!(response.status, 200, "{}", response.text());
        // The instance itself counts what it was handling when each request began.
        assert_eq!(response.header("x-wavelink-in-flight"), Some("1"), "an instance served two at once");
    }
    let used: HashSet<_> = results.iter().filter_map(|(r, _)| r.header("x-wavelink-instance")).collect();
    assert_eq!(used, HashSet::from(["a", "b"]));
    // Two slots, 20 requests of 300 ms: ten rounds, so the later ones waited their turn.
    assert!(elapsed >= Duration::from_millis(2900), "finished too fast for one request per instance: {elapsed:?}");
    let slowest = results.iter().map(|(_, latency)| *latency).max().unwrap();
    assert!(slowest >= Duration::from_millis(2700), "nobody waited? slowest {slowest:?}");

    wait_until("a sample shows queued requests", || {
        proxy.function_stats("hello")["samples"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["queued"]["peak"].as_u64() > Some(0)))
    });
    let stats = proxy.function_stats("hello");
    let peak_regular = stats["samples"].as_array().unwrap().iter().filter_map(|s| s["regular"]["peak"].as_u64()).max();
    assert_eq!(peak_regular, Some(2), "two instances of concurrency one: at most two in flight");
    assert_no_slot_leaked(&proxy);
}

#[test]
fn requests_waiting_longer_than_the_queue_timeout_get_503_with_retry_after() {
    let a = start_fn("a");
    let b = start_fn("b");
    let proxy = start_proxy(&function_yaml(
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/queue-timeout: 500ms",
        &[&a, &b],
    ));
    let results = burst(proxy.listen, 20, "/?sleep=3000");
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    let rejected: Vec<_> = results.iter().filter(|(r, _)| r.status == 503).collect();
    assert_eq!(ok + rejected.len(), 20, "only 200 and 503 expected");
    assert!(ok >= 2, "both instances served a request");
    assert!(rejected.len() >= 10, "the excess was turned away: {} rejected", rejected.len());
    for (response, latency) in rejected {
        assert_eq!(response.header("retry-after"), Some("1"));
        assert!(*latency >= Duration::from_millis(450), "rejected before the queue timeout: {latency:?}");
        assert!(response.text().contains("default/hello"), "{}", response.text());
    }
    let stats = proxy.function_stats("hello");
    assert!(stats["rejected_overload"].as_u64() >= Some(10));
    assert_no_slot_leaked(&proxy);
}

#[test]
fn a_client_hanging_up_frees_its_slot_and_its_queue_place() {
    let a = start_fn("a");
    let proxy = start_proxy(&function_yaml(
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/queue-timeout: 60s",
        &[&a],
    ));
    // Well below the queue timeout and the 60 s request: only noticing the hang-up frees them.
    let noticed = Duration::from_secs(10);
    let request = format!("GET /?sleep=60000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n");

    // Holding the only slot, then hanging up.
    let mut holder = TcpStream::connect(proxy.listen).unwrap();
    holder.write_all(request.as_bytes()).unwrap();
    wait_until("the slot is taken", || proxy.function_stats("hello")["in_flight"]["regular"] == 1);
    // Waiting in the queue, then hanging up.
    let mut waiter = TcpStream::connect(proxy.listen).unwrap();
    waiter.write_all(request.as_bytes()).unwrap();
    wait_until("one request is queued", || proxy.function_stats("hello")["in_flight"]["queued"] == 1);
    drop(waiter);
    wait_within("the queue place is given up", noticed, || proxy.function_stats("hello")["in_flight"]["queued"] == 0);
    drop(holder);
    wait_within("the slot is freed", noticed, || proxy.function_stats("hello")["in_flight"]["regular"] == 0);

    // Had the slot leaked, this would wait for the 60 s sleep and time out with 503.
    let response = get(proxy.listen, HOST, "/?sleep=1").unwrap();
    assert_eq!(response.status, 200);
    let metrics = admin_get(&proxy, "/metrics").unwrap().text();
    assert!(
        metrics.contains(r#"wavelink_requests_total{code="client_closed",function="default/hello",track="regular"} 1"#),
        "{metrics}"
    );
}

#[test]
fn replacing_instances_takes_effect_without_dropping_in_flight_requests() {
    let a = start_fn("a");
    let b = start_fn("b");
    let proxy = start_proxy(&function_yaml("wavelink.dev/container-concurrency: \"4\"", &[&a]));

    let listen = proxy.listen;
    let long = std::thread::spawn(move || get(listen, HOST, "/?sleep=1500").expect("long request"));
    wait_until("the long request is on a", || proxy.function_stats("hello")["in_flight"]["regular"] == 1);

    let body = format!("[\"{}\"]", b.addr);
    let put = put_instances(&proxy, "hello", &body);
    assert_eq!(put.status, 200, "{}", put.text());
    let change: serde_json::Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(change, serde_json::json!({"added": 1, "removed": 1, "kept": 0}));

    let listing = admin_get(&proxy, "/v1/functions/default/hello/instances").unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&listing.body).unwrap();
    assert!(
        listing.as_array().unwrap().iter().any(|i| i["address"] == a.addr.to_string() && i["draining"] == true),
        "a is listed as draining: {listing}"
    );
    for _ in 0..5 {
        let response = get(proxy.listen, HOST, "/").unwrap();
        assert_eq!(response.header("x-wavelink-instance"), Some("b"), "new requests go to the new instance only");
    }
    let long = long.join().unwrap();
    assert_eq!(long.status, 200, "the in-flight request on the removed instance completed");
    assert_eq!(long.header("x-wavelink-instance"), Some("a"));

    let bad = put_instances(&proxy, "hello", "[\"not-an-ip\"]");
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("ip:port"), "{}", bad.text());
    let unknown = put_instances(&proxy, "nope", "[]");
    assert_eq!(unknown.status, 404);
    // A change without the internal token, or with another: refused, and nothing changes.
    for credentials in ["", "Authorization: Bearer wavelink-other-token-0123456789\r\n"] {
        let body = format!("[\"{}\"]", a.addr);
        let put = send(
            proxy.admin,
            &format!(
                "PUT /v1/functions/default/hello/instances HTTP/1.1\r\nHost: admin\r\n{credentials}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .unwrap();
        assert_eq!(put.status, 401, "{}", put.text());
        assert!(put.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")));
    }
    // The proxy's own listeners are no instance (its admin API would answer on the client
    // listener), nor is an address one cannot connect to: refused, and the list is unchanged.
    for own in [proxy.admin.to_string(), proxy.listen.to_string(), "0.0.0.0:80".to_owned()] {
        let body = format!("[\"{own}\"]");
        let put = put_instances(&proxy, "hello", &body);
        assert_eq!(put.status, 400, "{own}: {}", put.text());
        assert!(put.text().contains(&own), "{}", put.text());
    }
    assert_eq!(get(proxy.listen, HOST, "/").unwrap().header("x-wavelink-instance"), Some("b"));
    assert_no_slot_leaked(&proxy);
}

#[test]
fn a_function_sees_who_sent_the_request_and_its_id_and_never_a_client_set_platform_header() {
    let a = start_fn("a");
    let proxy = start_proxy(&function_yaml("", &[&a]));
    let request = format!(
        "GET /?headers HTTP/1.1\r\nHost: {HOST}\r\nX-Wavelink-Function: default/other\r\nx-wavelink-track: emergency\r\n\
         X-Forwarded-For: 203.0.113.9\r\nx-request-id: client-id-1\r\nConnection: close\r\n\r\n"
    );
    let response = send(proxy.listen, &request).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = response.text();
    let lines: Vec<&str> = seen.lines().collect();
    assert!(lines.iter().all(|l| !l.starts_with("x-wavelink-")), "a client-set platform header got through:\n{seen}");
    for expected in [
        "x-forwarded-for: 203.0.113.9, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-request-id: client-id-1",
        &format!("forwarded: for=127.0.0.1;proto=http;host={HOST}"),
    ] {
        assert!(lines.contains(&expected), "{expected:?} missing from what the function saw:\n{seen}");
    }
    assert_eq!(response.header("x-request-id"), Some("client-id-1"), "the client gets its id back");

    // Without a usable id of its own, the request gets one: the function, the client and the
    // access log see the same.
    let response = send(
        proxy.listen,
        &format!("GET /?headers HTTP/1.1\r\nHost: {HOST}\r\nx-request-id: has space\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    let id = response.header("x-request-id").expect("a request id").to_owned();
    assert_eq!(id.len(), 32, "{id}");
    assert!(response.text().lines().any(|l| l == format!("x-request-id: {id}")), "{}", response.text());
    let unknown = get(proxy.listen, "nobody.default.example.com", "/").unwrap();
    assert_eq!(unknown.status, 404);
    let unknown_id = unknown.header("x-request-id").expect("a 404 has an id too").to_owned();
    wait_until("the access log has both requests", || {
        let log = proxy.log();
        log.contains(&id) && log.contains(&unknown_id) && log.contains("client-id-1")
    });
}

#[test]
fn unknown_hosts_get_404_and_malformed_requests_a_4xx_while_the_proxy_keeps_serving() {
    let a = start_fn("a");
    let proxy = start_proxy(&function_yaml("", &[&a]));

    let response = get(proxy.listen, "nope.default.example.com", "/").unwrap();
    assert_eq!(response.status, 404);
    let body = response.text();
    assert_eq!(body.lines().count(), 1, "one-line body: {body:?}");
    assert!(body.contains("nope.default.example.com"));

    let missing_host = send(proxy.listen, "GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(missing_host.status, 400);

    for garbage in
        ["NOT HTTP AT ALL\r\n\r\n", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", "\0\0\0\r\n\r\n"]
    {
        let mut stream = TcpStream::connect(proxy.listen).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.write_all(garbage.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut raw);
        if let Some(response) = parse_response(&raw) {
            assert!((400..500).contains(&response.status), "{garbage:?} got {}", response.status);
        }
    }
    // Host matching ignores case and port.
    let response = get(proxy.listen, "HELLO.default.example.com:8080", "/").unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(admin_get(&proxy, "/healthz").unwrap().status, 200);
}

#[test]
fn a_bad_annotation_rejects_only_that_function_naming_key_value_and_range() {
    let a = start_fn("a");
    let functions = format!(
        "{}  - name: broken\n    annotations: {{ wavelink.dev/container-concurrency: \"0\" }}\n    instances: [\"{}\"]\n",
        function_yaml("", &[&a]),
        a.addr
    );
    let proxy = start_proxy(&functions);
    assert_eq!(get(proxy.listen, HOST, "/").unwrap().status, 200);
    assert_eq!(get(proxy.listen, "broken.default.example.com", "/").unwrap().status, 404);

    let rejected = &proxy.stats()["rejected"];
    assert_eq!(rejected[0]["function"], "default/broken");
    let error = rejected[0]["error"].as_str().unwrap();
    for part in ["wavelink.dev/container-concurrency", "\"0\"", "an integer from 1 to 1000"] {
        assert!(error.contains(part), "{error:?} lacks {part}");
    }
    assert!(proxy.log().contains("function rejected"), "the rejection is logged");

    // The same config fails `--check`, printing the reason.
    let check = wavelink().args(["proxy", "--check", "--config"]).arg(&proxy.config).output().unwrap();
    assert!(!check.status.success());
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(stdout.contains("rejected default/broken: wavelink.dev/container-concurrency"), "{stdout}");
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let a = start_fn("a");
    let mut proxy = start_proxy(&function_yaml("", &[&a]));
    let listen = proxy.listen;
    let in_flight = std::thread::spawn(move || get(listen, HOST, "/?sleep=1500").expect("in-flight request"));
    wait_until("the request is in flight", || proxy.function_stats("hello")["in_flight"]["regular"] == 1);

    proxy.proc.signal(Signal::SIGTERM);
    wait_until("the listener stops accepting", || TcpStream::connect(listen).is_err());
    let response = in_flight.join().unwrap();
    assert_eq!(response.status, 200, "the in-flight request was completed");
    // Drained, it exits at once rather than sitting out its 20 s grace period.
    let status = proxy.proc.wait_timeout(Duration::from_secs(8)).expect("the proxy exits once drained");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn metrics_count_requests_by_function_track_and_status_class() {
    let a = start_fn("a");
    let proxy = start_proxy(&function_yaml("", &[&a]));
    assert_eq!(get(proxy.listen, HOST, "/").unwrap().status, 200);
    assert_eq!(get(proxy.listen, HOST, "/?status=502").unwrap().status, 502);
    assert_eq!(get(proxy.listen, "other.default.example.com", "/").unwrap().status, 404);

    assert_metric_lines(
        &proxy,
        &[
            r#"wavelink_requests_total{code="2xx",function="default/hello",track="regular"} 1"#,
            r#"wavelink_requests_total{code="5xx",function="default/hello",track="regular"} 1"#,
            r#"wavelink_request_duration_seconds_count{function="default/hello",track="regular"} 2"#,
            r#"wavelink_instances{function="default/hello",track="regular"} 1"#,
            "wavelink_unknown_host_requests_total 1",
            "wavelink_functions_rejected 0",
        ],
    );
    let functions = admin_get(&proxy, "/v1/functions").unwrap();
    let functions: serde_json::Value = serde_json::from_slice(&functions.body).unwrap();
    assert_eq!(functions[0]["host"], HOST);
    // `?with-instances` leaves out functions without any (what a re-asserting controller reads).
    let with_instances = || admin_get(&proxy, "/v1/functions?with-instances").unwrap().json();
    assert_eq!(with_instances()[0]["function"], "default/hello");
    let emptied = put_instances(&proxy, "hello", "[]");
    assert!(emptied.status < 300, "{}", emptied.text());
    wait_until("no function with instances", || with_instances().as_array().is_some_and(Vec::is_empty));
    assert_eq!(admin_get(&proxy, "/v1/functions").unwrap().json().as_array().map(Vec::len), Some(1));
    assert_eq!(admin_get(&proxy, "/nope").unwrap().status, 404);
    // A call that is not a read needs the token before anything else is said about it.
    let unauthenticated =
        send(proxy.admin, "POST /stats HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(unauthenticated.status, 401);
    let wrong_method = send(
        proxy.admin,
        &format!("POST /stats HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET"));
}

#[test]
fn an_idle_function_has_no_series_or_samples_until_its_first_request() {
    let a = start_fn("a");
    let list = format!("[\"{}\"]", a.addr);
    let proxy = start_proxy(&format!(
        "  - {{ name: hello, instances: {list} }}\n  - {{ name: idle, instances: {list} }}\n  - {{ name: other, instances: {list} }}\n"
    ));
    let metrics = admin_get(&proxy, "/metrics").unwrap().text();
    assert!(!metrics.contains("function=\""), "series before any traffic:\n{metrics}");
    let active = |since: u64| -> Vec<String> {
        let stats = admin_get(&proxy, &format!("/stats?since={since}")).unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&stats.body).expect("JSON");
        stats["functions"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_owned()).collect()
    };
    assert!(active(0).is_empty(), "no function was active");
    assert_eq!(
        admin_get(&proxy, "/stats").unwrap().json()["functions"].as_array().unwrap().len(),
        3,
        "all, unfiltered"
    );
    assert_eq!(admin_get(&proxy, "/stats?since=soon").unwrap().status, 400);

    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    for _ in 0..3 {
        assert_eq!(get(proxy.listen, HOST, "/").unwrap().status, 200);
    }
    assert_eq!(get(proxy.listen, "other.default.example.com", "/?status=503").unwrap().status, 503);
    let metrics = assert_metric_lines(
        &proxy,
        &[
            r#"wavelink_requests_total{code="2xx",function="default/hello",track="regular"} 3"#,
            r#"wavelink_requests_total{code="5xx",function="default/other",track="regular"} 1"#,
            r#"wavelink_instances{function="default/hello",track="regular"} 1"#,
        ],
    );
    assert!(!metrics.contains("default/idle"), "the idle function has no series:\n{metrics}");

    // Once their second is sampled, the two functions (and only they) are listed since then,
    // with their arrivals.
    wait_until("the requests' second is sampled", || active(before).len() == 2);
    assert_eq!(active(before), ["hello", "other"]);
    let stats = admin_get(&proxy, &format!("/stats?since={before}")).unwrap().json();
    let arrivals: u64 =
        stats["functions"][0]["samples"].as_array().unwrap().iter().map(|s| s["arrivals"].as_u64().unwrap()).sum();
    assert_eq!(arrivals, 3);
    // The same in the compact encoding the controller asks for (no request since: the samples
    // up to the newest interval are settled).
    let newest = stats["intervals"].as_array().unwrap().last().unwrap().as_u64().unwrap();
    let request = format!(
        "GET /stats?since={before} HTTP/1.1\r\nHost: admin\r\nAccept: text/plain, {COMPACT_STATS};q=0.9\r\nConnection: close\r\n\r\n"
    );
    let compact = send(proxy.admin, &request).unwrap();
    assert_eq!(compact.header("content-type"), Some(COMPACT_STATS));
    let compact = ProxyStats::from_compact(&compact.body).expect("compact stats");
    let json: ProxyStats =
        serde_json::from_slice(&admin_get(&proxy, &format!("/stats?since={before}")).unwrap().body).unwrap();
    let settled = |stats: &ProxyStats| -> Vec<(String, Vec<u64>)> {
        let samples = |f: &wavelink_core::stats::FunctionStats| {
            f.samples.iter().filter(|s| s.end_unix_ms <= newest).map(|s| s.arrivals).collect()
        };
        stats.functions.iter().map(|f| (f.name.clone(), samples(f))).collect()
    };
    assert_eq!(settled(&compact), settled(&json));
    assert!(json.functions.len() == 2, "{json:?}");
    // A scraper that has read the newest interval gets nothing more for idle seconds.
    let later: Vec<String> = active(newest);
    assert!(later.iter().all(|name| name != "idle"), "{later:?}");
}

type H2Answer = (http::StatusCode, http::HeaderMap, bytes::Bytes);

/// Sends `requests` at once as streams of one HTTP/2 connection without TLS (h2c with prior
/// knowledge, as gRPC clients speak it) and returns the answers in order.
fn h2_requests(
    addr: std::net::SocketAddr,
    requests: Vec<http::Request<http_body_util::Full<bytes::Bytes>>>,
) -> Vec<H2Answer> {
    use http_body_util::BodyExt;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("an HTTP/2 handshake");
        tokio::spawn(connection);
        let streams: Vec<_> = requests
            .into_iter()
            .map(|request| {
                let mut sender = sender.clone();
                tokio::spawn(async move {
                    let response = sender.send_request(request).await.expect("a response");
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await.expect("a body").to_bytes();
                    (parts.status, parts.headers, body)
                })
            })
            .collect();
        let mut answers = Vec::new();
        for stream in streams {
            answers.push(tokio::time::timeout(PATIENCE, stream).await.expect("in time").expect("the stream's task"));
        }
        answers
    })
}

#[test]
fn http2_clients_get_each_stream_served_as_a_request_with_its_own_slot() {
    let a = start_fn("a");
    let proxy = start_proxy(&function_yaml(
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/queue-timeout: 30s",
        &[&a],
    ));
    // One connection, four streams at once.
    let requests = (0..4)
        .map(|_| http::Request::get(format!("http://{HOST}/?sleep=200")).body(Default::default()).unwrap())
        .collect();
    let answers = h2_requests(proxy.listen, requests);
    for (status, headers, body) in &answers {
        assert_eq!(*status, 200, "{body:?}");
        // Each stream held a slot of its own: the instance of concurrency 1 never ran two.
        assert_eq!(headers.get("x-wavelink-in-flight").and_then(|v| v.to_str().ok()), Some("1"));
        assert!(headers.get("x-request-id").is_some());
    }
    assert_eq!(proxy.function_stats("hello")["completed"]["regular"], 4);
    // HTTP/1.1 clients are served as before on the same listener.
    assert_eq!(get(proxy.listen, HOST, "/").unwrap().status, 200);
    assert_no_slot_leaked(&proxy);
}

#[test]
fn an_overloaded_function_answers_a_grpc_call_unavailable_in_grpc_terms() {
    let a = start_fn("a");
    // One slot and no queue: while it is taken, any other request is turned away at once.
    let proxy = start_proxy(&function_yaml(
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/queue-depth: \"0\"",
        &[&a],
    ));
    let listen = proxy.listen;
    let long = std::thread::spawn(move || get(listen, HOST, "/?sleep=2000").expect("the long request"));
    wait_until("the slot is taken", || proxy.function_stats("hello")["in_flight"]["regular"] == 1);
    let call = http::Request::post(format!("http://{HOST}/helloworld.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let (status, headers, body) = h2_requests(proxy.listen, vec![call]).remove(0);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    // A trailers-only gRPC answer: HTTP 200, grpc-status 14 (UNAVAILABLE, which clients retry).
    assert_eq!(status, 200, "{headers:?} {body:?}");
    assert_eq!(header("content-type"), "application/grpc");
    assert_eq!(header("grpc-status"), "14", "{headers:?}");
    assert!(!header("grpc-message").is_empty());
    assert!(body.is_empty());
    // An HTTP client of the same function still gets its 503 with Retry-After.
    let plain = get(proxy.listen, HOST, "/").unwrap();
    assert_eq!((plain.status, plain.header("retry-after")), (503, Some("1")));
    assert_eq!(long.join().unwrap().status, 200);
    // Both turned-away requests count as what they were: server errors, not successes.
    assert_metric_lines(&proxy, &[r#"wavelink_requests_total{code="5xx",function="default/hello",track="none"} 2"#]);
    assert_no_slot_leaked(&proxy);
}

/// An upstream that accepts one connection, agrees to a WebSocket upgrade and echoes what it
/// gets until the client closes (bounded: it gives up after `PATIENCE`).
fn start_upgrade_echo() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the echo upstream");
    let addr = listener.local_addr().expect("its address");
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(true).expect("nonblocking accept");
        let deadline = Instant::now() + PATIENCE;
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("no connection from the proxy: {e}"),
            }
        };
        conn.set_nonblocking(false).expect("blocking connection");
        conn.set_read_timeout(Some(PATIENCE)).expect("read timeout");
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte).expect("the upgrade request") == 0 {
                return;
            }
            request.push(byte[0]);
        }
        conn.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .expect("the 101");
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    (addr, handle)
}

#[test]
fn a_websocket_holds_its_slot_while_open_outlives_the_request_timeout_and_frees_it_on_close() {
    use std::io::Read;
    let (upstream, echo) = start_upgrade_echo();
    let proxy = start_proxy(&format!(
        "  - {{ name: hello, instances: [\"{upstream}\"], annotations: {{ wavelink.dev/timeout: 1s, wavelink.dev/container-concurrency: \"1\" }} }}\n"
    ));
    let mut client = TcpStream::connect(proxy.listen).expect("connect");
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    client
        .write_all(
            format!(
                "GET /chat HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            client.read(&mut byte).expect("the upgrade answer"),
            1,
            "closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let echo_once = |client: &mut TcpStream, message: &[u8]| {
        client.write_all(message).unwrap();
        let mut back = vec![0u8; message.len()];
        client.read_exact(&mut back).expect("the echo");
        assert_eq!(back, message);
    };
    echo_once(&mut client, b"first");
    // The connection holds the function's one slot while it is open.
    assert_eq!(proxy.function_stats("hello")["in_flight"]["regular"], 1);
    // Longer than the function's 1 s timeout, quiet, then used again: not cut.
    std::thread::sleep(Duration::from_millis(1600));
    echo_once(&mut client, b"after the timeout");
    assert_eq!(proxy.function_stats("hello")["in_flight"]["regular"], 1);
    drop(client);
    wait_until("the slot is freed when the connection closes", || {
        proxy.function_stats("hello")["in_flight"]["regular"] == 0
    });
    echo.join().expect("the echo upstream");
    assert_no_slot_leaked(&proxy);
}
