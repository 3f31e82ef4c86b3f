#!/usr/bin/env bash
# Rebuilds the committed compatibility fixture of the current index format from corpora/.
# Run only when FORMAT_VERSION changes: keep the old fixture directory, add the new one, and
# extend tests/index_format.rs (STYLE.md habit 9).
set -euo pipefail
cd "$(dirname "$0")/.."
v=$(grep -oP 'pub const FORMAT_VERSION: u32 = \K[0-9]+' src/index/format.rs)
cargo run --quiet -- index build --corpus corpora --out "tests/fixtures/index-v$v" --force --quiet --no-renamed
cargo run --quiet -- index build --corpus corpora --out "tests/fixtures/index-v$v-renamed" --force --quiet
