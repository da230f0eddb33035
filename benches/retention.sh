#!/usr/bin/env bash
# Writer throughput with retention running vs not, same machine, same run (release build):
# one `strata node` (16 MiB segments, 1 MiB largest append) per round; `strata bench append` (1 KiB events, 16
# clients) gives every bench stream max-count metadata so nearly everything written goes dead
# at once. Rounds alternate off/on/off/on; retention, when on, runs every second with a zero
# as-of window and the default throttle. Prints each round, the log's allocated bytes at the
# end of each round, and a JSON summary with the ratio (on / off, target >= 0.9).
#   usage: benches/retention.sh [SECONDS=20] [ROUNDS=2] [DATA_PARENT=/tmp]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}; rounds=${2:-2}; parent=${3:-/tmp}
source benches/lib.sh
data=$(mktemp -d "$parent/strata-retention-bench.XXXXXX")
node_pid=""
cleanup() { [ -n "$node_pid" ] && kill -TERM "$node_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
round() { # name retention(true|false)
  local dir="$data/$1" port; port=$(free_port)
  "$strata" node --data "$dir" --listen "127.0.0.1:$port" --metrics off \
    --segment-bytes-max 16777216 --batch-bytes-max 1048576 --retention "$2" --retention-interval-ms 1000 \
    --retention-as-of-window-s 0 >"$dir.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 300); do "$strata" stream-info probe --server "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
  kill -0 "$node_pid" 2>/dev/null || { echo "the node did not start:" >&2; cat "$dir.log" >&2; exit 1; }
  local out; out=$("$strata" bench append --server "127.0.0.1:$port" --clients 16 --batch 1 \
    --event-bytes 1024 --duration "$secs" --max-count 1000 2>/dev/null)
  sleep 2
  local disk; disk=$(du -s --block-size=1 "$dir/log" | cut -f1)
  kill -TERM "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=""
  python3 -c "import json,sys;r=json.loads(sys.argv[1]);r['retention']=sys.argv[2]=='true';r['log_disk_bytes']=int(sys.argv[3]);print(json.dumps(r))" "$out" "$2" "$disk"
}
results=()
for r in $(seq "$rounds"); do
  off=$(round "off-$r" false); echo "retention off: $off"; results+=("$off")
  on=$(round "on-$r" true); echo "retention on:  $on"; results+=("$on")
done
python3 - "${results[@]}" <<'EOF'
import json, sys
rs = [json.loads(a) for a in sys.argv[1:]]
mean = lambda xs: sum(xs) / len(xs)
off = [r for r in rs if not r["retention"]]; on = [r for r in rs if r["retention"]]
summary = {
    "off_events_per_s": mean([r["events_per_s"] for r in off]),
    "on_events_per_s": mean([r["events_per_s"] for r in on]),
    "off_p99_ms": mean([r["p99_ms"] for r in off]),
    "on_p99_ms": mean([r["p99_ms"] for r in on]),
    "off_log_disk_bytes": mean([r["log_disk_bytes"] for r in off]),
    "on_log_disk_bytes": mean([r["log_disk_bytes"] for r in on]),
}
summary["throughput_ratio_on_over_off"] = summary["on_events_per_s"] / summary["off_events_per_s"]
summary["disk_ratio_on_over_off"] = summary["on_log_disk_bytes"] / summary["off_log_disk_bytes"]
summary["target_ratio"] = 0.9
print(json.dumps(summary))
EOF
