//! `wavelink wavelet`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use std::sync::Arc;

use wavelink_kubernetes::events::{REASON_IMAGE, WarningEvents};
use wavelink_wavelet::pool::Pools;

use super::cluster::Cluster;
use super::{ContainerdArgs, RuntimeArgs, TokenArgs, load_config, parse_duration};

/// Instance ports of a Wavelet, by default.
pub const DEFAULT_PORTS: (u16, u16) = (20000, 29999);

#[derive(Debug, clap::Args)]
pub struct WaveletArgs {
    /// The local config file: functions (command, annotations) and the wavelets: list.
    #[arg(long, short = 'c', env = "WAVELINK_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Which entry of wavelets: this is (its address, admin and max-instances are the defaults).
    #[arg(long, default_value_t = 0, value_name = "N")]
    index: usize,
    /// Listener for the proxy's requests [default: the entry's address, else 127.0.0.1:8091].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin listener [default: the entry's admin, else 127.0.0.1:9091].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Most Emergency Instances alive at once on this node [default: the entry's, else 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_instances: Option<u32>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// How long an instance started without socket activation may take to listen on $PORT.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    spawn_timeout: Duration,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// Longest drain on SIGTERM before instances are destroyed anyway.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    grace_period: Duration,
    #[command(flatten)]
    containerd: ContainerdArgs,
    #[command(flatten)]
    token: TokenArgs,
    /// This node's name (on Kubernetes, from the downward API): it identifies the containers this
    /// Wavelet owns, so a replaced Wavelet pod removes what its predecessor left [default: the
    /// host name].
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
}

pub fn run(args: WaveletArgs) -> anyhow::Result<()> {
    crate::allocator::begin_setup();
    let config = load_config(&args.config)?;
    let entry = config.wavelets.get(args.index);
    if entry.is_none() && args.index > 0 {
        bail!("--index {}: the config lists {} wavelets", args.index, config.wavelets.len());
    }
    let default = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let listen = args.listen.or(entry.map(|w| w.address)).unwrap_or(default(8091));
    let admin = args.admin.or(entry.and_then(|w| w.admin)).unwrap_or(default(9091));
    let settings = wavelink_wavelet::WaveletSettings {
        listen,
        admin,
        threads: usize::from(args.threads),
        grace_period: args.grace_period,
        max_instances: args.max_instances.or(entry.map(|w| w.max_instances)).unwrap_or(256),
        runtime: args.runtime.settings("wavelet", listen.port(), DEFAULT_PORTS),
        spawn_timeout: args.spawn_timeout,
        containerd: args.containerd.settings(),
        node_name: args.node_name.clone(),
        auth: args.token.auth(&config, "wavelet")?,
    };
    let wavelet = wavelink_wavelet::Wavelet::new(settings).context("setting up the wavelet")?;
    let node = args.node_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "this node".into())
    });
    // Kept alive while the Wavelet runs: it feeds the function table.
    let _cluster = match &config.kubernetes {
        Some(settings) => {
            let cluster = Cluster::connect(settings)?;
            let pools = wavelet.pools().clone();
            cluster.follow(move |view| {
                pools.apply(view.catalog().functions.iter().map(|f| f.def.clone()).collect());
                warn_unreachable(&pools);
            });
            let reporter = report_image_failures(&cluster, wavelet.pools().clone(), node);
            cluster.runtime.spawn(reporter);
            Some(cluster)
        }
        None => {
            let (functions, rejected) = config.functions();
            for r in &rejected {
                tracing::error!(function = %r.function, error = %r.error, "function rejected");
            }
            wavelet.pools().apply(functions);
            warn_unreachable(wavelet.pools());
            // What parsing thousands of functions used goes back to the system (as in the proxy).
            crate::allocator::end_setup();
            None
        }
    };
    let shutdown = wavelet.signal_shutdown();
    wavelet.run(shutdown, true);
    Ok(())
}

/// How often image problems are looked for, to report them on the functions' Deployments.
const IMAGE_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Leaves a Warning Event on the Deployment of every function whose image this node cannot use
/// (`kubectl describe deployment` shows it), once per problem.
fn report_image_failures(cluster: &Cluster, pools: Arc<Pools>, node: String) -> impl Future<Output = ()> + use<> {
    let events = WarningEvents::new(cluster.client.clone(), "wavelink-wavelet", node.clone());
    let view = cluster.view.clone();
    async move {
        let mut tick = tokio::time::interval(IMAGE_REPORT_INTERVAL);
        loop {
            tick.tick().await;
            let failures = pools.image_failures();
            if failures.is_empty() {
                continue;
            }
            let catalog = view.catalog();
            for (function, why) in failures {
                let Some(object) = catalog
                    .function(&function)
                    .and_then(|f| view.deployment_reference(&function.namespace, &f.deployment))
                else {
                    continue;
                };
                let note = format!("node {node} cannot start Emergency Instances of {function}: {why}");
                if let Err(e) = events.report(&object, REASON_IMAGE, "StartEmergencyInstance", &note).await {
                    tracing::warn!(%function, error = %e, "could not leave an Event about the image");
                }
            }
        }
    }
}

/// Functions whose command this node cannot run get no EIs; say so once per change.
fn warn_unreachable(pools: &Pools) {
    for (function, why) in pools.unreachable_commands() {
        tracing::warn!(%function, "{why}");
    }
}
