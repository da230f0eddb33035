#!/usr/bin/env bash
# The main job: one embedded Strata node (`strata dev`), built in release mode. Arguments go to
# `strata dev` (e.g. --data DIR --listen ADDR).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
exec cargo run --release --locked -q -p strata -- dev "$@"
