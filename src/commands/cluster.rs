//! The Kubernetes side of proxy, Wavelet and controller: one small tokio runtime of its own that
//! keeps the watches (and the kube client's connections) alive, whatever runtimes Pingora runs.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tracing::info;
use wavelink_core::KubernetesConfig;
use wavelink_kubernetes::{ClusterView, NamespacedName};

/// Longest wait for the first list of Deployments and EndpointSlices.
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the Kubernetes thread returns freed memory to the system.
const RELEASE_INTERVAL: Duration = Duration::from_secs(30);

pub struct Cluster {
    pub runtime: tokio::runtime::Runtime,
    pub client: kube::Client,
    pub view: ClusterView,
}

impl Cluster {
    /// Connects (KUBECONFIG, ~/.kube/config, or the in-cluster service account) and waits for the
    /// initial lists, so nothing is served from an empty view.
    pub fn connect(settings: &KubernetesConfig) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kubernetes")
            .enable_all()
            .build()
            .context("starting the Kubernetes runtime")?;
        let client = runtime
            .block_on(wavelink_kubernetes::connect())
            .context("connecting to Kubernetes (KUBECONFIG, ~/.kube/config or the in-cluster service account)")?;
        let view = runtime.block_on(async {
            let (view, drive) = ClusterView::start(client.clone(), settings.namespace.as_deref());
            tokio::spawn(drive);
            tokio::time::timeout(FIRST_LIST_TIMEOUT, view.ready()).await.map(|()| view)
        });
        let view = view.map_err(|_| {
            anyhow!("the Kubernetes API did not answer the first list of Deployments and EndpointSlices within {FIRST_LIST_TIMEOUT:?}")
        })?;
        let scope = settings.namespace.as_deref().unwrap_or("all namespaces");
        info!(scope, functions = view.catalog().functions.len(), "watching the cluster");
        // Lists arrive as pages of whole objects, parsed on this runtime's one worker and dropped
        // once projected: hand what they used back now and then, or the allocator keeps the
        // high-water mark of the last (re)list (tens of megabytes with 10,000 functions).
        runtime.spawn(async {
            // The first list was the end of set-up (`allocator::begin_setup`).
            crate::allocator::end_setup();
            loop {
                tokio::time::sleep(RELEASE_INTERVAL).await;
                crate::allocator::release_unused();
            }
        });
        Ok(Cluster { runtime, client, view })
    }

    /// Calls `on_change` now and after every change of the watched objects.
    pub fn follow(&self, mut on_change: impl FnMut(&ClusterView) + Send + 'static) {
        let mut view = self.view.clone();
        on_change(&view);
        self.runtime.spawn(async move {
            while view.changed().await {
                on_change(&view);
            }
        });
    }
}

/// Parses an optional `namespace/name` setting.
pub fn namespaced_name(setting: &'static str, value: Option<&String>) -> anyhow::Result<Option<NamespacedName>> {
    value.map(|v| NamespacedName::from_str(v).map_err(|e| anyhow!("kubernetes.{setting}: {e}"))).transpose()
}
