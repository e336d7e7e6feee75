#!/usr/bin/env bash
# The test command: every test of the workspace. Kubernetes tests need a real apiserver; when
# none is given (KUBECONFIG + WAVELINK_TESTENV_DIR) and ../shared/k8s-testenv is present, one is
# started here on loopback and stopped afterwards. Without it those tests say SKIPPED and pass.
#
#   scripts/test.sh [cargo test arguments...]
#   WAVELINK_K8S_TESTENV=/path/to/k8s-testenv scripts/test.sh    another location
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
TESTENV=${WAVELINK_K8S_TESTENV:-../shared/k8s-testenv}

if [ -z "${WAVELINK_TESTENV_DIR:-}" ] && [ -x "$TESTENV/start.sh" ]; then
  # Its start has been seen to fail once in a while (installing resource types); try again.
  env_lines=""
  for attempt in 1 2 3; do
    if env_lines=$("$TESTENV/start.sh"); then break; fi
    echo "test apiserver did not start (attempt $attempt of 3)" >&2
    env_lines=""
    sleep 2
  done
  [ -n "$env_lines" ] || { echo "test apiserver did not start; see the messages above" >&2; exit 1; }
  eval "$env_lines"
  trap '"$TESTENV/stop.sh" "$WAVELINK_TESTENV_DIR" >/dev/null 2>&1 || true' EXIT
  echo "test apiserver: $(awk '/server:/{print $2}' "$KUBECONFIG")"
elif [ -z "${WAVELINK_TESTENV_DIR:-}" ]; then
  echo "no test apiserver ($TESTENV/start.sh not found): Kubernetes tests will be SKIPPED"
fi
"$CARGO" test --workspace --locked "$@"
