#!/usr/bin/env bash
# Runs WaveLink locally from a config file: the proxy, the first Wavelet of `wavelets:`
# (Emergency Instances for the overflow), and Regular Instances for every function
# (`wavelink-fn` processes on free loopback ports, registered through the proxy's admin API).
# Ctrl-C stops everything; no process is left behind.
#
#   scripts/up.sh [wavelink.yaml]        INSTANCES=2 Regular Instances per function by default
#
# Interim for `wavelink up`, which adds the autoscaler (Regular Instances that follow the load).
set -euo pipefail
CONFIG=${1:-wavelink.yaml}
BIN=${WAVELINK_BIN:-target/release/wavelink}
FN_BIN=$(dirname "$BIN")/wavelink-fn
INSTANCES=${INSTANCES:-2}

check=$("$BIN" proxy --check --config "$CONFIG")
admin=$(awk '/^proxy /{print $5}' <<<"$check")
listen=$(awk '/^proxy /{print $3}' <<<"$check")
wavelet_admin=$(awk '/^wavelet /{print $5; exit}' <<<"$check")
functions=$(awk '/^ok /{print $2}' <<<"$check")

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM EXIT

wait_ready() {  # admin address, name, pid
  for _ in $(seq 100); do
    curl -sf "http://$1/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$3" 2>/dev/null || { echo "up: the $2 exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "up: the $2 did not become ready" >&2; exit 1
}

if [ -n "$wavelet_admin" ] && [ "$wavelet_admin" != "-" ]; then
  "$BIN" wavelet --config "$CONFIG" &
  pids+=($!)
  wait_ready "$wavelet_admin" wavelet "$!"
fi
"$BIN" proxy --config "$CONFIG" &
pids+=($!)
wait_ready "$admin" proxy "$!"

for function in $functions; do
  addrs=()
  for i in $(seq "$INSTANCES"); do
    fifo=$(mktemp -u); mkfifo "$fifo"
    WAVELINK_INSTANCE_ID="${function//\//-}-ri-$i" "$FN_BIN" --listen 127.0.0.1:0 >"$fifo" &
    pids+=($!)
    read -r _ _ addr <"$fifo"; rm -f "$fifo"
    addrs+=("\"$addr\"")
  done
  body="[$(IFS=,; echo "${addrs[*]}")]"
  curl -sf -X PUT -H 'content-type: application/json' --data "$body" \
    "http://$admin/v1/functions/$function/instances" >/dev/null
  host=$(awk -v f="$function" '$2==f {print $4}' <<<"$check" | sed 's#http://##')
  echo "up: $function has $INSTANCES Regular Instances: ${addrs[*]}"
  echo "    curl -i -H 'Host: $host' 'http://$listen/?ms=5'    (x-wavelink-track says which track served it)"
done
echo "up: proxy metrics http://$admin/metrics and stats http://$admin/stats;" \
  "Wavelet instances http://${wavelet_admin:-none}/v1/instances; Ctrl-C to stop"
wait "${pids[-1]}"
