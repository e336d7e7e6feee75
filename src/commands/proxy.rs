//! `wavelink proxy`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use wavelink_core::{KubernetesConfig, LocalConfig};
use wavelink_proxy::Proxy;

use super::cluster::{Cluster, namespaced_name};
use super::{TokenArgs, load_config, parse_duration};

/// The Wavelets' request port when their Service names no port `wavelet`.
const DEFAULT_WAVELET_PORT: u16 = 8091;
/// The controllers' admin port when their Service names no port `admin`.
const DEFAULT_CONTROLLER_PORT: u16 = 9092;

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The local config file (see wavelink.yaml in the repository).
    #[arg(long, short = 'c', env = "WAVELINK_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Client listener; overrides proxy.listen.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin listener; overrides proxy.admin.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Worker threads; overrides proxy.threads.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Longest drain on SIGTERM; overrides proxy.grace-period.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    grace_period: Option<Duration>,
    /// Validate the config, print what would be served, and exit (non-zero if any function is
    /// rejected).
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    token: TokenArgs,
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    crate::allocator::begin_setup();
    let mut config = load_config(&args.config)?;
    if let Some(listen) = args.listen {
        config.proxy.listen = listen;
    }
    if let Some(admin) = args.admin {
        config.proxy.admin = admin;
    }
    if let Some(threads) = args.threads {
        config.proxy.threads = usize::from(threads);
    }
    if let Some(grace) = args.grace_period {
        config.proxy.grace_period = grace;
    }
    if args.check {
        return check_config(&config);
    }
    let proxy = Proxy::from_config(&config).context("setting up the proxy")?;
    proxy.set_internal_auth(args.token.auth(&config, "proxy")?);
    // The routing table has what it needs: the parsed config (thousands of functions, perhaps)
    // is not kept for the proxy's lifetime.
    let kubernetes = config.kubernetes.take();
    drop(config);
    if kubernetes.is_none() {
        crate::allocator::end_setup();
    } else {
        // On a cluster the first list is set-up too: it ends once that is in (`Cluster`).
        crate::allocator::release_unused();
    }
    // Kept alive while the proxy runs: it feeds the routing table.
    let _cluster = match &kubernetes {
        Some(settings) => Some(follow_cluster(&proxy, settings)?),
        None => None,
    };
    let shutdown = proxy.signal_shutdown();
    proxy.run(shutdown, true);
    Ok(())
}

/// Serves the cluster's function Deployments, routing to their Services' ready endpoints, and
/// spills to the Wavelet Service's endpoints.
fn follow_cluster(proxy: &Proxy, settings: &KubernetesConfig) -> anyhow::Result<Cluster> {
    let wavelet_service = namespaced_name("wavelet-service", settings.wavelet_service.as_ref())?;
    let controller_service = namespaced_name("controller-service", settings.controller_service.as_ref())?;
    let cluster = Cluster::connect(settings)?;
    let router = proxy.router().clone();
    cluster.follow(move |view| {
        let catalog = view.catalog();
        let slices = view.slices();
        router.sync(catalog.with_endpoints(slices.iter().map(|s| s.as_ref())), catalog.rejected_functions());
        if let Some(service) = &wavelet_service {
            router.set_wavelets(&view.service_endpoints(service, "wavelet", DEFAULT_WAVELET_PORT));
        }
        if let Some(service) = &controller_service {
            router.set_controllers(&view.service_endpoints(service, "admin", DEFAULT_CONTROLLER_PORT));
        }
    });
    Ok(cluster)
}

fn check_config(config: &LocalConfig) -> anyhow::Result<()> {
    let (accepted, rejected) = config.functions();
    println!("proxy    listen {} admin {}", config.proxy.listen, config.proxy.admin);
    for w in &config.wavelets {
        let admin = w.admin.map_or_else(|| "-".to_owned(), |a| a.to_string());
        println!("wavelet  address {} admin {admin} max-instances {}", w.address, w.max_instances);
    }
    if let Some(k) = &config.kubernetes {
        let scope = k.namespace.as_deref().unwrap_or("all namespaces");
        println!("kubernetes functions from Deployments labelled wavelink.dev/function in {scope}");
    }
    if let Some(c) = &config.controller {
        println!("controller backend {:?} admin {} ri-start-delay {:?}", c.backend, c.admin, c.ri_start_delay);
    }
    for f in &accepted {
        println!("ok       {} at http://{}  ({} instances)", f.id, f.id.host(&config.domain), f.instances.len());
    }
    for r in &rejected {
        println!("rejected {}: {}", r.function, r.error);
    }
    if !rejected.is_empty() {
        bail!("{} of {} functions rejected", rejected.len(), accepted.len() + rejected.len());
    }
    Ok(())
}
