//! Fault suite for the control loop (real binaries): a proxy stopped or gone, the controller
//! killed, components of `wavelink up` killed. Each test states the outcome it asserts; none
//! asserts a speed.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// Proxies and a controller (local backend) sharing one config with one function `work`.
struct Standard {
    dir: TempDir,
    config: PathBuf,
    namespace: String,
    /// `(listen, admin)` of each proxy.
    proxies: Vec<(SocketAddr, SocketAddr)>,
    controller_admin: SocketAddr,
    _sweep: KillOnDrop,
}

impl Standard {
    fn new(proxies: usize, annotations: &str, ri_start_delay: &str) -> Standard {
        let dir = TempDir::new("faults");
        let namespace = format!("fault-{:06x}", nonce() & 0xff_ffff);
        let proxies: Vec<(SocketAddr, SocketAddr)> = (0..proxies).map(|_| (addr(), addr())).collect();
        let controller_admin = addr();
        let config = dir.0.join("wavelink.yaml");
        let (listen, admin) = proxies[0];
        std::fs::write(
            &config,
            format!(
                "domain: example.com
proxy: {{ listen: \"{listen}\", admin: \"{admin}\", grace-period: 2s }}
controller: {{ backend: local, admin: \"{controller_admin}\", ri-start-delay: {ri_start_delay} }}
functions:
{}",
                work_function(&namespace, annotations)
            ),
        )
        .unwrap();
        let sweep = KillOnDrop(format!("WAVELINK_FUNCTION={namespace}/work"));
        Standard { dir, config, namespace, proxies, controller_admin, _sweep: sweep }
    }

    fn start_proxy(&self, index: usize) -> Proc {
        let (listen, admin) = self.proxies[index];
        let log = self.log_file(&format!("proxy-{index}"));
        let mut command = wavelink();
        command
            .args(["proxy", "--config"])
            .arg(&self.config)
            .args(["--listen", &listen.to_string(), "--admin", &admin.to_string()])
            .stdout(Stdio::null())
            .stderr(log);
        let proc = Proc::spawn("proxy", &mut command);
        wait_until("proxy ready", || ready(admin));
        proc
    }

    fn start_controller(&self) -> Proc {
        let log = self.log_file("controller");
        let mut command = wavelink();
        command.args(["controller", "--config"]).arg(&self.config).arg("--state-dir").arg(self.dir.0.join("ri-state"));
        for (_, admin) in &self.proxies {
            command.args(["--proxy", &admin.to_string()]);
        }
        command.args(run_as_args()).stdout(Stdio::null()).stderr(log);
        let proc = Proc::spawn("controller", &mut command);
        wait_until("controller ready", || ready(self.controller_admin));
        proc
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.dir.0.join(format!("{name}.log"))).unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The controller's view of the function (`replicas`, `ready`, `missing_data`...).
    fn view(&self) -> serde_json::Value {
        let text = get(self.controller_admin, "a", "/v1/functions").map(|r| r.text()).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()[0].clone()
    }

    /// `(RIs asked for, ready)`.
    fn regular_instances(&self) -> (u64, u64) {
        let view = self.view();
        (view["replicas"].as_u64().unwrap_or(0), view["ready"].as_u64().unwrap_or(0))
    }

    /// The RIs proxy `index` routes to (draining ones excluded).
    fn routed(&self, index: usize) -> Vec<String> {
        let path = format!("/v1/functions/{}/work/instances", self.namespace);
        let text = get(self.proxies[index].1, "a", &path).map(|r| r.text()).unwrap_or_default();
        let listing: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        let mut addrs: Vec<String> = listing
            .iter()
            .filter(|i| i["draining"] != true)
            .filter_map(|i| i["address"].as_str().map(str::to_owned))
            .collect();
        addrs.sort();
        addrs
    }

    /// Closed-loop load through proxy `index` for `seconds`, `connections` at a time.
    fn load(&self, index: usize, connections: u32, seconds: u32, path: &str) -> Child {
        let url = format!("http://{}{path}", self.proxies[index].0);
        let host = format!("Host: work.{}.example.com", self.namespace);
        wavelink()
            .args(["load", "-c", &connections.to_string(), "-t", "1", "-d", &format!("{seconds}s")])
            .args(["--timeout", "30s", "-H", &host, &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("wavelink load")
    }
}

/// Polls `(asked, ready)` for `period`, failing as soon as the asked-for count is below `floor`.
fn asked_never_below(standard: &Standard, floor: u64, period: Duration, what: &str) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        let (asked, ready) = standard.regular_instances();
        assert!(
            asked >= floor,
            "{what}: RIs asked for fell to {asked} (ready {ready}) from {floor}\n{}",
            standard.log("controller")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn report(load: Child) -> String {
    let output = load.wait_with_output().expect("load report");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_proxy_stopped_for_longer_than_the_window_while_ris_start_does_not_scale_them_away() {
    // RIs take 12 s to become routable; the stable window is 6 s.
    let standard = Standard::new(
        1,
        "wavelink.dev/scaling-mode: async, wavelink.dev/container-concurrency: \"1\", wavelink.dev/window: 6s, \
         wavelink.dev/initial-scale: \"0\", wavelink.dev/queue-timeout: 30s",
        "12s",
    );
    let proxy = standard.start_proxy(0);
    let _controller = standard.start_controller();
    let load = standard.load(0, 6, 60, "/?sleep=100");
    wait_until("RIs asked for under load", || standard.regular_instances().0 >= 5);
    let (asked, ready) = standard.regular_instances();
    assert_eq!(ready, 0, "still starting when the proxy stops");

    proxy.signal(Signal::SIGSTOP);
    asked_never_below(&standard, asked, Duration::from_secs(10), "proxy stopped");
    let view = standard.view();
    assert!(
        view["missing_data"].as_array().is_some_and(|m| !m.is_empty()),
        "the gap is reported on /v1/functions: {view}"
    );
    let incomplete = metric(
        standard.controller_admin,
        &format!("wavelink_controller_incomplete_data{{function=\"{}/work\"}}", standard.namespace),
    );
    assert_eq!(incomplete, 1.0, "and as a metric");
    proxy.signal(Signal::SIGCONT);

    // Scaling resumes: the RIs become ready, and once the load is gone they are scaled down.
    wait_within("the RIs asked for become ready", Duration::from_secs(40), || {
        let (asked, ready) = standard.regular_instances();
        ready >= 5 && ready == asked
    });
    let mut load = load;
    let _ = load.kill();
    let _ = load.wait();
    wait_within("scale-down resumes after the load", Duration::from_secs(60), || {
        standard.regular_instances().0 < asked
    });
}

#[test]
fn one_of_two_proxies_unreachable_does_not_halve_demand() {
    let standard = Standard::new(
        2,
        "wavelink.dev/scaling-mode: async, wavelink.dev/container-concurrency: \"1\", wavelink.dev/window: 6s, \
         wavelink.dev/initial-scale: \"0\"",
        "500ms",
    );
    let _a = standard.start_proxy(0);
    let b = standard.start_proxy(1);
    let _controller = standard.start_controller();
    let load_a = standard.load(0, 3, 40, "/?sleep=200");
    let mut load_b = standard.load(1, 3, 40, "/?sleep=200");
    // Six concurrent at 70% need 9 RIs; wait until the count has settled there.
    wait_within("RIs for both proxies' demand", Duration::from_secs(30), || {
        let (asked, ready) = standard.regular_instances();
        asked >= 8 && ready == asked
    });
    std::thread::sleep(Duration::from_secs(3));
    let (asked, _) = standard.regular_instances();

    drop(b); // SIGKILL: its admin port stops answering.
    let _ = load_b.kill();
    let _ = load_b.wait();
    asked_never_below(&standard, asked, Duration::from_secs(14), "one proxy unreachable");
    let view = standard.view();
    let missing = view["missing_data"].to_string();
    assert!(missing.contains(&standard.proxies[1].1.to_string()), "the silent proxy is named: {view}");
    drop(load_a);
}

#[test]
fn a_killed_controller_leaves_its_ris_serving_and_its_successor_adopts_them() {
    let standard = Standard::new(
        1,
        "wavelink.dev/scaling-mode: async, wavelink.dev/container-concurrency: \"4\", wavelink.dev/window: 6s, \
         wavelink.dev/min-scale: \"3\", wavelink.dev/initial-scale: \"3\"",
        "500ms",
    );
    let _proxy = standard.start_proxy(0);
    let controller = standard.start_controller();
    wait_until("three RIs ready", || standard.regular_instances() == (3, 3));
    wait_until("the proxy routes to them", || standard.routed(0).len() == 3);
    let routed = standard.routed(0);
    let load = standard.load(0, 2, 12, "/?sleep=20");
    std::thread::sleep(Duration::from_secs(2));

    drop(controller); // SIGKILL of its process group; RIs are in groups of their own.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(standard.routed(0), routed, "the proxy still routes to the same RIs");

    let _successor = standard.start_controller();
    assert_eq!(standard.regular_instances(), (3, 3), "the successor carries on from the adopted RIs");
    assert!(standard.log("controller").contains("adopted a Regular Instance"), "{}", standard.log("controller"));
    let text = report(load);
    assert!(!text.contains("Non-2xx") && !text.contains("Socket errors"), "every request answered 2xx:\n{text}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(standard.routed(0), routed, "no RI was replaced");

    // Level-triggered: a list changed behind the controller's back is put right.
    let path = format!("/v1/functions/{}/work/instances", standard.namespace);
    let cleared = send(
        standard.proxies[0].1,
        &format!("PUT {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]"),
    )
    .unwrap();
    assert_eq!(cleared.status, 200);
    wait_within("the controller re-asserts its RIs", Duration::from_secs(15), || standard.routed(0) == routed);
}

/// The pid of the `wavelink up` component `name` (a child of `up`).
fn component_pid(up: u32, name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let parent = stat.rfind(')').and_then(|i| stat[i + 2..].split(' ').nth(1)?.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        parent == Some(up) && cmdline.split(|b| *b == 0).nth(1) == Some(name.as_bytes())
    })
}

#[test]
fn under_up_a_killed_component_is_restarted_and_the_others_keep_serving() {
    let dir = TempDir::new("up-faults");
    let namespace = format!("upf-{:06x}", nonce() & 0xff_ffff);
    let _sweep = KillOnDrop(format!("WAVELINK_FUNCTION={namespace}/work"));
    let (proxy, proxy_admin, wavelet, wavelet_admin, controller_admin) = (addr(), addr(), addr(), addr(), addr());
    let config = dir.0.join("wavelink.yaml");
    std::fs::write(
        &config,
        format!(
            "domain: example.com
proxy: {{ listen: \"{proxy}\", admin: \"{proxy_admin}\", grace-period: 2s }}
wavelets:
  - {{ address: \"{wavelet}\", admin: \"{wavelet_admin}\", max-instances: 16 }}
controller: {{ backend: local, admin: \"{controller_admin}\", ri-start-delay: 500ms }}
functions:
{}",
            work_function(
                &namespace,
                "wavelink.dev/min-scale: \"2\", wavelink.dev/initial-scale: \"2\", wavelink.dev/window: 6s"
            )
        ),
    )
    .unwrap();
    let log_path = dir.0.join("up.log");
    let out_path = dir.0.join("up.out");
    let mut command = wavelink();
    command
        .arg("up")
        .arg("--config")
        .arg(&config)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap());
    if run_as_args().contains(&"root") {
        command.env("WAVELINK_RUN_AS", "root");
    }
    let mut up = Proc::spawn("up", &mut command);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let host = format!("work.{namespace}.example.com");
    let serves = || get(proxy, &host, "/?ms=1").is_ok_and(|r| r.status == 200);
    // `up` has seen every component ready (it says where to send requests then).
    wait_until("up is running", || std::fs::read_to_string(&out_path).unwrap_or_default().contains("is running"));
    wait_until("the platform serves", serves);

    for (name, admin) in [("controller", controller_admin), ("wavelet", wavelet_admin), ("proxy", proxy_admin)] {
        let pid = component_pid(up.pid(), name).unwrap_or_else(|| panic!("no {name} under up"));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let restarted = format!("the {name} restarted");
        // Meanwhile the others serve (a killed proxy cannot, of course).
        let deadline = Instant::now() + PATIENCE;
        while !log().contains(&restarted) {
            assert!(Instant::now() < deadline, "the {name} was not restarted:\n{}", log());
            if name != "proxy" {
                let response = get(proxy, &host, "/?ms=1")
                    .unwrap_or_else(|e| panic!("the proxy answers while the {name} is down: {e}\n{}", log()));
                assert_eq!(response.status, 200, "served while the {name} is down: {}", response.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_until(&format!("the {name} is ready again"), || ready(admin));
        wait_until("the platform serves again", serves);
        assert!(up.child.try_wait().unwrap().is_none(), "up keeps running:\n{}", log());
    }
    assert!(log().contains("killed by SIGKILL"), "{}", log());

    up.signal(Signal::SIGINT);
    let status = up.wait_timeout(Duration::from_secs(60)).expect("up exits");
    assert!(status.success(), "{status:?}\n{}", log());
    let marker = format!("WAVELINK_FUNCTION={namespace}/work");
    wait_within("no instance left", Duration::from_secs(10), || processes_with_env(&marker).is_empty());
}
