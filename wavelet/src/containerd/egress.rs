//! Outbound network for container instances (`--egress=nat`).
//!
//! An instance's namespace holds only `lo` (the Wavelet reaches it through a socket made inside
//! it, netns.rs). With egress, each instance also gets a veth pair: `eth0` inside with the odd
//! address of a /31 of `--egress-cidr` and a default route, `wl<slot>` in the Wavelet's own
//! namespace with the even one. The Wavelet's namespace forwards and masquerades that traffic,
//! so an instance's connections leave as the Wavelet pod's do: through the cluster's network,
//! DNS and policies, like the function's own pods.
//!
//! One nftables table, `inet wavelink`, keeps instances apart from what they must not reach:
//! nothing from a `wl*` interface is delivered to the Wavelet's namespace itself (its ports on
//! any address), nothing is forwarded from one instance to another, and a packet whose source
//! is not the address routed to its interface is dropped (an instance has `CAP_NET_RAW`, as a
//! pod has). Routing and NAT use per-interface forwarding set through netlink, because a pod's
//! `/proc/sys` is read-only.
//!
//! Nothing here is on the request path for prepared instances (it runs after `runc create`),
//! and nothing leaks: the kernel deletes both ends of a veth when the instance's namespace goes.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::str::FromStr;
use std::sync::Arc;

use futures::TryStreamExt;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use parking_lot::Mutex;
use rtnetlink::packet_core::DefaultNla;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{AfSpecInet, AfSpecUnspec, InfoData, InfoKind, InfoVeth, LinkAttribute};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use tracing::{debug, info, warn};

use super::netns::HostNetns;

/// Host-side interfaces are `wl<slot>`; the rules match them by this prefix.
const INTERFACE_PREFIX: &str = "wl";
/// The nftables table the Wavelet owns in its namespace.
const TABLE: &str = "inet wavelink";

/// An IPv4 prefix, `198.18.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an IPv4 prefix like 198.18.0.0/16 (prefix length 8 to 30)");
        let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(base) & !mask != 0 {
            return Err(format!(
                "{text:?} has host bits set (did you mean {}/{prefix}?)",
                Ipv4Addr::from(u32::from(base) & mask)
            ));
        }
        Ok(Ipv4Cidr { base, prefix })
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Ipv4Cidr {
    /// How many instance links (/31 pairs) fit.
    pub fn pairs(&self) -> u32 {
        1 << (31 - self.prefix)
    }

    /// The Wavelet's and the instance's address of link `slot`.
    pub fn pair(&self, slot: u32) -> (Ipv4Addr, Ipv4Addr) {
        let first = u32::from(self.base) + 2 * slot;
        (Ipv4Addr::from(first), Ipv4Addr::from(first + 1))
    }
}

/// The nftables rules, applied atomically (`nft -f -`): the table is created if absent and
/// replaced whole, so a restart finds exactly these rules.
pub fn ruleset(cidr: Ipv4Cidr) -> String {
    let wl = format!("\"{INTERFACE_PREFIX}*\"");
    format!(
        "table {TABLE} {{}}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \x20 chain prerouting {{\n\
         \x20   type filter hook prerouting priority raw; policy accept;\n\
         \x20   iifname {wl} fib saddr . iif oif missing drop comment \"a source not routed to its link: spoofed\"\n\
         \x20 }}\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority filter - 10; policy accept;\n\
         \x20   iifname {wl} drop comment \"instances reach nothing of the Wavelet\"\n\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter - 10; policy accept;\n\
         \x20   iifname {wl} oifname {wl} drop comment \"nor each other\"\n\
         \x20 }}\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr {cidr} oifname != {wl} masquerade\n\
         \x20 }}\n\
         }}\n"
    )
}

/// The `resolv.conf` an instance of a function in `namespace` gets: the Wavelet's own servers
/// and options, and, where the Wavelet's search list is Kubernetes' (`<ns>.svc.<domain> ...`),
/// the same list for the function's namespace, as its pods get with `dnsPolicy: ClusterFirst`.
pub fn resolv_conf_for(wavelet: &str, namespace: &str) -> String {
    let mut out = String::from("# written by the WaveLink Wavelet from its own resolv.conf\n");
    for line in wavelet.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("search") => {
                let mut domains: Vec<String> = words.map(str::to_owned).collect();
                if let Some(first) = domains.first_mut()
                    && let Some((_, rest)) = first.split_once('.')
                    && rest.starts_with("svc.")
                {
                    *first = format!("{namespace}.{rest}");
                }
                out.push_str(&format!("search {}\n", domains.join(" ")));
            }
            Some("nameserver" | "options") => {
                out.push_str(line.trim());
                out.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("all {0} egress links of --egress-cidr are in use")]
    Exhausted(u32),
    #[error("netlink ({step}): {message}")]
    Netlink { step: &'static str, message: String },
    #[error("the instance's network namespace: {0}")]
    Netns(std::io::Error),
    #[error("applying the nftables rules (`nft -f -`): {0}")]
    Nft(String),
}

fn netlink(step: &'static str) -> impl Fn(rtnetlink::Error) -> EgressError {
    move |e| EgressError::Netlink { step, message: e.to_string() }
}

/// Which link each instance has, and which are free (reused oldest first, so a link whose
/// instance just went has time to disappear).
struct Slots {
    capacity: u32,
    next: u32,
    free: VecDeque<u32>,
    used: HashMap<String, u32>,
}

impl Slots {
    fn take(&mut self, instance: &str) -> Result<u32, EgressError> {
        let slot = match self.free.pop_front() {
            Some(slot) => slot,
            None if self.next < self.capacity => {
                self.next += 1;
                self.next - 1
            }
            None => return Err(EgressError::Exhausted(self.capacity)),
        };
        self.used.insert(instance.to_owned(), slot);
        Ok(slot)
    }

    fn give_back(&mut self, instance: &str) {
        if let Some(slot) = self.used.remove(instance) {
            self.free.push_back(slot);
        }
    }
}

/// Egress for the instances of one Wavelet.
pub struct Egress {
    cidr: Ipv4Cidr,
    host: Handle,
    host_netns: Arc<HostNetns>,
    slots: Mutex<Slots>,
    /// The Wavelet's own resolv.conf, the base of each instance's.
    resolv_conf: String,
}

impl Egress {
    /// Applies the rules and lets the Wavelet's interfaces forward. Call inside a tokio runtime
    /// (the netlink connection runs on it), on a thread in the Wavelet's own namespace.
    pub async fn open(cidr: Ipv4Cidr, host_netns: Arc<HostNetns>) -> Result<Egress, EgressError> {
        apply_rules(&ruleset(cidr))?;
        let (connection, host, _) = rtnetlink::new_connection()
            .map_err(|e| EgressError::Netlink { step: "connect", message: e.to_string() })?;
        tokio::spawn(connection);
        // Replies come back through the Wavelet's own interfaces: they forward too.
        let links: Vec<_> = host.link().get().execute().try_collect().await.map_err(netlink("link list"))?;
        for link in links {
            let name = link_name(&link.attributes);
            if name.as_deref() == Some("lo") || name.as_deref().is_some_and(|n| n.starts_with(INTERFACE_PREFIX)) {
                continue;
            }
            let set = LinkUnspec::new_with_index(link.header.index).append_extra_attribute(forwarding_on()).build();
            host.link().set(set).execute().await.map_err(netlink("forwarding on"))?;
        }
        let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_else(|e| {
            warn!(error = %e, "cannot read /etc/resolv.conf; instances get no name servers");
            String::new()
        });
        let slots = Slots { capacity: cidr.pairs(), next: 0, free: VecDeque::new(), used: HashMap::new() };
        info!(%cidr, "instances reach the network through the Wavelet (NAT)");
        Ok(Egress { cidr, host, host_netns, slots: Mutex::new(slots), resolv_conf })
    }

    /// Gives instance `id` (process `pid`, a function of `namespace`) its link, route and
    /// resolv.conf. On failure nothing is left (the link goes with the instance's namespace).
    pub async fn attach(&self, id: &str, pid: u32, namespace: &str) -> Result<Ipv4Addr, EgressError> {
        let slot = self.slots.lock().take(id)?;
        let attached = self.configure(slot, pid).await;
        match attached {
            Ok(address) => {
                if let Err(e) = write_resolv_conf(pid, &resolv_conf_for(&self.resolv_conf, namespace)) {
                    // Addresses still work; names do not. Not worth failing the instance for.
                    warn!(instance = id, error = %e, "cannot write the instance's /etc/resolv.conf");
                }
                debug!(instance = id, %address, "egress link up");
                Ok(address)
            }
            Err(e) => {
                self.release(id);
                Err(e)
            }
        }
    }

    /// The instance is gone: its link (deleted by the kernel with its namespace) is free.
    pub fn release(&self, id: &str) {
        self.slots.lock().give_back(id);
    }

    async fn configure(&self, slot: u32, pid: u32) -> Result<Ipv4Addr, EgressError> {
        let netns: OwnedFd = File::open(format!("/proc/{pid}/ns/net")).map_err(EgressError::Netns)?.into();
        let (gateway, address) = self.cidr.pair(slot);
        let name = format!("{INTERFACE_PREFIX}{slot}");
        // A link of this slot whose namespace is still being torn down: it goes now.
        if let Some(stale) = link_index(&self.host, &name).await? {
            let _ = self.host.link().del(stale).execute().await;
        }
        let peer =
            LinkMessageBuilder::<LinkUnspec>::new().name("eth0".to_owned()).setns_by_fd(netns.as_raw_fd()).build();
        let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.clone())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.host.link().add(veth).execute().await.map_err(netlink("veth add"))?;
        let index = link_index(&self.host, &name)
            .await?
            .ok_or(EgressError::Netlink { step: "veth add", message: format!("{name} not found after creation") })?;
        add_point_to_point(&self.host, index, gateway).await.map_err(netlink("address add"))?;
        let up = LinkUnspec::new_with_index(index).up().append_extra_attribute(forwarding_on()).build();
        self.host.link().set(up).execute().await.map_err(netlink("link up"))?;

        // Inside: a netlink connection made there talks to that namespace.
        let (connection, inside, _) = self
            .host_netns
            .within(netns.as_fd(), rtnetlink::new_connection)
            .map_err(EgressError::Netns)?
            .map_err(EgressError::Netns)?;
        let connection = tokio::spawn(connection);
        let configured = async {
            let eth0 = link_index(&inside, "eth0")
                .await?
                .ok_or(EgressError::Netlink { step: "eth0", message: "not in the instance's namespace".into() })?;
            add_point_to_point(&inside, eth0, address).await.map_err(netlink("eth0 address"))?;
            inside
                .link()
                .set(LinkUnspec::new_with_index(eth0).up().build())
                .execute()
                .await
                .map_err(netlink("eth0 up"))?;
            let default = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(eth0).build();
            inside.route().add(default).execute().await.map_err(netlink("default route"))
        }
        .await;
        connection.abort();
        configured.map(|()| address)
    }

    /// Removes the rules (shutdown; the links went with their instances).
    pub fn close(&self) {
        if let Err(e) = apply_rules(&format!("table {TABLE} {{}}\ndelete table {TABLE}\n")) {
            warn!(error = %e, "removing the egress rules");
        }
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, EgressError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        // "No such device" is the answer for an absent name.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(netlink("link get")(e)),
    }
}

/// Adds `address/31` without a broadcast address: on a /31 both addresses are hosts (RFC 3021),
/// and one marked broadcast would swallow the traffic for the other end.
async fn add_point_to_point(handle: &Handle, index: u32, address: Ipv4Addr) -> Result<(), rtnetlink::Error> {
    let mut add = handle.address().add(index, IpAddr::V4(address), 31);
    add.message_mut().attributes.retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
    add.execute().await
}

fn link_name(attributes: &[LinkAttribute]) -> Option<String> {
    attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// `IFLA_AF_SPEC { AF_INET { IFLA_INET_CONF { IPV4_DEVCONF_FORWARDING: 1 } } }`: this interface
/// forwards, whatever the namespace's read-only `net.ipv4.ip_forward` says.
fn forwarding_on() -> LinkAttribute {
    const IFLA_INET_CONF: u16 = 1;
    const IPV4_DEVCONF_FORWARDING: u16 = 1;
    let mut setting = Vec::with_capacity(8);
    setting.extend_from_slice(&8u16.to_ne_bytes());
    setting.extend_from_slice(&IPV4_DEVCONF_FORWARDING.to_ne_bytes());
    setting.extend_from_slice(&1u32.to_ne_bytes());
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![AfSpecInet::Other(DefaultNla::new(
        IFLA_INET_CONF,
        setting,
    ))])])
}

fn apply_rules(rules: &str) -> Result<(), EgressError> {
    use std::io::Write;
    let mut nft = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| EgressError::Nft(format!("running nft: {e} (install nftables)")))?;
    if let Some(mut stdin) = nft.stdin.take() {
        stdin.write_all(rules.as_bytes()).map_err(|e| EgressError::Nft(e.to_string()))?;
    }
    let out = nft.wait_with_output().map_err(|e| EgressError::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(EgressError::Nft(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}

/// Writes `/etc/resolv.conf` inside the instance's root (its init is waiting to exec, so its
/// root is the container's). Resolution stays inside that root whatever links the image has.
fn write_resolv_conf(pid: u32, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let root: OwnedFd = File::open(format!("/proc/{pid}/root"))?.into();
    match nix::sys::stat::mkdirat(root.as_fd(), "etc", Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let how = OpenHow::new()
        .flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(0o644))
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.as_fd(), "etc/resolv.conf", how)?;
    File::from(fd).write_all(content.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cidr_is_checked_and_split_into_pairs() {
        let cidr: Ipv4Cidr = "198.18.0.0/16".parse().expect("valid");
        assert_eq!(cidr.pairs(), 32768);
        assert_eq!(cidr.pair(0), (Ipv4Addr::new(198, 18, 0, 0), Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(cidr.pair(200), (Ipv4Addr::new(198, 18, 1, 144), Ipv4Addr::new(198, 18, 1, 145)));
        assert_eq!(cidr.to_string(), "198.18.0.0/16");
        for bad in ["198.18.0.0", "198.18.0.0/31", "198.18.0.0/4", "x/16", "198.18.0.0/x"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        let err = "198.18.0.1/16".parse::<Ipv4Cidr>().expect_err("host bits");
        assert!(err.contains("198.18.0.0/16"), "{err}");
    }

    #[test]
    fn slots_are_reused_oldest_first_and_run_out() {
        let mut slots = Slots { capacity: 2, next: 0, free: VecDeque::new(), used: HashMap::new() };
        assert_eq!(slots.take("a").ok(), Some(0));
        assert_eq!(slots.take("b").ok(), Some(1));
        assert!(matches!(slots.take("c"), Err(EgressError::Exhausted(2))));
        slots.give_back("b");
        slots.give_back("a");
        slots.give_back("a");
        assert_eq!(slots.take("c").ok(), Some(1));
        assert_eq!(slots.take("d").ok(), Some(0));
    }

    #[test]
    fn the_rules_keep_instances_from_the_wavelet_and_each_other_and_masquerade_the_rest() {
        let rules = ruleset("198.18.0.0/16".parse().expect("valid"));
        assert!(rules.starts_with("table inet wavelink {}\ndelete table inet wavelink\n"), "{rules}");
        assert!(rules.contains("iifname \"wl*\" drop"), "{rules}");
        assert!(rules.contains("iifname \"wl*\" oifname \"wl*\" drop"), "{rules}");
        assert!(rules.contains("ip saddr 198.18.0.0/16 oifname != \"wl*\" masquerade"), "{rules}");
        assert!(rules.contains("fib saddr . iif oif missing drop"), "{rules}");
    }

    #[test]
    fn an_instance_gets_the_wavelets_name_servers_and_its_own_namespaces_search_list() {
        let pod = "# kubelet\nsearch wavelink-system.svc.cluster.local svc.cluster.local cluster.local\n\
                   nameserver 10.96.0.10\noptions ndots:5\n";
        assert_eq!(
            resolv_conf_for(pod, "shop"),
            "# written by the WaveLink Wavelet from its own resolv.conf\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        // Not Kubernetes' pattern: kept as it is.
        let host = "nameserver 10.255.255.53\nsearch example.com\n";
        assert_eq!(
            resolv_conf_for(host, "shop"),
            "# written by the WaveLink Wavelet from its own resolv.conf\nnameserver 10.255.255.53\nsearch example.com\n"
        );
    }
}
