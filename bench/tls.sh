#!/usr/bin/env bash
# TLS benchmark: wavelink proxy's TLS listener next to nginx terminating TLS, same certificate
# (ECDSA P-256), same upstream (one `wavelink fn`), one worker each, in one sitting on loopback.
#
#   bench/tls.sh                   # ROUNDS=3 DURATION=10 CONNECTIONS=50 HANDSHAKES=4000
#
# Three loads, each per target:
#   h1        HTTP/1.1 over TLS with keep-alive          (h2load --h1, CONNECTIONS connections)
#   h2        HTTP/2 over TLS, 10 streams per connection  (h2load, ALPN h2)
#   handshake a new TLS connection per request            (ab without -k: full handshakes)
# Prints requests/s and the proxy's CPU microseconds per request (user+sys of its processes, from
# /proc), and each as a ratio to nginx; the handshake load's requests/s are handshakes/s. Targets
# are interleaved round by round and the median round is reported. It measures; it asserts nothing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BIN=${WAVELINK_BIN:-$ROOT/target/release/wavelink}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
HANDSHAKES=${HANDSHAKES:-4000}
HOST=bench.default.example.com
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for tool in "$BIN" "$NGINX"; do [ -x "$tool" ] || { echo "missing $tool (make bench installs it)" >&2; exit 1; }; done
for tool in h2load ab openssl; do command -v "$tool" >/dev/null || { echo "missing $tool (make bench installs it)" >&2; exit 1; }; done

DIR=$(mktemp -d "${TMPDIR:-/tmp}/wavelink-bench-tls.XXXXXX")
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$HOST" \
  -addext "subjectAltName=DNS:*.default.example.com" -keyout "$DIR/site.key" -out "$DIR/site.crt" 2>/dev/null

FN_PORT=$(free_port)
start "$BIN" fn --listen "127.0.0.1:$FN_PORT"
wait_port "$FN_PORT"
UPSTREAM=127.0.0.1:$FN_PORT

WL_PORT=$(free_port); WL_ADMIN=$(free_port); WL_PLAIN=$(free_port)
render "$HERE/conf/wavelink-tls.yaml.in" "127.0.0.1:$WL_PORT" "$UPSTREAM" "127.0.0.1:$WL_ADMIN" "127.0.0.1:$WL_PLAIN" >"$DIR/wavelink.yaml"
WAVELINK_LOG=warn start "$BIN" proxy --config "$DIR/wavelink.yaml"; WL_PGID=$STARTED
NG_PORT=$(free_port)
render "$HERE/conf/nginx-tls.conf.in" "127.0.0.1:$NG_PORT" "$UPSTREAM" >"$DIR/nginx.conf"
start "$NGINX" -c "$DIR/nginx.conf" -e "$DIR/nginx-error.log"; NG_PGID=$STARTED
for p in "$WL_PORT" "$NG_PORT"; do wait_port "$p"; done

declare -A PORT=([wavelink]=$WL_PORT [nginx]=$NG_PORT)
declare -A GROUP=([wavelink]=$WL_PGID [nginx]=$NG_PGID)
TARGETS=(wavelink nginx)
LOADS=(h1 h2 handshake)

# Runs one load against a target; prints "<requests/s> <requests done> <failed>".
run_load() {
  local load=$1 port=$2 duration=$3 out
  case $load in
    h1) out=$(h2load --h1 -t1 -c"$CONNECTIONS" -D "$duration" -H ":authority: $HOST" "https://127.0.0.1:$port/" 2>&1)
        awk '/^finished in/ {gsub(",", "", $4); rps=$4} /^requests:/ {done=$8; failed=$10} END {print rps, done, failed}' <<<"$out" ;;
    h2) out=$(h2load -t1 -c"$CONNECTIONS" -m10 -D "$duration" -H ":authority: $HOST" "https://127.0.0.1:$port/" 2>&1)
        awk '/^finished in/ {gsub(",", "", $4); rps=$4} /^requests:/ {done=$8; failed=$10} END {print rps, done, failed}' <<<"$out" ;;
    handshake) out=$(ab -q -n "$HANDSHAKES" -c "$CONNECTIONS" -H "Host: $HOST" "https://127.0.0.1:$port/" 2>&1)
        awk '/^Requests per second:/ {rps=$4} /^Complete requests:/ {done=$3} /^Failed requests:/ {failed=$3} END {print rps, done, failed}' <<<"$out" ;;
  esac
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $CONNECTIONS connections, ${DURATION}s per keep-alive load, $HANDSHAKES handshakes, $ROUNDS rounds" >&2
for target in "${TARGETS[@]}"; do  # warm-up: connection pools, page cache
  for load in "${LOADS[@]}"; do run_load "$load" "${PORT[$target]}" 2 >/dev/null; done
done
for round in $(seq "$ROUNDS"); do
  for load in "${LOADS[@]}"; do
    for target in "${TARGETS[@]}"; do
      before=$(group_ticks "${GROUP[$target]}")
      read -r rps done failed <<<"$(run_load "$load" "${PORT[$target]}" "$DURATION")"
      after=$(group_ticks "${GROUP[$target]}")
      cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="${done:-0}" 'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }')
      echo "$round $load $target $rps $cpu_us" >>"$DIR/rounds"
      printf 'round %s %-9s %-8s %10s req/s  cpu/req %7s us  failed %s\n' "$round" "$load" "$target" "$rps" "$cpu_us" "${failed:-?}" >&2
    done
  done
done

echo
echo "| load | target | req/s | proxy CPU µs/req | req/s vs nginx | CPU/req vs nginx |"
echo "|---|---|---|---|---|---|"
for load in "${LOADS[@]}"; do
  summary=$(for target in "${TARGETS[@]}"; do
    awk -v l="$load" -v t="$target" '$2==l && $3==t' "$DIR/rounds" | sort -k4 -n | awk -v r="$ROUNDS" 'NR==int((r+1)/2)'
  done)
  read -r _ _ _ n_rps n_cpu <<<"$(awk '$3=="nginx"' <<<"$summary")"
  while read -r _ _ target rps cpu; do
    awk -v l="$load" -v t="$target" -v rps="$rps" -v cpu="$cpu" -v nr="$n_rps" -v nc="$n_cpu" 'BEGIN {
      printf "| %s | %s | %.0f | %.1f | %.2fx | %.2fx |\n", l, t, rps, cpu, rps / nr, cpu / nc
    }'
  done <<<"$summary"
done
