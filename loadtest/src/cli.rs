//! `wavelink load`: command-line options, checked into a plan before any load is sent.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::engine::LoadPlan;

/// Load a URL like wrk (closed loop), or like wrk2 with --rate (open loop, latency corrected
/// for coordinated omission); or replay a serverless trace (`wavelink load trace --help`).
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub command: Option<LoadCommand>,
    #[command(flatten)]
    pub wrk: WrkArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum LoadCommand {
    /// Replay a serverless trace (Azure Functions 2019 layout, or --synthetic) against the proxy,
    /// open loop, and report slowdowns.
    Trace(crate::trace::TraceArgs),
}

#[derive(Debug, Clone, Args)]
pub struct WrkArgs {
    /// The URL to load, like http://127.0.0.1:8080/path?query.
    #[arg(required = true, value_name = "URL")]
    pub url: Option<String>,
    /// Connections to keep open, over all threads.
    #[arg(short = 'c', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    /// Threads to send from.
    #[arg(short = 't', long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// How long to run, like 10s or 2m.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Requests per second over all connections (e.g. 2000 or 2k): open loop, latency measured
    /// from each request's intended send time. Without it, each connection sends as fast as
    /// answers come back.
    #[arg(short = 'R', long, value_parser = parse_rate, value_name = "RATE")]
    pub rate: Option<f64>,
    /// An extra request header, like "Host: hello.default.example.com" (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header, value_name = "HEADER")]
    pub headers: Vec<(String, String)>,
    /// Print the latency distribution (and, with --rate, the uncorrected one).
    #[arg(long)]
    pub latency: bool,
    /// A response slower than this counts as a timeout and its connection is reopened.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Also write the full result, histogram included, as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = wavelink_core::duration::parse_duration(text)?;
    if d.is_zero() { Err("must be more than 0".into()) } else { Ok(d) }
}

/// `2000`, `2k`, `1.5k`, `1M`.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (number, multiplier) = match text.trim() {
        t if t.ends_with(['k', 'K']) => (&t[..t.len() - 1], 1e3),
        t if t.ends_with('M') => (&t[..t.len() - 1], 1e6),
        t => (t, 1.0),
    };
    let rate = number.parse::<f64>().map_err(|_| format!("{text:?} is not a rate like 2000 or 2k"))? * multiplier;
    if rate.is_finite() && rate > 0.0 { Ok(rate) } else { Err(format!("{text:?}: the rate must be more than 0")) }
}

pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once(':').ok_or_else(|| format!("{text:?} is not a header like \"Name: value\""))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b)) {
        return Err(format!("{name:?} is not a header name"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// Where an `http://` URL points: the address to connect to, the Host header, the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(format!("{url}: only http:// is supported, not {other}://")),
            None => return Err(format!("{url:?} lacks http://")),
        }
        let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        let authority = uri.authority().map_or(host.to_owned(), |a| a.to_string());
        let path = uri.path_and_query().map_or("/".to_owned(), |p| p.to_string());
        Ok(Target { addr, host: authority, path })
    }
}

impl WrkArgs {
    /// The plan this asks for; every problem is one clear line.
    pub fn plan(&self) -> Result<(String, LoadPlan), String> {
        let url = self.url.clone().ok_or("a URL is required")?;
        let target = Target::parse(&url)?;
        let host = self
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("host"))
            .map_or(target.host.clone(), |(_, value)| value.clone());
        let request = crate::client::get_request(&target.path, &host, &self.headers);
        let plan = LoadPlan {
            addr: target.addr,
            request: Arc::new(request),
            connections: self.connections as usize,
            threads: self.threads as usize,
            duration: self.duration,
            rate: self.rate,
            timeout: self.timeout,
        };
        Ok((url, plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_headers_and_urls_are_checked() {
        assert_eq!(parse_rate("2k"), Ok(2000.0));
        assert_eq!(parse_rate("1.5K"), Ok(1500.0));
        assert_eq!(parse_rate("250"), Ok(250.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_header("Host: a.b"), Ok(("Host".into(), "a.b".into())));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
        let target = Target::parse("http://127.0.0.1:8080/p?q=1").unwrap();
        assert_eq!(target.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target.host, "127.0.0.1:8080");
        assert_eq!(target.path, "/p?q=1");
        assert_eq!(Target::parse("http://127.0.0.1").unwrap().path, "/");
        assert!(Target::parse("https://127.0.0.1/").unwrap_err().contains("only http://"));
        assert!(Target::parse("127.0.0.1:80").is_err());
        assert!(parse_duration("0").is_err());
    }
}
