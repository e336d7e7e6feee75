//! The OCI runtime spec of an Emergency Instance: what a pod's container gets from containerd's
//! CRI plugin by default, and nothing of the Wavelet's.
//!
//! Own mount, PID, IPC, UTS and network namespaces (the network namespace is new and holds only
//! `lo`: the Wavelet reaches the instance by connecting from inside it, see `netns.rs`); its own
//! cgroup with the function's memory and CPU limits; the default capability set of a pod
//! (containerd's), `noNewPrivileges` (a pod with `allowPrivilegeEscalation: false`); the paths
//! a runtime masks or makes read-only; no host file but the image's root filesystem. Resource
//! limits (rlimits) are not set, so they are the shim's, as for CRI containers.

use serde_json::{Value, json};
use wavelink_core::container::ProcessPlan;

/// containerd's default capabilities for a container, which a pod gets unless it drops some.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

const READONLY_PATHS: [&str; 6] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", "/sys/fs/cgroup"];

/// Resource limits of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
}

/// CFS period for CPU limits, as kubelet uses.
const CPU_PERIOD_US: u64 = 100_000;

/// Which network namespace an instance gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// A new one with only `lo`: an Emergency Instance, reached from inside by the Wavelet.
    Own,
    /// The node's: Regular Instances of the local backend, which a proxy must reach at an
    /// address (a pod would have its own IP; loopback ports stand in for it locally).
    Host,
}

/// The runtime spec (OCI runtime-spec 1.0) for instance `id` running `plan`, in a cgroup under
/// `cgroup_parent`.
pub fn runtime_spec(id: &str, plan: &ProcessPlan, limits: Limits, cgroup_parent: &str, network: Network) -> Value {
    let mut resources = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
    if let Some(bytes) = limits.memory_bytes {
        // The swap limit equal to the memory limit: no swap, as kubelet does.
        resources["memory"] = json!({ "limit": bytes, "swap": bytes });
    }
    if let Some(millis) = limits.cpu_millis.filter(|m| *m > 0) {
        // Kubelet's minimum quota is 1 ms per period.
        let quota = (millis * CPU_PERIOD_US / 1000).max(1000);
        resources["cpu"] = json!({ "quota": quota, "period": CPU_PERIOD_US });
    }
    let mut additional_gids = vec![plan.gid];
    additional_gids.dedup();
    let mut namespaces =
        vec![json!({ "type": "pid" }), json!({ "type": "ipc" }), json!({ "type": "uts" }), json!({ "type": "mount" })];
    if network == Network::Own {
        namespaces.push(json!({ "type": "network" }));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": plan.uid, "gid": plan.gid, "additionalGids": additional_gids },
            "args": plan.args,
            "env": plan.env,
            "cwd": plan.cwd,
            "capabilities": {
                "bounding": DEFAULT_CAPABILITIES,
                "effective": DEFAULT_CAPABILITIES,
                "permitted": DEFAULT_CAPABILITIES,
            },
            "noNewPrivileges": true,
            "oomScoreAdj": 1000,
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": hostname(id),
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/run", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
        ],
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("{}/{id}", cgroup_parent.trim_end_matches('/')),
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    })
}

/// A DNS label from the instance id (a pod's hostname is its name).
fn hostname(id: &str) -> String {
    let label: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(63).collect();
    label.trim_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ProcessPlan {
        ProcessPlan {
            args: vec!["/usr/local/bin/wavelink-fn".into()],
            env: vec!["PORT=8080".into()],
            cwd: "/".into(),
            uid: 65534,
            gid: 65534,
        }
    }

    #[test]
    fn an_instance_gets_every_namespace_of_a_pod_and_no_privilege_escalation() {
        let spec = runtime_spec("ei-1-2", &plan(), Limits::default(), "/wavelink", Network::Own);
        let namespaces: Vec<&str> =
            spec["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(namespaces, ["pid", "ipc", "uts", "mount", "network"]);
        assert!(spec["linux"]["namespaces"].as_array().unwrap().iter().all(|n| n.get("path").is_none()));
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["process"]["user"]["uid"], 65534);
        assert_eq!(spec["linux"]["cgroupsPath"], "/wavelink/ei-1-2");
        assert_eq!(spec["hostname"], "ei-1-2");
        let caps = spec["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN" || c == "CAP_NET_ADMIN" || c == "CAP_SYS_PTRACE"));
        assert!(spec["linux"]["resources"].get("memory").is_none());
        // No host path is mounted: every mount is a kernel file system.
        assert!(spec["mounts"].as_array().unwrap().iter().all(|m| !m["source"].as_str().unwrap().starts_with('/')));
    }

    #[test]
    fn a_host_network_instance_shares_only_the_network_namespace() {
        let spec = runtime_spec("ri-1-2", &plan(), Limits::default(), "/wavelink", Network::Host);
        let namespaces: Vec<&str> =
            spec["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(namespaces, ["pid", "ipc", "uts", "mount"]);
    }

    #[test]
    fn limits_become_cgroup_settings() {
        let limits = Limits { memory_bytes: Some(256 << 20), cpu_millis: Some(500) };
        let spec = runtime_spec("x", &plan(), limits, "/wavelink/", Network::Own);
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 256u64 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(spec["linux"]["cgroupsPath"], "/wavelink/x");
        let tiny = runtime_spec("x", &plan(), Limits { memory_bytes: None, cpu_millis: Some(1) }, "/w", Network::Own);
        assert_eq!(tiny["linux"]["resources"]["cpu"]["quota"], 1000);
    }
}
