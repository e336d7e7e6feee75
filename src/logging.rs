//! Logging of every command: `tracing` to stderr, text or JSON, with repeated warnings and
//! errors rate-limited.
//!
//! Under an outage or an attack the same failure is logged per request or per connection
//! (Pingora's own "Fail to proxy" lines among them): 33 MB in 6 s were seen. Each source of
//! WARN/ERROR lines (target, file and line) gets a burst of [`BURST`] lines and then one per
//! [`REFILL`]; what is dropped is counted and reported as one line per source every
//! [`REPORT_EVERY`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Lines of one source logged at once before the limit applies.
const BURST: u32 = 20;
/// One more line of a source allowed per this much time.
const REFILL: Duration = Duration::from_secs(1);
/// How often suppressed lines are reported.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Sources tracked at once; beyond, the table starts afresh (the limit is best effort).
const MAX_SOURCES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter).with_context(|| format!("bad --log filter {filter:?}"))?;
    use std::io::IsTerminal;
    let limit = RepeatLimit::default();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(limit.clone()).with_filter(filter))
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    limit.report_periodically();
    Ok(())
}

/// Where a line comes from: its target and place in the source.
type Source = (String, Option<String>, Option<u32>);

/// The per-source budgets, shared by the filter and the reporter.
#[derive(Clone, Default)]
struct RepeatLimit {
    sources: Arc<Mutex<HashMap<Source, Budget>>>,
}

impl RepeatLimit {
    fn allow(&self, metadata: &Metadata<'_>, now: Instant) -> bool {
        // Only the levels a failure is logged at; INFO and below are never repeated per request.
        if *metadata.level() > Level::WARN {
            return true;
        }
        self.allow_from((metadata.target().to_owned(), metadata.file().map(str::to_owned), metadata.line()), now)
    }

    fn allow_from(&self, source: Source, now: Instant) -> bool {
        let mut sources = self.sources.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            sources.clear();
        }
        sources.entry(source).or_insert_with(|| Budget::new(now)).take(now)
    }

    /// Lines dropped since the last call, per source.
    fn take_suppressed(&self) -> Vec<(Source, u64)> {
        let mut sources = self.sources.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        sources
            .iter_mut()
            .filter(|(_, budget)| budget.suppressed > 0)
            .map(|(source, budget)| (source.clone(), std::mem::take(&mut budget.suppressed)))
            .collect()
    }

    /// A thread that logs, every [`REPORT_EVERY`], how many lines each source lost (outside
    /// the filter: logging from within it would re-enter the subscriber).
    fn report_periodically(&self) {
        let limit = self.clone();
        let spawned = std::thread::Builder::new().name("log-limit".into()).spawn(move || {
            loop {
                std::thread::sleep(REPORT_EVERY);
                for ((target, file, line), suppressed) in limit.take_suppressed() {
                    // A dependency's file is named from its crate, not from the build machine's home.
                    let file = file.as_deref().unwrap_or("?");
                    let file = file
                        .rsplit_once("/registry/src/")
                        .and_then(|(_, rest)| rest.split_once('/'))
                        .map_or(file, |(_, f)| f);
                    let at = format!("{file}:{}", line.unwrap_or(0));
                    tracing::warn!(target: "wavelink::logs", source = %target, at, suppressed,
                                   period_s = REPORT_EVERY.as_secs(), "repeated log lines suppressed");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the log limiter's reporter; suppressed lines go unreported");
        }
    }
}

impl<S> Filter<S> for RepeatLimit {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        // Lines from the `log` crate (Pingora's) carry their real source in normalized metadata.
        use tracing_log::NormalizeEvent;
        let normalized = event.normalized_metadata();
        self.allow(normalized.as_ref().unwrap_or_else(|| event.metadata()), Instant::now())
    }
}

/// A token bucket of lines.
#[derive(Debug)]
struct Budget {
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
}

impl Budget {
    fn new(now: Instant) -> Self {
        Budget { tokens: BURST, refilled: now, suppressed: 0 }
    }

    fn take(&mut self, now: Instant) -> bool {
        let earned = (now.saturating_duration_since(self.refilled).as_millis() / REFILL.as_millis()) as u32;
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(BURST);
            self.refilled += REFILL * earned;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_a_burst_then_one_line_per_refill_and_dropped_lines_are_counted() {
        let start = Instant::now();
        let mut budget = Budget::new(start);
        let allowed = (0..100).filter(|_| budget.take(start)).count();
        assert_eq!(allowed, BURST as usize);
        assert_eq!(budget.suppressed, 100 - u64::from(BURST));
        assert!(!budget.take(start + REFILL / 2));
        assert!(budget.take(start + REFILL), "one more after a refill period");
        assert!(!budget.take(start + REFILL));
        // A long quiet period refills the burst, no more.
        let later = start + REFILL * 1000;
        assert_eq!((0..100).filter(|_| budget.take(later)).count(), BURST as usize);
    }

    #[test]
    fn each_source_has_its_own_budget_and_dropped_lines_are_reported_once() {
        let limit = RepeatLimit::default();
        let now = Instant::now();
        let source = |line: u32| ("pingora_proxy".to_owned(), Some("src/lib.rs".to_owned()), Some(line));
        let allowed = |line: u32| (0..100).filter(|_| limit.allow_from(source(line), now)).count();
        assert_eq!(allowed(1), BURST as usize);
        assert_eq!(allowed(2), BURST as usize, "another source, another budget");
        let suppressed: u64 = limit.take_suppressed().iter().map(|(_, n)| n).sum();
        assert_eq!(suppressed, 2 * (100 - u64::from(BURST)));
        assert!(limit.take_suppressed().is_empty(), "reported once");
    }
}
