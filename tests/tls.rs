//! HTTPS through the real proxy: certificates chosen by SNI (exact names and wildcards), HTTP/1.1
//! and HTTP/2 by ALPN, certificates replaced while clients keep connecting, redirects of
//! plaintext, and bounded handshakes. Certificates are made here with rcgen; the client is
//! rustls with a verifier that records what the proxy served (the test checks the exact
//! certificate, which is stronger than a chain check).

mod support;
#[path = "support/tls_client.rs"]
mod tls_client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;
use tls_client::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Waits at most [`PATIENCE`] for an async step.
fn block_on<T>(runtime: &tokio::runtime::Runtime, what: &str, step: impl std::future::Future<Output = T>) -> T {
    runtime.block_on(async {
        tokio::time::timeout(PATIENCE, step).await.unwrap_or_else(|_| panic!("{what}: no answer in time"))
    })
}

fn tls_yaml(listen: SocketAddr, pairs: &[(PathBuf, PathBuf)], extra: &str) -> String {
    let certificates: Vec<String> =
        pairs.iter().map(|(c, k)| format!("{{ cert: \"{}\", key: \"{}\" }}", c.display(), k.display())).collect();
    format!(", tls: {{ listen: \"{listen}\", certificates: [{}]{extra} }}", certificates.join(", "))
}

fn two_functions(hello: &FnInstance, world: &FnInstance, hello_annotations: &str) -> String {
    format!(
        "  - name: hello\n    annotations: {{ {hello_annotations} }}\n    instances: [\"{}\"]\n\
         \x20 - name: world\n    instances: [\"{}\"]\n",
        hello.addr, world.addr
    )
}

#[test]
fn sni_picks_each_names_certificate_and_http1_and_http2_are_served_over_tls() {
    let (hello, world) = (start_fn("hello"), start_fn("world"));
    let dir = TempDir::new("tls-sni");
    // Two certificates: an exact name, and a wildcard for the rest of the namespace.
    let exact = certificate(&["hello.default.example.com"]);
    let wildcard = certificate(&["*.default.example.com"]);
    let pairs = [exact.write(&dir.0, "exact"), wildcard.write(&dir.0, "wildcard")];
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = start_proxy_with(&tls_yaml(tls, &pairs, ""), &two_functions(&hello, &world, ""));
    let runtime = runtime();

    let connection =
        block_on(&runtime, "TLS to hello", tls_connect(tls, Some("hello.default.example.com"), &[b"http/1.1"]))
            .expect("TLS handshake");
    assert_eq!(connection.leaf, exact.der, "hello's own certificate");
    assert_eq!(connection.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (status, headers, body) =
        block_on(&runtime, "GET over TLS", http1(connection, "hello.default.example.com", "/?headers"))
            .expect("answer");
    assert_eq!(status, 200, "{body:?}");
    let seen = String::from_utf8_lossy(&body).to_lowercase();
    assert!(seen.contains("x-forwarded-proto: https"), "the function learns the client used HTTPS:\n{seen}");
    assert!(seen.contains("proto=https"), "and so does Forwarded:\n{seen}");
    assert_eq!(headers["x-wavelink-instance"], "hello");

    let connection =
        block_on(&runtime, "TLS to world", tls_connect(tls, Some("world.default.example.com"), &[b"h2", b"http/1.1"]))
            .expect("TLS handshake");
    assert_eq!(connection.leaf, wildcard.der, "world is covered by the wildcard");
    assert_eq!(connection.alpn.as_deref(), Some(&b"h2"[..]), "HTTP/2 is offered by ALPN");
    let answers = block_on(
        &runtime,
        "HTTP/2 over TLS",
        http2(connection, "world.default.example.com", &["/?ms=1", "/?ms=1", "/?headers"]),
    )
    .expect("answers");
    assert_eq!(answers.len(), 3);
    for (status, headers, body) in &answers {
        assert_eq!(*status, 200, "{body:?}");
        assert_eq!(headers["x-wavelink-instance"], "world");
    }
    // An HTTP/2 stream has no connection of its own to look at: it still says HTTPS.
    let seen = String::from_utf8_lossy(&answers[2].2).to_lowercase();
    assert!(seen.contains("x-forwarded-proto: https"), "{seen}");

    // A client that names no host gets the first certificate listed (nginx's default server),
    // and a host no function serves is a 404 as on plaintext.
    let connection = block_on(&runtime, "TLS without SNI", tls_connect(tls, None, &[])).expect("TLS handshake");
    assert_eq!(connection.leaf, exact.der);
    let connection = block_on(&runtime, "TLS to an unknown host", tls_connect(tls, Some("nobody.example.org"), &[]))
        .expect("TLS handshake");
    let (status, _, _) =
        block_on(&runtime, "GET unknown", http1(connection, "nobody.example.org", "/")).expect("answer");
    assert_eq!(status, 404);

    // Plaintext is still served (no redirect asked), and says so to the function.
    let plain = get(proxy.listen, "hello.default.example.com", "/?headers").expect("plaintext");
    assert_eq!(plain.status, 200);
    assert!(plain.text().to_lowercase().contains("x-forwarded-proto: http\n"), "{}", plain.text());

    let metrics = admin_get(&proxy, "/metrics").unwrap().text();
    assert!(metric_in(&metrics, "wavelink_tls_handshakes_total{result=\"ok\"}") >= 4.0, "{metrics}");
    assert!(metrics.contains("wavelink_tls_certificate_expiry_timestamp_seconds{certificate="), "{metrics}");
}

#[test]
fn a_certificate_replaced_while_clients_connect_fails_no_request_and_drops_no_connection() {
    let (hello, world) = (start_fn("hello"), start_fn("world"));
    let dir = TempDir::new("tls-rotate");
    let old = certificate(&["*.default.example.com"]);
    let new = certificate(&["*.default.example.com"]);
    let pair = old.write(&dir.0, "site");
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _proxy =
        start_proxy_with(&tls_yaml(tls, &[pair], ", reload-interval: 200ms"), &two_functions(&hello, &world, ""));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // A connection opened before the change, used again after it.
    let kept = block_on(&runtime, "kept connection", tls_connect(tls, Some("hello.default.example.com"), &[b"h2"]))
        .expect("TLS handshake");
    assert_eq!(kept.leaf, old.der);
    let (mut kept_sender, kept_connection) = block_on(
        &runtime,
        "h2 handshake",
        hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(kept.stream),
        ),
    )
    .expect("HTTP/2 handshake");
    runtime.spawn(kept_connection);

    // Clients keep opening new connections while the certificate is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let (served_old, served_new, failures) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Mutex::new(Vec::new())));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, served_old, served_new, failures) =
                (stop.clone(), served_old.clone(), served_new.clone(), failures.clone());
            let (old_der, new_der) = (old.der.clone(), new.der.clone());
            runtime.spawn(async move {
                let deadline = Instant::now() + PATIENCE;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let attempt = async {
                        let connection = tls_connect(tls, Some("world.default.example.com"), &[b"http/1.1"]).await?;
                        let leaf = connection.leaf.clone();
                        let (status, _, _) = http1(connection, "world.default.example.com", "/").await?;
                        Ok::<_, std::io::Error>((leaf, status))
                    };
                    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                        Ok(Ok((leaf, status))) if status == 200 && leaf == old_der => {
                            served_old.fetch_add(1, Ordering::Relaxed)
                        }
                        Ok(Ok((leaf, status))) if status == 200 && leaf == new_der => {
                            served_new.fetch_add(1, Ordering::Relaxed)
                        }
                        other => {
                            failures.lock().unwrap().push(format!("{:?}", other.map(|r| r.map(|(_, s)| s))));
                            0
                        }
                    };
                }
            })
        })
        .collect();
    wait_until("requests with the old certificate", || served_old.load(Ordering::Relaxed) >= 5);
    new.write(&dir.0, "site");
    wait_until("the new certificate served to new connections", || served_new.load(Ordering::Relaxed) >= 5);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        block_on(&runtime, "client stops", client).expect("client task");
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "requests failed during the change: {failures:?}");

    // The connection opened before the change still works.
    let answer = block_on(
        &runtime,
        "request on the kept connection",
        kept_sender.send_request(request("hello.default.example.com", "/")),
    )
    .expect("the connection from before the change still answers");
    assert_eq!(answer.status(), 200);
}

#[test]
fn plaintext_is_redirected_to_https_for_functions_that_ask_and_slow_handshakes_are_cut() {
    let (hello, world) = (start_fn("hello"), start_fn("world"));
    let dir = TempDir::new("tls-redirect");
    let pair = certificate(&["*.default.example.com"]).write(&dir.0, "site");
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = start_proxy_with(
        &tls_yaml(tls, &[pair], ", handshake-timeout: 500ms"),
        &two_functions(&hello, &world, "wavelink.dev/https-redirect: \"true\""),
    );

    let response = get(proxy.listen, "hello.default.example.com", "/path?q=1").expect("plaintext");
    assert_eq!(response.status, 308, "{}", response.text());
    assert_eq!(
        response.header("location"),
        Some(format!("https://hello.default.example.com:{}/path?q=1", tls.port()).as_str())
    );
    let response = get(proxy.listen, "world.default.example.com", "/").expect("plaintext");
    assert_eq!(response.status, 200, "a function that did not ask is served on plaintext");

    // A client that connects and never starts its handshake is disconnected at the deadline.
    let mut silent = std::net::TcpStream::connect(tls).expect("connect");
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut silent, &mut buf);
    assert!(matches!(read, Ok(0) | Err(_)), "closed, not answered: {read:?}");
    assert!(started.elapsed() < PATIENCE, "cut by the handshake timeout");
    wait_until("the timeout counted", || {
        metric(proxy.admin, "wavelink_tls_handshakes_total{result=\"timeout\"}") >= 1.0
    });
}

#[test]
fn a_key_that_does_not_match_its_certificate_stops_the_proxy_with_a_clear_error() {
    let dir = TempDir::new("tls-mismatch");
    let a = certificate(&["a.default.example.com"]);
    let b = certificate(&["b.default.example.com"]);
    let (cert, _) = a.write(&dir.0, "a");
    let (_, key) = b.write(&dir.0, "b");
    let config = dir.0.join("wavelink.yaml");
    let listen = free_port();
    let text = format!(
        "proxy: {{ listen: \"127.0.0.1:{listen}\", admin: \"127.0.0.1:{}\", tls: {{ listen: \"127.0.0.1:{}\", \
         certificates: [{{ cert: \"{}\", key: \"{}\" }}] }} }}\n",
        free_port(),
        free_port(),
        cert.display(),
        key.display()
    );
    std::fs::write(&config, text).unwrap();
    let log = dir.0.join("proxy.log");
    let mut command = wavelink();
    command.args(["proxy", "--config"]).arg(&config).stdout(std::process::Stdio::null());
    command.stderr(std::fs::File::create(&log).expect("log file"));
    let mut proxy = Proc::spawn("proxy", &mut command);
    let status = proxy.wait_timeout(PATIENCE).expect("the proxy exits instead of serving");
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("proxy.tls") && stderr.contains("a.crt") && stderr.contains("private key does not belong"),
        "{stderr}"
    );

    // `--check` says the same without starting anything.
    let check = wavelink().args(["proxy", "--check", "--config"]).arg(&config).output().expect("proxy --check");
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{stdout}");
    assert!(stdout.contains("bad      certificate") && stdout.contains("private key does not belong"), "{stdout}");
}
