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

/// Functions added or removed at once that are logged one by one; beyond, one summary line.
const LOGGED_CHANGES: usize = 20;

/// One immutable snapshot of all routes.
#[derive(Default)]
pub struct RouteTable {
    /// Lower-case `<name>.<namespace>.<domain>`.
    by_host: HashMap<Arc<str>, Arc<FunctionState>, RandomState>,
    /// Sorted by id, for listings.
    pub functions: Vec<Arc<FunctionState>>,
    rejected: Vec<RejectedFunction>,
}

pub struct Router {
    domain: String,
    table: ArcSwap<RouteTable>,
    metrics: Arc<ProxyMetrics>,
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
            links: Arc::new(Links::new(Wavelets::new(&[], peer_settings), peer_settings)),
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
        self.links.wavelets.store(Arc::new(Wavelets::new(addrs, self.links.peer_settings)));
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

    /// The current snapshot, to go through every function without copying the list.
    pub fn table(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.table.load()
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
        let mut added = 0usize;
        for def in defs {
            // Shared already by whoever parsed it (the config, the cluster watch).
            let spec = Arc::clone(&def.spec);
            // The table is sorted by id: finding each function is a binary search, so a sync of
            // every function costs n log n, not n².
            let existing = old.functions.binary_search_by(|f| f.id.cmp(&def.id)).ok().map(|i| old.functions[i].clone());
            let state = match existing {
                Some(state) => {
                    if *state.spec() != *spec {
                        state.set_spec(spec);
                    }
                    if (replace_instances || !def.instances.is_empty()) && !state.has_instances(&def.instances) {
                        state.set_instances(&def.instances);
                    }
                    state
                }
                None => {
                    added += 1;
                    // One line per function for a handful; thousands get the summary below.
                    if added <= LOGGED_CHANGES {
                        info!(function = %def.id, instances = def.instances.len(), "serving function");
                    }
                    let host = Arc::from(def.id.host(&self.domain));
                    FunctionState::new(def.id, host, spec, &def.instances, self.metrics.clone(), self.links.clone())
                }
            };
            functions.push(state);
        }
        functions.sort_by(|a, b| a.id.cmp(&b.id));
        functions.dedup_by(|a, b| a.id == b.id);
        // The same functions (a cluster event that changed some instances or specs, applied in
        // place above): the table stands as it is, with no host map rebuilt.
        let same_functions = functions.len() == old.functions.len()
            && functions.iter().zip(old.functions.iter()).all(|(new, old)| Arc::ptr_eq(new, old));
        if same_functions && rejected == old.rejected {
            return;
        }
        let kept = |id: &FunctionId| functions.binary_search_by(|f| f.id.cmp(id)).is_ok();
        let mut removed = 0usize;
        for gone in old.functions.iter().filter(|f| !kept(&f.id)) {
            removed += 1;
            if removed <= LOGGED_CHANGES {
                info!(function = %gone.id, "no longer serving function");
            }
            if gone.metrics_if_used().is_some() {
                self.metrics.forget_function(&gone.label);
            }
        }
        if added > LOGGED_CHANGES || removed > LOGGED_CHANGES {
            info!(served = functions.len(), added, removed, "functions changed");
        }
        for r in rejected.iter().filter(|r| !old.rejected.contains(r)) {
            error!(function = %r.function, error = %r.error, "function rejected");
        }
        self.metrics.functions_rejected.set(rejected.len() as i64);
        let by_host = functions.iter().map(|f| (f.host.clone(), f.clone())).collect();
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
            spec: Arc::new(FunctionSpec::from_annotations([(keys::CONTAINER_CONCURRENCY, cc)]).unwrap()),
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

    #[test]
    fn an_active_function_loses_nothing_when_thousands_of_others_come_and_go() {
        let router = router();
        let many = |range: std::ops::Range<u32>| -> Vec<FunctionDef> {
            range.map(|i| def(&format!("f{i:05}"), "1")).collect()
        };
        router.sync(many(0..2000), vec![]);
        let active = router.lookup("f01000.default.example.com").unwrap();
        let slot = active.try_acquire().unwrap();
        let _used = active.metrics();
        // Half the others leave, as many new ones come; the active one stays.
        router.sync(many(1000..3000), vec![]);
        let again = router.lookup("f01000.default.example.com").unwrap();
        assert!(Arc::ptr_eq(&active, &again), "same state: slots, queue, counters, samples");
        assert_eq!(again.load.regular.now(), 1);
        assert!(again.metrics_if_used().is_some());
        assert!(router.lookup("f00999.default.example.com").is_none());
        assert!(router.lookup("f02999.default.example.com").is_some());
        assert_eq!(router.functions().len(), 2000);
        drop(slot);
        assert_eq!(router.requests_in_progress(), 0);
    }

    #[test]
    fn a_changed_spec_is_applied_and_an_unchanged_one_kept() {
        let router = router();
        router.sync(vec![def("a", "1"), def("b", "1")], vec![]);
        let spec = |name: &str| router.lookup(&format!("{name}.default.example.com")).unwrap().spec();
        let before = spec("a");
        router.sync(vec![def("a", "1"), def("b", "3")], vec![]);
        assert!(Arc::ptr_eq(&before, &spec("a")), "an equal spec is not replaced");
        assert_eq!(spec("b").container_concurrency, 3);
    }

    #[test]
    fn a_duplicate_definition_is_served_once() {
        let router = router();
        router.sync(vec![def("a", "1"), def("a", "2")], vec![]);
        assert_eq!(router.functions().len(), 1);
    }
}
