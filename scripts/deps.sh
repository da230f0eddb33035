#!/usr/bin/env bash
# Sourced by scripts/dev.sh and scripts/test.sh: installs the Debian packages the build links
# against (the system RocksDB, its compression libraries, libclang for bindgen) when missing,
# and points cargo at one persistent target directory outside the clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
need=()
# The ETL tests' real sinks: PostgreSQL (with wal2json) and ClickHouse, from Debian.
for pkg in librocksdb-dev libclang-dev libsnappy-dev liblz4-dev libzstd-dev libbz2-dev zlib1g-dev \
  postgresql postgresql-15-wal2json clickhouse-server clickhouse-client; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}" >&2
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The MongoDB sink's tests talk to secantusdb (a MongoDB wire-protocol server from PyPI; MongoDB
# itself is not installable here), in a venv of its own. `--pre` is needed for it alone.
export STRATA_VENV="${STRATA_VENV:-$HOME/.cache/strata/venv}"
if [ ! -x "$STRATA_VENV/bin/secantusd-py" ]; then
  echo "==> installing secantusdb into $STRATA_VENV" >&2
  dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed" || {
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv >/dev/null
  }
  python3 -m venv "$STRATA_VENV"
  "$STRATA_VENV/bin/pip" install -q --pre secantusdb
fi
