//! End-to-end: `wavelink up` runs proxy, Wavelet and controller (local backend) from one config;
//! the standard track scales Regular Instances with the load while the expedited track absorbs
//! the overflow.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

struct Up {
    proc: Proc,
    proxy: SocketAddr,
    proxy_admin: SocketAddr,
    controller_admin: SocketAddr,
    namespace: String,
    _dir: TempDir,
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// Starts `wavelink up` with one function `work` in a namespace of its own.
fn up(annotations: &str, ri_start_delay: &str) -> Up {
    let dir = TempDir::new("up");
    let namespace = format!("up-{:06x}", nonce() & 0xff_ffff);
    let (proxy, proxy_admin, wavelet, wavelet_admin, controller_admin) = (addr(), addr(), addr(), addr(), addr());
    let config = dir.0.join("wavelink.yaml");
    std::fs::write(
        &config,
        format!(
            "domain: example.com
proxy: {{ listen: \"{proxy}\", admin: \"{proxy_admin}\", grace-period: 5s }}
wavelets:
  - {{ address: \"{wavelet}\", admin: \"{wavelet_admin}\", max-instances: 64 }}
controller: {{ backend: local, admin: \"{controller_admin}\", ri-start-delay: {ri_start_delay} }}
functions:
{}",
            work_function(&namespace, annotations)
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.0.join("up.log")).unwrap();
    // The test's own token, so it can make the calls a proxy makes (up makes one otherwise).
    let token_file = dir.0.join("internal-token");
    std::fs::write(&token_file, format!("{TEST_TOKEN}\n")).unwrap();
    let mut command = wavelink();
    command.arg("up").arg("--config").arg(&config).env("WAVELINK_TOKEN_FILE", &token_file);
    command.stdout(Stdio::null()).stderr(log);
    // The components take the same run-as choice as other tests (see run_as_args).
    if run_as_args().contains(&"root") {
        command.env("WAVELINK_RUN_AS", "root");
    }
    let proc = Proc::spawn("up", &mut command);
    let up = Up { proc, proxy, proxy_admin, controller_admin, namespace, _dir: dir };
    wait_until("the platform is up", || {
        get(up.controller_admin, "a", "/readyz").map(|r| r.status == 200).unwrap_or(false)
            && get(up.proxy_admin, "a", "/readyz").map(|r| r.status == 200).unwrap_or(false)
    });
    up
}

impl Drop for Up {
    /// Stops `up` as Ctrl-C would (RIs outlive a killed controller by design), then kills any
    /// instance of the test's function still running.
    fn drop(&mut self) {
        if self.proc.child.try_wait().ok().flatten().is_none() {
            self.proc.signal(Signal::SIGINT);
            let _ = self.proc.wait_timeout(PATIENCE);
        }
        kill_processes_with_env(&self.marker());
    }
}

impl Up {
    fn host(&self) -> String {
        format!("work.{}.example.com", self.namespace)
    }

    fn marker(&self) -> String {
        format!("WAVELINK_FUNCTION={}/work", self.namespace)
    }

    /// `(replicas asked for, ready)` according to the controller.
    fn regular_instances(&self) -> (u64, u64) {
        let view = get(self.controller_admin, "a", "/v1/functions").map(|r| r.text()).unwrap_or_default();
        let view: serde_json::Value = serde_json::from_str(&view).unwrap_or_default();
        let f = &view[0];
        (f["replicas"].as_u64().unwrap_or(0), f["ready"].as_u64().unwrap_or(0))
    }

    fn function_stats(&self) -> serde_json::Value {
        let stats = get(self.proxy_admin, "a", "/stats").map(|r| r.text()).unwrap_or_default();
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap_or_default();
        stats["functions"][0].clone()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("up.log")).unwrap_or_default()
    }
}

#[test]
fn under_a_minute_of_load_ris_scale_up_the_overflow_goes_to_eis_and_afterwards_ris_return_to_min_scale() {
    let mut up = up(
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/window: 10s, wavelink.dev/min-scale: \"1\", \
         wavelink.dev/initial-scale: \"1\", wavelink.dev/sporadic-threshold: \"0\", wavelink.dev/emergency-keepalive: 1s",
        "1500ms",
    );
    let marker = up.marker();
    wait_until("min-scale RI ready", || up.regular_instances().1 >= 1);

    // 60 s at 4 concurrent requests of 200 ms: four times one RI's capacity.
    let url = format!("http://{}/?sleep=200", up.proxy);
    let host = format!("Host: {}", up.host());
    let load = wavelink()
        .args(["load", "-c", "4", "-t", "1", "-d", "60s", "--timeout", "10s", "-H", &host, &url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("wavelink load");
    let started = Instant::now();
    let mut most = 0;
    while started.elapsed() < Duration::from_secs(55) {
        most = most.max(up.regular_instances().1);
        std::thread::sleep(Duration::from_millis(500));
    }
    let output = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(!report.contains("Non-2xx"), "every request answered 2xx:\n{report}");
    assert!(most >= 4, "RIs scaled up with the load: at most {most} ready\n{}", up.log());
    let stats = up.function_stats();
    assert!(stats["completed"]["emergency"].as_u64() > Some(0), "the overflow went to EIs meanwhile: {stats}");
    assert!(
        stats["completed"]["regular"].as_u64() > stats["completed"]["emergency"].as_u64(),
        "most load ended on RIs: {stats}"
    );

    // After the window, RIs return to min-scale.
    wait_within("RIs back to min-scale", Duration::from_secs(60), || up.regular_instances() == (1, 1));

    // Ctrl-C stops everything: no instance and no component is left.
    up.proc.signal(Signal::SIGINT);
    let status = up.proc.wait_timeout(PATIENCE).expect("up exits");
    assert!(status.success(), "{status:?}\n{}", up.log());
    wait_within("no instance left", Duration::from_secs(10), || processes_with_env(&marker).is_empty());
    for component in [up.proxy_admin, up.controller_admin] {
        assert!(std::net::TcpStream::connect(component).is_err(), "{component} still answers");
    }
}

#[test]
fn in_sync_mode_a_request_without_a_slot_gets_a_regular_instance_at_once() {
    let up = up(
        "wavelink.dev/scaling-mode: sync, wavelink.dev/initial-scale: \"0\", wavelink.dev/window: 10s, \
         wavelink.dev/queue-timeout: 30s, wavelink.dev/max-scale: \"2\"",
        "500ms",
    );
    assert_eq!(up.regular_instances(), (0, 0));
    let started = Instant::now();
    let response = get(up.proxy, &up.host(), "/?ms=1").unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-wavelink-track"), Some("regular"), "sync mode never spills");
    assert!(waited >= Duration::from_millis(450), "it waited for the RI to start: {waited:?}");
    assert!(waited < Duration::from_secs(20), "the controller was asked at once, not at its next window: {waited:?}");
    let pokes =
        metric(up.controller_admin, &format!("wavelink_controller_pokes_total{{function=\"{}/work\"}}", up.namespace));
    assert!(pokes >= 1.0);
    // A poke asks for at most max-scale, whatever it wants.
    // Without the internal token a poke is refused and changes nothing.
    let replicas = up.regular_instances().0;
    let refused = poke(&up, 60, "");
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(up.regular_instances().0, replicas);
    let response = poke(&up, 60, &format!("Authorization: Bearer {TEST_TOKEN}\r\n"));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["replicas"], 2, "capped at max-scale");
}

/// POSTs a poke for the function `work` to the controller, with `credentials` (header lines).
fn poke(up: &Up, want: u32, credentials: &str) -> HttpResponse {
    let body = format!("{{\"want\": {want}}}");
    let request = format!(
        "POST /v1/functions/{}/work/poke HTTP/1.1\r\nHost: a\r\n{credentials}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        up.namespace,
        body.len()
    );
    send(up.controller_admin, &request).expect("the controller answers")
}

#[test]
fn an_idle_function_the_controller_skips_is_scaled_again_as_soon_as_it_has_demand() {
    // async: requests wait for RIs, so only the controller can serve this one.
    let up = up(
        "wavelink.dev/scaling-mode: async, wavelink.dev/container-concurrency: \"1\", wavelink.dev/window: 6s, \
         wavelink.dev/initial-scale: \"0\", wavelink.dev/queue-timeout: 60s",
        "200ms",
    );
    // After its initial phase (one window) with no demand and no RI, rounds skip it.
    wait_within("the idle function at rest", Duration::from_secs(30), || {
        metric(up.controller_admin, "wavelink_controller_functions_at_rest") == 1.0
    });
    assert_eq!(up.regular_instances().0, 0);
    // Pokes are for sync functions: refused, and nothing starts.
    let refused = poke(&up, 60, &format!("Authorization: Bearer {TEST_TOKEN}\r\n"));
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(refused.text().contains("async"), "{}", refused.text());
    assert_eq!(up.regular_instances(), (0, 0));

    let response = get(up.proxy, &up.host(), "/").expect("a request to the idle function");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-wavelink-track"), Some("regular"), "served by an RI the controller asked for");
    assert!(up.regular_instances().0 >= 1);
}
