#!/usr/bin/env python3
"""Start-up to first response of the function workload, next to baselines measured in the same
sitting: `wavelink-fn` (the small binary instances run) and `wavelink fn` (the same code in the
main binary).

    bench/fn_startup.py            # N=200 runs of each, release binary

Each `fn` run binds a listening socket, hands it over as fd 3 (LISTEN_FDS=1, as a Wavelet does),
sends the request at once (it waits in the kernel backlog) and stops the clock when the response
is complete. Baselines: spawning /bin/true and waiting for it; spawning `wavelink --version`
(exec and argument parsing of the same binary, no server). It measures; it asserts nothing.
"""
import os
import statistics
import subprocess
import sys
import time

from spawnbench import spawn_to_response

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("WAVELINK_BIN", os.path.join(ROOT, "target", "release", "wavelink"))
FN_BIN = os.path.join(os.path.dirname(BIN), "wavelink-fn")
N = int(os.environ.get("N", "200"))


def timed_run(argv):
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def summary(name, samples, baseline=None):
    samples = sorted(samples)
    p50 = statistics.median(samples) * 1e3
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3
    ratio = "" if baseline is None else f"| {p50 / baseline[0]:.2f}x | {p99 / baseline[1]:.2f}x"
    print(f"| {name} | {p50:.2f} | {p99:.2f} {ratio or '| - | -'} |")
    return p50, p99


def main():
    for binary in (BIN, FN_BIN):
        if not os.access(binary, os.X_OK):
            sys.exit(f"missing {binary}: run `make build` first")
    # Warm the page cache and the dynamic loader once.
    timed_run([BIN, "--version"])
    spawn_to_response([BIN, "fn"])
    spawn_to_response([FN_BIN])
    runs = {"spawn /bin/true": [], "spawn wavelink --version": [], "wavelink fn: spawn to first response": [],
            "wavelink-fn: spawn to first response": []}
    for _ in range(N):  # interleaved, so drift hits all alike
        runs["spawn /bin/true"].append(timed_run(["/bin/true"]))
        runs["spawn wavelink --version"].append(timed_run([BIN, "--version"]))
        runs["wavelink fn: spawn to first response"].append(spawn_to_response([BIN, "fn"]))
        runs["wavelink-fn: spawn to first response"].append(spawn_to_response([FN_BIN]))
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} cores, N={N}")
    print("| run | p50 ms | p99 ms | p50 vs /bin/true | p99 vs /bin/true |")
    print("|---|---|---|---|---|")
    baseline = summary("spawn /bin/true", runs["spawn /bin/true"])
    summary("spawn wavelink --version", runs["spawn wavelink --version"], baseline)
    summary("wavelink fn: spawn to first response", runs["wavelink fn: spawn to first response"], baseline)
    summary("wavelink-fn: spawn to first response", runs["wavelink-fn: spawn to first response"], baseline)


if __name__ == "__main__":
    main()
