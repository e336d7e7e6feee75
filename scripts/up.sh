#!/usr/bin/env bash
# Runs WaveLink locally from a config file: the proxy, plus Regular Instances for every
# function (`wavelink fn` processes on free loopback ports, registered through the proxy's admin
# API). Ctrl-C stops everything; no process is left behind.
#
#   scripts/up.sh [wavelink.yaml]        INSTANCES=2 by default
#
# Interim for `wavelink up`, which adds the Wavelet (Emergency Instances) and the autoscaler.
set -euo pipefail
CONFIG=${1:-wavelink.yaml}
BIN=${WAVELINK_BIN:-target/release/wavelink}
INSTANCES=${INSTANCES:-2}

check=$("$BIN" proxy --check --config "$CONFIG")
admin=$(awk '/^proxy /{print $5}' <<<"$check")
listen=$(awk '/^proxy /{print $3}' <<<"$check")
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

"$BIN" proxy --config "$CONFIG" &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://$admin/readyz" >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "up: the proxy exited" >&2; exit 1; }
  sleep 0.1
done

for function in $functions; do
  addrs=()
  for i in $(seq "$INSTANCES"); do
    fifo=$(mktemp -u); mkfifo "$fifo"
    WAVELINK_INSTANCE_ID="${function//\//-}-$i" "$BIN" fn --listen 127.0.0.1:0 >"$fifo" &
    pids+=($!)
    read -r _ _ addr <"$fifo"; rm -f "$fifo"
    addrs+=("\"$addr\"")
  done
  body="[$(IFS=,; echo "${addrs[*]}")]"
  curl -sf -X PUT -H 'content-type: application/json' --data "$body" \
    "http://$admin/v1/functions/$function/instances" >/dev/null
  host=$(awk -v f="$function" '$2==f {print $4}' <<<"$check" | sed 's#http://##')
  echo "up: $function has $INSTANCES instances: ${addrs[*]}"
  echo "    curl -H 'Host: $host' 'http://$listen/?ms=5'"
done
echo "up: metrics at http://$admin/metrics, stats at http://$admin/stats; Ctrl-C to stop"
wait "${pids[0]}"
