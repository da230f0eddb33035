#!/usr/bin/env bash
# The ETL service's sinks, same machine, same run: the disk's limits
# (../shared/bench/disk-limits.sh), then benches/etl.py over a release `strata dev` node, a
# private PostgreSQL (fsync on, synchronous_commit on), a private ClickHouse 18.16 and a private
# secantusdb (MongoDB wire protocol):
#   1. EVENTS order events written first; then each sink alone: `strata serve etl` with one
#      pipeline drains them; events/s, CPU per event of the service, the node and the sink's
#      server;
#   2. the peers on the same rows: PostgreSQL `COPY … FROM` a file of the rows the sink wrote,
#      ClickHouse `clickhouse-client` inserting the same rows as JSONEachRow (the format the
#      sink sends); the sink's rate as a ratio of each;
#   3. all three pipelines at once at RATE events/s for SECONDS: end-to-end lag (append to
#      committed in the sink) p50 / p99 from each pipeline's status.
#   usage: benches/etl.sh [EVENTS=200000] [RATE=1000] [SECONDS=20] [DATA_PARENT=/tmp]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-200000}; rate=${2:-1000}; secs=${3:-20}; parent=${4:-/tmp}
source benches/lib.sh
echo "== the disk's own limits"
bash ../shared/bench/disk-limits.sh "$parent" 5
python3 benches/etl.py --strata "$strata" --events "$events" --rate "$rate" --seconds "$secs" \
  --parent "$parent" --venv "$STRATA_VENV"
