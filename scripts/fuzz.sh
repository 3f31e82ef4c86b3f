#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets: the SSE decoder, the pipeline with each provider
# adapter, the normaliser, the config/policy/manifest readers, the license markers) for a
# bounded time each, starting from the small committed seeds in fuzz/seeds. The working corpus
# goes to bench-data/fuzz (not committed); a crash is saved in fuzz/artifacts and fails the run.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     # default 60
# cargo-fuzz is installed from crates.io if missing; `-s none` needs no nightly toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build -s none -O
status=0
for t in sse_decoder normalizer pipeline responses parsers markers; do
  work=bench-data/fuzz/$t
  mkdir -p "$work"
  cp -n fuzz/seeds/$t/* "$work"/ 2>/dev/null || true
  echo "== $t (${SECS}s)"
  if ! cargo fuzz run -s none -O "$t" "$work" -- -max_total_time="$SECS" -max_len=16384 -print_final_stats=1 \
      2>&1 | grep -E "^Done|stat::number_of_executed_units|stat::new_units_added|panicked|SUMMARY|Test unit written"; then
    :
  fi
  if ls fuzz/artifacts/$t/crash-* >/dev/null 2>&1; then
    echo "!! $t: crash inputs in fuzz/artifacts/$t"
    status=1
  fi
done
exit $status
