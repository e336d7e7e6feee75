//! `wavelink proxy`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use wavelink_core::{KubernetesConfig, LocalConfig};
use wavelink_proxy::Proxy;

use std::str::FromStr;
use std::sync::Arc;

use tracing::warn;
use wavelink_kubernetes::NamespacedName;
use wavelink_kubernetes::secrets::{SecretState, watch_tls_secret};
use wavelink_server::tls::{ServedCertificate, log_loaded};

use super::cluster::{Cluster, namespaced_name};
use super::{TokenArgs, load_config, parse_duration};

/// Longest wait for the first state of the TLS Secrets.
const SECRETS_FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(30);
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
    let tls_secrets = config.proxy.tls.as_ref().map(|t| t.secrets.clone()).unwrap_or_default();
    drop(config);
    if kubernetes.is_none() {
        crate::allocator::end_setup();
    } else {
        // On a cluster the first list is set-up too: it ends once that is in (`Cluster`).
        crate::allocator::release_unused();
    }
    // Kept alive while the proxy runs: it feeds the routing table.
    let _cluster = match &kubernetes {
        Some(settings) => {
            let cluster = follow_cluster(&proxy, settings)?;
            follow_tls_secrets(&proxy, &cluster, &tls_secrets)?;
            Some(cluster)
        }
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

/// Serves the certificates of the `kubernetes.io/tls` Secrets named in `proxy.tls.secrets`,
/// following their changes; waits (boundedly) for each one's first state, so a proxy that
/// serves TLS from Secrets does not start without them.
fn follow_tls_secrets(proxy: &Proxy, cluster: &Cluster, secrets: &[String]) -> anyhow::Result<()> {
    let names = secrets
        .iter()
        .map(|s| NamespacedName::from_str(s).map_err(|e| anyhow::anyhow!("proxy.tls.secrets: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (seen_tx, mut seen) = tokio::sync::watch::channel(0usize);
    for name in names.iter().cloned() {
        let store = proxy.certificates().clone();
        let seen_tx = seen_tx.clone();
        let mut first = true;
        let on_change = move |secret: &NamespacedName, state: SecretState| {
            let source = format!("secret {secret}");
            match state {
                SecretState::Usable(tls) => match ServedCertificate::from_pem(&source, &tls.cert_pem, &tls.key_pem) {
                    Ok(certificate) => {
                        log_loaded(&certificate);
                        store.set(&source, vec![Arc::new(certificate)]);
                    }
                    Err(e) => warn!(error = %e, "TLS Secret unusable; still serving its last good certificate"),
                },
                SecretState::Unusable(why) => {
                    warn!(secret = %secret, why, "TLS Secret not served");
                    store.set(&source, Vec::new());
                }
            }
            if std::mem::take(&mut first) {
                seen_tx.send_modify(|n| *n += 1);
            }
        };
        cluster.runtime.spawn(watch_tls_secret(cluster.client.clone(), name, on_change));
    }
    let wanted = names.len();
    let all_seen = cluster.runtime.block_on(async {
        tokio::time::timeout(SECRETS_FIRST_LIST_TIMEOUT, seen.wait_for(|n| *n >= wanted)).await.is_ok()
    });
    if !all_seen {
        warn!(timeout = ?SECRETS_FIRST_LIST_TIMEOUT, "not every TLS Secret could be read yet; serving those that were");
    }
    Ok(())
}

fn check_config(config: &LocalConfig) -> anyhow::Result<()> {
    let (accepted, rejected) = config.functions();
    println!("proxy    listen {} admin {}", config.proxy.listen, config.proxy.admin);
    let mut problems = 0;
    if let Some(tls) = &config.proxy.tls {
        println!("tls      listen {} http2 {} redirect {}", tls.listen, tls.http2, tls.redirect);
        for files in &tls.certificates {
            match ServedCertificate::from_files(&files.cert, &files.key) {
                Ok(certificate) => {
                    println!("ok       certificate {} for {}", files.cert.display(), certificate.names.join(", "))
                }
                Err(e) => {
                    problems += 1;
                    println!("bad      certificate {e}");
                }
            }
        }
        for secret in &tls.secrets {
            println!("tls      certificate from Secret {secret} (read at start)");
        }
    }
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
    if problems > 0 {
        bail!("{problems} certificate(s) unusable");
    }
    Ok(())
}
