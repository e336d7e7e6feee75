#!/usr/bin/env bash
# Load tool benchmark: `wavelink load` next to wrk, same server, same threads and connections,
# in one sitting on loopback. The server is nginx answering by itself (cheap), so the load
# generators' own efficiency decides the rate.
#
#   bench/load.sh       # ROUNDS=3 DURATION=10s CONNECTIONS=50 THREADS=2
#
# Prints requests/s and latency percentiles of each (median round), with ratios to wrk; then an
# open-loop run at half the measured rate, corrected and uncorrected, to show they agree when
# the server keeps up. It measures; it asserts nothing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BIN=${WAVELINK_BIN:-$ROOT/target/release/wavelink}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for tool in "$BIN" "$NGINX"; do [ -x "$tool" ] || { echo "missing $tool (make bench builds and installs it)" >&2; exit 1; }; done
command -v wrk >/dev/null || { echo "missing wrk (make bench installs it)" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/wavelink-load-bench.XXXXXX")
trap 'kill -KILL -- -$NGINX_PGID 2>/dev/null || true; rm -rf "$DIR"' EXIT INT TERM
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s#@DIR@#$DIR#g" -e "s#@LISTEN@#127.0.0.1:$PORT#g" "$HERE/conf/nginx-static.conf.in" >"$DIR/nginx.conf"
setsid "$NGINX" -c "$DIR/nginx.conf" -e "$DIR/nginx-static-error.log" >/dev/null 2>&1 & NGINX_PGID=$!; disown
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
URL="http://127.0.0.1:$PORT/"

to_us() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'; }
# Reads wrk-layout output (both tools print it): req/s p50 p90 p99, in microseconds.
summarise() {
  local out=$1
  printf '%s %s %s %s\n' "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")" \
    "$(to_us "$(awk '$1=="50%" || $1=="50.000%" {print $2; exit}' <<<"$out")")" \
    "$(to_us "$(awk '$1=="90%" || $1=="90.000%" {print $2; exit}' <<<"$out")")" \
    "$(to_us "$(awk '$1=="99%" || $1=="99.000%" {print $2; exit}' <<<"$out")")"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, nginx return 200" >&2
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$URL" >/dev/null
"$BIN" load -t"$THREADS" -c"$CONNECTIONS" -d2s "$URL" >/dev/null
for round in $(seq "$ROUNDS"); do
  w=$(summarise "$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$URL")")
  l=$(summarise "$("$BIN" load -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$URL")")
  echo "$round wrk $w" >>"$DIR/rounds"; echo "$round wavelink $l" >>"$DIR/rounds"
  echo "round $round  wrk $w  |  wavelink load $l   (req/s p50 p90 p99 us)" >&2
done
median() { awk -v t="$1" '$2==t' "$DIR/rounds" | sort -k3 -n | awk -v r="$ROUNDS" 'NR==int((r+1)/2)'; }
read -r _ _ w_rps w50 w90 w99 <<<"$(median wrk)"
read -r _ _ l_rps l50 l90 l99 <<<"$(median wavelink)"
echo
echo "| tool | req/s | p50 µs | p90 µs | p99 µs | req/s vs wrk | p50 vs wrk | p90 vs wrk | p99 vs wrk |"
echo "|---|---|---|---|---|---|---|---|---|"
echo "| wrk | ${w_rps%.*} | $w50 | $w90 | $w99 | 1.00x | 1.00x | 1.00x | 1.00x |"
awk -v r="$l_rps" -v a="$l50" -v b="$l90" -v c="$l99" -v R="$w_rps" -v A="$w50" -v B="$w90" -v C="$w99" 'BEGIN {
  printf "| wavelink load | %.0f | %.0f | %.0f | %.0f | %.2fx | %.2fx | %.2fx | %.2fx |\n", r, a, b, c, r/R, a/A, b/B, c/C }'

RATE=$(awk -v r="$w_rps" 'BEGIN { printf "%d", r / 2 }')
out=$("$BIN" load -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -R "$RATE" --latency "$URL")
corrected=$(awk '/Recorded Latency/ {on=1} on && ($1=="50.000%" || $1=="99.000%") {print $2} /Detailed/ {on=0}' <<<"$out" | tr '\n' ' ')
uncorrected=$(awk '/Uncorrected Latency/ {on=1} on && ($1=="50.000%" || $1=="99.000%") {print $2}' <<<"$out" | tr '\n' ' ')
achieved=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
echo
echo "| open loop at ${RATE}/s (half of wrk's rate) | achieved req/s | p50, p99 |"
echo "|---|---|---|"
echo "| corrected (from intended send time) | $achieved | $corrected |"
echo "| uncorrected (from actual send time) | $achieved | $uncorrected |"
