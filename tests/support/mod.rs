//! Helpers for end-to-end tests of the `wavelink` binary: processes that are always killed
//! (their whole process group) when the test ends, loopback-only free ports, a small blocking
//! HTTP/1.1 client, and bounded polling.
#![allow(dead_code)]

pub mod containerd;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Every wait in these tests is bounded by this, so a bug fails a test instead of hanging CI.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn wavelink() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wavelink"));
    // Own process group: the guard kills the process and anything it started.
    command.process_group(0);
    command.env("WAVELINK_LOG", "info");
    command
}

/// A child process killed with its process group when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command) -> Proc {
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { child, name: name.to_owned() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.pid() as i32), signal).expect("signal");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound, then released for the process under test to take).
///
/// Never the same port twice in one test process: the tests of a binary run in parallel, and two
/// of them handed the same just-released port would start two components on it, one of them
/// then talking to the other's (seen once: a proxy test found its client port refused after
/// "its" admin port — another test's — said ready).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free loopback port not handed out before in 100 tries")
}

/// A `wavelink fn` instance on a kernel-chosen loopback port.
pub struct FnInstance {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub id: String,
}

pub fn start_fn(id: &str) -> FnInstance {
    let mut command = wavelink();
    command.args(["fn", "--listen", "127.0.0.1:0", "--instance-id", id]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut proc = Proc::spawn(id, &mut command);
    let stdout = proc.child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(PATIENCE).expect("fn printed its address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    FnInstance { proc, addr, id: id.to_owned() }
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("wavelink-test-{label}-{}-{:08x}", std::process::id(), nonce()));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A number that differs between calls and test processes, for names that must not collide
/// (temporary directories, namespaces, objects).
pub fn nonce() -> u32 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    nanos ^ (std::process::id() << 16)
}

/// A running `wavelink proxy` and where to reach it.
pub struct ProxyUnderTest {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    _dir: TempDir,
}

/// Starts a proxy whose config has `functions_yaml` as its `functions:` list (YAML flow or
/// block), domain `example.com`, and waits until it is ready.
pub fn start_proxy(functions_yaml: &str) -> ProxyUnderTest {
    start_proxy_with("", functions_yaml)
}

/// [`start_proxy`] with more of the `proxy:` section (YAML flow entries, each starting with a
/// comma: `, tls: {...}`).
pub fn start_proxy_with(proxy_yaml: &str, functions_yaml: &str) -> ProxyUnderTest {
    let dir = TempDir::new("proxy");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.0.join("wavelink.yaml");
    let token_file = dir.0.join("internal-token");
    std::fs::write(&token_file, format!("{TEST_TOKEN}\n")).expect("write token");
    let text = format!(
        "domain: example.com\ninternal-token-file: \"{}\"\nproxy: {{ listen: \"{listen}\", admin: \"{admin}\", grace-period: 20s{proxy_yaml} }}\nfunctions:\n{functions_yaml}\n",
        token_file.display()
    );
    std::fs::write(&config, text).expect("write config");
    let log = std::fs::File::create(dir.0.join("proxy.log")).expect("log file");
    let mut command = wavelink();
    command.args(["proxy", "--config"]).arg(&config).stdout(Stdio::null()).stderr(log);
    let proc = Proc::spawn("proxy", &mut command);
    let proxy = ProxyUnderTest { proc, listen, admin, config, _dir: dir };
    wait_until("proxy ready", || admin_get(&proxy, "/readyz").map(|r| r.status == 200).unwrap_or(false));
    proxy
}

impl ProxyUnderTest {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("proxy.log")).unwrap_or_default()
    }

    pub fn stats(&self) -> serde_json::Value {
        let response = admin_get(self, "/stats").expect("GET /stats");
        serde_json::from_slice(&response.body).expect("stats JSON")
    }

    /// `/stats` of one function.
    pub fn function_stats(&self, name: &str) -> serde_json::Value {
        let stats = self.stats();
        stats["functions"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no stats for {name}: {stats}"))
    }
}

pub fn admin_get(proxy: &ProxyUnderTest, path: &str) -> std::io::Result<HttpResponse> {
    send(proxy.admin, &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"))
}

/// Replaces the instances of `default/{name}` through the admin API, with the test token.
pub fn put_instances(proxy: &ProxyUnderTest, name: &str, body: &str) -> HttpResponse {
    let request = format!(
        "PUT /v1/functions/default/{name}/instances HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TEST_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    send(proxy.admin, &request).expect("the admin API answers")
}

/// Polls `condition` every 20 ms until it holds; panics after [`PATIENCE`].
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_within(what, PATIENCE, condition)
}

/// Polls `condition` every 20 ms until it holds; panics after `limit`. For waits whose length is
/// the point of the test (something must happen well before a timeout would make it happen).
pub fn wait_within(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for: {what}");
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// `GET path` with the given Host, on a fresh connection.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<HttpResponse> {
    send(addr, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"))
}

/// Sends raw request bytes and reads the whole response (the request must ask for
/// `Connection: close`).
pub fn send(addr: SocketAddr, request: &str) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(PATIENCE * 2))?;
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::other(format!("malformed response: {:?}", String::from_utf8_lossy(&raw))))
}

pub fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Some(HttpResponse { status, headers, body })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// A local config shared by a proxy and its Wavelets, written to a temporary directory.
/// The internal token of a [`Stack`]'s proxy and Wavelets.
pub const TEST_TOKEN: &str = "wavelink-test-token-0123456789";

pub struct Stack {
    pub dir: TempDir,
    pub config: PathBuf,
    pub proxy_listen: SocketAddr,
    pub proxy_admin: SocketAddr,
    pub wavelets: Vec<(SocketAddr, SocketAddr)>,
}

impl Stack {
    /// `functions_yaml` is the `functions:` list; `wavelet_caps` gives each Wavelet's
    /// max-instances.
    pub fn new(functions_yaml: &str, wavelet_caps: &[u32]) -> Stack {
        let dir = TempDir::new("stack");
        let proxy_listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let proxy_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let wavelets: Vec<(SocketAddr, SocketAddr)> = wavelet_caps
            .iter()
            .map(|_| {
                let listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                (listen, admin)
            })
            .collect();
        let wavelet_yaml: String = wavelets
            .iter()
            .zip(wavelet_caps)
            .map(|((listen, admin), cap)| {
                format!("  - {{ address: \"{listen}\", admin: \"{admin}\", max-instances: {cap} }}\n")
            })
            .collect();
        let config = dir.0.join("wavelink.yaml");
        let token_file = dir.0.join("internal-token");
        std::fs::write(&token_file, format!("{TEST_TOKEN}\n")).expect("write token");
        let text = format!(
            "domain: example.com\ninternal-token-file: \"{}\"\nproxy: {{ listen: \"{proxy_listen}\", admin: \"{proxy_admin}\", grace-period: 20s }}\nwavelets:\n{wavelet_yaml}functions:\n{functions_yaml}\n",
            token_file.display()
        );
        std::fs::write(&config, text).expect("write config");
        Stack { dir, config, proxy_listen, proxy_admin, wavelets }
    }

    pub fn start_proxy(&self) -> Proc {
        let log = std::fs::File::create(self.dir.0.join("proxy.log")).expect("log file");
        let mut command = wavelink();
        command.args(["proxy", "--config"]).arg(&self.config).stdout(Stdio::null()).stderr(log);
        let mut proc = Proc::spawn("proxy", &mut command);
        wait_until("proxy ready", || {
            // A proxy that exited (a port taken between choosing and binding it) says why.
            if let Ok(Some(status)) = proc.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.0.join("proxy.log")).unwrap_or_default();
                panic!("the proxy exited ({status}) before it was ready:\n{log}");
            }
            ready(self.proxy_admin)
        });
        proc
    }

    /// Starts Wavelet `index` with its own state directory (kept across restarts).
    pub fn start_wavelet(&self, index: usize) -> Proc {
        self.start_wavelet_with(index, &[])
    }

    /// The same, with more arguments (another runtime, say).
    pub fn start_wavelet_with(&self, index: usize, extra: &[String]) -> Proc {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.wavelet_log_path(index)).expect("log file");
        let mut command = wavelink();
        command
            .args(["wavelet", "--config"])
            .arg(&self.config)
            .args(["--index", &index.to_string(), "--state-dir"])
            .arg(self.wavelet_state_dir(index))
            .args(run_as_args())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log);
        let mut proc = Proc::spawn("wavelet", &mut command);
        wait_until("wavelet ready", || {
            // A Wavelet that exited (a port taken between choosing and binding it) says why.
            if let Ok(Some(status)) = proc.child.try_wait() {
                let log = std::fs::read_to_string(self.wavelet_log_path(index)).unwrap_or_default();
                panic!("the wavelet exited ({status}) before it was ready:\n{log}");
            }
            ready(self.wavelets[index].1)
        });
        proc
    }

    /// The state directory of Wavelet `index`.
    pub fn wavelet_state_dir(&self, index: usize) -> PathBuf {
        self.dir.0.join(format!("wavelet-{index}-state"))
    }

    pub fn wavelet_log_path(&self, index: usize) -> PathBuf {
        self.dir.0.join(format!("wavelet-{index}.log"))
    }

    pub fn wavelet_log(&self, index: usize) -> String {
        std::fs::read_to_string(self.wavelet_log_path(index)).unwrap_or_default()
    }

    /// A Prometheus sample of Wavelet `index`, e.g. `wavelink_wavelet_full_total`.
    pub fn wavelet_metric(&self, index: usize, series: &str) -> f64 {
        metric(self.wavelets[index].1, series)
    }
}

/// The value of one series in a Prometheus exposition at `admin`/metrics (0 when absent).
/// `series` is a name with the labels that matter (`name{function="ns/f"}`); labels it does
/// not name (such as `runtime`) may have any value.
pub fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = get(admin, "admin", "/metrics").map(|r| r.text()).unwrap_or_default();
    metric_in(&text, series)
}

pub fn metric_in(text: &str, series: &str) -> f64 {
    let (name, wanted) = split_series(series);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (line_series, value) = line.rsplit_once(' ')?;
            let (line_name, labels) = split_series(line_series);
            (line_name == name && wanted.iter().all(|w| labels.contains(w))).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// `name{a="1",b="2"}` into the name and its `a="1"` parts.
fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, labels)) => (name, labels.trim_end_matches('}').split(',').filter(|l| !l.is_empty()).collect()),
        None => (series, Vec::new()),
    }
}

pub fn ready(admin: SocketAddr) -> bool {
    get(admin, "admin", "/readyz").map(|r| r.status == 200).unwrap_or(false)
}

/// Instances run unprivileged when the tests run as root, if `nobody` can execute the binary
/// where it was built; otherwise they keep the test's user.
pub fn run_as_args() -> Vec<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return vec![];
    }
    if others_can_execute(std::path::Path::new(env!("CARGO_BIN_EXE_wavelink"))) {
        vec!["--run-as", "nobody"]
    } else {
        eprintln!("note: `nobody` cannot reach the test binary; instances run as root in these tests");
        vec!["--run-as", "root"]
    }
}

pub fn others_can_execute(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors().all(|p| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o001 != 0).unwrap_or(false))
}

/// Processes whose environment holds `marker` (like `WAVELINK_FUNCTION=ns/name`): found in
/// `/proc`, whatever any agent reports. Zombies are not counted.
pub fn processes_with_env(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rfind(')').is_some_and(|i| s[i + 2..].starts_with('Z')))
                .unwrap_or(true);
            !zombie
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
                    .unwrap_or(false)
        })
        .collect()
}

/// The `functions:` entry of a function `work` in `namespace`, run by `wavelink-fn` (its
/// processes carry `WAVELINK_FUNCTION=<namespace>/work`).
pub fn work_function(namespace: &str, annotations: &str) -> String {
    format!(
        "  - name: work\n    namespace: {namespace}\n    command: [\"wavelink-fn\"]\n    annotations: {{ {annotations} }}\n"
    )
}

/// Kills every process whose environment holds `marker` until none is left (bounded): the
/// clean-up of tests whose instances outlive the component that started them.
pub fn kill_processes_with_env(marker: &str) {
    for _ in 0..50 {
        let left = processes_with_env(marker);
        if left.is_empty() {
            return;
        }
        for pid in left {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills, when dropped, every process whose environment holds its marker (a test's instances;
/// RIs outlive a killed controller by design, and a failing test must not leave them behind).
pub struct KillOnDrop(pub String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_processes_with_env(&self.0);
    }
}

/// Sends `n` requests at once, each on its own connection, with extra header lines.
pub fn burst_with(addr: SocketAddr, host: &str, path: &str, n: usize, extra: &str) -> Vec<(HttpResponse, Duration)> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
            std::thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                let response = send(addr, &request)
                    .unwrap_or_else(|e| panic!("request to {addr} failed after {:?}: {e}", started.elapsed()));
                (response, started.elapsed())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("client thread")).collect()
}

/// A function in a namespace of its own: `<prefix>-<random>`, so its instances are told apart
/// in /proc by their `WAVELINK_FUNCTION` environment variable, from other tests and other runs.
pub struct TestFunction {
    pub namespace: String,
    pub yaml: String,
    pub host: String,
    pub marker: String,
    _reaper: KillOnDrop,
}

pub fn function_with_command(prefix: &str, command: &str, annotations: &str, extra: &str) -> TestFunction {
    let namespace = format!("{prefix}-{:06x}", nonce() & 0xff_ffff);
    let yaml = format!(
        "  - name: burst\n    namespace: {namespace}\n    command: {command}\n    annotations: {{ {annotations} }}\n{}",
        extra.replace("NAMESPACE", &namespace)
    );
    let marker = format!("WAVELINK_FUNCTION={namespace}/burst");
    TestFunction {
        host: format!("burst.{namespace}.example.com"),
        _reaper: KillOnDrop(marker.clone()),
        namespace,
        yaml,
        marker,
    }
}

impl TestFunction {
    /// The headers that route a request sent straight to a Wavelet, as the proxy does.
    pub fn header(&self) -> String {
        format!("x-wavelink-function: {}/burst\r\nx-wavelink-token: {TEST_TOKEN}\r\n", self.namespace)
    }

    /// A complete request for a Wavelet, asking for `path`.
    pub fn direct(&self, path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{}Connection: close\r\n\r\n", self.host, self.header())
    }
}

/// Whatever happens in a test, no instance process of its function outlives it.
pub fn wait_for_no_instances(marker: &str, limit: Duration) {
    wait_within("no instance process left (checked in /proc)", limit, || processes_with_env(marker).is_empty());
}
