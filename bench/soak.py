#!/usr/bin/env python3
"""Soak of the proxy: a burst at ten times capacity, then steady load, then idle.

    bench/soak.py                  # BURST=60 STEADY=30 IDLE=30 seconds, release binary

Two `wavelink fn` instances with container-concurrency 4 (capacity 8 requests of 50 ms) behind
`wavelink proxy` (async mode, queue-timeout 2 s). The burst runs 80 closed-loop clients, the
steady phase 4, then nothing. Every answer must be a 2xx, or a 503 carrying Retry-After; the
proxy's resident memory is sampled throughout (idle before, peak, after the idle phase), and at
the end no slot may be held or queued. It measures and reports; the goal (after-idle memory
within 2x of the idle figure) is printed beside the result, not asserted.
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
BURST, STEADY, IDLE = (int(os.environ.get(k, d)) for k, d in (("BURST", "60"), ("STEADY", "30"), ("IDLE", "30")))
HOST = "soak.default.example.com"





class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, key):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1


def client(port, stop, tally):
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/?sleep=50", headers={"Host": HOST})
            response = conn.getresponse()
            response.read()
            if 200 <= response.status < 300:
                tally.add("2xx")
            elif response.status == 503 and response.getheader("retry-after"):
                tally.add("503 + Retry-After")
            else:
                tally.add(f"other {response.status}")
            if response.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            tally.add(f"error {type(e).__name__}")
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def phase(port, clients, seconds, tally):
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(port, stop, tally), daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)


def main():
    if not os.access(BIN, os.X_OK):
        sys.exit(f"missing {BIN}: run `make build` first")
    with tempfile.TemporaryDirectory() as tmp:
        fns = []
        addrs = []
        for i in range(2):
            port = free_port()
            fns.append(subprocess.Popen([BIN, "fn", "--listen", f"127.0.0.1:{port}", "--instance-id", f"soak-{i}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            addrs.append(f'"127.0.0.1:{port}"')
        listen, admin = free_port(), free_port()
        config = os.path.join(tmp, "wavelink.yaml")
        with open(config, "w") as f:
            f.write(f"""domain: example.com
proxy: {{ listen: "127.0.0.1:{listen}", admin: "127.0.0.1:{admin}", grace-period: 2s }}
functions:
  - name: soak
    annotations: {{ wavelink.dev/scaling-mode: async, wavelink.dev/container-concurrency: "4", wavelink.dev/queue-timeout: 2s }}
    instances: [{", ".join(addrs)}]
""")
        proxy = subprocess.Popen([BIN, "proxy", "--config", config], stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(tmp, "proxy.log"), "w"))
        try:
            wait_ready(admin, "proxy")
            time.sleep(1)
            idle_before = rss_kib(proxy.pid)
            peak = [idle_before]
            sampling = threading.Event()

            def sample():
                while not sampling.is_set():
                    peak[0] = max(peak[0], rss_kib(proxy.pid))
                    time.sleep(0.5)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            tallies = {"burst (80 clients, 10x capacity)": Tally(), "steady (4 clients)": Tally()}
            phase(listen, 80, BURST, tallies["burst (80 clients, 10x capacity)"])
            phase(listen, 4, STEADY, tallies["steady (4 clients)"])
            time.sleep(IDLE)
            sampling.set()
            after_idle = rss_kib(proxy.pid)
            conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
            conn.request("GET", "/stats")
            stats = json.loads(conn.getresponse().read())
            f = stats["functions"][0]
            held = f["in_flight"]["regular"] + f["in_flight"]["queued"]
            alive = proxy.poll() is None and all(p.poll() is None for p in fns)
        finally:
            proxy.terminate()
            for p in fns:
                p.terminate()
            for p in [proxy, *fns]:
                p.wait(30)
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} cores, "
          f"burst {BURST} s, steady {STEADY} s, idle {IDLE} s")
    print("| phase | answers |")
    print("|---|---|")
    bad = 0
    for name, tally in tallies.items():
        print(f"| {name} | {', '.join(f'{k}: {v}' for k, v in sorted(tally.counts.items()))} |")
        bad += sum(v for k, v in tally.counts.items() if k not in ("2xx", "503 + Retry-After"))
    print()
    print("| proxy RSS | MiB |")
    print("|---|---|")
    print(f"| idle before | {idle_before / 1024:.1f} |")
    print(f"| peak | {peak[0] / 1024:.1f} |")
    print(f"| after {IDLE} s idle | {after_idle / 1024:.1f} ({after_idle / idle_before:.2f}x idle; goal: at most 2x) |")
    print()
    print(f"answers other than 2xx or 503 + Retry-After: {bad}; slots held or queued after: {held}; "
          f"every process alive to the end: {alive}")


if __name__ == "__main__":
    main()
