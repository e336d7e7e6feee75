//! End-to-end: Emergency Instances as containers of the function's image, through a private
//! containerd (own root, state and socket in a temporary directory) with an image built by
//! `wavelink image` from the compiled `wavelink-fn`. Every claim is checked in containerd (`ctr`)
//! and /proc, not taken from the Wavelet. Skipped, saying why, where containerd cannot run.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::containerd::{IMAGE, TestContainerd, containerd};
use support::*;

/// A function of the test image in a namespace of its own, with an env value only its spec sets.
fn image_function(containerd: &TestContainerd, image: &str, annotations: &str) -> (String, String, String) {
    let namespace = format!("ctr-{:06x}", nonce() & 0xff_ffff);
    let yaml = format!(
        "  - name: boxed\n    namespace: {namespace}\n    image: {image}\n    env: {{ FN_MESSAGE: spec-{ns} }}\n    annotations: {{ {annotations} }}\n",
        ns = containerd.namespace
    );
    let host = format!("boxed.{namespace}.example.com");
    (yaml, host, namespace)
}

fn assert_nothing_left(containerd: &TestContainerd, function_namespace: &str) {
    wait_until("no task, container or instance snapshot left in containerd", || {
        containerd.tasks().is_empty() && containerd.containers().is_empty() && containerd.active_snapshots().is_empty()
    });
    let marker = format!("WAVELINK_FUNCTION={function_namespace}/boxed");
    assert!(processes_with_env(&marker).is_empty(), "an instance process outlived its container");
}

#[test]
fn a_burst_without_regular_instances_is_served_by_containers_of_the_image_and_nothing_is_left_after() {
    let Some(containerd) = containerd("containerd burst") else { return };
    let (yaml, host, namespace) = image_function(
        &containerd,
        IMAGE,
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/emergency-keepalive: 1s, wavelink.dev/queue-timeout: 60s",
    );
    let stack = Stack::new(&yaml, &[64]);
    let mut wavelet = stack.start_wavelet_with(0, &containerd.wavelet_args());
    let _proxy = stack.start_proxy();

    let results = burst_with(stack.proxy_listen, &host, "/?sleep=200", 50, "");
    let mut instances = HashSet::new();
    let expected_message = format!("spec-{}", containerd.namespace);
    for (response, _) in &results {
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("x-wavelink-track"), Some("emergency"));
        assert_eq!(response.header("x-wavelink-message"), Some(expected_message.as_str()), "the spec's env");
        assert_eq!(response.header("x-wavelink-in-flight"), Some("1"), "an instance served two at once");
        instances.insert(response.header("x-wavelink-instance").expect("instance id").to_owned());
    }
    assert!(instances.len() > 1, "a burst of 50 at concurrency 1 needs many containers");
    // Each instance that answered was a container of this containerd (ids are container ids).
    let spawned = stack.wavelet_metric(0, "wavelink_emergency_instances_spawned_total{runtime=\"containerd\"}");
    assert!(spawned >= instances.len() as f64, "{spawned} started, {} answered", instances.len());

    // Idle instances go after the keepalive; what stays is at most the prepared ones.
    wait_until("idle containers destroyed", || stack.wavelet_metric(0, "wavelink_wavelet_instances") == 0.0);
    wait_until("only prepared containers remain", || containerd.tasks().len() <= 2);

    wavelet.signal(Signal::SIGTERM);
    assert!(wavelet.wait_timeout(PATIENCE).is_some_and(|s| s.success()), "{}", stack.wavelet_log(0));
    assert_nothing_left(&containerd, &namespace);
}

#[test]
fn a_wavelet_killed_mid_burst_leaves_containers_that_its_restart_removes() {
    let Some(containerd) = containerd("containerd crash") else { return };
    let (yaml, host, namespace) = image_function(
        &containerd,
        IMAGE,
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/emergency-keepalive: 30s, wavelink.dev/queue-timeout: 5s",
    );
    let stack = Stack::new(&yaml, &[64]);
    let wavelet = stack.start_wavelet_with(0, &containerd.wavelet_args());
    let _proxy = stack.start_proxy();

    let proxy = stack.proxy_listen;
    let client_host = host.clone();
    // Clients whose Wavelet dies under them get an error; only what containerd keeps matters here.
    let clients = std::thread::spawn(move || {
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let host = client_host.clone();
                std::thread::spawn(move || get(proxy, &host, "/?sleep=3000").map(|r| r.status).ok())
            })
            .collect();
        threads.into_iter().map(|t| t.join().ok().flatten()).collect::<Vec<_>>()
    });
    wait_until("containers running", || containerd.tasks().len() >= 5);
    wavelet.signal(Signal::SIGKILL);
    drop(wavelet);
    let _ = clients.join();
    assert!(!containerd.containers().is_empty(), "a killed Wavelet cannot clean up after itself");

    let _restarted = stack.start_wavelet_with(0, &containerd.wavelet_args());
    assert!(stack.wavelet_log(0).contains("removed_orphans"), "{}", stack.wavelet_log(0));
    assert_nothing_left(&containerd, &namespace);
    // And the restarted Wavelet serves.
    let response = get(stack.proxy_listen, &host, "/").expect("request after the restart");
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn an_instance_sees_nothing_of_the_wavelet_reaches_no_other_instance_and_can_only_kill_itself() {
    let Some(containerd) = containerd("containerd isolation") else { return };
    let (yaml, host, _namespace) = image_function(
        &containerd,
        IMAGE,
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/emergency-keepalive: 60s",
    );
    let stack = Stack::new(&yaml, &[8]);
    let secret = stack.dir.0.join("token");
    std::fs::write(&secret, "wavelet-secret").expect("token file");
    let _wavelet = stack.start_wavelet_with(0, &containerd.wavelet_args());
    let _proxy = stack.start_proxy();

    // Two instances at once, so there is a neighbour to try to reach.
    let results = burst_with(stack.proxy_listen, &host, "/?sleep=500", 2, "");
    let ids: Vec<String> =
        results.iter().map(|(r, _)| r.header("x-wavelink-instance").expect("instance id").to_owned()).collect();
    assert_ne!(ids[0], ids[1], "two instances");
    let (a, b) = (&ids[0], &ids[1]);
    // The exit code of a shell script run inside an instance (a signal is a failure of the test).
    let sh = |id: &str, script: &str| {
        let out = containerd.exec(id, &["/bin/busybox", "sh", "-c", script]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let code = out.status.code().unwrap_or_else(|| panic!("`{script}` was killed: {text}"));
        assert!(code < 128, "`{script}` died of a signal ({code}): {text}");
        (code, text)
    };
    let wget =
        |id: &str, url: &str| sh(id, &format!("/bin/busybox timeout 10 /bin/busybox wget -q -O /dev/null {url}"));

    // No file of the Wavelet's: its state directory, its config, a token beside them.
    assert_eq!(sh(a, "/bin/busybox test -e /bin/busybox").0, 0, "the probe itself works");
    for path in [stack.wavelet_state_dir(0), stack.config.clone(), secret.clone()] {
        let (code, _) = sh(a, &format!("/bin/busybox test -e '{}'", path.display()));
        assert_eq!(code, 1, "{} is visible inside an instance", path.display());
    }
    let (_, mounts) = sh(a, "/bin/busybox cat /proc/self/mounts");
    assert!(mounts.contains(" / overlay"), "the root is the image's snapshot: {mounts}");
    assert!(!mounts.contains("wavelink-test-stack"), "a Wavelet directory is mounted: {mounts}");

    // Its own network: only loopback; the Wavelet's and proxy's ports and the neighbour are
    // unreachable. Its own port answers (the probe shows connecting works at all).
    let (_, links) = sh(a, "/bin/busybox ip -o link");
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    let (own, said) = wget(a, "http://127.0.0.1:8080/");
    assert_eq!(own, 0, "the instance reaches its own port: {said}");
    // The one port it can address is its own: the neighbour listens on the same port number in
    // a namespace of its own, and answers there with its own id.
    let (_, headers) = sh(a, "/bin/busybox timeout 10 /bin/busybox wget -S -O /dev/null http://127.0.0.1:8080/ 2>&1");
    assert!(headers.contains(&format!("x-wavelink-instance: {a}")), "{headers}");
    assert!(!headers.contains(b.as_str()), "{headers}");
    for target in [stack.wavelets[0].0, stack.wavelets[0].1, stack.proxy_listen, stack.proxy_admin] {
        let (code, said) = wget(a, &format!("http://{target}/"));
        assert_eq!(code, 1, "{target} is reachable from inside an instance: {said}");
    }

    // Signals reach only its own processes: every one of them (-1), then its init (the function,
    // which stops on SIGTERM); the Wavelet notices the exit and destroys the container.
    let wavelet_pid = _wavelet.pid();
    let _ = containerd
        .exec(a, &["/bin/busybox", "sh", "-c", "trap '' TERM; /bin/busybox kill -TERM -1; /bin/busybox kill -TERM 1"]);
    assert!(procfs_alive(wavelet_pid), "the Wavelet survived an instance's kill -1");
    wait_until("the instance that killed itself is gone", || {
        !containerd.tasks().contains(a) || task_stopped(&containerd, a)
    });
    assert!(containerd.tasks().contains(b) && !task_stopped(&containerd, b), "the neighbour still runs");
    let response = get(stack.proxy_listen, &host, "/").expect("request");
    assert_eq!(response.status, 200, "the Wavelet still serves: {}", response.text());
}

fn procfs_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rfind(')').is_some_and(|i| !s[i + 2..].starts_with('Z')))
}

fn task_stopped(containerd: &TestContainerd, id: &str) -> bool {
    let out = containerd.ctr(&["tasks", "ls"]);
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with(id) && l.contains("STOPPED"))
}

#[test]
fn a_function_whose_image_does_not_exist_gets_a_quick_answer_naming_the_image() {
    let Some(containerd) = containerd("containerd missing image") else { return };
    let (yaml, host, _) =
        image_function(&containerd, "localhost/no-such-image:7", "wavelink.dev/container-concurrency: \"1\"");
    let stack = Stack::new(&yaml, &[8]);
    let _wavelet = stack.start_wavelet_with(0, &containerd.wavelet_args());
    let _proxy = stack.start_proxy();
    for _ in 0..3 {
        let started = Instant::now();
        let response = get(stack.proxy_listen, &host, "/").expect("request");
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        assert!(response.status >= 500, "{} {}", response.status, response.text());
        assert!(response.text().contains("localhost/no-such-image:7"), "{}", response.text());
    }
    assert!(containerd.containers().is_empty());
    assert!(stack.wavelet_log(0).contains("localhost/no-such-image:7"), "the log names the image");
}

#[test]
fn an_image_absent_from_the_node_is_pulled_in_the_background_while_requests_are_answered_at_once() {
    let Some(containerd) = containerd("containerd pull") else { return };
    // In k8s.io the Wavelet pulls absent images through the CRI image service, as kubelet would.
    // This containerd has no CRI plugin (and this machine no registry), so the pull fails: what
    // is checked is that nobody waits for it and that the failure is reported by name.
    let (yaml, host, _) = image_function(&containerd, "localhost/pulled-later:3", "wavelink.dev/queue-timeout: 10s");
    let stack = Stack::new(&yaml, &[8]);
    let mut args = containerd.wavelet_args();
    let namespace = args.iter().position(|a| a == "--containerd-namespace").expect("namespace flag") + 1;
    args[namespace] = "k8s.io".into();
    let _wavelet = stack.start_wavelet_with(0, &args);
    let _proxy = stack.start_proxy();

    let started = Instant::now();
    let first = get(stack.proxy_listen, &host, "/").expect("request");
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?} for a pull", started.elapsed());
    assert_eq!(first.status, 503, "{}", first.text());
    assert!(first.header("retry-after").is_some());
    assert!(first.text().contains("image"), "{}", first.text());

    wait_until("the pull is reported", || stack.wavelet_log(0).contains("pulling the image failed"));
    assert!(
        stack.wavelet_log(0).contains("docker.io/library/pulled-later:3")
            || stack.wavelet_log(0).contains("localhost/pulled-later:3")
    );
    let started = Instant::now();
    let after = get(stack.proxy_listen, &host, "/").expect("request");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        after.status >= 500 && after.text().contains("localhost/pulled-later:3"),
        "{} {}",
        after.status,
        after.text()
    );
}

#[test]
fn while_containerd_is_down_the_wavelet_answers_unavailable_at_once_and_recovers_after() {
    let Some(mut containerd) = containerd("containerd down") else { return };
    let (yaml, host, _) = image_function(&containerd, IMAGE, "wavelink.dev/emergency-keepalive: \"0\"");
    let stack = Stack::new(&yaml, &[8]);
    let args = containerd.wavelet_args();
    let _wavelet = stack.start_wavelet_with(0, &args);
    let _proxy = stack.start_proxy();
    assert_eq!(get(stack.proxy_listen, &host, "/").expect("request").status, 200);

    containerd.stop_daemon();
    for _ in 0..3 {
        let started = Instant::now();
        let response = get(stack.proxy_listen, &host, "/").expect("request");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert_eq!(response.status, 503, "{}", response.text());
        assert!(response.header("retry-after").is_some());
    }
    containerd.restart_daemon();
    wait_until("EIs start again once containerd is back", || {
        get(stack.proxy_listen, &host, "/").is_ok_and(|r| r.status == 200)
    });
    // Containers the Wavelet could not remove during the outage are removed now: what is left
    // is the prepared ones (two by default).
    wait_until("nothing left from the outage", || containerd.containers().len() <= 2);
}

/// Two network namespaces this test creates, named `wlt-<nonce>-node` and `-up`: "node" stands
/// for the Wavelet pod's own namespace, "up" for the network beyond it (a server at
/// 192.0.2.2, TEST-NET-1), joined by a veth pair. Deleted on drop.
struct TestNetwork {
    node: String,
    up: String,
}

impl TestNetwork {
    fn create() -> TestNetwork {
        let tag = format!("wlt-{:06x}", nonce() & 0xff_ffff);
        let network = TestNetwork { node: format!("{tag}-node"), up: format!("{tag}-up") };
        let (node, up) = (network.node.as_str(), network.up.as_str());
        for args in [
            vec!["netns", "add", node],
            vec!["netns", "add", up],
            vec!["-n", node, "link", "set", "lo", "up"],
            vec!["-n", up, "link", "set", "lo", "up"],
            vec!["-n", node, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", up],
            vec!["-n", node, "address", "add", "192.0.2.1/30", "dev", "up0"],
            vec!["-n", node, "link", "set", "up0", "up"],
            vec!["-n", up, "address", "add", "192.0.2.2/30", "dev", "eth0"],
            vec!["-n", up, "link", "set", "eth0", "up"],
        ] {
            let out = std::process::Command::new("ip").args(&args).output().expect("running ip");
            assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        network
    }

    /// Moves the calling thread (and what it starts from now on) into namespace `name`.
    fn enter(name: &str) {
        let ns = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }

    fn run(&self, namespace: &str, args: &[&str]) -> String {
        let out = std::process::Command::new("ip").args(["netns", "exec", namespace]).args(args).output();
        let out = out.expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        for name in [&self.node, &self.up] {
            let _ = std::process::Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

/// A server beyond the node that answers every connection with the address it came from.
fn start_upstream(network: &TestNetwork, stop: Arc<AtomicBool>) -> u16 {
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let up = network.up.clone();
    std::thread::spawn(move || {
        TestNetwork::enter(&up);
        let listener = std::net::TcpListener::bind("192.0.2.2:0").expect("bind upstream");
        let _ = port_tx.send(listener.local_addr().expect("addr").port());
        answer_with_peer_address(listener, stop);
    });
    port_rx.recv_timeout(PATIENCE).expect("upstream port")
}

/// Answers each connection to `listener` with `from <its source address>` until `stop` (or
/// five minutes).
fn answer_with_peer_address(listener: std::net::TcpListener, stop: Arc<AtomicBool>) {
    use std::io::{Read, Write};
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let body = format!("from {}", peer.ip());
                let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn with_egress_an_instance_reaches_the_network_beyond_the_node_but_not_the_wavelet_nor_another_instance() {
    let Some(containerd) = containerd("containerd egress") else { return };
    let missing = ["ip", "nft"].into_iter().find(|tool| wavelink_wavelet::containerd::private::which(tool).is_none());
    if let Some(tool) = missing {
        eprintln!("SKIPPED containerd egress: `{tool}` is not installed (scripts/deps.sh installs it)");
        return;
    }
    let network = TestNetwork::create();
    let stop = Arc::new(AtomicBool::new(false));
    let upstream = start_upstream(&network, stop.clone());
    // Everything else runs in the "node" namespace: a thread of its own enters it, and what it
    // starts (Wavelet, proxy, their sockets) is there too.
    let node = network.node.clone();
    let stop_node = stop.clone();
    let outcome = std::thread::spawn(move || {
        TestNetwork::enter(&node);
        egress_scenario(&containerd, upstream, stop_node)
    })
    .join();
    stop.store(true, Ordering::Relaxed);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    let links = network.run(&network.node, &["ip", "-o", "link"]);
    assert!(!links.contains(": wl"), "an instance's link outlived it: {links}");
    let tables = network.run(&network.node, &["nft", "list", "tables"]);
    assert!(!tables.contains("wavelink"), "the rules outlived the Wavelet: {tables}");
}

fn egress_scenario(containerd: &TestContainerd, upstream: u16, stop: Arc<AtomicBool>) {
    let (yaml, host, _) = image_function(
        containerd,
        IMAGE,
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/emergency-keepalive: 60s",
    );
    let stack = Stack::new(&yaml, &[8]);
    let mut args = containerd.wavelet_args();
    args.extend(["--egress".into(), "nat".into(), "--prepared".into(), "0".into()]);
    let mut wavelet = stack.start_wavelet_with(0, &args);
    let _proxy = stack.start_proxy();
    // A port of the node's on every address, as the Wavelet's own would be in its pod.
    let node_listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind a node port");
    let node_port = node_listener.local_addr().expect("addr").port();
    std::thread::spawn(move || answer_with_peer_address(node_listener, stop));
    let node_answers = get(SocketAddr::from(([127, 0, 0, 1], node_port)), "node", "/").expect("the node port answers");
    assert_eq!(node_answers.status, 200);

    let results = burst_with(stack.proxy_listen, &host, "/?sleep=500", 2, "");
    let ids: Vec<String> =
        results.iter().map(|(r, _)| r.header("x-wavelink-instance").expect("instance id").to_owned()).collect();
    assert_ne!(ids[0], ids[1], "two instances");
    let sh = |id: &str, script: &str| {
        let out = containerd.exec(id, &["/bin/busybox", "sh", "-c", script]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let fetch = |id: &str, url: &str| sh(id, &format!("/bin/busybox timeout 5 /bin/busybox wget -q -O - {url}"));
    let address = |id: &str| {
        let (_, said) = sh(id, "/bin/busybox ip -o -4 address show dev eth0");
        let inet = said.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(str::to_owned);
        inet.unwrap_or_else(|| panic!("no address on eth0: {said}"))
    };
    let (a, b) = (&ids[0], &ids[1]);
    let (a_cidr, b_cidr) = (address(a), address(b));
    assert!(a_cidr.ends_with("/31") && b_cidr.ends_with("/31"), "{a_cidr} {b_cidr}");
    let b_ip = b_cidr.trim_end_matches("/31");
    let (_, routes) = sh(a, "/bin/busybox ip -4 route");
    let gateway = routes.split_whitespace().skip_while(|w| *w != "via").nth(1).map(str::to_owned);
    let gateway = gateway.unwrap_or_else(|| panic!("no default route: {routes}"));

    // Beyond the node: reached, and seen coming from the node's address (masqueraded).
    let (code, said) = fetch(a, &format!("http://192.0.2.2:{upstream}/"));
    assert_eq!(code, Some(0), "the instance cannot reach the network beyond the node: {said}");
    assert_eq!(said.trim(), "from 192.0.2.1", "not masqueraded behind the node's address");

    // Not the node's own ports, by any of its addresses; not the neighbour.
    for target in [format!("192.0.2.1:{node_port}"), format!("{gateway}:{node_port}"), format!("{b_ip}:8080")] {
        let (code, said) = fetch(a, &format!("http://{target}/"));
        assert_ne!(code, Some(0), "{target} is reachable from inside an instance: {said}");
    }
    // The neighbour does listen there: from its own namespace it answers.
    assert_eq!(fetch(b, "http://127.0.0.1:8080/").0, Some(0), "the neighbour serves on 8080");

    // Name servers as the Wavelet has them.
    let (_, resolv) = sh(a, "/bin/busybox cat /etc/resolv.conf");
    let wavelet_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for server in wavelet_resolv.lines().filter(|l| l.starts_with("nameserver")) {
        assert!(resolv.contains(server), "{server:?} missing from the instance's resolv.conf: {resolv}");
    }
    // Each instance's link is in the node's namespace while it lives.
    let links = std::process::Command::new("ip").args(["-o", "link"]).output().expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert!(links.matches(": wl").count() >= 2, "{links}");

    wavelet.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(wavelet.wait_timeout(PATIENCE).is_some_and(|s| s.success()), "{}", stack.wavelet_log(0));
    wait_until("the instances' links are gone with them", || {
        let links = std::process::Command::new("ip").args(["-o", "link"]).output().expect("ip link");
        !String::from_utf8_lossy(&links.stdout).contains(": wl")
    });
}
