#!/usr/bin/env bash
# Makes a real audit log (verbatim serve in front of the SDK tests' mock provider, several
# tenants, a mix of copied, quoted and unrelated answers), renders `verbatim report` from it,
# checks it in headless Chromium and keeps the page and a screenshot for a person to look at.
# This is the browser test the main test command runs (tests/browser), with its output kept.
#   scripts/report-demo.sh [OUT_DIR]      # default bench-data/report
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-data/report}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check "pytest>=8" "playwright>=1.45"
cargo build --quiet --locked
(cd tests/browser && VERBATIM_REPORT_OUT="$OUT" CHROMIUM="$(command -v chromium)" \
  ../../.venv/bin/python -m pytest -q -p no:cacheprovider)
echo "report: $OUT/report.html, screenshot: $OUT/report.png"
