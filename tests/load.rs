//! End-to-end: `wavelink load`, against servers of the tests' own and through the real proxy.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use support::*;

/// A keep-alive HTTP server that answers at once, except that its `stall_at`-th request takes
/// a second: a pause like a stop-the-world collection.
fn stalling_server(stall_at: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let served = served.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut line = String::new();
                    // Read one request head.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if served.fetch_add(1, SeqCst) + 1 == stall_at {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    if writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn load(args: &[&str]) -> std::process::Output {
    wavelink().arg("load").args(args).output().expect("run wavelink load")
}

fn percentile(json: &serde_json::Value, which: &str, p: f64) -> f64 {
    json[which]["percentiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0].as_f64() == Some(p))
        .and_then(|pair| pair[1].as_f64())
        .unwrap_or_else(|| panic!("no p{p} in {which}"))
}

#[test]
fn a_one_second_stall_shows_in_the_corrected_p99_and_not_in_the_uncorrected_one() {
    let addr = stalling_server(50);
    let dir = TempDir::new("stall");
    let json_path = dir.0.join("result.json");
    let url = format!("http://{addr}/");
    let output = load(&[
        &url,
        "-c",
        "1",
        "-t",
        "1",
        "-d",
        "4s",
        "-R",
        "100",
        "--latency",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("Latency Distribution (HdrHistogram - Recorded Latency)"), "{text}");
    assert!(text.contains("Uncorrected Latency"), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let corrected = percentile(&json, "latency", 99.0);
    let uncorrected = percentile(&json, "uncorrected_latency", 99.0);
    // About 100 requests were due during the stall: the corrected tail spans it, the
    // uncorrected one sees one slow request out of ~400.
    assert!(corrected >= 500_000.0, "corrected p99 {corrected} us should show the 1 s stall");
    assert!(uncorrected < 200_000.0, "uncorrected p99 {uncorrected} us should not");
    assert!(json["requests"].as_u64().unwrap() > 300);
}

#[test]
fn closed_loop_output_reads_like_wrk() {
    let f = start_fn("load-target");
    let url = format!("http://{}/", f.addr);
    let output = load(&[&url, "-c", "4", "-t", "2", "-d", "1s"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "Running 1s test @ ",
        "2 threads and 4 connections",
        "Thread Stats   Avg      Stdev     Max   +/- Stdev",
        "Requests/sec:",
        "Transfer/sec:",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(!text.contains("Socket errors"), "{text}");
}

#[test]
fn bad_flags_unreachable_targets_and_malformed_traces_give_one_clear_line() {
    let port = free_port();
    let unreachable = load(&[&format!("http://127.0.0.1:{port}/"), "-d", "1s"]);
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect to 127.0.0.1"), "{stderr}");

    for (args, expected) in [
        (vec!["http://127.0.0.1:1/", "-c", "0"], "--connections"),
        (vec!["http://127.0.0.1:1/", "-R", "fast"], "rate"),
        (vec!["https://127.0.0.1:1/"], "only http://"),
        (vec!["http://127.0.0.1:1/", "-H", "no colon"], "header"),
    ] {
        let output = load(&args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.lines().next().is_some_and(|l| l.contains(expected)), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    let dir = TempDir::new("bad-trace");
    std::fs::write(dir.0.join("invocations.csv"), "HashOwner,HashApp,HashFunction,Trigger,1\no,a,f,http,many\n")
        .unwrap();
    std::fs::write(dir.0.join("durations.csv"), DURATIONS).unwrap();
    let output = wavelink().args(["load", "trace"]).arg(&dir.0).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("invocations.csv line 2") && stderr.contains("\"many\""), "{stderr}");
    let missing = wavelink().args(["load", "trace"]).arg(dir.0.join("nope")).output().unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && stderr.contains("invocations.csv"), "{stderr}");
}

const DURATIONS: &str = "HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,percentile_Average_1,percentile_Average_25,percentile_Average_50,percentile_Average_75,percentile_Average_99,percentile_Average_100
o,a,aaaa00000001,20,10,5,40,5,6,10,20,25,35,40
o,a,bbbb00000002,10,10,5,20,5,5,8,10,12,18,20
";

#[test]
fn a_trace_replays_through_the_proxy_with_a_record_a_report_and_plots() {
    let a = start_fn("ri-a");
    let b = start_fn("ri-b");
    let functions = format!(
        "  - name: fn-aaaa00000001\n    annotations: {{ wavelink.dev/container-concurrency: \"4\" }}\n    instances: [\"{}\"]\n  - name: fn-bbbb00000002\n    annotations: {{ wavelink.dev/container-concurrency: \"4\" }}\n    instances: [\"{}\"]\n",
        a.addr, b.addr
    );
    let proxy = start_proxy(&functions);
    let dir = TempDir::new("trace");
    let trace = dir.0.join("trace");
    std::fs::create_dir_all(&trace).unwrap();
    std::fs::write(
        trace.join("invocations.csv"),
        "HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,aaaa00000001,http,30,10\no,a,bbbb00000002,http,5,20\n",
    )
    .unwrap();
    std::fs::write(trace.join("durations.csv"), DURATIONS).unwrap();
    let (record, report, plots) = (dir.0.join("record.csv"), dir.0.join("report.json"), dir.0.join("plots"));
    let output = wavelink()
        .args(["load", "trace"])
        .arg(&trace)
        .args(["--target", &format!("http://{}", proxy.listen), "--speedup", "30", "--record"])
        .arg(&record)
        .arg("--json")
        .arg(&report)
        .arg("--plot")
        .arg(&plots)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("Geometric mean of per-function p99 slowdown"), "{text}");

    let rows: Vec<String> = std::fs::read_to_string(&record).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(rows[0], "intended_us,function,requested_ms,exec_us,e2e_us,status,track");
    assert_eq!(rows.len() - 1, 65, "one row per invocation");
    for row in &rows[1..] {
        let fields: Vec<&str> = row.split(',').collect();
        assert!(fields[1] == "fn-aaaa00000001" || fields[1] == "fn-bbbb00000002", "{row}");
        let requested: u64 = fields[2].parse().unwrap();
        assert!((5..=40).contains(&requested), "runtime within the trace's band: {row}");
        let exec_us: u64 = fields[3].parse().unwrap();
        assert!(exec_us >= requested * 1000, "the instance ran at least as long as asked: {row}");
        assert_eq!(fields[5], "200", "{row}");
        assert_eq!(fields[6], "regular", "{row}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["invocations"], 65);
    assert_eq!(report["failed"], 0);
    assert!(report["geomean_p99_slowdown"].as_f64().unwrap() >= 1.0);
    for plot in ["latency_cdf.svg", "slowdown_cdf.svg", "timeline.svg"] {
        let svg = std::fs::read_to_string(plots.join(plot)).unwrap();
        assert!(svg.starts_with("<svg"), "{plot}");
    }
}

#[test]
fn a_synthetic_trace_is_written_in_the_azure_layout_and_reproducible() {
    let dir = TempDir::new("synthetic");
    let write = |name: &str, seed: &str| {
        let out = dir.0.join(name);
        let output = wavelink()
            .args([
                "load",
                "trace",
                "--synthetic",
                "--functions",
                "3",
                "--sporadic",
                "1",
                "--trace-minutes",
                "4",
                "--seed",
                seed,
                "--write",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        std::fs::read_to_string(out.join("invocations.csv")).unwrap()
    };
    let first = write("a", "7");
    assert_eq!(first, write("b", "7"), "same seed, same trace");
    assert_ne!(first, write("c", "8"));
    assert!(first.starts_with("HashOwner,HashApp,HashFunction,Trigger,1,2,3,4\n"), "{first}");
    assert_eq!(first.lines().count(), 4);
    for file in ["durations.csv", "memory.csv"] {
        assert!(dir.0.join("a").join(file).exists(), "{file}");
    }
}
