#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, lints, Rust tests, docs, and the
# end-to-end tests with the official Python SDKs (installed into .venv from PyPI), and the
# compliance report checked in headless Chromium (installed from Debian if missing).
# `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# One build from a fresh clone: incremental compilation's cache (1.3 GB here) would only be
# written, never used.
export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets
echo "== cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
echo "== python SDK end-to-end tests (openai, anthropic)"
if [ ! -x .venv/bin/pytest ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check "openai>=1.50" "anthropic>=0.40" "pytest>=8" \
  "playwright>=1.45"
cargo build --locked --quiet
(cd tests/sdk && ../../.venv/bin/python -m pytest -q -p no:cacheprovider)
echo "== the compliance report in headless Chromium (Debian's package, driven by Playwright)"
if ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
(cd tests/browser && CHROMIUM="$(command -v chromium)" ../../.venv/bin/python -m pytest -q -p no:cacheprovider)
