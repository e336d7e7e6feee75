#!/usr/bin/env python3
"""Emergency Instance benchmark, in one sitting, each number next to its baseline.

    bench/ei.py             # N=200 latency samples, DURATION=5 s of throughput, release binary

1. Cold start: time from sending a request to the proxy to the first response byte, for a
   function with no Regular Instances and emergency-keepalive 0 (every request starts an
   instance on the Wavelet). Baseline: a bare spawn of the same `wavelink-fn` with its socket
   handed over as fd 3, and its first request, timed the same way (bench/fn_startup.py's
   method). Goal: at most 1.5x.
2. Start rate: wrk against the Wavelet with the same function, so every request starts (and
   destroys) an instance; instances per second, with and without per-instance memory cgroups.
   Goal: 1000/s or more.
3. Warm reuse: a request to an instance kept alive (emergency-keepalive 60 s) through the proxy,
   next to the same request to a Regular Instance through the proxy.

It measures; it asserts nothing.
"""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, wait_ready
from spawnbench import spawn_to_response

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("WAVELINK_BIN", os.path.join(ROOT, "target", "release", "wavelink"))
# What instances run: the small workload binary, next to `wavelink`.
FN_BIN = os.path.join(os.path.dirname(BIN), "wavelink-fn")
N = int(os.environ.get("N", "200"))
DURATION = int(os.environ.get("DURATION", "5"))




def first_byte(port, request):
    """Seconds from connecting and sending to the first response byte; the rest is drained."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request)
        first = s.recv(65536)
        elapsed = time.perf_counter() - started
        rest = first
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    if not rest.startswith(b"HTTP/1.1 200"):
        sys.exit(f"unexpected response: {rest[:200]!r}")
    return elapsed


def metric(admin_port, series):
    with socket.create_connection(("127.0.0.1", admin_port)) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        text = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            text += chunk
    for line in text.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def stop_all(procs, timeout=10):
    """SIGTERM to each process group, newest first; SIGKILL what has not exited in `timeout` s."""
    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in reversed(procs):
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def pct(samples, q):
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(len(samples) * q))] * 1e3


class Stack:
    def __init__(self, directory, memory_max):
        self.dir = directory
        self.procs = []
        self.proxy, self.proxy_admin = free_port(), free_port()
        self.wavelet, self.wavelet_admin = free_port(), free_port()
        self.ri = free_port()
        config = os.path.join(directory, f"wavelink-{memory_max}.yaml")
        with open(config, "w") as f:
            f.write(f"""domain: example.com
proxy: {{ listen: "127.0.0.1:{self.proxy}", admin: "127.0.0.1:{self.proxy_admin}", grace-period: 1s, access-log: false }}
wavelets:
  - {{ address: "127.0.0.1:{self.wavelet}", admin: "127.0.0.1:{self.wavelet_admin}", max-instances: 512 }}
functions:
  - name: cold
    command: ["wavelink-fn"]
    annotations: {{ wavelink.dev/emergency-keepalive: "0", wavelink.dev/emergency-max: "1000" }}
  - name: warm
    command: ["wavelink-fn"]
    annotations: {{ wavelink.dev/emergency-keepalive: 60s }}
  - name: regular
    command: ["wavelink", "fn"]
    instances: ["127.0.0.1:{self.ri}"]
""")
        env = dict(os.environ, WAVELINK_LOG="warn")
        self.start([FN_BIN, "--listen", f"127.0.0.1:{self.ri}"], env)
        self.start([BIN, "wavelet", "--config", config, "--state-dir", os.path.join(directory, f"state-{memory_max}"),
                    "--memory-max", memory_max], env)
        self.start([BIN, "proxy", "--config", config], env)
        wait_ready(self.wavelet_admin, "wavelet")
        wait_ready(self.proxy_admin, "proxy")

    def start(self, argv, env):
        self.procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                           stderr=open(os.path.join(self.dir, "stack.log"), "a"),
                                           start_new_session=True))

    def stop(self):
        stop_all(self.procs)


def spawn_rate(stack):
    """Instances started per second with wrk: every request to `cold` starts one."""
    before = metric(stack.wavelet_admin, 'wavelink_emergency_instances_spawned_total{function="default/cold",runtime="process"}')
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{DURATION}s", "-H", "x-wavelink-function: default/cold",
                          f"http://127.0.0.1:{stack.wavelet}/"], capture_output=True, text=True, check=True).stdout
    after = metric(stack.wavelet_admin, 'wavelink_emergency_instances_spawned_total{function="default/cold",runtime="process"}')
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, after - before, int(errors.group(1)) if errors else 0


def main():
    for binary in (BIN, FN_BIN):
        if not os.access(binary, os.X_OK):
            sys.exit(f"missing {binary}: run `make build` first")
    if not shutil.which("wrk"):
        sys.exit("missing wrk: `make bench` installs it")
    directory = tempfile.mkdtemp(prefix="wavelink-ei-bench.")
    stack = Stack(directory, "1Gi")
    try:
        host = lambda name: f"GET / HTTP/1.1\r\nHost: {name}.default.example.com\r\nConnection: close\r\n\r\n".encode()
        for _ in range(5):  # warm the page cache, pools and the warm instance
            spawn_to_response([FN_BIN], first_byte_only=True)
            first_byte(stack.proxy, host("cold"))
            first_byte(stack.proxy, host("warm"))
            first_byte(stack.proxy, host("regular"))
        runs = {"bare": [], "cold": [], "warm": [], "regular": []}
        for _ in range(N):  # interleaved: drift hits every kind alike
            runs["bare"].append(spawn_to_response([FN_BIN], first_byte_only=True))
            runs["cold"].append(first_byte(stack.proxy, host("cold")))
            runs["warm"].append(first_byte(stack.proxy, host("warm")))
            runs["regular"].append(first_byte(stack.proxy, host("regular")))
        first_bytes = metric(stack.wavelet_admin, 'wavelink_emergency_spawn_to_first_byte_seconds_count{function="default/cold",runtime="process"}')
        rate_cgroup = spawn_rate(stack)
    finally:
        stack.stop()
    stack = Stack(directory, "0")
    try:
        rate_plain = spawn_rate(stack)
    finally:
        stack.stop()
        shutil.rmtree(directory, ignore_errors=True)

    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} cores, N={N}, "
          f"{int(first_bytes)} cold starts seen by the Wavelet")
    print("| path | p50 ms | p99 ms | p50 ratio | p99 ratio | baseline |")
    print("|---|---|---|---|---|---|")
    b50, b99 = pct(runs["bare"], 0.5), pct(runs["bare"], 0.99)
    r50, r99 = pct(runs["regular"], 0.5), pct(runs["regular"], 0.99)
    print(f"| bare spawn of `wavelink-fn` + first request | {b50:.2f} | {b99:.2f} | 1.00x | 1.00x | itself |")
    c50, c99 = pct(runs["cold"], 0.5), pct(runs["cold"], 0.99)
    print(f"| EI cold start through proxy and Wavelet | {c50:.2f} | {c99:.2f} | {c50 / b50:.2f}x | {c99 / b99:.2f}x | bare spawn |")
    print(f"| RI through the proxy | {r50:.2f} | {r99:.2f} | 1.00x | 1.00x | itself |")
    w50, w99 = pct(runs["warm"], 0.5), pct(runs["warm"], 0.99)
    print(f"| warm EI through proxy and Wavelet | {w50:.2f} | {w99:.2f} | {w50 / r50:.2f}x | {w99 / r99:.2f}x | RI through the proxy |")
    print()
    print(f"| EI start rate (wrk -t2 -c16 -d{DURATION}s at the Wavelet, keepalive 0) | instances/s | instances started | non-2xx |")
    print("|---|---|---|---|")
    for label, (rps, started, errors) in (("with a memory cgroup per instance", rate_cgroup),
                                           ("without memory cgroups", rate_plain)):
        print(f"| {label} | {rps:.0f} | {started:.0f} | {errors} |")


if __name__ == "__main__":
    main()
