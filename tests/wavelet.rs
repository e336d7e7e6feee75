//! End-to-end: the expedited track. Real Wavelets starting real `wavelink fn` processes, the
//! proxy spilling to them; every claim about processes is checked in /proc, not taken from the
//! agent.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

fn function(prefix: &str, annotations: &str, extra: &str) -> TestFunction {
    function_with_command(prefix, "[\"wavelink\", \"fn\"]", annotations, extra)
}

/// The same, run by the small `wavelink-fn` binary (found next to the Wavelet's binary).
fn lean_function(prefix: &str, annotations: &str, extra: &str) -> TestFunction {
    function_with_command(prefix, "[\"wavelink-fn\"]", annotations, extra)
}

#[test]
fn a_burst_with_no_regular_instances_is_served_by_emergency_instances_that_go_away_after_the_keepalive() {
    let f = lean_function(
        "burst",
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/emergency-keepalive: 1s, wavelink.dev/queue-timeout: 60s",
        "",
    );
    let stack = Stack::new(&f.yaml, &[150]);
    let _wavelet = stack.start_wavelet(0);
    let _proxy = stack.start_proxy();

    let results = burst_with(stack.proxy_listen, &f.host, "/?sleep=100", 100, "");
    let mut instances = HashSet::new();
    for (response, _) in &results {
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("x-wavelink-track"), Some("emergency"));
        assert_eq!(response.header("x-wavelink-in-flight"), Some("1"), "an instance served two at once");
        instances.insert(response.header("x-wavelink-instance").expect("instance id").to_owned());
    }
    assert!(instances.len() <= 100, "more instances than emergency-max: {}", instances.len());
    assert!(instances.len() > 1, "a burst of 100 at concurrency 1 needs many instances");

    // The proxy never had more than emergency-max (100) requests on the emergency track.
    let stats = get(stack.proxy_admin, "admin", "/stats").unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    let function = &stats["functions"][0];
    assert_eq!(function["completed"]["emergency"], 100);
    assert!(function["samples"].as_array().unwrap().iter().all(|s| s["emergency"]["peak"].as_u64() <= Some(100)));

    // An EI sees what an RI sees: the forwarding headers, and none of the platform's own (the
    // client's are removed by the proxy, the proxy's x-wavelink-function by the Wavelet).
    let request = format!(
        "GET /?headers HTTP/1.1\r\nHost: {}\r\nx-wavelink-function: default/other\r\nConnection: close\r\n\r\n",
        f.host
    );
    let seen = send(stack.proxy_listen, &request).unwrap();
    assert_eq!(seen.header("x-wavelink-track"), Some("emergency"));
    let seen = seen.text();
    assert!(seen.lines().all(|l| !l.starts_with("x-wavelink-")), "{seen}");
    assert!(seen.lines().any(|l| l == "x-forwarded-for: 127.0.0.1"), "{seen}");

    assert!(!processes_with_env(&f.marker).is_empty(), "instances live on within their keepalive");
    wait_for_no_instances(&f.marker, Duration::from_secs(15));
    assert_eq!(stack.wavelet_metric(0, "wavelink_wavelet_instances"), 0.0);
}

#[test]
fn with_regular_instances_only_the_overflow_goes_to_emergency_instances() {
    let ri = start_fn("regular-1");
    let f = function(
        "overflow",
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/emergency-keepalive: 1s",
        &format!("    instances: [\"{}\"]\n", ri.addr),
    );
    let stack = Stack::new(&f.yaml, &[20]);
    let _wavelet = stack.start_wavelet(0);
    let _proxy = stack.start_proxy();

    let results = burst_with(stack.proxy_listen, &f.host, "/?sleep=300", 6, "");
    let mut regular = 0;
    for (response, _) in &results {
        assert_eq!(response.status, 200);
        match response.header("x-wavelink-track") {
            Some("regular") => {
                regular += 1;
                assert_eq!(response.header("x-wavelink-instance"), Some("regular-1"));
            }
            Some("emergency") => assert_ne!(response.header("x-wavelink-instance"), Some("regular-1")),
            other => panic!("unexpected track {other:?}"),
        }
    }
    // One RI of concurrency 1: it takes one request at a time, the overflow spills at once.
    assert!((1..=2).contains(&regular), "{regular} requests on the RI");
    assert!(results.len() - regular >= 4);
}

#[test]
fn emergency_max_bounds_a_function_and_the_excess_waits_for_a_freed_slot() {
    let f = function(
        "max",
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/emergency-max: \"2\", wavelink.dev/emergency-keepalive: 5s",
        "",
    );
    let stack = Stack::new(&f.yaml, &[20]);
    let _wavelet = stack.start_wavelet(0);
    let _proxy = stack.start_proxy();

    let results = burst_with(stack.proxy_listen, &f.host, "/?sleep=200", 6, "");
    let instances: HashSet<_> = results.iter().filter_map(|(r, _)| r.header("x-wavelink-instance")).collect();
    assert!(results.iter().all(|(r, _)| r.status == 200 && r.header("x-wavelink-track") == Some("emergency")));
    assert!(instances.len() <= 2, "emergency-max 2, yet {} instances", instances.len());
    let series = format!("wavelink_emergency_instances_spawned_total{{function=\"{}/burst\"}}", f.namespace);
    let spawned = stack.wavelet_metric(0, &series);
    assert!((1.0..=2.0).contains(&spawned), "{spawned} instances started");
}

#[test]
fn a_full_wavelet_sends_the_request_to_another_one() {
    let f = function("full", "wavelink.dev/container-concurrency: \"1\", wavelink.dev/emergency-keepalive: 1s", "");
    let stack = Stack::new(&f.yaml, &[1, 20]);
    let _small = stack.start_wavelet(0);
    let _large = stack.start_wavelet(1);
    let _proxy = stack.start_proxy();

    let results = burst_with(stack.proxy_listen, &f.host, "/?sleep=300", 6, "");
    for (response, _) in &results {
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert!(stack.wavelet_metric(0, "wavelink_wavelet_full_total") >= 1.0, "the small Wavelet was full at least once");
    assert!(stack.wavelet_metric(0, "wavelink_wavelet_instances") <= 1.0);
}

#[test]
fn the_node_cap_answers_full_and_unknown_unmarked_or_unstartable_requests_are_refused() {
    let f = function(
        "cap",
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/emergency-keepalive: 1s",
        "  - name: broken\n    namespace: NAMESPACE\n    command: [\"/nonexistent/program\"]\n",
    );
    let stack = Stack::new(&f.yaml, &[2]);
    let _wavelet = stack.start_wavelet(0);
    let wavelet = stack.wavelets[0].0;

    // Only the proxy may start instances: without its token, or with another, nothing starts.
    for token in ["", "x-wavelink-token: wavelink-other-token-0123456789\r\n"] {
        let request = f.direct("/").replace(&format!("x-wavelink-token: {TEST_TOKEN}\r\n"), token);
        let refused = send(wavelet, &request).unwrap();
        assert_eq!(refused.status, 401, "{}", refused.text());
    }
    assert_eq!(stack.wavelet_metric(0, "wavelink_wavelet_instances"), 0.0, "a refused request starts nothing");
    let with_token_only =
        format!("GET / HTTP/1.1\r\nHost: {}\r\nx-wavelink-token: {TEST_TOKEN}\r\nConnection: close\r\n\r\n", f.host);
    assert_eq!(send(wavelet, &with_token_only).unwrap().status, 400, "no x-wavelink-function header");
    let unknown = f.direct("/").replace("/burst\r\n", "/nope\r\n");
    assert_eq!(send(wavelet, &unknown).unwrap().status, 404);
    let broken = send(wavelet, &f.direct("/").replace("/burst\r\n", "/broken\r\n")).unwrap();
    assert_eq!(broken.status, 502);
    assert!(broken.text().contains("/nonexistent/program"), "{}", broken.text());
    assert_eq!(stack.wavelet_metric(0, "wavelink_wavelet_instances"), 0.0, "a failed start holds no place");

    let results = burst_with(wavelet, &f.host, "/?sleep=500", 5, &f.header());
    let full: Vec<_> = results.iter().filter(|(r, _)| r.status == 503).collect();
    assert_eq!(results.len() - full.len(), 2, "two instances at most");
    for (response, _) in full {
        assert_eq!(response.header("x-wavelink-wavelet"), Some("full"));
        assert_eq!(response.header("retry-after"), Some("1"));
    }
}

#[test]
fn after_a_kill_9_of_the_wavelet_its_restart_kills_every_orphan_and_serves_again() {
    // Each instance starts a child of its own: the parent-death signal takes the instance
    // down with the Wavelet, but not the child; only the restart's cleanup can.
    let command =
        format!("[\"sh\", \"-c\", \"sleep 300 & exec \\\"$0\\\" fn\", \"{}\"]", env!("CARGO_BIN_EXE_wavelink"));
    let f = function_with_command(
        "crash",
        &command,
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/emergency-keepalive: 60s",
        "",
    );
    let stack = Stack::new(&f.yaml, &[20]);
    let mut wavelet = stack.start_wavelet(0);
    let address = stack.wavelets[0].0;
    // These requests die with the Wavelet; only their instances matter here.
    let request = f.direct("/?sleep=3000");
    let burst: Vec<_> = (0..4)
        .map(|_| {
            let request = request.clone();
            std::thread::spawn(move || send(address, &request).ok())
        })
        .collect();
    wait_until("four instances and their children run", || processes_with_env(&f.marker).len() >= 8);
    wavelet.signal(Signal::SIGKILL);
    wavelet.wait_timeout(PATIENCE).expect("the Wavelet died");
    for request in burst {
        assert!(request.join().expect("client thread").is_none(), "a request outlived its Wavelet");
    }
    wait_within("the instances died with the Wavelet", Duration::from_secs(10), || {
        processes_with_env(&f.marker).len() <= 4
    });
    assert!(!processes_with_env(&f.marker).is_empty(), "the children outlived the Wavelet, as orphans");

    let _restarted = stack.start_wavelet(0);
    wait_for_no_instances(&f.marker, Duration::from_secs(10));
    assert!(stack.wavelet_log(0).contains("took over from a previous run"), "{}", stack.wavelet_log(0));
    assert_eq!(send(address, &f.direct("/")).unwrap().status, 200);
}

#[test]
fn instances_get_only_their_socket_an_unprivileged_user_and_a_memory_cgroup() {
    let f = function("hygiene", "wavelink.dev/emergency-keepalive: 30s", "");
    let stack = Stack::new(&f.yaml, &[4]);
    let wavelet = stack.start_wavelet(0);
    assert_eq!(send(stack.wavelets[0].0, &f.direct("/")).unwrap().status, 200);
    let pids = processes_with_env(&f.marker);
    assert_eq!(pids.len(), 1, "one instance");
    let pid = pids[0];

    // No socket of the Wavelet leaked into the instance.
    let sockets = |pid: u32| -> HashSet<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .map(|target| target.to_string_lossy().into_owned())
                    .filter(|target| target.starts_with("socket:"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let instance_sockets = sockets(pid);
    let wavelet_sockets = sockets(wavelet.pid());
    assert!(!instance_sockets.is_empty(), "fd 3 is a socket");
    let shared: Vec<_> = instance_sockets.intersection(&wavelet_sockets).collect();
    assert!(shared.is_empty(), "sockets shared with the Wavelet: {shared:?}");
    let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap();
    assert!(fd3.to_string_lossy().starts_with("socket:"), "fd 3 is {fd3:?}");

    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let pgrp: u32 = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(pgrp, pid, "the instance leads its own process group");

    if run_as_args().contains(&"nobody") {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(uid.split_whitespace().skip(1).all(|id| id == "65534"), "{uid}");
    } else {
        eprintln!("skipped: the unprivileged-user check needs root and a binary `nobody` can execute");
    }
    let log = stack.wavelet_log(0);
    if log.contains("instances get a memory cgroup") {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cgroup.contains("wavelink-instances/"), "{cgroup}");
    } else {
        let reason = log.lines().find(|l| l.contains("memory limits disabled")).unwrap_or("no reason logged");
        eprintln!("skipped: memory cgroups are not writable here ({reason})");
    }
}

#[test]
fn sigterm_drains_the_wavelet_then_destroys_every_instance() {
    let f = function("drain", "wavelink.dev/emergency-keepalive: 60s", "");
    let stack = Stack::new(&f.yaml, &[4]);
    let mut wavelet = stack.start_wavelet(0);
    let address = stack.wavelets[0].0;
    let request = f.direct("/?sleep=1000");
    let in_flight = std::thread::spawn(move || send(address, &request).expect("in-flight request"));
    wait_until("the request runs on an instance", || processes_with_env(&f.marker).len() == 1);
    wavelet.signal(Signal::SIGTERM);
    assert_eq!(in_flight.join().unwrap().status, 200, "the in-flight request finished");
    let status = wavelet.wait_timeout(PATIENCE).expect("the Wavelet exits");
    assert!(status.success(), "{status:?}");
    wait_for_no_instances(&f.marker, Duration::from_secs(5));
}

#[test]
fn a_command_without_socket_activation_is_started_on_port_and_waited_for() {
    let f = function("port", "wavelink.dev/emergency-keepalive: \"0\"", "    socket-activation: false\n");
    let stack = Stack::new(&f.yaml, &[4]);
    let _wavelet = stack.start_wavelet(0);
    for _ in 0..3 {
        let response = send(stack.wavelets[0].0, &f.direct("/")).unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    // Keepalive 0: one request per instance.
    let series = format!("wavelink_emergency_instances_spawned_total{{function=\"{}/burst\"}}", f.namespace);
    assert_eq!(stack.wavelet_metric(0, &series), 3.0);
    wait_for_no_instances(&f.marker, Duration::from_secs(5));
}

#[test]
fn a_crash_looping_function_backs_off_counts_its_failures_and_leaves_no_zombie() {
    for (prefix, command) in [("exits", "[\"sh\", \"-c\", \"exit 3\"]"), ("noexec", "[\"/nonexistent/program\"]")] {
        let f = function_with_command(prefix, command, "wavelink.dev/emergency-keepalive: 10s", "");
        let stack = Stack::new(&f.yaml, &[8]);
        let wavelet = stack.start_wavelet(0);
        let address = stack.wavelets[0].0;
        let statuses: Vec<(u16, Option<String>)> = (0..10)
            .map(|_| {
                let response = send(address, &f.direct("/")).expect("an answer");
                (response.status, response.header("x-wavelink-wavelet").map(str::to_owned))
            })
            .collect();
        assert!(statuses.iter().all(|(status, _)| *status == 502 || *status == 503), "{prefix}: {statuses:?}");
        if prefix == "exits" {
            // Instances that start and die: "unavailable" here, so a proxy tries elsewhere.
            assert!(
                statuses.iter().any(|(status, marker)| *status == 503 && marker.as_deref() == Some("unavailable")),
                "{prefix}: the back-off answers unavailable at once: {statuses:?}"
            );
        }
        let series = |name: &str| format!("{name}{{function=\"{}/burst\"}}", f.namespace);
        let failures = stack.wavelet_metric(0, &series("wavelink_emergency_spawn_failures_total"));
        assert!((1.0..=3.0).contains(&failures), "{prefix}: {failures} failures: counted, and spaced by the back-off");
        wait_within("no zombie child of the Wavelet", Duration::from_secs(5), || zombie_children(wavelet.pid()) == 0);
    }
}

#[test]
fn what_an_instance_leaves_behind_is_in_its_cgroup_dies_with_it_and_is_reaped() {
    // The instance starts a process in a session of its own (out of its process group) before
    // it serves.
    let command = format!("[\"sh\", \"-c\", \"setsid sleep 300 & exec {}\"]", env!("CARGO_BIN_EXE_wavelink-fn"));
    let f = function_with_command("escape", &command, "wavelink.dev/emergency-keepalive: 1s", "");
    let stack = Stack::new(&f.yaml, &[4]);
    let wavelet = stack.start_wavelet(0);
    assert_eq!(send(stack.wavelets[0].0, &f.direct("/")).unwrap().status, 200);
    let log = stack.wavelet_log(0);
    if !log.contains("instances get a memory cgroup") {
        let reason = log.lines().find(|l| l.contains("memory limits disabled")).unwrap_or("no reason logged");
        eprintln!("skipped: memory cgroups are not writable here ({reason})");
        return;
    }
    wait_within("the instance and the process it started", Duration::from_secs(10), || {
        processes_with_env(&f.marker).len() == 2
    });
    for pid in processes_with_env(&f.marker) {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        assert!(cgroup.contains("wavelink-instances/"), "pid {pid} is outside the instance's cgroup: {cgroup}");
    }
    // Idle past its keepalive, the instance is destroyed, and what it left behind with it.
    wait_for_no_instances(&f.marker, Duration::from_secs(20));
    wait_within("no zombie child of the Wavelet", Duration::from_secs(5), || zombie_children(wavelet.pid()) == 0);
    assert!(stack.wavelet_metric(0, "wavelink_wavelet_orphans_reaped_total") >= 1.0, "the orphan was reaped");
}

/// Children of `parent` that exited and were not reaped.
fn zombie_children(parent: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat.rfind(')').map(|i| stat[i + 2..].split(' ').collect()).unwrap_or_default();
            fields.first() == Some(&"Z") && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
        })
        .count()
}

#[test]
fn a_websocket_spilled_to_an_emergency_instance_keeps_it_while_open_and_frees_it_on_close() {
    use tungstenite::Message;
    let f = lean_function(
        "ws",
        "wavelink.dev/scaling-mode: fast-only, wavelink.dev/container-concurrency: \"1\", wavelink.dev/timeout: 1s, \
         wavelink.dev/emergency-keepalive: 1s",
        "",
    );
    let stack = Stack::new(&f.yaml, &[4]);
    let _wavelet = stack.start_wavelet(0);
    let _proxy = stack.start_proxy();
    let emergency_in_flight = || {
        let stats = get(stack.proxy_admin, "admin", "/stats").expect("stats").json();
        stats["functions"][0]["in_flight"]["emergency"].as_u64().unwrap_or(u64::MAX)
    };

    let stream = std::net::TcpStream::connect(stack.proxy_listen).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    let (mut socket, response) =
        tungstenite::client::client(format!("ws://{}/chat", f.host), stream).expect("a WebSocket handshake");
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["x-wavelink-track"], "emergency");
    let mut echo = |text: &str| {
        socket.send(Message::text(text)).expect("send");
        match socket.read().expect("the echo") {
            Message::Text(back) => assert_eq!(back.as_str(), text),
            other => panic!("expected a text echo, got {other:?}"),
        }
    };
    echo("first");
    // The socket holds its emergency slot, and with it its EI, while it is open...
    assert_eq!(emergency_in_flight(), 1);
    // ...past the function's 1 s timeout and its 1 s EI keepalive: a quiet socket is not cut.
    std::thread::sleep(Duration::from_millis(2500));
    echo("after the timeout and the keepalive");
    assert_eq!(emergency_in_flight(), 1);
    assert_eq!(processes_with_env(&f.marker).len(), 1, "the EI lives while its socket is open");

    socket.close(None).expect("close");
    // The close handshake completes (the echo returns the close), then the connection ends.
    let deadline = std::time::Instant::now() + PATIENCE;
    while !matches!(socket.read(), Err(_) | Ok(Message::Close(_))) && std::time::Instant::now() < deadline {}
    wait_until("the slot is freed when the socket closes", || emergency_in_flight() == 0);
    wait_for_no_instances(&f.marker, Duration::from_secs(15));
}

#[test]
fn an_emergency_instance_lives_out_its_keepalive_however_long_the_thread_that_started_it_idles() {
    // PR_SET_PDEATHSIG is tied to the thread that starts a child; instances were started from
    // tokio's blocking pool, whose idle threads exit after 10 s, and died with them.
    let f = lean_function(
        "pdeath",
        "wavelink.dev/scaling-mode: fast-only, wavelink.dev/container-concurrency: \"1\", \
         wavelink.dev/emergency-keepalive: 60s",
        "",
    );
    let stack = Stack::new(&f.yaml, &[4]);
    let _wavelet = stack.start_wavelet(0);
    let _proxy = stack.start_proxy();
    let first = get(stack.proxy_listen, &f.host, "/").expect("first request");
    assert_eq!(first.status, 200);
    let instance = first.header("x-wavelink-instance").expect("instance id").to_owned();
    let pids = processes_with_env(&f.marker);
    assert_eq!(pids.len(), 1);
    // Longer than tokio's blocking-thread keep-alive (10 s), well within the EI's (60 s).
    std::thread::sleep(Duration::from_secs(13));
    assert_eq!(processes_with_env(&f.marker), pids, "the idle instance is still alive");
    let second = get(stack.proxy_listen, &f.host, "/").expect("second request");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-wavelink-instance"), Some(instance.as_str()), "served by the same instance");
    assert_eq!(stack.wavelet_metric(0, "wavelink_emergency_instances_destroyed_total{reason=\"exited\"}"), 0.0);
}
