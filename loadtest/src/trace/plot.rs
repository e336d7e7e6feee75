//! Plots of a replay as SVG files (plotters' SVG backend: no fonts or native libraries needed).
//!
//! - `latency_cdf.svg`: end-to-end latency CDF, log scale;
//! - `slowdown_cdf.svg`: per-invocation slowdown CDF, log scale;
//! - `timeline.svg`: completed invocations per second, split by track.

use std::path::Path;

use plotters::prelude::*;
use wavelink_core::spec::Track;
use wavelink_core::trace::report::Record;

/// A named series of values to draw as a CDF.
pub struct Cdf<'a> {
    pub label: &'a str,
    pub values: Vec<f64>,
}

fn cdf_points(values: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite() && *v > 0.0).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    // At most ~2000 points per curve keep files small without visible loss.
    let step = (sorted.len() / 2000).max(1);
    let mut points: Vec<(f64, f64)> =
        sorted.iter().enumerate().step_by(step).map(|(i, v)| (*v, (i + 1) as f64 / n)).collect();
    if let Some(last) = sorted.last() {
        points.push((*last, 1.0));
    }
    points
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One CDF chart with a curve per series, x on a log scale.
pub fn draw_cdfs(path: &Path, title: &str, x_label: &str, series: &[Cdf<'_>]) -> Result<(), String> {
    let curves: Vec<Vec<(f64, f64)>> = series.iter().map(|s| cdf_points(&s.values)).collect();
    let all = curves.iter().flatten().map(|(x, _)| *x);
    let (min, max) = all.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (min, max) = if min <= max { (min * 0.9, max * 1.1) } else { (0.1, 10.0) };
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let error = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((min..max).log_scale(), 0f64..1.0f64)
        .map_err(|e| error(&e))?;
    chart.configure_mesh().x_desc(x_label).y_desc("fraction of invocations").draw().map_err(|e| error(&e))?;
    for (i, (curve, s)) in curves.into_iter().zip(series).enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(curve, color.stroke_width(2)))
            .map_err(|e| error(&e))?
            .label(s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))
}

/// Completions per second of the replay, regular and emergency, by intended send second.
pub fn draw_timeline(path: &Path, records: &[Record]) -> Result<(), String> {
    let seconds = records.iter().map(|r| (r.intended_us / 1_000_000) as usize + 1).max().unwrap_or(1);
    let mut regular = vec![0u32; seconds];
    let mut emergency = vec![0u32; seconds];
    let mut failed = vec![0u32; seconds];
    for r in records {
        let second = (r.intended_us / 1_000_000) as usize;
        match (r.succeeded(), r.track) {
            (true, Some(Track::Emergency)) => emergency[second] += 1,
            (true, _) => regular[second] += 1,
            (false, _) => failed[second] += 1,
        }
    }
    // Stacked areas: regular at the bottom, emergency on top, failures on top of both.
    let stacks = [
        ("regular", COLORS[0], (0..seconds).map(|s| regular[s]).collect::<Vec<_>>()),
        ("emergency", COLORS[1], (0..seconds).map(|s| regular[s] + emergency[s]).collect()),
        ("failed", COLORS[3], (0..seconds).map(|s| regular[s] + emergency[s] + failed[s]).collect()),
    ];
    draw_stacked(path, "Invocations per second by track", ("second of the replay", "invocations"), &stacks)
}

/// Instances alive at the end of each minute, Regular under Emergency (a simulation's timeline).
pub fn draw_instances(path: &Path, title: &str, minutes: &[(u32, u32)]) -> Result<(), String> {
    let stacks = [
        ("regular", COLORS[0], minutes.iter().map(|(r, _)| *r).collect::<Vec<_>>()),
        ("emergency", COLORS[1], minutes.iter().map(|(r, e)| r + e).collect()),
    ];
    draw_stacked(path, title, ("minute", "instances alive"), &stacks)
}

/// Stacked areas over a count of steps: each series already includes the ones below it.
fn draw_stacked(
    path: &Path,
    title: &str,
    axes: (&str, &str),
    stacks: &[(&str, RGBColor, Vec<u32>)],
) -> Result<(), String> {
    let steps = stacks.iter().map(|(_, _, h)| h.len()).max().unwrap_or(0).max(1);
    let peak = stacks.iter().flat_map(|(_, _, h)| h.iter().copied()).max().unwrap_or(1).max(1);
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    let error = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0u32..steps as u32, 0u32..peak + peak / 10 + 1)
        .map_err(|e| error(&e))?;
    chart.configure_mesh().x_desc(axes.0).y_desc(axes.1).draw().map_err(|e| error(&e))?;
    for (label, color, heights) in stacks.iter().rev() {
        let color = *color;
        chart
            .draw_series(AreaSeries::new(heights.iter().enumerate().map(|(s, h)| (s as u32, *h)), 0, color.filled()))
            .map_err(|e| error(&e))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdfs_end_at_one_and_skip_what_a_log_scale_cannot_show() {
        let points = cdf_points(&[3.0, 1.0, 0.0, 2.0, f64::NAN]);
        assert_eq!(points, [(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0), (3.0, 1.0)]);
        assert!(cdf_points(&[]).is_empty());
    }

    #[test]
    fn charts_are_written_as_svg() {
        let dir = std::env::temp_dir().join(format!("wavelink-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let values: Vec<f64> = (1..500).map(f64::from).collect();
        draw_cdfs(&dir.join("cdf.svg"), "t", "x", &[Cdf { label: "a", values: values.clone() }]).unwrap();
        let records: Vec<Record> = (0..100)
            .map(|i| Record {
                intended_us: i * 50_000,
                function: 0,
                requested_ms: 10,
                exec_us: None,
                e2e_us: 12_000,
                status: Some(if i % 10 == 0 { 503 } else { 200 }),
                track: Some(if i % 3 == 0 { Track::Emergency } else { Track::Regular }),
            })
            .collect();
        draw_timeline(&dir.join("timeline.svg"), &records).unwrap();
        for file in ["cdf.svg", "timeline.svg"] {
            let svg = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{file}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
