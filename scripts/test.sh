#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, lints, tests, docs.
# Installs what the tests need (nothing outside cargo yet). `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets
echo "== cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
