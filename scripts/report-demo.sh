#!/usr/bin/env bash
# Makes a real audit log (verbatim serve in front of the SDK tests' mock provider, several
# tenants, a mix of copied, quoted and unrelated answers), renders `verbatim report` from it,
# and takes a screenshot of the page in headless Chromium (Debian's package, installed here).
#   scripts/report-demo.sh [OUT_DIR]      # default bench-data/report
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-data/report}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
[ -x .venv/bin/python ] || python3 -m venv .venv
cargo build --quiet --locked
rm -f "$OUT/audit.jsonl"
.venv/bin/python - "$OUT" <<'PY'
import json, os, re, subprocess, sys, time, urllib.request
sys.path.insert(0, "tests/sdk")
import mock_upstream as mock
out = sys.argv[1]
up = mock.start()
url = f"http://127.0.0.1:{up.server_address[1]}"
p = subprocess.Popen(["target/debug/verbatim", "serve", "--listen", "127.0.0.1:0", "--index", "tests/fixtures/index-v1",
                      "--upstream-openai", url, "--upstream-anthropic", url, "--audit-log", f"{out}/audit.jsonl"],
                     stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
addr = None
while addr is None:
    line = p.stderr.readline()
    m = re.search(r"listen=(127\.0\.0\.1:\d+)", line)
    addr = m.group(1) if m else None
plan = [("COPY", "sk-team-payments", True), ("SHORT", "sk-team-docs", True), ("PLAIN", "sk-team-docs", True),
        ("COPY", "sk-team-search", False), ("SHORT", "sk-team-payments", False), ("PLAIN", "sk-team-search", False)] * 4
for i, (marker, key, stream) in enumerate(plan):
    path = "/v1/messages" if i % 3 == 0 else "/v1/chat/completions"
    body = {"model": "mock-model", "max_tokens": 100, "stream": stream, "messages": [{"role": "user", "content": marker}]}
    req = urllib.request.Request(f"http://{addr}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", "authorization": f"Bearer {key}", "x-api-key": key})
    urllib.request.urlopen(req, timeout=20).read()
time.sleep(0.5)
p.terminate(); p.wait(timeout=10); up.shutdown()
PY
target/debug/verbatim report --audit-log "$OUT/audit.jsonl" --out "$OUT/report.html"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars \
  --window-size=1200,1600 --screenshot="$OUT/report.png" "file://$OUT/report.html" 2>/dev/null
echo "report: $OUT/report.html, screenshot: $OUT/report.png"
