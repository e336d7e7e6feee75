//! Output: text laid out like wrk2's, so wrk users read it at a glance, and a JSON document
//! with the full result.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::engine::{LoadPlan, Measurements, RunResult, SocketErrors};

/// The percentiles wrk2 prints with `--latency`.
const PERCENTILES: [f64; 8] = [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 99.999, 100.0];

/// `812.00us`, `1.23ms`, `1.02s`, `2.50m`.
pub fn format_time_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.2}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else if us < 60_000_000.0 {
        format!("{:.2}s", us / 1_000_000.0)
    } else {
        format!("{:.2}m", us / 60_000_000.0)
    }
}

/// `4.91k`, `1.20M`, `731.00`.
pub fn format_metric(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{:.2}M", value / 1_000_000.0)
    } else if value >= 1000.0 {
        format!("{:.2}k", value / 1000.0)
    } else {
        format!("{value:.2}")
    }
}

/// `11.35MB` (binary units, as wrk).
pub fn format_bytes(bytes: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2}{}", units[unit])
}

/// Mean, standard deviation, max, and the share of samples within one deviation of the mean.
struct Stats {
    mean: f64,
    stdev: f64,
    max: f64,
    within: f64,
}

fn histogram_stats(h: &Histogram<u64>) -> Stats {
    let (mean, stdev) = (h.mean(), h.stdev());
    let within: u64 = h
        .iter_recorded()
        .filter(|v| (v.value_iterated_to() as f64 - mean).abs() <= stdev)
        .map(|v| v.count_at_value())
        .sum();
    Stats { mean, stdev, max: h.max() as f64, within: percent(within, h.len()) }
}

fn sample_stats(samples: &[f64]) -> Stats {
    if samples.is_empty() {
        return Stats { mean: 0.0, stdev: 0.0, max: 0.0, within: 0.0 };
    }
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let stdev = if samples.len() > 1 {
        (samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let within = samples.iter().filter(|s| (*s - mean).abs() <= stdev).count() as u64;
    Stats {
        mean,
        stdev,
        max: samples.iter().copied().fold(0.0, f64::max),
        within: percent(within, samples.len() as u64),
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 }
}

/// Requests per thread per whole second of the run.
fn req_per_sec_samples(result: &RunResult) -> Vec<f64> {
    let whole_seconds = result.total.elapsed.as_secs() as usize;
    result.thread_seconds.iter().flat_map(|seconds| seconds.iter().take(whole_seconds).map(|&c| c as f64)).collect()
}

fn distribution(out: &mut String, title: &str, h: &Histogram<u64>) {
    let _ = writeln!(out, "  {title}");
    for p in PERCENTILES {
        let _ = writeln!(out, "{:>7.3}%  {:>8}", p, format_time_us(h.value_at_percentile(p) as f64));
    }
}

fn spectrum(out: &mut String, h: &Histogram<u64>) {
    let _ = writeln!(out, "\n  Detailed Percentile spectrum:");
    let _ = writeln!(out, "       Value   Percentile   TotalCount 1/(1-Percentile)\n");
    for step in h.iter_quantiles(1) {
        let quantile = step.quantile_iterated_to();
        let inverse =
            if quantile < 1.0 { format!("{:>10.2}", 1.0 / (1.0 - quantile)) } else { format!("{:>10}", "inf") };
        let _ = writeln!(
            out,
            "{:>12.3}  {:>12.6}  {:>10}  {inverse}",
            step.value_iterated_to() as f64 / 1000.0,
            quantile,
            step.count_since_last_iteration()
        );
    }
    let _ = writeln!(out, "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]", h.mean() / 1000.0, h.stdev() / 1000.0);
    let _ = writeln!(out, "#[Max     = {:>12.3}, Total count    = {:>12}]", h.max() as f64 / 1000.0, h.len());
    let _ = writeln!(out, "----------------------------------------------------------");
}

/// The wrk2-style report.
pub fn text(url: &str, plan: &LoadPlan, result: &RunResult, latency: bool) -> String {
    let m = &result.total;
    let mut out = String::new();
    let _ = writeln!(out, "Running {} test @ {url}", format_duration(plan.duration));
    let _ =
        writeln!(out, "  {} threads and {} connections", plan.threads.min(plan.connections.max(1)), plan.connections);
    let lat = histogram_stats(&m.latency);
    let rps = sample_stats(&req_per_sec_samples(result));
    let _ = writeln!(out, "  Thread Stats   Avg      Stdev     Max   +/- Stdev");
    let _ = writeln!(
        out,
        "    Latency {:>9} {:>9} {:>9} {:>8.2}%",
        format_time_us(lat.mean),
        format_time_us(lat.stdev),
        format_time_us(lat.max),
        lat.within
    );
    let _ = writeln!(
        out,
        "    Req/Sec {:>9} {:>9} {:>9} {:>8.2}%",
        format_metric(rps.mean),
        format_metric(rps.stdev),
        format_metric(rps.max),
        rps.within
    );
    if latency {
        distribution(&mut out, "Latency Distribution (HdrHistogram - Recorded Latency)", &m.latency);
        spectrum(&mut out, &m.latency);
        if plan.rate.is_some() {
            distribution(
                &mut out,
                "Uncorrected Latency (measured without taking delayed starts into account)",
                &m.uncorrected,
            );
        }
    }
    let seconds = m.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let _ = writeln!(out, "  {} requests in {:.2}s, {} read", m.requests, seconds, format_bytes(m.bytes as f64));
    let e = m.errors;
    if e != SocketErrors::default() {
        let _ = writeln!(
            out,
            "  Socket errors: connect {}, read {}, write {}, timeout {}",
            e.connect, e.read, e.write, e.timeout
        );
    }
    if m.non_2xx_3xx > 0 {
        let _ = writeln!(out, "  Non-2xx or 3xx responses: {}", m.non_2xx_3xx);
    }
    let _ = writeln!(out, "Requests/sec: {:>10.2}", m.requests as f64 / seconds);
    let _ = writeln!(out, "Transfer/sec: {:>10}", format_bytes(m.bytes as f64 / seconds));
    out
}

fn format_duration(d: std::time::Duration) -> String {
    wavelink_core::duration::HumanDuration(d).to_string()
}

#[derive(Debug, Serialize)]
pub struct LatencyJson {
    pub mean_us: f64,
    pub stdev_us: f64,
    pub max_us: u64,
    /// Percentile (as text, e.g. "99.9") to microseconds.
    pub percentiles: Vec<(f64, u64)>,
    /// Every recorded value with its count: the full histogram.
    pub histogram: Vec<(u64, u64)>,
}

fn latency_json(h: &Histogram<u64>) -> LatencyJson {
    LatencyJson {
        mean_us: h.mean(),
        stdev_us: h.stdev(),
        max_us: h.max(),
        percentiles: PERCENTILES.iter().map(|&p| (p, h.value_at_percentile(p))).collect(),
        histogram: h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect(),
    }
}

/// The full result of a run, for `--json`.
#[derive(Debug, Serialize)]
pub struct LoadJson {
    pub url: String,
    pub connections: usize,
    pub threads: usize,
    pub duration_s: f64,
    pub rate: Option<f64>,
    pub elapsed_s: f64,
    pub requests: u64,
    pub bytes: u64,
    pub requests_per_sec: f64,
    pub non_2xx_3xx: u64,
    pub errors: SocketErrors,
    /// Corrected for coordinated omission when a rate was given.
    pub latency: LatencyJson,
    pub uncorrected_latency: LatencyJson,
    pub requests_per_thread_second: Vec<Vec<u64>>,
}

pub fn json(url: &str, plan: &LoadPlan, result: &RunResult) -> LoadJson {
    let m: &Measurements = &result.total;
    let elapsed = m.elapsed.as_secs_f64();
    LoadJson {
        url: url.to_owned(),
        connections: plan.connections,
        threads: plan.threads,
        duration_s: plan.duration.as_secs_f64(),
        rate: plan.rate,
        elapsed_s: elapsed,
        requests: m.requests,
        bytes: m.bytes,
        requests_per_sec: if elapsed > 0.0 { m.requests as f64 / elapsed } else { 0.0 },
        non_2xx_3xx: m.non_2xx_3xx,
        errors: m.errors,
        latency: latency_json(&m.latency),
        uncorrected_latency: latency_json(&m.uncorrected),
        requests_per_thread_second: result.thread_seconds.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_like_wrk() {
        assert_eq!(format_time_us(812.0), "812.00us");
        assert_eq!(format_time_us(1234.0), "1.23ms");
        assert_eq!(format_time_us(1_020_000.0), "1.02s");
        assert_eq!(format_metric(4910.0), "4.91k");
        assert_eq!(format_metric(731.0), "731.00");
        assert_eq!(format_bytes(11.35 * 1024.0 * 1024.0), "11.35MB");
        assert_eq!(format_bytes(100.0), "100.00B");
    }

    #[test]
    fn stats_count_samples_within_one_deviation() {
        let s = sample_stats(&[10.0, 10.0, 10.0, 50.0]);
        assert_eq!(s.mean, 20.0);
        assert_eq!(s.max, 50.0);
        assert_eq!(s.within, 75.0);
        let mut h = crate::engine::new_histogram();
        for v in [100, 100, 100, 1000] {
            h.record(v).unwrap();
        }
        assert_eq!(histogram_stats(&h).within, 75.0);
    }
}
