#!/usr/bin/env python3
"""Emergency Instances as containers (`--runtime containerd`), in one sitting, next to baselines.

    sudo bench/ei_containerd.py     # N=100 cold starts per path, DURATION=10 s of start rate

A private containerd (own root, state and socket in a temporary directory), the `wavelink-fn`
image built by `wavelink image` from the release binary and imported. Then, interleaved so
drift hits every path alike:

1. Cold start, request in at the proxy to the first response byte, for a function with no
   Regular Instances and emergency-keepalive 0 (every request gets a new container):
   - containerd runtime with prepared instances (the default, --prepared 2): the request path
     is only a task start; the pool is refilled in the background;
   - containerd runtime with --prepared 0: image, snapshot, container, task create and start
     all on the request path;
   - the same with --egress nat: each instance's veth pair, addresses, route and resolv.conf
     on the request path too (with prepared instances they are made in the background);
   - the `process` runtime, the same binary as a process group (bench/ei.py's path);
   - baseline: `ctr run --rm` of the same image running `wavelink-fn --version` (create, start,
     the program's run, wait and delete: what a plain container start costs from a client).
   Goals: p50 at most 0.5x `ctr run --rm`, p99 at most 1.0x.
2. Where the time goes: the Wavelet's per-phase histogram (mean ms per phase).
3. Start rate: wrk against the Wavelet (keepalive 0, so every request starts and destroys a
   container), instances per second. Goal: at least 100/s on 2 cores.

Needs root (containerd). Runs in a network namespace of its own (`unshare --net`), so its
ports and the egress stack's links and rules never touch the machine's network. It measures;
it asserts nothing.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ei import BIN, FN_BIN, first_byte, free_port, metric, pct, stop_all, wait_ready  # noqa: E402

N = int(os.environ.get("N", "100"))
DURATION = int(os.environ.get("DURATION", "10"))
IMAGE = "localhost/wavelink-fn-bench:1"
NAMESPACE = "wavelink-bench"
PHASES = ("image", "snapshot", "container", "task_create", "network", "task_start")


class Containerd:
    def __init__(self, directory):
        self.dir = directory
        self.socket = os.path.join(directory, "containerd.sock")
        with open(os.path.join(directory, "config.toml"), "w") as f:
            f.write(f"""version = 2
root = "{directory}/root"
state = "{directory}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{directory}/opt"
""")
        self.proc = subprocess.Popen(["containerd", "--config", os.path.join(directory, "config.toml")],
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(directory, "containerd.log"), "w"),
                                     start_new_session=True)
        deadline = time.time() + 30
        while self.ctr("version").returncode != 0:
            if time.time() > deadline:
                sys.exit("containerd did not start")
            time.sleep(0.1)
        tar = os.path.join(directory, "image.tar")
        subprocess.run([BIN, "image", "--name", IMAGE, "--program", FN_BIN, "--out", tar], check=True,
                       stdout=subprocess.DEVNULL)
        if self.ctr("images", "import", tar).returncode != 0:
            sys.exit("importing the image failed")

    def ctr(self, *args):
        return subprocess.run(["ctr", "--address", self.socket, "--namespace", NAMESPACE, *args],
                              capture_output=True, text=True)

    def run_rm(self, n):
        """Seconds for one `ctr run --rm` of the image."""
        started = time.perf_counter()
        out = self.ctr("run", "--rm", IMAGE, f"bench-{n}", "/usr/local/bin/wavelink-fn", "--version")
        elapsed = time.perf_counter() - started
        if out.returncode != 0:
            sys.exit(f"ctr run failed: {out.stderr}")
        return elapsed

    def stop(self):
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", line.split()[0])
        time.sleep(0.5)
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            self.ctr("tasks", "delete", line.split()[0])
        for line in self.ctr("containers", "ls", "-q").stdout.splitlines():
            self.ctr("containers", "delete", line.strip())
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=10)
        subprocess.run(["sh", "-c", f"grep -o ' {self.dir}[^ ]*' /proc/mounts | xargs -r -n1 umount -l"])


class Stack:
    """A proxy and one Wavelet with a `cold` function (keepalive 0, no RIs)."""

    def __init__(self, directory, label, wavelet_args):
        self.dir = directory
        self.procs = []
        self.proxy, self.proxy_admin = free_port(), free_port()
        self.wavelet, self.wavelet_admin = free_port(), free_port()
        config = os.path.join(directory, f"{label}.yaml")
        with open(config, "w") as f:
            f.write(f"""domain: example.com
proxy: {{ listen: "127.0.0.1:{self.proxy}", admin: "127.0.0.1:{self.proxy_admin}", grace-period: 1s, access-log: false }}
wavelets:
  - {{ address: "127.0.0.1:{self.wavelet}", admin: "127.0.0.1:{self.wavelet_admin}", max-instances: 512 }}
functions:
  - name: cold
    command: ["wavelink-fn"]
    image: {IMAGE}
    annotations: {{ wavelink.dev/emergency-keepalive: "0", wavelink.dev/emergency-max: "1000" }}
""")
        env = dict(os.environ, WAVELINK_LOG="warn")
        log = open(os.path.join(directory, f"{label}.log"), "a")
        for argv in ([BIN, "wavelet", "--config", config, "--state-dir", os.path.join(directory, f"state-{label}"),
                      *wavelet_args], [BIN, "proxy", "--config", config]):
            self.procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                               start_new_session=True))
        wait_ready(self.wavelet_admin, f"{label} wavelet")
        wait_ready(self.proxy_admin, f"{label} proxy")

    def stop(self):
        stop_all(self.procs, timeout=30)  # a Wavelet removes its containers before it exits

    def phases(self):
        """Mean ms per start phase, from the Wavelet's histogram."""
        means = {}
        for phase in PHASES:
            for prepared in ("false", "true"):
                labels = f'{{phase="{phase}",prepared="{prepared}",runtime="containerd"}}'
                total = metric(self.wavelet_admin, f"wavelink_emergency_start_phase_seconds_sum{labels}")
                count = metric(self.wavelet_admin, f"wavelink_emergency_start_phase_seconds_count{labels}")
                if count:
                    means[(phase, prepared)] = (total / count * 1e3, int(count))
        return means

    def start_rate(self):
        series = 'wavelink_emergency_instances_spawned_total{function="default/cold",runtime="containerd"}'
        before = metric(self.wavelet_admin, series)
        out = subprocess.run(["wrk", "-t2", "-c16", f"-d{DURATION}s", "-H", "x-wavelink-function: default/cold",
                              f"http://127.0.0.1:{self.wavelet}/"], capture_output=True, text=True, check=True).stdout
        after = metric(self.wavelet_admin, series)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return (after - before) / DURATION, after - before, int(errors.group(1)) if errors else 0


def main():
    if os.geteuid() != 0:
        sys.exit("containerd needs root")
    if os.environ.get("WAVELINK_BENCH_NETNS") != "1":
        os.environ["WAVELINK_BENCH_NETNS"] = "1"
        os.execvp("unshare", ["unshare", "--net", "--", sys.executable, *sys.argv])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for tool in ("containerd", "ctr", "runc", "wrk", "nft"):
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: `make bench` installs it (scripts/deps.sh bench)")
    for binary in (BIN, FN_BIN):
        if not os.access(binary, os.X_OK):
            sys.exit(f"missing {binary}: run `make build` first")
    directory = tempfile.mkdtemp(prefix="wavelink-ctr-bench.")
    containerd = Containerd(directory)
    runtime = ["--runtime", "containerd", "--containerd-socket", containerd.socket, "--containerd-namespace", NAMESPACE]
    stacks = {}
    try:
        stacks["prepared"] = Stack(directory, "prepared", runtime)
        stacks["unprepared"] = Stack(directory, "unprepared", [*runtime, "--prepared", "0"])
        stacks["egress"] = Stack(directory, "egress", [*runtime, "--prepared", "0", "--egress", "nat"])
        stacks["process"] = Stack(directory, "process", [])
        request = b"GET / HTTP/1.1\r\nHost: cold.default.example.com\r\nConnection: close\r\n\r\n"
        runs = {"ctr": [], "prepared": [], "unprepared": [], "egress": [], "process": []}
        for i in range(-3, N):  # three rounds of warm-up (page cache, image config), then N
            samples = {
                "ctr": containerd.run_rm(i + 3),
                "prepared": first_byte(stacks["prepared"].proxy, request),
                "unprepared": first_byte(stacks["unprepared"].proxy, request),
                "egress": first_byte(stacks["egress"].proxy, request),
                "process": first_byte(stacks["process"].proxy, request),
            }
            if i >= 0:
                for kind, seconds in samples.items():
                    runs[kind].append(seconds)
            time.sleep(0.1)  # a refill of the prepared pool per request, as between bursts
        phases = {kind: stacks[kind].phases() for kind in ("prepared", "unprepared", "egress")}
        stacks.pop("unprepared").stop()
        stacks.pop("egress").stop()
        stacks.pop("process").stop()
        rate = stacks["prepared"].start_rate()
    finally:
        for stack in stacks.values():
            stack.stop()
        containerd.stop()
        shutil.rmtree(directory, ignore_errors=True)

    version = subprocess.run(["containerd", "--version"], capture_output=True, text=True).stdout.split()[2]
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} cores, N={N}, "
          f"containerd {version}, runc shim")
    print("| path | p50 ms | p99 ms | p50 / ctr run | p99 / ctr run |")
    print("|---|---|---|---|---|")
    c50, c99 = pct(runs["ctr"], 0.5), pct(runs["ctr"], 0.99)
    labels = {
        "ctr": "`ctr run --rm` of the image (`wavelink-fn --version`)",
        "prepared": "EI cold start, containerd, prepared instances (default)",
        "unprepared": "EI cold start, containerd, `--prepared 0`",
        "egress": "EI cold start, containerd, `--prepared 0 --egress nat`",
        "process": "EI cold start, `process` runtime",
    }
    for kind, label in labels.items():
        p50, p99 = pct(runs[kind], 0.5), pct(runs[kind], 0.99)
        print(f"| {label} | {p50:.1f} | {p99:.1f} | {p50 / c50:.2f}x | {p99 / c99:.2f}x |")
    print()
    print("| start phase (Wavelet histogram) | prepared: mean ms | count | --prepared 0: mean ms | count "
          "| --prepared 0 --egress nat: mean ms | count |")
    print("|---|---|---|---|---|---|---|")
    for phase in PHASES:
        cells = []
        for kind in ("prepared", "unprepared", "egress"):
            # A prepared start records only its task start on the request path (prepared="true");
            # its other phases ran in the background and show as prepared="false" refills.
            found = phases[kind].get((phase, "true")) or phases[kind].get((phase, "false"))
            cells += [f"{found[0]:.2f}", str(found[1])] if found else ["", ""]
        print(f"| {phase} | {' | '.join(cells)} |")
    print()
    per_second, started, errors = rate
    print(f"| EI start rate (wrk -t2 -c16 -d{DURATION}s at the Wavelet, keepalive 0) | instances/s | started | non-2xx |")
    print("|---|---|---|---|")
    print(f"| containerd, prepared instances | {per_second:.0f} | {started:.0f} | {errors} |")


if __name__ == "__main__":
    main()
