# Shared by the bench scripts (sourced from the repository root): the dependencies, a release
# `strata` in $strata, and free_port.
source scripts/deps.sh
cargo build --release --locked -q -p strata
strata="$CARGO_TARGET_DIR/release/strata"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Scripts of several server processes: `bench_dir PARENT NAME` makes $data (a fresh directory
# under PARENT) and declares the arrays pid[name] and port[name]; on exit every process in
# pid gets SIGTERM and $data goes. `wait_up PORT` waits (30 s at most) for a node to answer.
bench_dir() {
  data=$(mktemp -d "$1/$2.XXXXXX")
  declare -gA pid port
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${pid[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
wait_up() { for _ in $(seq 300); do "$strata" cluster status --json --server "127.0.0.1:$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "node on $1 did not start" >&2; exit 1; }

# CPU of the server processes in pid, and a `strata bench append` run measured with it:
# `bench_run CLIENTS RATE SECONDS SERVERS` prints the bench's JSON line with
# server_cpu_us_per_event added (every process in pid counted; RATE empty: full speed).
ticks() { local f; read -r -a f <"/proc/$1/stat"; echo $((f[13] + f[14])); } # utime + stime
server_ticks() { local t=0 p; for p in "${pid[@]}"; do t=$((t + $(ticks "$p"))); done; echo $t; }
bench_run() {
  local t0 t1
  t0=$(server_ticks)
  "$strata" bench append --server "$4" --clients "$1" --batch 1 --event-bytes 1024 \
    --duration "$3" ${2:+--rate "$2"} 2>/dev/null >"$data/run.json"
  t1=$(server_ticks)
  python3 - "$data/run.json" "$((t1 - t0))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
events = r["appends"] * r["events_per_append"]
r["server_cpu_us_per_event"] = round(int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / events, 1) if events else None
print(json.dumps(r))
PY
}

# `init_cluster SERVER`: forms the cluster of the node at SERVER (`cluster init`) and waits
# (30 s at most) until the metadata group and every shard's group have a leader.
init_cluster() {
  "$strata" cluster init --server "$1" >/dev/null
  for _ in $(seq 300); do
    "$strata" cluster status --json --server "$1" 2>/dev/null | python3 -c '
import json,sys; s=json.load(sys.stdin)
sys.exit(0 if s.get("meta_leader") and all(g.get("leader") for g in s["shards"]) else 1)' && return 0
    sleep 0.1
  done
}
