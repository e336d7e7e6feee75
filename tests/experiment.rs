//! The headline experiment's smoke test: a short `wavelink experiment` runs every scaling mode
//! through a fresh local stack and each completes with no failed invocation. Speed is not
//! checked here (benchmarks measure it; docs/benchmarks.md has a full run).

mod support;

use std::process::Stdio;

use support::{TempDir, run_as_args, wavelink};

#[test]
fn a_short_experiment_runs_every_mode_to_completion_without_errors() {
    let dir = TempDir::new("experiment");
    let out = dir.0.join("out");
    let mut command = wavelink();
    command
        .args(["experiment", "--trace-minutes", "1", "--speedup", "6", "--functions", "2", "--sporadic", "1"])
        .args(["--burst-every", "1", "--burst-size", "120", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if run_as_args().contains(&"root") {
        command.env("WAVELINK_RUN_AS", "root");
    }
    // Bounded: the run is about a minute; `experiment` bounds each stack's start and stop itself.
    let output = command.output().expect("running wavelink experiment");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json")).expect("JSON");
    let modes: Vec<&str> = results.as_array().expect("a list").iter().filter_map(|r| r["mode"].as_str()).collect();
    assert_eq!(modes, ["dual", "async", "sync", "fast-only"]);
    for r in results.as_array().unwrap() {
        let report = &r["report"];
        assert!(report["invocations"].as_u64() > Some(0), "{r}");
        assert_eq!(report["failed"], 0, "invocations failed in {}: see {}", r["mode"], out.display());
    }
    // In fast-only every invocation is on an EI; in async none is.
    assert_eq!(results[3]["report"]["emergency"], results[3]["report"]["succeeded"]);
    assert_eq!(results[1]["report"]["emergency"], 0);
    let table = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(table.contains("RI start delay (modelled pod start): 1500 ms"), "{table}");
    assert!(out.join("plots/slowdown_cdf.svg").exists());
    for mode in modes {
        assert!(out.join(mode).join("records.csv").exists());
    }
}

#[test]
fn with_the_containerd_runtime_every_instance_of_the_experiment_is_a_container() {
    if let Some(why) = wavelink_wavelet::containerd::private::unavailable() {
        eprintln!("SKIPPED experiment --runtime containerd: {why}");
        return;
    }
    let dir = TempDir::new("experiment-containerd");
    let out = dir.0.join("out");
    let output = wavelink()
        .args(["experiment", "--runtime", "containerd", "--modes", "dual,fast-only", "--trace-minutes", "1"])
        .args(["--speedup", "6", "--functions", "2", "--sporadic", "1", "--burst-every", "1", "--burst-size", "60"])
        .args(["--ri-start-delay", "500ms", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("running wavelink experiment");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("instances are containers of localhost/wavelink-fn"), "{stdout}");

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json")).expect("JSON");
    let results = results.as_array().expect("a list");
    for r in results {
        assert_eq!(r["report"]["failed"], 0, "invocations failed in {}: see {}", r["mode"], out.display());
        assert!(r["emergency_starts"].as_f64() > Some(0.0), "{r}");
        // Containers are not the experiment's children: their CPU is read from their cgroups.
        assert!(r["cpu"]["instances"].as_f64() > Some(0.0), "{r}");
    }
    assert!(results[0]["regular_starts"].as_f64() > Some(0.0), "dual started RIs: {}", results[0]);
    // No instance failed to start (the stacks' warnings reach the experiment's stderr).
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("Instance failed"), "{stderr}");
    let table = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(table.contains("runtime: containerd"), "{table}");
}
