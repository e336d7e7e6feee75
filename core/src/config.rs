//! The local config file (`wavelink.yaml`): the embedded default's source of functions.
//!
//! Structural problems (bad YAML, an unknown field, a malformed address) make the whole file
//! invalid. A function with bad annotations or a bad name is rejected on its own: the others are
//! still served, so one typo never takes down every function.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::container::ContainerTemplate;
use crate::duration::parse_duration;
use crate::function::FunctionId;
use crate::spec::{FunctionSpec, SharedSpecs};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LocalConfig {
    /// Functions are reached at `<name>.<namespace>.<domain>`.
    #[serde(default = "default_domain")]
    pub domain: String,
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Node agents the proxy spills to; `wavelink up` runs the first.
    #[serde(default)]
    pub wavelets: Vec<WaveletConfig>,
    /// The autoscaler of Regular Instances.
    #[serde(default)]
    pub controller: Option<ControllerConfig>,
    #[serde(default)]
    pub functions: Vec<FunctionConfig>,
    /// Read functions and instances from a Kubernetes cluster instead of `functions:`.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
    /// The shared token of internal traffic (proxy → Wavelet, admin calls that change state),
    /// one per line, the first sent, any accepted; on Kubernetes a mounted Secret. Without it,
    /// components accept such calls from anyone (`wavelink up` makes one for its components).
    #[serde(default)]
    pub internal_token_file: Option<std::path::PathBuf>,
}

/// The `kubernetes:` section: where proxy, Wavelet and controller find things in a cluster.
/// Functions are the Deployments labelled `wavelink.dev/function`; their instances are the ready
/// endpoints of the Service of the same name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KubernetesConfig {
    /// Watch only this namespace [default: all namespaces].
    #[serde(default)]
    pub namespace: Option<String>,
    /// `namespace/name` of the Service selecting the Wavelet pods; the proxy spills to its
    /// endpoints on the port named `wavelet`.
    #[serde(default)]
    pub wavelet_service: Option<String>,
    /// `namespace/name` of the Service selecting the proxy pods; the controller reads `/stats`
    /// from each endpoint on the port named `admin`.
    #[serde(default)]
    pub proxy_service: Option<String>,
    /// `namespace/name` of the Service selecting the controller pods; in `sync` mode the proxy
    /// asks each endpoint (port `admin`) for an RI, and the leader acts.
    #[serde(default)]
    pub controller_service: Option<String>,
    /// `namespace/name` of the controllers' leader-election Lease.
    #[serde(default = "default_lease")]
    pub lease: String,
    /// How long a leader's lease lasts without renewal (renewed every third of it).
    #[serde(default = "default_lease_duration", deserialize_with = "duration_field")]
    pub lease_duration: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: None,
            wavelet_service: None,
            proxy_service: None,
            controller_service: None,
            lease: default_lease(),
            lease_duration: default_lease_duration(),
        }
    }
}

fn default_lease() -> String {
    "wavelink-system/wavelink-controller".to_owned()
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}

/// One entry of `wavelets:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WaveletConfig {
    /// Where the Wavelet takes requests from the proxy.
    pub address: SocketAddr,
    /// Its admin listener (health, metrics, instance list).
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Most Emergency Instances alive on that node at once.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
}

fn default_max_instances() -> u32 {
    256
}

/// Where Regular Instances come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Processes on this machine, started by the controller (the embedded default).
    Local,
    /// Deployments scaled through the Kubernetes API.
    Kubernetes,
}

/// The `controller:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ControllerConfig {
    #[serde(default = "default_backend")]
    pub backend: BackendKind,
    /// Admin listener: health, metrics, and the `sync` mode's requests for one more RI.
    #[serde(default = "default_controller_admin")]
    pub admin: SocketAddr,
    /// Local backend: how long a new RI takes to become routable, modelling a conventional
    /// cluster manager's pod start (see docs/architecture.md for the source of the default).
    #[serde(default = "default_ri_start_delay", deserialize_with = "duration_field")]
    pub ri_start_delay: Duration,
    /// How often each proxy's `/stats` is read.
    #[serde(default = "default_scrape_interval", deserialize_with = "duration_field")]
    pub scrape_interval: Duration,
    /// How often the autoscaler decides.
    #[serde(default = "default_decide_interval", deserialize_with = "duration_field")]
    pub decide_interval: Duration,
    /// Most RIs a `sync` poke may ask for when the function's `max-scale` is unbounded (0).
    #[serde(default = "default_poke_ceiling")]
    pub poke_ceiling: u32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            backend: default_backend(),
            admin: default_controller_admin(),
            ri_start_delay: default_ri_start_delay(),
            scrape_interval: default_scrape_interval(),
            decide_interval: default_decide_interval(),
            poke_ceiling: default_poke_ceiling(),
        }
    }
}

/// Default of `controller.poke-ceiling`.
pub const DEFAULT_POKE_CEILING: u32 = 100;
fn default_poke_ceiling() -> u32 {
    DEFAULT_POKE_CEILING
}
fn default_backend() -> BackendKind {
    BackendKind::Local
}
fn default_controller_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9092))
}
fn default_ri_start_delay() -> Duration {
    Duration::from_millis(1500)
}
fn default_scrape_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_decide_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_domain() -> String {
    "example.com".to_owned()
}

/// The `proxy:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProxyConfig {
    /// Where clients connect.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Admin API, metrics and health (never expose it to clients).
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// On SIGTERM, in-flight requests get this long to finish.
    #[serde(default = "default_grace_period", deserialize_with = "duration_field")]
    pub grace_period: Duration,
    /// Time to establish a connection to an instance before the attempt fails.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration_field")]
    pub connect_timeout: Duration,
    /// How long an idle client connection is kept for its next request (nginx's
    /// `keepalive_timeout`, 75 s); 0 closes it after each response.
    #[serde(default = "default_keepalive_timeout", deserialize_with = "duration_field")]
    pub keepalive_timeout: Duration,
    /// Most requests waiting for a slot, every function together (each function's own bound is
    /// `wavelink.dev/queue-depth`); beyond it, 503 at once.
    #[serde(default = "default_max_queued")]
    pub max_queued: u32,
    /// Most open client connections (nginx's `worker_connections`); beyond it a new connection
    /// is answered 503 with `Retry-After` and closed. Keep it below the open-files limit, which
    /// the proxy raises to its hard limit at start.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Time for a whole request header from its first byte (nginx's `client_header_timeout`);
    /// a slower client's connection is closed. 0: no bound.
    #[serde(default = "default_header_timeout", deserialize_with = "duration_field")]
    pub header_timeout: Duration,
    /// A function's metric series are dropped after it has had no request for this long, and
    /// come back (from zero) with its next one, so thousands of mostly idle functions do not
    /// keep thousands of series. 0: kept while the function is configured.
    #[serde(default = "default_metrics_expiry", deserialize_with = "duration_field")]
    pub metrics_expiry: Duration,
    /// One log line per request (target `wavelink::access`: client, method, host, path, status,
    /// track, duration, request id), as nginx's `access_log`.
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Serve HTTP/2 without TLS to clients that start with its preface (h2c with prior
    /// knowledge, as gRPC clients do); HTTP/1.1 clients are served as before.
    #[serde(default = "default_true")]
    pub h2c: bool,
    /// A TLS listener beside the plaintext one (off when absent).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// The `proxy.tls:` section: HTTPS (and HTTP/2 by ALPN) for clients.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// Where TLS clients connect.
    pub listen: SocketAddr,
    /// PEM certificate chains and keys; each serves the DNS names of its certificate (wildcards
    /// `*.<domain>` included), chosen by the client's SNI. Files are re-read when they change.
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
    /// `namespace/name` of `kubernetes.io/tls` Secrets to serve (with `kubernetes:`), watched:
    /// a changed Secret is served to new connections without a restart.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Redirect every plaintext request to HTTPS (308); per function:
    /// `wavelink.dev/https-redirect`.
    #[serde(default)]
    pub redirect: bool,
    /// The port redirects name [default: the TLS listener's port]; set it when clients reach
    /// the listener through another port (a load balancer's 443).
    #[serde(default)]
    pub redirect_port: Option<u16>,
    /// Offer HTTP/2 by ALPN (`h2`, then `http/1.1`).
    #[serde(default = "default_true")]
    pub http2: bool,
    /// How often certificate files are checked for a change.
    #[serde(default = "default_reload_interval", deserialize_with = "duration_field")]
    pub reload_interval: Duration,
    /// Longest TLS handshake; a slower client is disconnected.
    #[serde(default = "default_handshake_timeout", deserialize_with = "duration_field")]
    pub handshake_timeout: Duration,
}

impl TlsConfig {
    /// The port a redirect to HTTPS names.
    pub fn redirect_port(&self) -> u16 {
        self.redirect_port.unwrap_or(self.listen.port())
    }
}

/// One certificate of `proxy.tls.certificates`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CertificateFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: std::path::PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: default_listen(),
            admin: default_admin(),
            threads: default_threads(),
            grace_period: default_grace_period(),
            connect_timeout: default_connect_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            max_queued: default_max_queued(),
            max_connections: default_max_connections(),
            header_timeout: default_header_timeout(),
            metrics_expiry: default_metrics_expiry(),
            access_log: true,
            h2c: true,
            tls: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_threads() -> usize {
    1
}
fn default_max_queued() -> u32 {
    10_000
}
fn default_max_connections() -> u32 {
    20_000
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_metrics_expiry() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(75)
}
fn default_grace_period() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

/// One entry of `functions:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FunctionConfig {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// How instances start; they get a listening socket (`LISTEN_FDS=1`) or `PORT`. With
    /// `image:`, the command inside the image (replacing its entrypoint, as in a pod spec).
    #[serde(default)]
    pub command: Vec<String>,
    /// The function's container image, for a Wavelet (or local backend) with the `containerd`
    /// runtime; the `process` runtime runs `command` on the host instead.
    #[serde(default)]
    pub image: Option<String>,
    /// Arguments after the command (or the image's entrypoint), as a pod spec's `args`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment of every instance (RI and EI, either runtime).
    #[serde(default)]
    pub env: BTreeMap<String, ScalarString>,
    /// `wavelink.dev/*` settings, as on a Kubernetes Deployment.
    #[serde(default)]
    pub annotations: BTreeMap<String, ScalarString>,
    /// Static Regular Instances (`ip:port`), for a proxy run without a controller.
    #[serde(default)]
    pub instances: Vec<SocketAddr>,
    /// Hand instances a listening socket as fd 3 (`LISTEN_FDS=1`), so a request can wait in the
    /// kernel backlog while they start; `false` for commands that only read `PORT`.
    #[serde(default = "default_true")]
    pub socket_activation: bool,
}

fn default_true() -> bool {
    true
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// A YAML scalar read as text, so `container-concurrency: 4` works as well as `"4"` (Kubernetes
/// annotations are always strings; hand-written YAML often is not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalarString(pub String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Integer(i64),
            Float(f64),
            Bool(bool),
        }
        Ok(ScalarString(match Scalar::deserialize(deserializer)? {
            Scalar::Text(s) => s,
            Scalar::Integer(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }))
    }
}

fn duration_field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// A function that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDef {
    pub id: FunctionId,
    /// Shared with the other functions that have an equal one ([`SharedSpecs`]).
    pub spec: Arc<FunctionSpec>,
    /// The `process` runtime's program and arguments.
    pub command: Vec<String>,
    /// Literal environment of every instance.
    pub env: Vec<(String, String)>,
    /// How instances run as containers; `None` when the function has no image.
    pub container: Option<ContainerTemplate>,
    pub instances: Vec<SocketAddr>,
    pub socket_activation: bool,
}

/// Whether `addr` can be an instance's address: a port, an address one can connect to (not
/// unspecified, multicast or broadcast), and none of the proxy's own listeners (`own`; one on
/// an unspecified address counts on loopback too), which would loop requests through the proxy
/// or expose its admin API on the client listener.
pub fn check_instance_address(addr: SocketAddr, own: &[SocketAddr]) -> Result<(), String> {
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if addr.port() == 0 || ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(format!(
            "instance {addr} is not an address to connect to (port 0, unspecified, multicast or broadcast)"
        ));
    }
    let is_own =
        own.iter().any(|o| o.port() == addr.port() && (o.ip() == ip || (o.ip().is_unspecified() && ip.is_loopback())));
    if is_own {
        return Err(format!("instance {addr} is one of the proxy's own listeners"));
    }
    Ok(())
}

/// A function that did not, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedFunction {
    /// `namespace/name` as written, even when it is not a valid id.
    pub function: String,
    pub error: String,
}

impl fmt::Display for RejectedFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "function {} rejected: {}", self.function, self.error)
    }
}

/// The config file could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("domain {0:?} is not a DNS name")]
    Domain(String),
    #[error("proxy.threads must be at least 1")]
    Threads,
    #[error("wavelets[{0}].max-instances must be at least 1")]
    MaxInstances(usize),
    #[error("controller.{0} must be more than 0")]
    Interval(&'static str),
    #[error("functions come either from `functions:` or from `kubernetes:`, not both")]
    TwoSources,
    #[error("kubernetes.lease-duration must be at least 3s")]
    LeaseDuration,
    #[error("proxy.tls: {0}")]
    Tls(String),
}

impl LocalConfig {
    /// Parses the file's text. Per-function problems are not errors here; see [`Self::functions`].
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: LocalConfig = serde_yaml_ng::from_str(text)?;
        let domain_ok = !config.domain.is_empty()
            && config
                .domain
                .split('.')
                .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !domain_ok {
            return Err(ConfigError::Domain(config.domain));
        }
        if config.proxy.threads == 0 {
            return Err(ConfigError::Threads);
        }
        if let Some(i) = config.wavelets.iter().position(|w| w.max_instances == 0) {
            return Err(ConfigError::MaxInstances(i));
        }
        if let Some(c) = &config.controller {
            if c.scrape_interval.is_zero() {
                return Err(ConfigError::Interval("scrape-interval"));
            }
            if c.decide_interval.is_zero() {
                return Err(ConfigError::Interval("decide-interval"));
            }
        }
        if let Some(tls) = &config.proxy.tls {
            config.check_tls(tls)?;
        }
        if let Some(k) = &config.kubernetes {
            if !config.functions.is_empty() {
                return Err(ConfigError::TwoSources);
            }
            if k.lease_duration < Duration::from_secs(3) {
                return Err(ConfigError::LeaseDuration);
            }
        }
        Ok(config)
    }

    fn check_tls(&self, tls: &TlsConfig) -> Result<(), ConfigError> {
        if tls.certificates.is_empty() && tls.secrets.is_empty() {
            return Err(ConfigError::Tls("name at least one certificate (certificates:) or Secret (secrets:)".into()));
        }
        if !tls.secrets.is_empty() && self.kubernetes.is_none() {
            return Err(ConfigError::Tls("secrets: need the kubernetes: section".into()));
        }
        if let Some(bad) =
            tls.secrets.iter().find(|s| s.split_once('/').is_none_or(|(ns, n)| ns.is_empty() || n.is_empty()))
        {
            return Err(ConfigError::Tls(format!("secret {bad:?} is not namespace/name")));
        }
        if tls.listen == self.proxy.listen || tls.listen == self.proxy.admin {
            return Err(ConfigError::Tls(format!("listen {} is already the proxy's listen or admin", tls.listen)));
        }
        if tls.handshake_timeout.is_zero() || tls.reload_interval.is_zero() {
            return Err(ConfigError::Tls("handshake-timeout and reload-interval must be more than 0".into()));
        }
        Ok(())
    }

    /// The proxy's own listeners, which no instance may be.
    pub fn proxy_listeners(&self) -> Vec<SocketAddr> {
        let mut own = vec![self.proxy.listen, self.proxy.admin];
        own.extend(self.proxy.tls.as_ref().map(|t| t.listen));
        own
    }

    /// Validates every function: the accepted ones in file order, and the rejected ones with the
    /// reason (invalid name, bad annotations, or a duplicate of an earlier entry).
    pub fn functions(&self) -> (Vec<FunctionDef>, Vec<RejectedFunction>) {
        let mut accepted = Vec::new();
        let mut specs = SharedSpecs::default();
        let mut rejected = Vec::new();
        let mut seen = HashSet::new();
        let own = self.proxy_listeners();
        for entry in &self.functions {
            let written = format!("{}/{}", entry.namespace, entry.name);
            let reject = |error: String| RejectedFunction { function: written.clone(), error };
            let id = match FunctionId::new(&entry.namespace, &entry.name) {
                Ok(id) => id,
                Err(e) => {
                    rejected.push(reject(e));
                    continue;
                }
            };
            if !seen.insert(id.clone()) {
                rejected.push(reject("defined more than once; the first definition is used".into()));
                continue;
            }
            if let Some(name) = entry.env.keys().find(|n| n.is_empty() || n.contains(['=', '\0'])) {
                rejected.push(reject(format!("env name {name:?} is empty or contains '=' or NUL")));
                continue;
            }
            if let Some(e) = entry.instances.iter().find_map(|a| check_instance_address(*a, &own).err()) {
                rejected.push(reject(e));
                continue;
            }
            if entry.image.as_deref().is_some_and(|i| i.is_empty() || i.contains(char::is_whitespace)) {
                rejected.push(reject(format!(
                    "image {:?} is not an image reference",
                    entry.image.as_deref().unwrap_or("")
                )));
                continue;
            }
            let annotations = entry.annotations.iter().map(|(k, v)| (k.as_str(), v.0.as_str()));
            match FunctionSpec::from_annotations(annotations) {
                Ok(spec) => accepted.push(FunctionDef {
                    id,
                    spec: specs.share(spec),
                    command: entry.command.iter().chain(&entry.args).cloned().collect(),
                    env: entry.env.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect(),
                    container: entry.image.as_ref().map(|image| ContainerTemplate {
                        image: image.clone(),
                        command: entry.command.clone(),
                        args: entry.args.clone(),
                        ..ContainerTemplate::default()
                    }),
                    instances: entry.instances.clone(),
                    socket_activation: entry.socket_activation,
                }),
                Err(e) => rejected.push(reject(e.to_string())),
            }
        }
        (accepted, rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::keys;

    const EXAMPLE: &str = r#"
domain: example.com
proxy: { listen: 127.0.0.1:8080, admin: 127.0.0.1:9090, grace-period: 5s }
wavelets:
  - { address: 127.0.0.1:8091, admin: 127.0.0.1:9091, max-instances: 64 }
  - { address: 127.0.0.1:8092 }
controller: { backend: local, ri-start-delay: 1500ms }
functions:
  - name: hello
    namespace: default
    command: ["wavelink", "fn"]
    annotations: { wavelink.dev/container-concurrency: "2", wavelink.dev/queue-timeout: 2s }
    instances: ["127.0.0.1:9001", "127.0.0.1:9002"]
  - name: typed
    annotations: { wavelink.dev/container-concurrency: 4 }
    socket-activation: false
  - name: boxed
    image: localhost/wavelink-fn:dev
    command: ["wavelink-fn"]
    args: ["--threads", "1"]
    env: { FN_MESSAGE: hi, COUNT: 3 }
"#;

    #[test]
    fn parses_the_example() {
        let config = LocalConfig::from_yaml(EXAMPLE).expect("valid");
        assert_eq!(config.proxy.grace_period, Duration::from_secs(5));
        assert_eq!(config.proxy.connect_timeout, Duration::from_secs(1));
        let (accepted, rejected) = config.functions();
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(accepted.len(), 3);
        let boxed = &accepted[2];
        assert_eq!(boxed.command, ["wavelink-fn", "--threads", "1"], "the process runtime runs command + args");
        assert_eq!(boxed.env, [("COUNT".to_owned(), "3".to_owned()), ("FN_MESSAGE".to_owned(), "hi".to_owned())]);
        let container = boxed.container.as_ref().expect("an image makes a container template");
        assert_eq!(container.image, "localhost/wavelink-fn:dev");
        assert_eq!(
            (container.command.as_slice(), container.args.as_slice()),
            (&["wavelink-fn".to_owned()][..], &["--threads".to_owned(), "1".to_owned()][..])
        );
        assert!(accepted[0].container.is_none());
        assert_eq!(accepted[0].id.host(&config.domain), "hello.default.example.com");
        assert_eq!(accepted[0].spec.container_concurrency, 2);
        assert_eq!(accepted[0].spec.queue_timeout, Duration::from_secs(2));
        assert_eq!(accepted[0].instances.len(), 2);
        assert_eq!(accepted[1].id.namespace, "default");
        assert_eq!(accepted[1].spec.container_concurrency, 4);
        assert!(accepted[0].socket_activation);
        assert!(!accepted[1].socket_activation);
        assert_eq!(config.wavelets[0].max_instances, 64);
        assert_eq!(
            config.wavelets[1],
            WaveletConfig { address: "127.0.0.1:8092".parse().unwrap(), admin: None, max_instances: 256 }
        );
    }

    #[test]
    fn functions_with_equal_annotations_share_one_spec() {
        let text = "functions:\n  - { name: a }\n  - { name: b, annotations: { wavelink.dev/window: 30s } }\n  - { name: c }\n";
        let (accepted, _) = LocalConfig::from_yaml(text).expect("valid").functions();
        assert!(std::sync::Arc::ptr_eq(&accepted[0].spec, &accepted[2].spec));
        assert!(!std::sync::Arc::ptr_eq(&accepted[0].spec, &accepted[1].spec));
    }

    #[test]
    fn instance_addresses_must_be_reachable_and_not_the_proxy_itself() {
        let own: Vec<SocketAddr> = vec!["127.0.0.1:8080".parse().unwrap(), "0.0.0.0:9090".parse().unwrap()];
        let check = |a: &str| check_instance_address(a.parse().unwrap(), &own);
        assert!(check("127.0.0.1:9001").is_ok());
        assert!(check("10.1.2.3:8080").is_ok(), "another host's 8080");
        for bad in [
            "127.0.0.1:8080",
            "127.0.0.1:9090",
            "[::1]:9090",
            "0.0.0.0:80",
            "[::]:80",
            "10.0.0.1:0",
            "224.0.0.1:80",
            "255.255.255.255:80",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        let (accepted, rejected) =
            LocalConfig::from_yaml("functions: [{ name: a, instances: [\"0.0.0.0:80\"] }, { name: b }]")
                .unwrap()
                .functions();
        assert_eq!((accepted.len(), rejected.len()), (1, 1));
        assert!(rejected[0].error.contains("0.0.0.0:80"), "{}", rejected[0].error);
    }

    #[test]
    fn an_empty_file_means_defaults() {
        let config = LocalConfig::from_yaml("{}").expect("valid");
        assert_eq!(config.domain, "example.com");
        assert_eq!(config.proxy.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(config.functions().0.is_empty());
    }

    #[test]
    fn a_bad_function_is_rejected_alone() {
        let text = r#"
functions:
  - { name: good }
  - { name: bad, annotations: { wavelink.dev/container-concurrency: "0" } }
  - { name: Bad_Name }
  - { name: good }
  - { name: bad-env, env: { "A=B": x } }
  - { name: bad-image, image: "" }
"#;
        let (accepted, rejected) = LocalConfig::from_yaml(text).expect("valid").functions();
        assert_eq!(accepted.iter().map(|f| f.id.name.as_str()).collect::<Vec<_>>(), ["good"]);
        assert_eq!(rejected.len(), 5);
        assert!(rejected[3].error.contains("\"A=B\""), "{}", rejected[3]);
        assert!(rejected[4].error.contains("image"), "{}", rejected[4]);
        assert_eq!(rejected[0].function, "default/bad");
        assert!(rejected[0].error.contains(keys::CONTAINER_CONCURRENCY), "{}", rejected[0]);
        assert!(rejected[0].error.contains("\"0\""));
        assert!(rejected[0].error.contains("from 1 to 1000"));
        assert!(rejected[1].error.contains("DNS label"));
        assert!(rejected[2].error.contains("more than once"));
    }

    #[test]
    fn structural_errors_fail_the_file_with_a_location() {
        let e = LocalConfig::from_yaml("proxy: { listen: nowhere }").unwrap_err().to_string();
        assert!(e.contains("proxy"), "{e}");
        let e = LocalConfig::from_yaml("functoins: []").unwrap_err().to_string();
        assert!(e.contains("unknown field `functoins`"), "{e}");
        let e = LocalConfig::from_yaml("proxy: { grace-period: soon }").unwrap_err().to_string();
        assert!(e.contains("soon"), "{e}");
        assert!(LocalConfig::from_yaml("domain: 'bad domain'").is_err());
        assert!(LocalConfig::from_yaml("proxy: { threads: 0 }").is_err());
        assert!(LocalConfig::from_yaml("wavelets: [{ address: 127.0.0.1:1, max-instances: 0 }]").is_err());
        assert!(LocalConfig::from_yaml("controller: { backend: nomad }").is_err());
        assert!(LocalConfig::from_yaml("controller: { decide-interval: 0 }").is_err());
        assert!(LocalConfig::from_yaml("functions: [{ name: x, instances: [localhost] }]").is_err());
    }
}
