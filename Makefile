# The two commands of a fresh machine:
#   make up     run WaveLink locally (`wavelink up`: proxy, Wavelet, controller) from wavelink.yaml
#   make test   run every test (starting the test apiserver of ../shared/k8s-testenv if present)
# Both install missing prerequisites first (scripts/deps.sh: cmake for Pingora's zlib-ng, protoc for
# containerd's API; for the tests also containerd, runc and a static busybox).

CARGO ?= cargo
CONFIG ?= wavelink.yaml

.PHONY: deps build up test lint bench bench-deps experiment clean

deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --release --locked

up: build
	target/release/wavelink up --config $(CONFIG)

test:
	@scripts/deps.sh test
	CARGO=$(CARGO) scripts/test.sh

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

bench-deps:
	@scripts/deps.sh bench

# Benchmarks measure; they are not tests. Results go to docs/benchmarks.md by hand.
bench: build bench-deps
	$(CARGO) build --release --locked -p wavelink-proxy --example bare_pingora --example route_table
	bench/proxy.sh
	bench/tls.sh
	bench/fn_startup.py
	bench/ei.py
	@if [ "$$(id -u)" = 0 ]; then bench/ei_containerd.py; else echo "bench/ei_containerd.py skipped: containerd needs root"; fi
	bench/load.sh
	bench/soak.py
	bench/functions_scale.py
	@if [ -x ../shared/k8s-testenv/start.sh ]; then bench/functions_k8s.py; else echo "bench/functions_k8s.py skipped: no ../shared/k8s-testenv (a real apiserver) beside this checkout"; fi

# The headline experiment: every scaling mode side by side on one trace (docs/benchmarks.md).
experiment: build
	target/release/wavelink experiment $(EXPERIMENT_ARGS)

clean:
	$(CARGO) clean
