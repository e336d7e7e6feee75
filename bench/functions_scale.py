#!/usr/bin/env python3
"""What configured functions cost when almost all are idle: proxy and controller with 1, 1,000
and 10,000 functions, 1% of them with traffic, in one run.

    bench/functions_scale.py            # release binaries; SIZES=1,1000,10000

Per size, a proxy serving N functions that all point at one `wavelink fn` instance:
- resident memory before any traffic, and per configured function against the 1-function case
  (goal: at most 1 KiB per idle function);
- after 1% of the functions got requests: /metrics bytes, /stats bytes in full and as the
  controller reads it (`?since=`, in JSON and in the compact encoding it asks for), and the
  time to produce each;
- requests/s to one function (`wavelink load`, 8 connections, 5 s), next to the 1-function case;
- the time of one function's instance change through the admin API (PUT).
Then the controller: the same N functions as local-backend functions (scale from zero) with a
proxy; its resident memory once every function is at rest (per idle function against the
1-function case, goal at most 1 KiB); then the 1% get steady traffic, so their RIs start; the
controller's CPU per decision round is its CPU time over a minute divided by the rounds in it.
Last, the route table alone (the `route_table` example of wavelink-proxy, built by `make bench`):
one function's instance change and a whole sync with 10,000 functions (goal: under 10 ms).
It measures and reports; goals are printed beside the results, not asserted.
"""
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import free_port, rss_kib, wait_ready

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("WAVELINK_BIN", os.path.join(ROOT, "target", "release", "wavelink"))
SIZES = [int(s) for s in os.environ.get("SIZES", "1,1000,10000").split(",")]
CONTROLLER_SECONDS = int(os.environ.get("CONTROLLER_SECONDS", "60"))
TICKS = os.sysconf("SC_CLK_TCK")




def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


COMPACT_STATS = "application/vnd.wavelink.stats.v1+postcard"


def request(port, method, path, host="admin", body=None, timeout=30, accept=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Host": host}
    if accept:
        headers["Accept"] = accept
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data



def names(n):
    return [f"f{i:05d}" for i in range(n)]


def active(n):
    """The 1% with traffic (at least one), spread over the list."""
    count = max(1, n // 100)
    step = n // count
    return [f"f{i * step:05d}" for i in range(count)]


def timed(port, path, runs=5, accept=None):
    times, size = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        status, data = request(port, "GET", path, accept=accept)
        times.append(time.perf_counter() - started)
        assert status == 200, (path, status)
        size = len(data)
    times.sort()
    return size, times[len(times) // 2] * 1000


def proxy_phase(n, tmp, instance):
    listen, admin = free_port(), free_port()
    config = os.path.join(tmp, f"proxy-{n}.yaml")
    with open(config, "w") as f:
        f.write(f'domain: example.com\nproxy: {{ listen: "127.0.0.1:{listen}", admin: "127.0.0.1:{admin}", access-log: false }}\nfunctions:\n')
        for name in names(n):
            f.write(f'  - {{ name: {name}, namespace: bench, instances: ["{instance}"] }}\n')
    proxy = subprocess.Popen([BIN, "proxy", "--config", config], stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(tmp, f"proxy-{n}.log"), "w"))
    try:
        wait_ready(admin, "proxy")
        time.sleep(2)
        idle = rss_kib(proxy.pid)
        for name in active(n):
            for _ in range(5):
                status, _ = request(listen, "GET", "/", host=f"{name}.bench.example.com")
                assert status == 200, status
        time.sleep(2.5)
        since = int(time.time() * 1000) - 10_000
        metrics_bytes, metrics_ms = timed(admin, "/metrics")
        stats_bytes, stats_ms = timed(admin, "/stats")
        since_bytes, since_ms = timed(admin, f"/stats?since={since}")
        compact_bytes, compact_ms = timed(admin, f"/stats?since={since}", accept=COMPACT_STATS)
        after = rss_kib(proxy.pid)
        target = active(n)[0]
        out = os.path.join(tmp, f"load-{n}.json")
        subprocess.run([BIN, "load", f"http://127.0.0.1:{listen}/", "-H", f"Host: {target}.bench.example.com",
                        "-c", "8", "-t", "1", "-d", "5s", "--json", out],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        with open(out) as f:
            rps = json.load(f)["requests_per_sec"]
        put_times = []
        for i in range(21):
            body = json.dumps([instance] if i % 2 else [instance, "127.0.0.1:9"]).encode()
            started = time.perf_counter()
            status, _ = request(admin, "PUT", f"/v1/functions/bench/{target}/instances", body=body)
            put_times.append(time.perf_counter() - started)
            assert status == 200, status
        put_times.sort()
        return {"functions": n, "rss_idle_kib": idle, "rss_after_kib": after, "metrics_bytes": metrics_bytes,
                "metrics_ms": metrics_ms, "stats_bytes": stats_bytes, "stats_ms": stats_ms,
                "stats_since_bytes": since_bytes, "stats_since_ms": since_ms,
                "stats_compact_bytes": compact_bytes, "stats_compact_ms": compact_ms, "rps": rps,
                "put_ms": put_times[len(put_times) // 2] * 1000}
    finally:
        proxy.terminate()
        proxy.wait(30)


def steady(port, hosts, stop):
    while not stop.is_set():
        for host in hosts:
            try:
                request(port, "GET", "/?sleep=20", host=host, timeout=10)
            except OSError:
                pass
            if stop.is_set():
                return
        time.sleep(0.05)


def controller_phase(n, tmp):
    listen, admin, controller_admin = free_port(), free_port(), free_port()
    config = os.path.join(tmp, f"controller-{n}.yaml")
    with open(config, "w") as f:
        f.write(f"""domain: example.com
proxy: {{ listen: "127.0.0.1:{listen}", admin: "127.0.0.1:{admin}", access-log: false }}
controller: {{ backend: local, admin: "127.0.0.1:{controller_admin}", ri-start-delay: 500ms,
              scrape-interval: 1s, decide-interval: 2s }}
functions:
""")
        for name in names(n):
            f.write(f'  - {{ name: {name}, namespace: bench, command: ["wavelink-fn"], '
                    f'annotations: {{ wavelink.dev/initial-scale: "0", wavelink.dev/window: 10s }} }}\n')
    proxy = subprocess.Popen([BIN, "proxy", "--config", config], stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(tmp, f"cproxy-{n}.log"), "w"))
    controller = subprocess.Popen([BIN, "controller", "--config", config], stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(tmp, f"controller-{n}.log"), "w"))
    stop = threading.Event()
    hosts = [f"{name}.bench.example.com" for name in active(n)]
    try:
        wait_ready(admin, "proxy")
        wait_ready(controller_admin, "controller")
        # Every function at rest: past its initial phase (one 10 s window) and a round after.
        time.sleep(15)
        rss_idle = rss_kib(controller.pid)
        loaders = [threading.Thread(target=steady, args=(listen, hosts[i::4], stop), daemon=True) for i in range(4)]
        for t in loaders:
            t.start()
        time.sleep(10)  # the active functions' RIs start
        cpu_before, rss_before = cpu_seconds(controller.pid), rss_kib(controller.pid)
        time.sleep(CONTROLLER_SECONDS)
        cpu = cpu_seconds(controller.pid) - cpu_before
        rounds = CONTROLLER_SECONDS / 2
        _, listing = request(controller_admin, "GET", "/v1/functions")
        scaled = sum(1 for f in json.loads(listing) if f.get("ready", 0) > 0)
        return {"functions": n, "cpu_ms_per_round": cpu * 1000 / rounds, "cpu_share": cpu / CONTROLLER_SECONDS,
                "rss_idle_kib": rss_idle, "rss_kib": max(rss_before, rss_kib(controller.pid)),
                "functions_with_ris": scaled}
    finally:
        stop.set()
        controller.terminate()
        controller.wait(60)
        proxy.terminate()
        proxy.wait(30)


def main():
    if not os.access(BIN, os.X_OK):
        sys.exit(f"missing {BIN}: run `make build` first")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        instance = f"127.0.0.1:{port}"
        fn = subprocess.Popen([BIN, "fn", "--listen", instance, "--instance-id", "scale"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proxies = [proxy_phase(n, tmp, instance) for n in SIZES]
        finally:
            fn.terminate()
            fn.wait(10)
        controllers = [controller_phase(n, tmp) for n in SIZES]
    example = os.path.join(os.path.dirname(BIN), "examples", "route_table")
    table = subprocess.run([example], capture_output=True, text=True, check=True)
    routes = [json.loads(line) for line in table.stdout.splitlines() if line.startswith("{")]

    base = proxies[0]
    print("\nProxy, 1% of functions with traffic:\n")
    print("| functions | RSS idle | per idle function (goal ≤ 1 KiB) | RSS after | /metrics | /stats | /stats?since | the same, compact (what the controller reads) | requests/s to one | vs 1 function | PUT instances |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in proxies:
        per = "—" if p["functions"] == base["functions"] else \
            f'{(p["rss_idle_kib"] - base["rss_idle_kib"]) * 1024 / (p["functions"] - base["functions"]):.0f} B'
        print(f'| {p["functions"]:,} | {p["rss_idle_kib"] / 1024:.1f} MiB | {per} | {p["rss_after_kib"] / 1024:.1f} MiB '
              f'| {p["metrics_bytes"] / 1024:.1f} KiB ({p["metrics_ms"]:.1f} ms) | {p["stats_bytes"] / 1024:.1f} KiB ({p["stats_ms"]:.1f} ms) '
              f'| {p["stats_since_bytes"] / 1024:.1f} KiB ({p["stats_since_ms"]:.1f} ms) '
              f'| {p["stats_compact_bytes"] / 1024:.1f} KiB ({p["stats_compact_ms"]:.1f} ms) | {p["rps"]:,.0f} '
              f'| {p["rps"] / base["rps"]:.2f}x | {p["put_ms"]:.2f} ms |')
    print("\nController (local backend, scale from zero, 1% with steady traffic):\n")
    print("| functions | CPU per decision round | CPU share | RSS idle | per idle function (goal ≤ 1 KiB) | RSS with traffic | functions with RIs |")
    print("|---|---|---|---|---|---|---|")
    cbase = controllers[0]
    for c in controllers:
        per = "—" if c["functions"] == cbase["functions"] else \
            f'{(c["rss_idle_kib"] - cbase["rss_idle_kib"]) * 1024 / (c["functions"] - cbase["functions"]):.0f} B'
        print(f'| {c["functions"]:,} | {c["cpu_ms_per_round"]:.1f} ms | {c["cpu_share"] * 100:.1f}% '
              f'| {c["rss_idle_kib"] / 1024:.1f} MiB | {per} | {c["rss_kib"] / 1024:.1f} MiB | {c["functions_with_ris"]} |')
    print("\nRoute table alone (median; goal with 10,000 functions: under 10 ms):\n")
    print("| functions | one function's instances | sync, one function's instances changed | sync adding or removing one | of which building the list |")
    print("|---|---|---|---|---|")
    for r in routes:
        print(f'| {r["functions"]:,} | {r["instance_change_ms"] * 1000:.1f} µs | {r["sync_ms"]:.2f} ms '
              f'| {r["sync_adding_ms"]:.2f} ms | {r["of_which_list_ms"]:.2f} ms |')


if __name__ == "__main__":
    main()
