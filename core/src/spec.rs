//! The function contract: `wavelink.dev/*` annotations parsed into a [`FunctionSpec`].
//!
//! One vocabulary for Kubernetes Deployments and the local config. Every key is described once in
//! [`ANNOTATIONS`] (default, accepted values, meaning); the parser, the error messages and the
//! documentation test all read that table, so they cannot drift apart.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::duration::{HumanDuration, parse_duration};

/// Every key this crate understands starts with this.
pub const ANNOTATION_PREFIX: &str = "wavelink.dev/";
/// The label that marks a Deployment as a WaveLink function (a label, not an annotation).
pub const FUNCTION_LABEL: &str = "wavelink.dev/function";

/// Annotation key names.
pub mod keys {
    pub const CONTAINER_CONCURRENCY: &str = "wavelink.dev/container-concurrency";
    pub const TARGET_UTILIZATION: &str = "wavelink.dev/target-utilization-percentage";
    pub const MIN_SCALE: &str = "wavelink.dev/min-scale";
    pub const MAX_SCALE: &str = "wavelink.dev/max-scale";
    pub const INITIAL_SCALE: &str = "wavelink.dev/initial-scale";
    pub const WINDOW: &str = "wavelink.dev/window";
    pub const PANIC_WINDOW_PERCENTAGE: &str = "wavelink.dev/panic-window-percentage";
    pub const PANIC_THRESHOLD_PERCENTAGE: &str = "wavelink.dev/panic-threshold-percentage";
    pub const SCALE_DOWN_DELAY: &str = "wavelink.dev/scale-down-delay";
    pub const METRIC_AGGREGATION: &str = "wavelink.dev/metric-aggregation";
    pub const SCALING_MODE: &str = "wavelink.dev/scaling-mode";
    pub const EMERGENCY_MAX: &str = "wavelink.dev/emergency-max";
    pub const EMERGENCY_KEEPALIVE: &str = "wavelink.dev/emergency-keepalive";
    pub const QUEUE_TIMEOUT: &str = "wavelink.dev/queue-timeout";
    pub const QUEUE_DEPTH: &str = "wavelink.dev/queue-depth";
    pub const TIMEOUT: &str = "wavelink.dev/timeout";
    pub const RESPONSE_START_TIMEOUT: &str = "wavelink.dev/response-start-timeout";
    pub const IDLE_TIMEOUT: &str = "wavelink.dev/idle-timeout";
    pub const SPORADIC_THRESHOLD: &str = "wavelink.dev/sporadic-threshold";
    pub const PORT: &str = "wavelink.dev/port";
    pub const CONTAINER: &str = "wavelink.dev/container";
    pub const PROTOCOL: &str = "wavelink.dev/protocol";
    pub const HTTPS_REDIRECT: &str = "wavelink.dev/https-redirect";
}

/// What values a key accepts. Its `Display` is the "accepted range" of error messages and docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Accepted {
    Integer {
        min: u64,
        max: u64,
    },
    Number {
        min: f64,
        max: f64,
    },
    Duration {
        min: Duration,
        max: Duration,
    },
    OneOf(&'static [&'static str]),
    /// A DNS-1123 label (a Kubernetes object or container name), or empty for none.
    Name,
}

impl fmt::Display for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accepted::Integer { min, max } => write!(f, "an integer from {min} to {max}"),
            Accepted::Number { min, max } => write!(f, "a number from {min} to {max}"),
            Accepted::Duration { min, max } => write!(
                f,
                "a duration from {} to {} (like 60s, 1500ms, 1m30s)",
                HumanDuration(*min),
                HumanDuration(*max)
            ),
            Accepted::OneOf(choices) => write!(f, "one of {}", choices.join(", ")),
            Accepted::Name => write!(f, "a container name (1-63 lower-case letters, digits or '-'), or empty"),
        }
    }
}

/// One row of the annotation table.
#[derive(Debug, Clone, Copy)]
pub struct AnnotationKey {
    pub name: &'static str,
    pub default: &'static str,
    pub accepted: Accepted,
    pub meaning: &'static str,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The annotation table: the single source of truth for keys, defaults and ranges.
pub static ANNOTATIONS: &[AnnotationKey] = &[
    AnnotationKey {
        name: keys::CONTAINER_CONCURRENCY,
        default: "1",
        accepted: Accepted::Integer { min: 1, max: 1000 },
        meaning: "hard limit of in-flight requests per instance (RI and EI)",
    },
    AnnotationKey {
        name: keys::TARGET_UTILIZATION,
        default: "70",
        accepted: Accepted::Number { min: 1.0, max: 100.0 },
        meaning: "the autoscaler aims at this share of RI capacity",
    },
    AnnotationKey {
        name: keys::MIN_SCALE,
        default: "0",
        accepted: Accepted::Integer { min: 0, max: 10_000 },
        meaning: "fewest RIs",
    },
    AnnotationKey {
        name: keys::MAX_SCALE,
        default: "0",
        accepted: Accepted::Integer { min: 0, max: 10_000 },
        meaning: "most RIs; 0 means unbounded",
    },
    AnnotationKey {
        name: keys::INITIAL_SCALE,
        default: "1",
        accepted: Accepted::Integer { min: 0, max: 10_000 },
        meaning: "RIs when the function is first deployed",
    },
    AnnotationKey {
        name: keys::WINDOW,
        default: "60s",
        accepted: Accepted::Duration { min: secs(2), max: secs(3600) },
        meaning: "stable window the autoscaler aggregates concurrency over",
    },
    AnnotationKey {
        name: keys::PANIC_WINDOW_PERCENTAGE,
        default: "10",
        accepted: Accepted::Number { min: 1.0, max: 100.0 },
        meaning: "panic window as a share of the stable window",
    },
    AnnotationKey {
        name: keys::PANIC_THRESHOLD_PERCENTAGE,
        default: "200",
        accepted: Accepted::Number { min: 110.0, max: 1000.0 },
        meaning: "enter panic when panic-window demand reaches this share of current capacity",
    },
    AnnotationKey {
        name: keys::SCALE_DOWN_DELAY,
        default: "0s",
        accepted: Accepted::Duration { min: secs(0), max: secs(3600) },
        meaning: "how long demand must stay lower before RIs are removed",
    },
    AnnotationKey {
        name: keys::METRIC_AGGREGATION,
        default: "max",
        accepted: Accepted::OneOf(&["max", "avg"]),
        meaning: "`max` (peak concurrency per second) or `avg` over the window",
    },
    AnnotationKey {
        name: keys::SCALING_MODE,
        default: "dual",
        accepted: Accepted::OneOf(&["dual", "async", "sync", "fast-only"]),
        meaning: "`dual` spills overflow to Wavelets; baselines: `async` (Knative-like queue), \
                  `sync` (Lambda-like), `fast-only` (every instance from Wavelets)",
    },
    AnnotationKey {
        name: keys::EMERGENCY_MAX,
        default: "100",
        accepted: Accepted::Integer { min: 0, max: 100_000 },
        meaning: "concurrent Emergency Instances per function across Wavelets",
    },
    AnnotationKey {
        name: keys::EMERGENCY_KEEPALIVE,
        default: "2s",
        accepted: Accepted::Duration { min: secs(0), max: secs(3600) },
        meaning: "an idle EI is reused within this, then destroyed; 0 means one request per EI",
    },
    AnnotationKey {
        name: keys::QUEUE_TIMEOUT,
        default: "30s",
        accepted: Accepted::Duration { min: secs(0), max: secs(3600) },
        meaning: "longest wait for a slot before 503 with Retry-After",
    },
    AnnotationKey {
        name: keys::QUEUE_DEPTH,
        default: "10000",
        accepted: Accepted::Integer { min: 0, max: 1_000_000 },
        meaning: "most requests waiting for a slot per function and proxy; beyond it, 503 at once",
    },
    AnnotationKey {
        name: keys::TIMEOUT,
        default: "300s",
        accepted: Accepted::Duration { min: secs(1), max: secs(3600) },
        meaning: "longest a request may run on an instance (Knative's timeoutSeconds); then 504 and the \
                  instance gets no requests for a while",
    },
    AnnotationKey {
        name: keys::RESPONSE_START_TIMEOUT,
        default: "0",
        accepted: Accepted::Duration { min: secs(0), max: secs(3600) },
        meaning: "longest wait for an instance's response to start (Knative's \
                  responseStartTimeoutSeconds), then 504; also bounds each pause in a response while \
                  idle-timeout is 0; 0 (or more than the timeout) means the timeout",
    },
    AnnotationKey {
        name: keys::IDLE_TIMEOUT,
        default: "0",
        accepted: Accepted::Duration { min: secs(0), max: secs(3600) },
        meaning: "longest wait for a byte of the response, the first included (Knative's \
                  idleTimeoutSeconds), then the request ends (504 if nothing was sent yet); 0 means none \
                  beyond the others",
    },
    AnnotationKey {
        name: keys::SPORADIC_THRESHOLD,
        default: "60s",
        accepted: Accepted::Duration { min: secs(0), max: secs(86_400) },
        meaning: "in `dual`, a function whose mean inter-arrival time is above this is served by \
                  EIs alone and never holds an idle RI; 0 disables the rule",
    },
    AnnotationKey {
        name: keys::PORT,
        default: "8080",
        accepted: Accepted::Integer { min: 1, max: 65_535 },
        meaning: "container port of the function",
    },
    AnnotationKey {
        name: keys::CONTAINER,
        default: "",
        accepted: Accepted::Name,
        meaning: "the pod template's container an Emergency Instance runs (`containerd` runtime); empty: the first",
    },
    AnnotationKey {
        name: keys::PROTOCOL,
        default: "http1",
        accepted: Accepted::OneOf(&["http1", "h2c"]),
        meaning: "how the function's instances (RIs and EIs) are spoken to: HTTP/1.1, or HTTP/2 without TLS \
                  (`h2c`, needed for gRPC; Knative's port name `h2c`)",
    },
    AnnotationKey {
        name: keys::HTTPS_REDIRECT,
        default: "false",
        accepted: Accepted::OneOf(&["false", "true"]),
        meaning: "answer plaintext requests with a 308 to the same URL over HTTPS (needs the proxy's TLS \
                  listener; `proxy.tls.redirect` does it for every function)",
    },
];

/// The annotation reference as a Markdown table (the one in `docs/annotations.md`).
pub fn markdown_table() -> String {
    let mut table = String::from("| key | default | accepted | meaning |\n|---|---|---|---|\n");
    for key in ANNOTATIONS {
        let default = if key.default.is_empty() { "(empty)".to_owned() } else { format!("`{}`", key.default) };
        table.push_str(&format!("| `{}` | {default} | {} | {} |\n", key.name, key.accepted, key.meaning));
    }
    table
}

/// Looks a key up in [`ANNOTATIONS`].
pub fn annotation_key(name: &str) -> Option<&'static AnnotationKey> {
    ANNOTATIONS.iter().find(|k| k.name == name)
}

/// How the autoscaler aggregates per-second concurrency over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricAggregation {
    Max,
    Avg,
}

/// How a function absorbs load its Regular Instances cannot take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalingMode {
    /// Overflow goes to Emergency Instances on Wavelets (the WaveLink design).
    Dual,
    /// Overflow waits in the proxy for RI capacity (Knative-like baseline).
    Async,
    /// A request without a slot asks for one more RI and waits for it (Lambda-like baseline).
    Sync,
    /// Every instance comes from Wavelets (FaaS-only, Dirigent-like baseline).
    FastOnly,
}

/// The two ways a request can be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Track {
    /// A Regular Instance: long-lived, scaled by the autoscaler.
    Regular,
    /// An Emergency Instance on a Wavelet: started on demand in milliseconds.
    Emergency,
}

impl ScalingMode {
    /// The tracks a request may take, in the order they are tried. A request none of them can
    /// take right now waits in the function's queue for whichever frees first.
    pub fn tracks(self) -> &'static [Track] {
        match self {
            ScalingMode::Dual => &[Track::Regular, Track::Emergency],
            ScalingMode::FastOnly => &[Track::Emergency],
            // `sync` differs from `async` in asking the autoscaler for an RI at once.
            ScalingMode::Async | ScalingMode::Sync => &[Track::Regular],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ScalingMode::Dual => "dual",
            ScalingMode::Async => "async",
            ScalingMode::Sync => "sync",
            ScalingMode::FastOnly => "fast-only",
        }
    }
}

/// How a function's instances are spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// HTTP/1.1 (each connection one request at a time).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge: gRPC servers and other HTTP/2-only ones.
    H2c,
}

/// A function's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub container_concurrency: u32,
    /// Fraction of capacity the autoscaler aims at, in (0, 1].
    pub target_utilization: f64,
    pub min_scale: u32,
    /// `None` means unbounded.
    pub max_scale: Option<u32>,
    pub initial_scale: u32,
    pub window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub scale_down_delay: Duration,
    pub metric_aggregation: MetricAggregation,
    pub scaling_mode: ScalingMode,
    pub emergency_max: u32,
    pub emergency_keepalive: Duration,
    pub queue_timeout: Duration,
    pub queue_depth: u32,
    /// Longest a request may run on an instance.
    pub timeout: Duration,
    /// Longest wait for the response to start (`None`: the timeout).
    pub response_start_timeout: Option<Duration>,
    /// Longest pause between bytes of a response (`None`: none of its own).
    pub idle_timeout: Option<Duration>,
    /// `None` when the sporadic rule is disabled.
    pub sporadic_threshold: Option<Duration>,
    pub port: u16,
    /// The pod template's container EIs run; `None`: the first.
    pub container: Option<String>,
    pub protocol: Protocol,
    /// Plaintext requests are redirected to HTTPS.
    pub https_redirect: bool,
}

impl FunctionSpec {
    /// Longest wait for a response to start: `response-start-timeout`, at most the timeout.
    pub fn response_start(&self) -> Duration {
        self.response_start_timeout.map_or(self.timeout, |d| d.min(self.timeout))
    }
}

/// Shares equal specs: thousands of functions have a handful of specs (the defaults, a team's
/// settings), so a process keeps a few copies, not one per function. It remembers the last few
/// distinct specs it handed out (weakly: a spec no function uses any more is not kept alive).
#[derive(Debug, Default)]
pub struct SharedSpecs {
    /// Most recently shared first.
    recent: Vec<Weak<FunctionSpec>>,
}

/// Distinct specs remembered; a linear scan of these is cheaper than hashing a spec.
const SHARED_SPECS_KEPT: usize = 16;

impl SharedSpecs {
    /// A copy of `spec` shared with every earlier function that had an equal one (among the
    /// last few distinct specs).
    pub fn share(&mut self, spec: FunctionSpec) -> Arc<FunctionSpec> {
        self.recent.retain(|w| w.strong_count() > 0);
        let found =
            self.recent.iter().enumerate().find_map(|(i, w)| w.upgrade().filter(|s| **s == spec).map(|s| (i, s)));
        let shared = match found {
            Some((i, shared)) => {
                self.recent.remove(i);
                shared
            }
            None => Arc::new(spec),
        };
        self.recent.insert(0, Arc::downgrade(&shared));
        self.recent.truncate(SHARED_SPECS_KEPT);
        shared
    }
}

impl Default for FunctionSpec {
    fn default() -> Self {
        match FunctionSpec::from_annotations(std::iter::empty::<(&str, &str)>()) {
            Ok(spec) => spec,
            // The defaults are checked by a unit test; they are constants of this file.
            Err(e) => panic!("built-in annotation defaults are invalid: {e}"),
        }
    }
}

/// One problem with one annotation (or a pair that contradict each other).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("{key}: {value:?} is not accepted; expected {accepted}")]
    Invalid { key: &'static str, value: String, accepted: Accepted },
    #[error("{key}: unknown annotation{}", suggestion.map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    Unknown { key: String, suggestion: Option<&'static str> },
    #[error("{key}: {value:?} contradicts {other_key}={other_value:?}; {reason}")]
    Conflict { key: &'static str, value: String, other_key: &'static str, other_value: String, reason: &'static str },
}

/// Every problem found in one function's annotations.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidSpec(pub Vec<SpecError>);

impl FunctionSpec {
    /// Parses annotations; keys outside `wavelink.dev/` are ignored, unknown keys inside it are
    /// errors (a typo must not silently fall back to a default). All problems are reported at once.
    pub fn from_annotations<I, K, V>(annotations: I) -> Result<Self, InvalidSpec>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut reader = Reader { values: BTreeMap::new(), errors: Vec::new() };
        for (key, value) in annotations {
            let key = key.as_ref();
            let Some(_) = key.strip_prefix(ANNOTATION_PREFIX) else { continue };
            match annotation_key(key) {
                Some(known) => {
                    reader.values.insert(known.name, value.as_ref().to_owned());
                }
                // The function label may also be set as an annotation; it is not a setting.
                None if key == FUNCTION_LABEL => {}
                None => reader.errors.push(SpecError::Unknown { key: key.to_owned(), suggestion: closest_key(key) }),
            }
        }

        let spec = FunctionSpec {
            container_concurrency: reader.integer(keys::CONTAINER_CONCURRENCY) as u32,
            target_utilization: reader.number(keys::TARGET_UTILIZATION) / 100.0,
            min_scale: reader.integer(keys::MIN_SCALE) as u32,
            max_scale: match reader.integer(keys::MAX_SCALE) {
                0 => None,
                n => Some(n as u32),
            },
            initial_scale: reader.integer(keys::INITIAL_SCALE) as u32,
            window: reader.duration(keys::WINDOW),
            panic_window_percentage: reader.number(keys::PANIC_WINDOW_PERCENTAGE),
            panic_threshold_percentage: reader.number(keys::PANIC_THRESHOLD_PERCENTAGE),
            scale_down_delay: reader.duration(keys::SCALE_DOWN_DELAY),
            metric_aggregation: match reader.choice(keys::METRIC_AGGREGATION) {
                "avg" => MetricAggregation::Avg,
                _ => MetricAggregation::Max,
            },
            scaling_mode: match reader.choice(keys::SCALING_MODE) {
                "async" => ScalingMode::Async,
                "sync" => ScalingMode::Sync,
                "fast-only" => ScalingMode::FastOnly,
                _ => ScalingMode::Dual,
            },
            emergency_max: reader.integer(keys::EMERGENCY_MAX) as u32,
            emergency_keepalive: reader.duration(keys::EMERGENCY_KEEPALIVE),
            queue_timeout: reader.duration(keys::QUEUE_TIMEOUT),
            queue_depth: reader.integer(keys::QUEUE_DEPTH) as u32,
            timeout: reader.duration(keys::TIMEOUT),
            response_start_timeout: Some(reader.duration(keys::RESPONSE_START_TIMEOUT)).filter(|d| !d.is_zero()),
            idle_timeout: Some(reader.duration(keys::IDLE_TIMEOUT)).filter(|d| !d.is_zero()),
            sporadic_threshold: Some(reader.duration(keys::SPORADIC_THRESHOLD)).filter(|d| !d.is_zero()),
            port: reader.integer(keys::PORT) as u16,
            container: Some(reader.name(keys::CONTAINER)).filter(|name| !name.is_empty()),
            protocol: match reader.choice(keys::PROTOCOL) {
                "h2c" => Protocol::H2c,
                _ => Protocol::Http1,
            },
            https_redirect: reader.choice(keys::HTTPS_REDIRECT) == "true",
        };

        if let Some(max) = spec.max_scale
            && spec.min_scale > max
        {
            reader.errors.push(SpecError::Conflict {
                key: keys::MIN_SCALE,
                value: spec.min_scale.to_string(),
                other_key: keys::MAX_SCALE,
                other_value: max.to_string(),
                reason: "min-scale must not exceed max-scale (0 means unbounded)",
            });
        }

        if reader.errors.is_empty() { Ok(spec) } else { Err(InvalidSpec(reader.errors)) }
    }
}

/// Reads typed values, falling back to the default and recording an error for a bad value, so
/// one pass reports every problem.
struct Reader {
    values: BTreeMap<&'static str, String>,
    errors: Vec<SpecError>,
}

impl Reader {
    fn raw(&self, key: &'static str) -> (&'static AnnotationKey, Option<&str>) {
        let known = annotation_key(key).unwrap_or_else(|| panic!("{key} is not in ANNOTATIONS"));
        (known, self.values.get(key).map(|v| v.trim()))
    }

    fn invalid(&mut self, known: &'static AnnotationKey, value: &str) {
        self.errors.push(SpecError::Invalid { key: known.name, value: value.to_owned(), accepted: known.accepted });
    }

    /// The key's value through `parse`; a value it rejects is recorded as an error and the
    /// default is used, so one pass reports every problem.
    fn read<T>(&mut self, key: &'static str, parse: impl Fn(&str) -> Option<T>) -> T {
        let (known, value) = self.raw(key);
        if let Some(text) = value {
            match parse(text) {
                Some(parsed) => return parsed,
                None => {
                    let text = text.to_owned();
                    self.invalid(known, &text);
                }
            }
        }
        // The table's defaults are checked by a unit test.
        parse(known.default).unwrap_or_else(|| panic!("default of {key} is invalid"))
    }

    fn integer(&mut self, key: &'static str) -> u64 {
        let Accepted::Integer { min, max } = self.raw(key).0.accepted else { unreachable!("{key} is not an integer") };
        self.read(key, |text| {
            // Digits only: "+5", "5.0" and "0x5" are not what a user meant to type.
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse::<u64>().ok())
                .flatten()
                .filter(|n| (min..=max).contains(n))
        })
    }

    fn number(&mut self, key: &'static str) -> f64 {
        let Accepted::Number { min, max } = self.raw(key).0.accepted else { unreachable!("{key} is not a number") };
        self.read(key, |text| text.parse::<f64>().ok().filter(|n| n.is_finite() && *n >= min && *n <= max))
    }

    fn duration(&mut self, key: &'static str) -> Duration {
        let Accepted::Duration { min, max } = self.raw(key).0.accepted else { unreachable!("{key} is not a duration") };
        self.read(key, |text| parse_duration(text).ok().filter(|d| *d >= min && *d <= max))
    }

    fn name(&mut self, key: &'static str) -> String {
        let Accepted::Name = self.raw(key).0.accepted else { unreachable!("{key} is not a name") };
        self.read(key, |text| {
            let label = text.len() <= 63
                && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !text.starts_with('-')
                && !text.ends_with('-');
            label.then(|| text.to_owned())
        })
    }

    fn choice(&mut self, key: &'static str) -> &'static str {
        let Accepted::OneOf(choices) = self.raw(key).0.accepted else { unreachable!("{key} is not a choice") };
        self.read(key, |text| choices.iter().copied().find(|c| *c == text))
    }
}

/// The known key nearest to a misspelt one, if it is plausibly a typo.
fn closest_key(unknown: &str) -> Option<&'static str> {
    ANNOTATIONS
        .iter()
        .map(|k| (edit_distance(unknown, k.name), k.name))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_specs_share_one_copy_and_a_different_one_gets_its_own() {
        let mut shared = SharedSpecs::default();
        let other = FunctionSpec { port: 9000, ..FunctionSpec::default() };
        let a = shared.share(FunctionSpec::default());
        let b = shared.share(FunctionSpec::default());
        let c = shared.share(other.clone());
        // Not only in a row: a watch sees functions in any order.
        let d = shared.share(FunctionSpec::default());
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a, &d));
        assert!(!Arc::ptr_eq(&b, &c));
        assert_eq!(*c, other);
        // A spec nobody holds any more is not kept alive, and an equal one later is a new copy.
        drop(c);
        let e = shared.share(other.clone());
        assert_eq!(*e, other);
        assert_eq!(Arc::strong_count(&e), 1);
    }

    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<FunctionSpec, InvalidSpec> {
        FunctionSpec::from_annotations(pairs.iter().copied())
    }

    fn single_error(pairs: &[(&str, &str)]) -> SpecError {
        let errors = parse(pairs).expect_err("should be rejected").0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.into_iter().next().unwrap()
    }

    #[test]
    fn timeouts_default_to_knatives_and_a_part_is_capped_at_the_whole() {
        let spec = FunctionSpec::default();
        assert_eq!(
            (spec.timeout, spec.response_start_timeout, spec.idle_timeout),
            (Duration::from_secs(300), None, None)
        );
        let spec = parse(&[(keys::RESPONSE_START_TIMEOUT, "2s"), (keys::IDLE_TIMEOUT, "1s")]).unwrap();
        assert_eq!(
            (spec.response_start_timeout, spec.idle_timeout),
            (Some(Duration::from_secs(2)), Some(Duration::from_secs(1)))
        );
        let spec = parse(&[(keys::TIMEOUT, "10s"), (keys::RESPONSE_START_TIMEOUT, "20s")]).unwrap();
        assert_eq!(spec.response_start(), Duration::from_secs(10), "a part never outlasts the whole");
        assert_eq!(FunctionSpec::default().response_start(), Duration::from_secs(300));
    }

    #[test]
    fn defaults_match_the_annotation_table() {
        let spec = FunctionSpec::default();
        assert_eq!(spec.container_concurrency, 1);
        assert_eq!(spec.target_utilization, 0.70);
        assert_eq!(spec.min_scale, 0);
        assert_eq!(spec.max_scale, None);
        assert_eq!(spec.initial_scale, 1);
        assert_eq!(spec.window, Duration::from_secs(60));
        assert_eq!(spec.panic_window_percentage, 10.0);
        assert_eq!(spec.panic_threshold_percentage, 200.0);
        assert_eq!(spec.scale_down_delay, Duration::ZERO);
        assert_eq!(spec.metric_aggregation, MetricAggregation::Max);
        assert_eq!(spec.scaling_mode, ScalingMode::Dual);
        assert_eq!(spec.emergency_max, 100);
        assert_eq!(spec.emergency_keepalive, Duration::from_secs(2));
        assert_eq!(spec.queue_timeout, Duration::from_secs(30));
        assert_eq!(spec.queue_depth, 10_000);
        assert_eq!(spec.sporadic_threshold, Some(Duration::from_secs(60)));
        assert_eq!(spec.port, 8080);
        assert_eq!(spec.protocol, Protocol::Http1);
        assert!(!spec.https_redirect);
    }

    #[test]
    fn protocol_and_https_redirect_are_read_and_checked() {
        let spec = parse(&[(keys::PROTOCOL, "h2c"), (keys::HTTPS_REDIRECT, "true")]).unwrap();
        assert_eq!((spec.protocol, spec.https_redirect), (Protocol::H2c, true));
        let error = single_error(&[(keys::PROTOCOL, "grpc")]);
        assert_eq!(error.to_string(), "wavelink.dev/protocol: \"grpc\" is not accepted; expected one of http1, h2c");
        let error = single_error(&[(keys::HTTPS_REDIRECT, "yes")]);
        assert!(error.to_string().contains("one of false, true"), "{error}");
    }

    #[test]
    fn every_default_is_accepted_by_its_own_key() {
        for key in ANNOTATIONS {
            assert!(parse(&[(key.name, key.default)]).is_ok(), "default of {} rejected", key.name);
        }
    }

    #[test]
    fn every_key_accepts_its_bounds_and_rejects_just_outside_them() {
        for key in ANNOTATIONS {
            let (inside, outside): (Vec<String>, Vec<String>) = match key.accepted {
                Accepted::Integer { min, max } => (
                    vec![min.to_string(), max.to_string()],
                    [min.checked_sub(1).map(|n| n.to_string()), Some((max + 1).to_string())]
                        .into_iter()
                        .flatten()
                        .collect(),
                ),
                Accepted::Number { min, max } => {
                    (vec![min.to_string(), max.to_string()], vec![(min - 0.5).to_string(), (max + 0.5).to_string()])
                }
                Accepted::Duration { min, max } => (
                    vec![HumanDuration(min).to_string(), HumanDuration(max).to_string()],
                    [
                        min.checked_sub(Duration::from_millis(1)).map(|d| HumanDuration(d).to_string()),
                        Some(HumanDuration(max + Duration::from_millis(1)).to_string()),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                ),
                Accepted::OneOf(choices) => (
                    choices.iter().map(|c| c.to_string()).collect(),
                    vec!["none-of-these".to_owned(), choices[0].to_uppercase()],
                ),
                Accepted::Name => (
                    vec!["fn".to_owned(), "a".repeat(63), "app-2".to_owned()],
                    vec!["Fn".to_owned(), "a".repeat(64), "-app".to_owned(), "app_2".to_owned()],
                ),
            };
            for value in inside {
                assert!(parse(&[(key.name, &value)]).is_ok(), "{}={value} should be accepted", key.name);
            }
            for value in outside {
                let error = single_error(&[(key.name, &value)]);
                assert_eq!(
                    error,
                    SpecError::Invalid { key: key.name, value: value.clone(), accepted: key.accepted },
                    "{}={value}",
                    key.name
                );
            }
        }
    }

    #[test]
    fn garbage_is_rejected_for_every_key() {
        for key in ANNOTATIONS {
            // A name may be almost anything lower-case; what no key takes is a leading '-'.
            let garbage: &[&str] =
                if key.accepted == Accepted::Name { &["-1", "A B"] } else { &["", "abc", "-1", "1e9999"] };
            for value in garbage {
                assert!(parse(&[(key.name, value)]).is_err(), "{}={value:?} should be rejected", key.name);
            }
        }
    }

    #[test]
    fn an_error_names_key_value_and_accepted_range() {
        let message = single_error(&[(keys::CONTAINER_CONCURRENCY, "0")]).to_string();
        assert_eq!(
            message,
            "wavelink.dev/container-concurrency: \"0\" is not accepted; expected an integer from 1 to 1000"
        );
        let message = single_error(&[(keys::WINDOW, "1s")]).to_string();
        assert!(message.contains("wavelink.dev/window"), "{message}");
        assert!(message.contains("\"1s\""), "{message}");
        assert!(message.contains("from 2s to 1h"), "{message}");
        let message = single_error(&[(keys::SCALING_MODE, "turbo")]).to_string();
        assert!(message.ends_with("expected one of dual, async, sync, fast-only"), "{message}");
    }

    #[test]
    fn typed_values_are_converted() {
        let spec = parse(&[
            (keys::CONTAINER_CONCURRENCY, "8"),
            (keys::TARGET_UTILIZATION, "85.5"),
            (keys::MAX_SCALE, "20"),
            (keys::WINDOW, "1m30s"),
            (keys::METRIC_AGGREGATION, "avg"),
            (keys::SCALING_MODE, "fast-only"),
            (keys::EMERGENCY_KEEPALIVE, "0"),
            (keys::SPORADIC_THRESHOLD, "0s"),
            (keys::PORT, " 9000 "),
        ])
        .expect("valid");
        assert_eq!(spec.container_concurrency, 8);
        assert!((spec.target_utilization - 0.855).abs() < 1e-12);
        assert_eq!(spec.max_scale, Some(20));
        assert_eq!(spec.window, Duration::from_secs(90));
        assert_eq!(spec.metric_aggregation, MetricAggregation::Avg);
        assert_eq!(spec.scaling_mode, ScalingMode::FastOnly);
        assert_eq!(spec.emergency_keepalive, Duration::ZERO);
        assert_eq!(spec.sporadic_threshold, None);
        assert_eq!(spec.port, 9000);
    }

    #[test]
    fn foreign_annotations_are_ignored_and_unknown_wavelink_keys_rejected() {
        assert!(parse(&[("deployment.kubernetes.io/revision", "3"), (FUNCTION_LABEL, "hello")]).is_ok());
        let error = single_error(&[("wavelink.dev/container-concurency", "2")]);
        assert_eq!(
            error,
            SpecError::Unknown {
                key: "wavelink.dev/container-concurency".into(),
                suggestion: Some(keys::CONTAINER_CONCURRENCY)
            }
        );
        assert!(error.to_string().contains("did you mean wavelink.dev/container-concurrency?"));
        let error = single_error(&[("wavelink.dev/frobnicate", "1")]);
        assert_eq!(error.to_string(), "wavelink.dev/frobnicate: unknown annotation");
    }

    #[test]
    fn modes_try_their_tracks_in_order() {
        assert_eq!(ScalingMode::Dual.tracks(), [Track::Regular, Track::Emergency]);
        assert_eq!(ScalingMode::FastOnly.tracks(), [Track::Emergency]);
        assert_eq!(ScalingMode::Async.tracks(), [Track::Regular]);
        assert_eq!(ScalingMode::Sync.tracks(), [Track::Regular]);
    }

    #[test]
    fn min_scale_above_max_scale_is_a_conflict_but_unbounded_max_is_not() {
        let error = single_error(&[(keys::MIN_SCALE, "5"), (keys::MAX_SCALE, "2")]);
        assert!(matches!(error, SpecError::Conflict { key: keys::MIN_SCALE, other_key: keys::MAX_SCALE, .. }));
        assert!(parse(&[(keys::MIN_SCALE, "5"), (keys::MAX_SCALE, "0")]).is_ok());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors =
            parse(&[(keys::PORT, "0"), (keys::QUEUE_TIMEOUT, "soon"), ("wavelink.dev/x", "1")]).expect_err("invalid").0;
        assert_eq!(errors.len(), 3, "{errors:?}");
    }
}
