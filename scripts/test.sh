#!/usr/bin/env bash
# The whole test suite, as README.md and .ci/run run it. Installs what it needs when missing
# (scripts/deps.sh), reuses one cargo target directory outside the clone, then runs format,
# the module-cycle check, lint, every test, the fuzz targets (scripts/fuzz.sh, which installs
# cargo-fuzz) and the time-boxed simulator sweeps.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/deps.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Each phase says when it starts (seconds since the script began), so a slow CI run shows where
# its time went.
phase() { echo "==> $* [at ${SECONDS} s]"; }

phase "cargo fmt --check"
cargo fmt --all -- --check
phase "module cycles"
python3 scripts/module-cycles.py
phase "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
phase "cargo doc (strata-client: its examples and links)"
RUSTDOCFLAGS="-D warnings" cargo doc -p strata-client --no-deps --locked -q
phase "cargo test"
log=$(mktemp); trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# Every fuzz target for a bounded time, from its committed corpus and regression inputs.
phase "fuzzing (${STRATA_FUZZ_SECS:-20} s per target)"
bash scripts/fuzz.sh "${STRATA_FUZZ_SECS:-20}"
# A time-boxed random sweep of the deterministic simulator (regression seeds ran above).
phase "simulator sweep (${STRATA_SIM_SWEEP_SECS:-150} s)"
cargo build --release --locked -p strata-sim
"$CARGO_TARGET_DIR/release/strata-sim" run --seeds 1000000000 \
  --time-limit "${STRATA_SIM_SWEEP_SECS:-150}"
# Storage and membership faults only: fewer seeds per second, more crashes and disk faults
# per seed.
phase "simulator sweep, storage and membership faults (${STRATA_SIM_FOCUSED_SECS:-90} s)"
"$CARGO_TARGET_DIR/release/strata-sim" run --seeds 1000000000 \
  --faults crashes,disk,membership,partitions --time-limit "${STRATA_SIM_FOCUSED_SECS:-90}"
# Sharded clusters: slot ranges moving between 3 shards under network, partition, crash and
# clock faults.
phase "simulator sweep, sharded (${STRATA_SIM_SHARDED_SECS:-90} s)"
"$CARGO_TARGET_DIR/release/strata-sim" run --seeds 1000000000 --shards 3 --replica-moves \
  --time-limit "${STRATA_SIM_SHARDED_SECS:-90}"
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
echo "ci: ${SECONDS} s in all"
