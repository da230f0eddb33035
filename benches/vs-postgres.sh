#!/usr/bin/env bash
# Strata vs PostgreSQL as an event store, same machine, same run: `strata bench append` against
# a release `strata dev` on a temporary directory, then ../shared/bench/peers/postgres.sh with the
# same clients, events per append and event size. Prints one line per run for each system.
#   usage: benches/vs-postgres.sh [SECONDS=10] [DATA_PARENT=/tmp]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; parent=${2:-/tmp}
source benches/lib.sh
peer="$(cd .. && pwd)/shared/bench/peers/postgres.sh"
data=$(mktemp -d "$parent/strata-bench.XXXXXX")
port=$(free_port)
"$strata" dev --data "$data/node" --listen "127.0.0.1:$port" >"$data/dev.log" 2>&1 &
dev=$!
trap 'kill -INT $dev 2>/dev/null; wait $dev 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do STRATA_SERVER=127.0.0.1:$port "$strata" stream-info probe >/dev/null 2>&1 && break; sleep 0.1; done
runs=("1 1" "16 1" "64 1" "16 100")
for run in "${runs[@]}"; do
  set -- $run
  STRATA_SERVER=127.0.0.1:$port "$strata" bench append --clients "$1" --batch "$2" --event-bytes 1024 --duration "$secs" 2>&1 >/dev/null | tail -1
done
for run in "${runs[@]}"; do
  set -- $run
  bash "$peer" "$1" "$secs" "$2" 1024 | tail -1
done
