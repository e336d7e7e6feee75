//! Host → function routing table, swapped atomically when the set of functions changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ahash::RandomState;
use arc_swap::ArcSwap;
use tracing::{error, info};
use wavelink_core::{FunctionDef, FunctionId, RejectedFunction};

use crate::function::FunctionState;
use crate::instance::PeerSettings;
use crate::links::Links;
use crate::metrics::ProxyMetrics;
use crate::wavelets::Wavelets;

/// One immutable snapshot of all routes.
#[derive(Default)]
struct RouteTable {
    /// Lower-case `<name>.<namespace>.<domain>`.
    by_host: HashMap<Box<str>, Arc<FunctionState>, RandomState>,
    /// Sorted by id, for listings.
    functions: Vec<Arc<FunctionState>>,
    rejected: Vec<RejectedFunction>,
}

pub struct Router {
    domain: String,
    table: ArcSwap<RouteTable>,
    metrics: Arc<ProxyMetrics>,
    peer_settings: PeerSettings,
    links: Arc<Links>,
    /// The seconds `/stats` has samples for.
    sampled: crate::stats::SampledIntervals,
}

impl Router {
    pub fn new(domain: &str, metrics: Arc<ProxyMetrics>, peer_settings: PeerSettings) -> Self {
        Router {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            table: ArcSwap::from_pointee(RouteTable::default()),
            metrics,
            peer_settings,
            links: Arc::new(Links::new(Wavelets::new(&[], peer_settings))),
            sampled: crate::stats::SampledIntervals::default(),
        }
    }

    /// Wavelets, controllers and the proxy-wide queue bound, shared by every function.
    pub fn links(&self) -> &Arc<Links> {
        &self.links
    }

    pub fn sampled(&self) -> &crate::stats::SampledIntervals {
        &self.sampled
    }

    /// Replaces the Wavelets the proxy spills to; requests in flight on removed ones finish.
    pub fn set_wavelets(&self, addrs: &[SocketAddr]) {
        let current = self.links.wavelets.load();
        if current.targets().iter().map(|t| t.addr).eq(addrs.iter().copied()) {
            return;
        }
        info!(wavelets = ?addrs, "spilling to these Wavelets");
        self.links.wavelets.store(Arc::new(Wavelets::new(addrs, self.peer_settings)));
        // Waiters may be able to spill now.
        for f in self.functions() {
            f.wake_waiters();
        }
    }

    pub fn wavelets(&self) -> Arc<Wavelets> {
        self.links.wavelets.load_full()
    }

    /// The controllers to ask for Regular Instances in `sync` mode (every replica; only the
    /// leader acts).
    pub fn set_controllers(&self, admins: &[SocketAddr]) {
        if **self.links.controllers.load() != admins {
            self.links.controllers.store(Arc::new(admins.to_vec()));
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn metrics(&self) -> &Arc<ProxyMetrics> {
        &self.metrics
    }

    /// The function serving `host` (without port). The request path: one load, one lookup.
    pub fn lookup(&self, host: &str) -> Option<Arc<FunctionState>> {
        let table = self.table.load();
        match table.by_host.get(host) {
            Some(f) => Some(f.clone()),
            // Host names are case-insensitive; lower-casing costs an allocation, so only retry.
            None if host.bytes().any(|b| b.is_ascii_uppercase()) => {
                table.by_host.get(host.to_ascii_lowercase().as_str()).cloned()
            }
            None => None,
        }
    }

    pub fn function(&self, id: &FunctionId) -> Option<Arc<FunctionState>> {
        let table = self.table.load();
        table.functions.binary_search_by(|f| f.id.cmp(id)).ok().map(|i| table.functions[i].clone())
    }

    pub fn functions(&self) -> Vec<Arc<FunctionState>> {
        self.table.load().functions.clone()
    }

    pub fn rejected(&self) -> Vec<RejectedFunction> {
        self.table.load().rejected.clone()
    }

    /// Requests being served or waiting, over all functions.
    pub fn requests_in_progress(&self) -> u64 {
        self.table.load().functions.iter().map(|f| u64::from(f.load.total.now())).sum()
    }

    /// Makes `defs` the served functions. A function that stays keeps its state (slots, queue,
    /// counters); its spec is updated, and so are its instances when the definition lists some.
    pub fn apply(&self, defs: Vec<FunctionDef>, rejected: Vec<RejectedFunction>) {
        self.apply_defs(defs, rejected, false);
    }

    /// Like [`Self::apply`], for a source that knows every function's instances (a cluster's
    /// ready endpoints): an empty list means the function has no RIs now.
    pub fn sync(&self, defs: Vec<FunctionDef>, rejected: Vec<RejectedFunction>) {
        self.apply_defs(defs, rejected, true);
    }

    fn apply_defs(&self, defs: Vec<FunctionDef>, rejected: Vec<RejectedFunction>, replace_instances: bool) {
        let old = self.table.load_full();
        let mut functions = Vec::with_capacity(defs.len());
        for def in defs {
            let existing = old.functions.iter().find(|f| f.id == def.id).cloned();
            let state = match existing {
                Some(state) => {
                    if *state.spec() != def.spec {
                        state.set_spec(def.spec);
                    }
                    if replace_instances || !def.instances.is_empty() {
                        state.set_instances(&def.instances);
                    }
                    state
                }
                None => {
                    info!(function = %def.id, instances = def.instances.len(), "serving function");
                    let metrics = self.metrics.for_function(&def.id.to_string());
                    FunctionState::new(
                        def.id,
                        def.spec,
                        &def.instances,
                        metrics,
                        self.peer_settings,
                        self.links.clone(),
                    )
                }
            };
            functions.push(state);
        }
        functions.sort_by(|a, b| a.id.cmp(&b.id));
        for gone in old.functions.iter().filter(|f| !functions.iter().any(|n| n.id == f.id)) {
            info!(function = %gone.id, "no longer serving function");
            self.metrics.forget_function(&gone.label);
        }
        for r in rejected.iter().filter(|r| !old.rejected.contains(r)) {
            error!(function = %r.function, error = %r.error, "function rejected");
        }
        self.metrics.functions_rejected.set(rejected.len() as i64);
        let by_host = functions.iter().map(|f| (f.id.host(&self.domain).into_boxed_str(), f.clone())).collect();
        self.table.store(Arc::new(RouteTable { by_host, functions, rejected }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wavelink_core::FunctionSpec;
    use wavelink_core::spec::keys;

    fn def(name: &str, cc: &str) -> FunctionDef {
        FunctionDef {
            id: FunctionId::new("default", name).unwrap(),
            spec: FunctionSpec::from_annotations([(keys::CONTAINER_CONCURRENCY, cc)]).unwrap(),
            command: vec![],
            env: vec![],
            container: None,
            instances: vec!["127.0.0.1:1".parse().unwrap()],
            socket_activation: true,
        }
    }

    fn router() -> Router {
        let settings = PeerSettings::default();
        Router::new("Example.com.", Arc::new(ProxyMetrics::new().unwrap()), settings)
    }

    #[test]
    fn hosts_resolve_case_insensitively() {
        let router = router();
        router.apply(vec![def("hello", "1")], vec![]);
        assert!(router.lookup("hello.default.example.com").is_some());
        assert!(router.lookup("HELLO.Default.example.COM").is_some());
        assert!(router.lookup("hello.other.example.com").is_none());
        assert!(router.lookup("hello.default.example.org").is_none());
    }

    #[test]
    fn reapplying_keeps_the_state_of_functions_that_stay() {
        let router = router();
        router.apply(vec![def("a", "1"), def("b", "1")], vec![]);
        let a = router.lookup("a.default.example.com").unwrap();
        let slot = a.try_acquire().unwrap();
        router.apply(vec![def("a", "4")], vec![]);
        let a_again = router.lookup("a.default.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &a_again));
        assert_eq!(a_again.spec().container_concurrency, 4);
        assert_eq!(a_again.load.regular.now(), 1);
        assert!(router.lookup("b.default.example.com").is_none());
        router.apply(vec![FunctionDef { instances: vec![], ..def("a", "4") }], vec![]);
        assert_eq!(a_again.routing().regular.len(), 1, "apply keeps instances a definition does not list");
        router.sync(vec![FunctionDef { instances: vec![], ..def("a", "4") }], vec![]);
        assert!(a_again.routing().regular.is_empty(), "sync takes the list as complete");
        drop(slot);
        assert_eq!(router.requests_in_progress(), 0);
    }

    #[test]
    fn functions_are_listed_in_id_order_and_found_by_id() {
        let router = router();
        router.apply(vec![def("zeta", "1"), def("alpha", "1")], vec![]);
        let names: Vec<_> = router.functions().iter().map(|f| f.id.name.clone()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        assert!(router.function(&FunctionId::new("default", "zeta").unwrap()).is_some());
        assert!(router.function(&FunctionId::new("default", "beta").unwrap()).is_none());
    }
}
