//! The control loop with the test apiserver stopped: in a test binary of its own, because
//! stopping the shared apiserver would stall every other Kubernetes test running beside it.
//! Skipped, with a message, when no test apiserver is given (`make test` starts one).

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::{serve_hot_function, test_cluster};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{PATIENCE, get, metric, wait_within};

/// A process stopped with SIGSTOP until dropped (SIGCONT), so a failing test never leaves the
/// apiserver frozen for the tests after it.
struct Stopped(Pid);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        let pid = Pid::from_raw(pid as i32);
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP the apiserver");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[test]
fn with_the_apiserver_stopped_the_controller_writes_nothing_keeps_answering_then_resumes() {
    let Some(cluster) = test_cluster("apiserver-stopped") else { return };
    let Ok(dir) = std::env::var("WAVELINK_TESTENV_DIR") else { return };
    let apiserver: u32 = std::fs::read_to_string(format!("{dir}/apiserver.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse().ok())
        .expect("the test apiserver's pid file");
    let hot = serve_hot_function(&cluster);
    let (setup, admin) = (&hot.setup, hot.controller_admin);

    // Three clients, one request at a time each: 3 concurrent at 70% want 5 RIs.
    let stop = Arc::new(AtomicBool::new(false));
    let host = format!("hot.{}.example.com", cluster.namespace);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, host, addr) = (stop.clone(), host.clone(), setup.proxy_listen);
            std::thread::spawn(move || {
                let deadline = Instant::now() + PATIENCE * 4;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let _ = get(addr, &host, "/?sleep=200");
                }
            })
        })
        .collect();
    wait_within("the Deployment is scaled up under load", PATIENCE * 2, || cluster.replicas("hot") >= 4);
    let writes =
        || metric(admin, &format!("wavelink_controller_scale_writes_total{{function=\"{}/hot\"}}", cluster.namespace));

    // The load ends as the apiserver stops: the controller now wants fewer RIs and cannot say so.
    let paused = Stopped::stop(apiserver);
    stop.store(true, Ordering::SeqCst);
    let before = writes();
    let decisions = || {
        let text = get(admin, "admin", "/metrics").map(|r| r.text()).unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("wavelink_controller_decisions_total{") && l.contains("/hot\""))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum::<f64>()
    };
    let decided = decisions();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        // Its own listener answers at once from memory, whatever the apiserver does.
        let asked = Instant::now();
        let view = get(admin, "admin", "/v1/functions").expect("the controller answers");
        assert_eq!(view.status, 200);
        assert!(asked.elapsed() < Duration::from_secs(5), "answered in {:?}", asked.elapsed());
        assert_eq!(writes(), before, "no write completed while the apiserver was stopped");
        std::thread::sleep(Duration::from_secs(1));
    }
    // The loop went on deciding (no call to the stopped apiserver held it).
    assert!(decisions() >= decided + 5.0, "decisions stalled:\n{}", setup.log("controller-solo"));
    drop(paused);
    for client in clients {
        client.join().expect("client");
    }

    // Resumed: the idle function is scaled down to 0.
    wait_within("scaling resumes after the apiserver is back", PATIENCE * 2, || cluster.replicas("hot") == 0);
    assert!(writes() > before);
}
