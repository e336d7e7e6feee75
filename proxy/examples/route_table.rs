//! How the route table's changes scale with the number of functions: one function's instance
//! change; a full sync (what a cluster event does) with one function's instances changed, and
//! one adding or removing a function; for 1, 1,000 and 10,000 functions. Run by `bench/functions_scale.py`; prints one JSON line per size.
//!
//!     cargo run --release -p wavelink-proxy --example route_table

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use wavelink_core::{FunctionDef, FunctionId, FunctionSpec};
use wavelink_proxy::instance::PeerSettings;
use wavelink_proxy::metrics::ProxyMetrics;
use wavelink_proxy::router::Router;

fn def(i: usize, instance: SocketAddr) -> FunctionDef {
    FunctionDef {
        id: FunctionId::new("bench", &format!("f{i:05}")).expect("valid id"),
        spec: std::sync::Arc::new(FunctionSpec::default()),
        command: vec![],
        env: vec![],
        container: None,
        instances: vec![instance],
        socket_activation: true,
    }
}

/// Median of `runs` timings of `work`, in milliseconds.
fn median_ms(runs: usize, mut work: impl FnMut(usize)) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|run| {
            let started = Instant::now();
            work(run);
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: SocketAddr = "127.0.0.1:9001".parse()?;
    let b: SocketAddr = "127.0.0.1:9002".parse()?;
    for n in [1usize, 1_000, 10_000] {
        let router = Router::new("example.com", Arc::new(ProxyMetrics::new()?), PeerSettings::default());
        let defs: Vec<FunctionDef> = (0..n).map(|i| def(i, a)).collect();
        router.sync(defs.clone(), vec![]);
        let target = router.functions()[n / 2].clone();
        let instance_change_ms = median_ms(21, |run| {
            target.set_instances(&[if run % 2 == 0 { b } else { a }]);
        });
        let sync_ms = median_ms(11, |run| {
            let mut changed = defs.clone();
            changed[n / 2].instances = vec![if run % 2 == 0 { b } else { a }];
            router.sync(changed, vec![]);
        });
        // A function added, then removed: the host map is rebuilt.
        let added_ms = median_ms(11, |run| {
            let mut changed = defs.clone();
            if run % 2 == 0 {
                changed.push(def(n, a));
            }
            router.sync(changed, vec![]);
        });
        // Building the list a sync is given (the catalog's work, not the table's), measured alone.
        let list_ms = median_ms(11, |_| drop(std::hint::black_box(defs.clone())));
        println!(
            r#"{{"functions": {n}, "instance_change_ms": {instance_change_ms:.4}, "sync_ms": {sync_ms:.3}, "sync_adding_ms": {added_ms:.3}, "of_which_list_ms": {list_ms:.3}}}"#
        );
    }
    Ok(())
}
