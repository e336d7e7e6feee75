//! `wavelink controller`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use wavelink_controller::backend::local::LocalBackend;
use wavelink_controller::metrics::ControllerMetrics;
use wavelink_controller::{Controller, ControllerServer};
use wavelink_core::config::{BackendKind, ControllerConfig};

use super::{RuntimeArgs, load_config, parse_duration};

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
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
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
    let ControllerConfig { backend, admin, ri_start_delay, scrape_interval, decide_interval } = settings;
    match backend {
        BackendKind::Local => {
            let runtime = args.runtime.settings("controller", admin.port(), DEFAULT_PORTS);
            let (runtime, state) =
                wavelink_wavelet::setup::prepare("ri", &runtime).context("setting up the local backend")?;
            let local = LocalBackend::new(runtime, state, proxies.clone(), ri_start_delay, functions);
            tracing::info!(ri_start_delay = ?ri_start_delay, proxies = ?proxies, "local backend: RIs are processes, routable after the start delay");
            let controller =
                Arc::new(Controller::new(Arc::new(local.clone()), proxies, metrics, scrape_interval, decide_interval));
            let server = ControllerServer::new(controller, admin, Arc::new(move || local.destroy_all()));
            let shutdown = server.signal_shutdown();
            server.run(shutdown);
            Ok(())
        }
        BackendKind::Kubernetes => bail!("the kubernetes backend is chosen by `wavelink controller kubernetes`"),
    }
}
