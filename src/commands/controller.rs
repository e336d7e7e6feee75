//! `wavelink controller`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wavelink_controller::backend::kubernetes::KubernetesBackend;
use wavelink_controller::backend::local::{LocalBackend, ProxyAdmins};
use wavelink_controller::metrics::ControllerMetrics;
use wavelink_controller::{Controller, ControllerServer};
use wavelink_core::config::{BackendKind, ControllerConfig};

use wavelink_kubernetes::LeaderElector;
use wavelink_wavelet::containerd::ContainerdRuntime;
use wavelink_wavelet::instance::Runtime;
use wavelink_wavelet::runtime::PortRange;
use wavelink_wavelet::server::owner_id;

use super::cluster::{Cluster, namespaced_name};
use super::{ContainerdArgs, RuntimeArgs, TokenArgs, load_config, parse_duration};

/// Instance ports of the local backend, by default.
pub const DEFAULT_PORTS: (u16, u16) = (30000, 31999);

#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// The local config file: functions, the proxy to read, and the controller: section.
    #[arg(long, short = 'c', env = "WAVELINK_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Admin listener [default: controller.admin, else 127.0.0.1:9092].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Admin address of a proxy to read /stats from and push instances to (repeatable)
    /// [default: proxy.admin of the config].
    #[arg(long = "proxy", value_name = "ADDR")]
    proxies: Vec<SocketAddr>,
    /// Local backend: how long a new RI takes to become routable [default:
    /// controller.ri-start-delay, else 1500ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    ri_start_delay: Option<Duration>,
    /// Kubernetes backend: this replica's name in the leader-election Lease [default: $POD_NAME,
    /// else <hostname>-<pid>].
    #[arg(long, env = "WAVELINK_IDENTITY", value_name = "NAME")]
    identity: Option<String>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    containerd: ContainerdArgs,
    #[command(flatten)]
    token: TokenArgs,
}

pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
    crate::allocator::begin_setup();
    let config = load_config(&args.config)?;
    let mut settings = config.controller.clone().unwrap_or_default();
    if let Some(admin) = args.admin {
        settings.admin = admin;
    }
    if let Some(delay) = args.ri_start_delay {
        settings.ri_start_delay = delay;
    }
    let proxies = if args.proxies.is_empty() { vec![config.proxy.admin] } else { args.proxies.clone() };
    let (functions, rejected) = config.functions();
    for r in &rejected {
        tracing::error!(function = %r.function, error = %r.error, "function rejected");
    }
    let metrics = Arc::new(ControllerMetrics::new().context("setting up metrics")?);
    let auth = args.token.auth(&config, "controller")?;
    let ControllerConfig { backend, admin, ri_start_delay, scrape_interval, decide_interval, poke_ceiling } = settings;
    match backend {
        BackendKind::Local => {
            let settings = args.runtime.settings("controller", admin.port(), DEFAULT_PORTS);
            let containerd = args.containerd.settings();
            // RI processes a crashed predecessor left running are adopted (those of functions
            // still configured, when RIs are still processes); the rest are removed.
            let configured: Vec<String> = functions.iter().map(|f| f.id.to_string()).collect();
            let adopting = containerd.is_none();
            let (process, state, adopted) = wavelink_wavelet::setup::prepare_adopting("ri", &settings, |survivor| {
                adopting && configured.contains(&survivor.function)
            })
            .context("setting up the local backend")?;
            drop(configured);
            let runtime = match containerd {
                None => Runtime::Process(process),
                Some(mut containerd) => {
                    // An RI becomes routable only after the modelled pod start: nothing to gain
                    // from prepared containers.
                    containerd.prepared_per_function = 0;
                    let (first, last) = settings.port_range;
                    let ports = PortRange::new(first, last).map_err(anyhow::Error::msg)?;
                    let owner = owner_id(None, &settings.state_dir);
                    let runtime = ContainerdRuntime::open("ri", Some(ports), containerd, owner, settings.memory_max)
                        .context("setting up the local backend's containerd runtime")?;
                    Runtime::Containerd(runtime)
                }
            };
            let kind = runtime.kind();
            let local = LocalBackend::new(
                Arc::new(runtime),
                state,
                ProxyAdmins { addrs: proxies.clone(), auth: auth.clone() },
                ri_start_delay,
                functions,
                adopted,
                metrics.clone(),
            );
            tracing::info!(ri_start_delay = ?ri_start_delay, proxies = ?proxies, runtime = kind,
                           "local backend: RIs are routable after the start delay");
            let controller = Arc::new(
                Controller::new(Arc::new(local.clone()), proxies, metrics, scrape_interval, decide_interval)
                    .on_mass_rest(crate::allocator::release_unused)
                    .with_poke_ceiling(poke_ceiling)
                    .with_internal_auth(auth.clone()),
            );
            // The functions are in the backend: the parsed config (thousands of functions,
            // perhaps) goes, and what parsing it used goes back to the system.
            drop(config);
            crate::allocator::end_setup();
            let server = ControllerServer::new(controller, admin, Arc::new(move || local.destroy_all()));
            let shutdown = server.signal_shutdown();
            server.run(shutdown);
            Ok(())
        }
        BackendKind::Kubernetes => {
            let k8s = config.kubernetes.clone().unwrap_or_default();
            let proxy_service = namespaced_name("proxy-service", k8s.proxy_service.as_ref())?;
            let lease = namespaced_name("lease", Some(&k8s.lease))?.context("kubernetes.lease is required")?;
            let cluster = Cluster::connect(&k8s)?;
            let identity = args.identity.clone().unwrap_or_else(default_identity);
            let leader = Arc::new(LeaderElector::new(
                cluster.client.clone(),
                &lease.namespace,
                &lease.name,
                identity.clone(),
                k8s.lease_duration,
            ));
            cluster.runtime.spawn({
                let leader = leader.clone();
                async move { leader.run().await }
            });
            tracing::info!(%identity, %lease, lease_duration = ?k8s.lease_duration, "kubernetes backend: scaling Deployments; only the lease holder writes");
            let backend =
                KubernetesBackend::new(cluster.client.clone(), cluster.view.clone(), leader.clone(), proxy_service);
            let controller = Arc::new(
                Controller::new(Arc::new(backend), proxies, metrics, scrape_interval, decide_interval)
                    .on_mass_rest(crate::allocator::release_unused)
                    .with_poke_ceiling(poke_ceiling)
                    .with_internal_auth(auth.clone()),
            );
            let handle = cluster.runtime.handle().clone();
            // On SIGTERM, hand the lease over at once rather than after it expires.
            let release = Arc::new(move || {
                let (leader, handle) = (leader.clone(), handle.clone());
                let _ = std::thread::spawn(move || {
                    handle.block_on(async { tokio::time::timeout(RELEASE_TIMEOUT, leader.release()).await })
                })
                .join();
            });
            let server = ControllerServer::new(controller, admin, release);
            let shutdown = server.signal_shutdown();
            server.run(shutdown);
            drop(cluster);
            Ok(())
        }
    }
}

/// Longest wait for handing the lease over on shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// This replica's name in the Lease: the pod name where Kubernetes provides it, else host and PID.
fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        if !pod.is_empty() {
            return pod;
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
