#!/usr/bin/env bash
# Proxy benchmark: wrk against one `wavelink fn`, directly and through wavelink proxy, a bare
# Pingora proxy (proxy/examples/bare_pingora.rs: what Pingora itself costs), nginx and haproxy
# (plain reverse proxies with upstream keep-alive), in one sitting on loopback.
#
#   bench/proxy.sh                 # ROUNDS=3 DURATION=10s CONNECTIONS=50 THREADS=2
#
# Prints requests/s, p50/p99 latency and the proxy's CPU microseconds per request (user+sys of
# its processes, from /proc), each also as a ratio to nginx. Targets are interleaved round by
# round and the median round is reported, so drift on a shared machine hits all alike.
# It measures; it asserts nothing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BIN=${WAVELINK_BIN:-$ROOT/target/release/wavelink}
BARE=${BARE_PINGORA_BIN:-$ROOT/target/release/examples/bare_pingora}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
HOST=bench.default.example.com
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
for tool in "$BIN" "$BARE" "$NGINX" "$HAPROXY"; do [ -x "$tool" ] || { echo "missing $tool (make bench installs it)" >&2; exit 1; }; done
command -v wrk >/dev/null || { echo "missing wrk (make bench installs it)" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/wavelink-bench.XXXXXX")
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

FN_PORT=$(free_port)
start "$BIN" fn --listen "127.0.0.1:$FN_PORT"
wait_port "$FN_PORT"
UPSTREAM=127.0.0.1:$FN_PORT

WL_PORT=$(free_port); WL_ADMIN=$(free_port)
render "$HERE/conf/wavelink.yaml.in" "127.0.0.1:$WL_PORT" "$UPSTREAM" "127.0.0.1:$WL_ADMIN" >"$DIR/wavelink.yaml"
WAVELINK_LOG=warn start "$BIN" proxy --config "$DIR/wavelink.yaml"; WL_PGID=$STARTED
BP_PORT=$(free_port)
start "$BARE" "127.0.0.1:$BP_PORT" "$UPSTREAM"; BP_PGID=$STARTED
NG_PORT=$(free_port)
render "$HERE/conf/nginx.conf.in" "127.0.0.1:$NG_PORT" "$UPSTREAM" >"$DIR/nginx.conf"
start "$NGINX" -c "$DIR/nginx.conf" -e "$DIR/nginx-error.log"; NG_PGID=$STARTED
HA_PORT=$(free_port)
render "$HERE/conf/haproxy.cfg.in" "127.0.0.1:$HA_PORT" "$UPSTREAM" >"$DIR/haproxy.cfg"
start "$HAPROXY" -f "$DIR/haproxy.cfg" -db; HA_PGID=$STARTED
for p in "$WL_PORT" "$BP_PORT" "$NG_PORT" "$HA_PORT"; do wait_port "$p"; done

declare -A PORT=([direct]=$FN_PORT [wavelink]=$WL_PORT [pingora-bare]=$BP_PORT [nginx]=$NG_PORT [haproxy]=$HA_PORT)
declare -A GROUP=([direct]="" [wavelink]=$WL_PGID [pingora-bare]=$BP_PGID [nginx]=$NG_PGID [haproxy]=$HA_PGID)
TARGETS=(direct wavelink pingora-bare nginx haproxy)

# Converts wrk's "812.00us" / "1.23ms" / "1.02s" to microseconds.
to_us() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'; }

echo "# $(date -u +%FT%TZ) $(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds" >&2
for target in "${TARGETS[@]}"; do  # warm-up: connection pools, page cache
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "Host: $HOST" "http://127.0.0.1:${PORT[$target]}/" >/dev/null
done
for round in $(seq "$ROUNDS"); do
  for target in "${TARGETS[@]}"; do
    group=${GROUP[$target]}
    before=0; [ -n "$group" ] && before=$(group_ticks "$group")
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Host: $HOST" "http://127.0.0.1:${PORT[$target]}/")
    after=0; [ -n "$group" ] && after=$(group_ticks "$group")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    errors=$(awk '/Non-2xx or 3xx responses:|Socket errors:/ {print}' <<<"$out" | tr '\n' ' ')
    p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
    cpu_us="-"
    [ -n "$group" ] && cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
    echo "$round $target $rps $p50 $p99 $cpu_us" >>"$DIR/rounds"
    printf 'round %s %-12s %10s req/s  p50 %7.0f us  p99 %7.0f us  cpu/req %6s us %s\n' "$round" "$target" "$rps" "$p50" "$p99" "$cpu_us" "$errors" >&2
  done
done

# Median round per target (by requests/s), then ratios to nginx.
summary=$(for target in "${TARGETS[@]}"; do
  awk -v t="$target" '$2==t' "$DIR/rounds" | sort -k3 -n | awk -v r="$ROUNDS" 'NR==int((r+1)/2)'
done)
nginx_line=$(awk '$2=="nginx"' <<<"$summary")
read -r _ _ n_rps n_p50 n_p99 n_cpu <<<"$nginx_line"
echo
echo "| target | req/s | p50 µs | p99 µs | proxy CPU µs/req | req/s vs nginx | p50 vs nginx | p99 vs nginx | CPU/req vs nginx |"
echo "|---|---|---|---|---|---|---|---|---|"
while read -r _ target rps p50 p99 cpu; do
  awk -v t="$target" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v cpu="$cpu" \
      -v nr="$n_rps" -v n50="$n_p50" -v n99="$n_p99" -v nc="$n_cpu" 'BEGIN {
    cr = (cpu == "-") ? "-" : sprintf("%.2fx", cpu / nc)
    printf "| %s | %.0f | %.0f | %.0f | %s | %.2fx | %.2fx | %.2fx | %s |\n", t, rps, p50, p99, cpu, rps / nr, p50 / n50, p99 / n99, cr
  }'
done <<<"$summary"
