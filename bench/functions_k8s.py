#!/usr/bin/env python3
"""Ten thousand functions on Kubernetes: what watching their Deployments and EndpointSlices
costs the proxy, the Wavelet and the controller.

    bench/functions_k8s.py          # SIZES=1,1000,10000; needs ../shared/k8s-testenv

Against the real apiserver of ../shared/k8s-testenv (started and stopped here), per size N, in a
namespace of its own: N function Deployments (a pod template with one container: image,
command, env, resources; two annotations; min-scale 1 so the controller has nothing to write)
and N EndpointSlices, one ready endpoint each. Then a proxy, a Wavelet and a controller
(Kubernetes backend) scoped to that namespace; once the proxy lists all N functions and the
three have settled, each one's resident memory, and the memory per function against the
1-function case. Last, the time from adding an endpoint to one function's EndpointSlice to the
proxy routing to it (one cluster sync with N functions: watch event, the watch's settle delay,
catalog, route table).
It measures and reports; goals are printed beside the results, not asserted.
"""
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import free_port, rss_kib, wait_ready

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("WAVELINK_BIN", os.path.join(ROOT, "target", "release", "wavelink"))
TESTENV = os.environ.get("WAVELINK_K8S_TESTENV", os.path.join(ROOT, "..", "shared", "k8s-testenv"))
SIZES = [int(s) for s in os.environ.get("SIZES", "1,1000,10000").split(",")]
WRITERS = 8


class Api:
    """A keep-alive HTTPS connection to the apiserver (anonymous, as the testenv allows)."""

    def __init__(self, server):
        match = re.match(r"https://([^:/]+):(\d+)", server)
        self.host, self.port = match.group(1), int(match.group(2))
        self.context = ssl._create_unverified_context()
        self.conn = None

    def call(self, method, path, body=None, content_type="application/json"):
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=60)
                data = json.dumps(body).encode() if body is not None else None
                self.conn.request(method, path, body=data, headers={"Content-Type": content_type})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt == 2:
                    raise
        return None


def deployment(name):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"wavelink.dev/function": name, "app": name},
                     "annotations": {"wavelink.dev/min-scale": "1", "wavelink.dev/container-concurrency": "4"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                     "name": "fn", "image": "registry.example.com/team/functions:1.4.2",
                     "command": ["/bin/fn"], "args": ["--handler", name],
                     "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "FUNCTION", "value": name},
                             {"name": "REGION", "value": "eu-west-1"}],
                     "resources": {"limits": {"memory": "256Mi", "cpu": "500m"},
                                   "requests": {"memory": "128Mi", "cpu": "100m"}},
                     "ports": [{"name": "http", "containerPort": 8080}]}]}}},
    }


def endpoint_slice(name, index):
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-abcde", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"],
                       "conditions": {"ready": True, "serving": True, "terminating": False},
                       "targetRef": {"kind": "Pod", "name": f"{name}-7d9f8-x2k4p"}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def populate(server, namespace, n):
    Api(server).call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": namespace}})
    names = [f"f{i:05d}" for i in range(n)]
    errors = []

    def write(part):
        api = Api(server)
        for i in part:
            for path, body in ((f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment(names[i])),
                               (f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                                endpoint_slice(names[i], i))):
                status, data = api.call("POST", path, body)
                if status not in (200, 201, 409):
                    errors.append((status, data[:200]))

    started = time.perf_counter()
    threads = [threading.Thread(target=write, args=(range(k, n, WRITERS),)) for k in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"creating objects failed: {errors[:3]}")
    return time.perf_counter() - started


def functions_listed(admin):
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
    conn.request("GET", "/v1/functions", headers={"Host": "admin"})
    body = conn.getresponse().read()
    conn.close()
    return json.loads(body)


def count_functions(admin):
    return len(functions_listed(admin))


def settled_rss(pids, seconds=3):
    """RSS of each process once it stopped growing (sampled every `seconds`)."""
    last = None
    for _ in range(20):
        now = [rss_kib(pid) for pid in pids]
        if last is not None and all(abs(a - b) < 256 for a, b in zip(now, last)):
            return now
        last = now
        time.sleep(seconds)
    return last


def measure(server, kubeconfig, n, tmp):
    namespace = f"scale-{n}"
    created = populate(server, namespace, n)
    proxy_port, proxy_admin, wavelet_port, wavelet_admin, controller_admin = (free_port() for _ in range(5))
    config = os.path.join(tmp, f"{namespace}.yaml")
    with open(config, "w") as f:
        f.write(f"""domain: example.com
proxy: {{ listen: "127.0.0.1:{proxy_port}", admin: "127.0.0.1:{proxy_admin}", grace-period: 1s }}
controller: {{ backend: kubernetes, scrape-interval: 1s, decide-interval: 1s }}
kubernetes: {{ namespace: {namespace}, lease: {namespace}/wavelink-controller }}
""")
    env = dict(os.environ, KUBECONFIG=kubeconfig, WAVELINK_LOG="warn")
    log = open(os.path.join(tmp, f"{namespace}.log"), "w")
    procs = []
    try:
        for argv in ([BIN, "proxy", "--config", config],
                     [BIN, "wavelet", "--config", config, "--listen", f"127.0.0.1:{wavelet_port}",
                      "--admin", f"127.0.0.1:{wavelet_admin}", "--state-dir", os.path.join(tmp, f"state-{n}")],
                     [BIN, "controller", "--config", config, "--admin", f"127.0.0.1:{controller_admin}",
                      "--proxy", f"127.0.0.1:{proxy_admin}", "--identity", "bench"]):
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log))
        for port, what in ((proxy_admin, "proxy"), (wavelet_admin, "wavelet"), (controller_admin, "controller")):
            wait_ready(port, what, limit=120)
        deadline = time.time() + 120
        while count_functions(proxy_admin) < n and time.time() < deadline:
            time.sleep(0.5)
        listed = count_functions(proxy_admin)
        rss = settled_rss([p.pid for p in procs])

        # One change: a second ready endpoint in one function's EndpointSlice, until the proxy
        # lists it among the function's instances.
        api = Api(server)
        slice_body = endpoint_slice("f00000", 0)
        second = dict(slice_body["endpoints"][0], addresses=["10.255.0.1"])
        patch = {"endpoints": [slice_body["endpoints"][0], second]}
        started = time.perf_counter()
        status, _ = api.call("PATCH", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/f00000-abcde",
                             patch, content_type="application/merge-patch+json")
        assert status == 200, status
        sync = None
        while time.perf_counter() - started < 30:
            conn = http.client.HTTPConnection("127.0.0.1", proxy_admin, timeout=30)
            conn.request("GET", f"/v1/functions/{namespace}/f00000/instances", headers={"Host": "admin"})
            body = conn.getresponse().read()
            conn.close()
            if b"10.255.0.1" in body:
                sync = time.perf_counter() - started
                break
            time.sleep(0.005)
        return {"n": n, "created": created, "listed": listed, "rss": rss, "sync": sync}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    if not os.access(os.path.join(TESTENV, "start.sh"), os.X_OK):
        sys.exit(f"no k8s-testenv at {TESTENV} (set WAVELINK_K8S_TESTENV)")
    if not os.access(BIN, os.X_OK):
        sys.exit(f"missing {BIN}: run `make build` first")
    for attempt in range(3):  # it picks free ports, which another process can take meanwhile
        started = subprocess.run([os.path.join(TESTENV, "start.sh")], capture_output=True, text=True)
        if started.returncode == 0:
            break
        print(f"k8s-testenv did not start (attempt {attempt + 1}): {started.stderr.strip()}", file=sys.stderr)
    else:
        sys.exit("k8s-testenv does not start")
    exports = started.stdout
    env = dict(re.findall(r"export (\w+)=(\S+)", exports))
    kubeconfig, testenv_dir = env["KUBECONFIG"], env["WAVELINK_TESTENV_DIR"]
    with open(kubeconfig) as f:
        server = re.search(r"server: (\S+)", f.read()).group(1)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="wavelink-k8s-scale.") as tmp:
            for n in SIZES:
                results.append(measure(server, kubeconfig, n, tmp))
    finally:
        subprocess.run([os.path.join(TESTENV, "stop.sh"), testenv_dir], capture_output=True)

    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} cores, "
          f"k8s-testenv apiserver, release build")
    print("| functions (Deployments + EndpointSlices) | created in s | listed by the proxy "
          "| proxy RSS MiB | Wavelet RSS MiB | controller RSS MiB | one EndpointSlice change to the proxy, ms |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        sync = f"{r['sync'] * 1000:.0f}" if r["sync"] is not None else "not seen in 30 s"
        rss = " | ".join(f"{kib / 1024:.1f}" for kib in r["rss"])
        print(f"| {r['n']:,} | {r['created']:.1f} | {r['listed']:,} | {rss} | {sync} |")
    base = results[0]
    print()
    print("| per configured function, against the first size | proxy KiB | Wavelet KiB | controller KiB |")
    print("|---|---|---|---|")
    for r in results[1:]:
        per = [(now - was) / max(1, r["n"] - base["n"]) for now, was in zip(r["rss"], base["rss"])]
        print(f"| {r['n']:,} | " + " | ".join(f"{kib:.2f}" for kib in per) + " |")


if __name__ == "__main__":
    main()
