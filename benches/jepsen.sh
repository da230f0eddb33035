#!/usr/bin/env bash
# The long Jepsen runs (issue 16): every workload under every nemesis for SECONDS each, one
# after another, with a release `strata jepsen` (each run starts its own three-node cluster),
# then a table of operations, outcomes, latency calm / during faults, recovery after faults,
# CPU per operation and verdicts. The test-only runs (the clock nemesis, kill-all on disks
# that lose unsynced writes) need a test build: TEST_BIN (default: the debug `strata` that
# `cargo test` leaves, if there) runs them; without one they are skipped, and said so.
#   usage: benches/jepsen.sh [SECONDS=120] [OUT=/tmp/strata-jepsen-long]
#   env:   WORKLOADS="register list-append bank stream" NEMESES="none partition ..."
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-120}; out=${2:-/tmp/strata-jepsen-long}
source benches/lib.sh
test_bin=${TEST_BIN:-$CARGO_TARGET_DIR/debug/strata}
workloads=${WORKLOADS:-register list-append bank stream}
nemeses=${NEMESES:-none partition isolate-leader majority bridge one-way kill kill-all pause membership regions clock}
rm -rf "$out"; mkdir -p "$out"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" | tee "$out/machine.txt"
can_test() { local out; out=$("$test_bin" jepsen --planted-bug probe 2>&1 || true); [[ $out == *"--planted-bug: one of"* ]]; }
for w in $workloads; do
  for n in $nemeses; do
    bin=$strata; extra=()
    case $n in
      clock) bin=$test_bin ;;
      kill-all) bin=$test_bin; extra=(--lose-unsynced) ;;
    esac
    if [ "$bin" = "$test_bin" ] && ! { [ -x "$test_bin" ] && can_test; }; then
      echo "$w $n: skipped (needs a test build: cargo test -p strata --no-run, or TEST_BIN)" | tee -a "$out/skipped.txt"
      continue
    fi
    echo "== $w under $n ($secs s)$([ "$bin" = "$test_bin" ] && echo ', test build')"
    start=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$out/$w-$n.cpu" "$bin" jepsen --workload "$w" --nemesis "$n" \
      --time "$secs" "${extra[@]}" --dir "$out/$w-$n" >"$out/$w-$n.log" 2>&1 || true
    echo "$(date +%s.%N) - $start" | bc > "$out/$w-$n.wall"
    tail -1 "$out/$w-$n.log"
  done
done
python3 - "$out" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
rows = []
for name in sorted(os.listdir(out)):
    rep = os.path.join(out, name, "report.json")
    if not os.path.isfile(rep):
        continue
    r = json.load(open(rep))
    u, s = (float(x) for x in open(os.path.join(out, name + ".cpu")).read().split()[-2:])
    rec = [x for x in r["recovery_ms"] if x is not None]
    rec_s = f"{statistics.median(rec):.0f} / {max(rec):.0f}" if rec else "-"
    if len(rec) < len(r["recovery_ms"]):
        rec_s += f" ({len(r['recovery_ms']) - len(rec)} none)"
    cpu_us = (u + s) * 1e6 / max(r["ops"], 1)
    rows.append((r["workload"], r["nemesis"], r["ops"], r["ok"], r["fail"], r["info"],
                 f"{r['calm']['p50_ms']:.1f} / {r['calm']['p99_ms']:.1f}",
                 f"{r['during_faults']['p50_ms']:.1f} / {r['during_faults']['p99_ms']:.1f}",
                 len(r["faults"]), rec_s, f"{cpu_us:.0f}", r["verdict"]))
head = ("workload", "nemesis", "ops", "ok", "fail", "info", "calm p50/p99 ms",
        "faults p50/p99 ms", "faults", "recovery ms median/max", "CPU µs/op", "verdict")
lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
text = "\n".join(lines)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
bad = [r for r in rows if r[-1] not in ("linearizable", "valid")]
print(f"\n{len(rows)} runs, {len(bad)} not clean" + ("".join(f"\n  NOT CLEAN: {r[0]} {r[1]}: {r[-1]}" for r in bad)))
PY
