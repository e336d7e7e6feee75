# Shell helpers of the proxy benchmarks (sourced by proxy.sh and tls.sh): processes in their own
# groups, killed on exit; free loopback ports; CPU ticks of a group; config templates.
# Expects DIR (a temporary directory) to be set by the caller.
PGIDS=()
cleanup() {
  for g in "${PGIDS[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
# Starts a command in its own process group (setsid: the script has no job control, so the
# child is not a group leader and becomes one); STARTED is its group, also kept for cleanup.
start() { setsid "$@" >"$DIR/$(basename "$1").log" 2>&1 & STARTED=$!; disown; PGIDS+=("$STARTED"); }
# user+sys CPU ticks of every process in a process group.
group_ticks() { ps -o pid= -g "$1" | while read -r p; do awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null; done | awk '{s+=$1} END {print s+0}'; }
render() { sed -e "s#@DIR@#$DIR#g" -e "s#@LISTEN@#$2#g" -e "s#@UPSTREAM@#$3#g" -e "s#@ADMIN@#${4:-}#g" -e "s#@PLAIN@#${5:-}#g" "$1"; }
CLK_TCK=$(getconf CLK_TCK)
