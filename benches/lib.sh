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
