#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder (fuzz/fuzz_targets/, cargo-fuzz + libFuzzer):
#   bash scripts/fuzz.sh [SECS] [TARGET ...]     each target SECS seconds (default 30), all
#                                                targets when none is named
#   FUZZ_KEEP=1 bash scripts/fuzz.sh 3600        a long run that adds what it finds to
#                                                fuzz/corpus/ (then minimise: see README)
# Starts each target from its corpus in fuzz/corpus/TARGET. A crash stops the script with
# exit status 1, the input in fuzz/artifacts/TARGET/ and the command that replays it; make it a
# regression test (see docs/ARCHITECTURE.md, "Fuzzing") before fixing it. Installs cargo-fuzz
# when missing; needs the nightly toolchain (libFuzzer's instrumentation).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

secs="${1:-30}"
shift || true
case "$secs" in ''|*[!0-9]*|0) echo "usage: bash scripts/fuzz.sh [SECS>0] [TARGET ...]" >&2; exit 2 ;; esac

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: the nightly toolchain is missing (rustup toolchain list); cannot fuzz" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz" >&2
  cargo install cargo-fuzz --version 0.13.2 --locked >&2
fi

# The fuzz crate is its own workspace (nightly, instrumented): its own build directory.
fuzz_target_dir="$CARGO_TARGET_DIR/fuzz"
# libFuzzer's instrumentation only (no sanitizer): the code is safe Rust, so a bug shows as a
# panic, and debug assertions (-a) turn overflow and the code's own invariants into panics.
flags=(--sanitizer none --debug-assertions --target-dir "$fuzz_target_dir")
mapfile -t all < <(cargo +nightly fuzz list --fuzz-dir fuzz)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  printf '%s\n' "${all[@]}" | grep -qx "$t" || { echo "fuzz: no target '$t' (have: ${all[*]})" >&2; exit 2; }
done

echo "==> building ${#targets[@]} fuzz targets"
cargo +nightly fuzz build --fuzz-dir fuzz "${flags[@]}"

scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
total_runs=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/regressions/$t"
  # New inputs go to the first directory: the committed corpus only in a long run that keeps.
  # Inputs that once crashed a target (fuzz/regressions/) are run first, every time.
  if [ -n "${FUZZ_KEEP:-}" ]; then dirs=("fuzz/corpus/$t"); else dirs=("$scratch/$t" "fuzz/corpus/$t"); mkdir -p "$scratch/$t"; fi
  dirs+=("fuzz/regressions/$t")
  log="$scratch/$t.log"
  echo "==> fuzz $t for ${secs}s"
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "${flags[@]}" "$t" "${dirs[@]}" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=1048576 \
      -print_final_stats=1 >"$log" 2>&1; then
    # The panic (or libFuzzer's report) and the input, not cargo-fuzz's own backtrace.
    grep -m1 -A14 -E "panicked at|ERROR: libFuzzer|deadly signal" "$log" || tail -n 40 "$log"
    grep -E "^(artifact_prefix|Base64:)" "$log" || true
    echo "fuzz: target $t FAILED; the input is in fuzz/artifacts/$t/; replay it with:" >&2
    echo "  cargo +nightly fuzz run --fuzz-dir fuzz ${flags[*]} $t fuzz/artifacts/$t/<file>" >&2
    exit 1
  fi
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
  echo "    $t: ${runs:-0} inputs, ${cov:-cov: ?}, corpus $(ls "fuzz/corpus/$t" | wc -l) committed"
  total_runs=$((total_runs + ${runs:-0}))
done
echo "fuzz: ${#targets[@]} targets, $total_runs inputs, no crash"
