#!/usr/bin/env bash
# Sagas on Strata vs the same flow as a PostgreSQL state machine with an outbox table, same
# machine, same run: the disk's limits (../shared/bench/disk-limits.sh), then
# `strata bench sagas` (a release node, the four services and the fake provider as processes;
# runs at each client count; then the orchestrator's recovery after kill -9 with IN_FLIGHT
# sagas in flight), then benches/src/bin/saga_postgres.rs against a fresh private PostgreSQL
# (fsync=on, synchronous_commit=on) and its own fake provider, at the same client counts.
# Prints every run, then per client count strata / postgres for sagas/s, latency and CPU.
#   usage: benches/sagas.sh [SECONDS=10] [IN_FLIGHT=10000] [CLIENTS=1,16,64] [DATA_PARENT=/tmp]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; in_flight=${2:-10000}; clients=${3:-1,16,64}; parent=${4:-/tmp}
source benches/lib.sh
cargo build --release --locked -q -p strata-benches --features postgres --bin saga-postgres
peer="$CARGO_TARGET_DIR/release/saga-postgres"
out=$(mktemp)
echo "== the disk's own limits"
bash ../shared/bench/disk-limits.sh "$parent" 5
echo "== strata: a node, saga + inventory + payment + notification, the fake provider"
"$strata" bench sagas --clients "$clients" --duration "$secs" --in-flight "$in_flight" \
  --data-parent "$parent" | tee -a "$out" >/dev/null

echo "== postgres: the same flow as a state-machine table and an outbox table"
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pgbin" ]; then apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1); fi
run_as=""; [ "$(id -u)" = 0 ] && run_as="postgres"
work=$(mktemp -d "$parent/saga-postgres.XXXXXX"); chmod 755 "$work"; [ -n "$run_as" ] && chown "$run_as" "$work"
as() { if [ -n "$run_as" ]; then su "$run_as" -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
pgport=$(free_port); pport=$(free_port)
as "$pgbin/initdb -D $work/data -U postgres --auth=trust -E UTF8" >/dev/null
as "$pgbin/pg_ctl -D $work/data -l $work/pg.log -w start -o '-c listen_addresses=127.0.0.1 -p $pgport -k $work -c shared_buffers=1GB -c synchronous_commit=on -c fsync=on -c max_connections=200 -c max_wal_size=4GB'" >/dev/null
"$strata" fake-provider --listen "127.0.0.1:$pport" 2>"$work/provider.log" &
provider=$!
trap 'kill $provider 2>/dev/null || true; as "$pgbin/pg_ctl -D $work/data -m fast stop" >/dev/null 2>&1; rm -rf "$work" "$out"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$pport/ledger" >/dev/null && break; sleep 0.1; done
"$peer" --url "host=127.0.0.1 port=$pgport user=postgres dbname=postgres" \
  --provider "http://127.0.0.1:$pport" --clients "$clients" --duration "$secs" \
  --postmaster-pid "$(head -1 "$work/data/postmaster.pid")" --provider-pid "$provider" \
  | tee -a "$out" >/dev/null

python3 - "$out" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("run") == "sagas":
        runs.setdefault(r["clients"], {})[r.get("system", "strata")] = r
print("strata / postgres, same run:")
for c, by in sorted(runs.items()):
    s, p = by.get("strata"), by.get("postgres")
    if not (s and p):
        continue
    ratio = lambda k: s[k] / p[k] if p[k] else float("nan")
    print(f"  {c:3} clients: sagas/s {s['sagas_per_s']:7.1f} vs {p['sagas_per_s']:7.1f} ({ratio('sagas_per_s'):.2f}x)"
          f"  p50 {s['p50_ms']:6.1f} vs {p['p50_ms']:6.1f} ms  p99 {s['p99_ms']:6.1f} vs {p['p99_ms']:6.1f} ms"
          f"  cpu/saga {s['cpu_ms_per_saga']:5.2f} vs {p['cpu_ms_per_saga']:5.2f} ms")
PY
