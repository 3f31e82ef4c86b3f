"""`verbatim report` looked at in a real browser (Debian's Chromium, driven by Playwright).

A real audit log is made first: `verbatim serve` in front of the SDK tests' mock provider, with
several tenants and a mix of copied, quoted and unrelated answers, streamed and not. The page
must then render without console errors, without horizontal scrolling at a laptop width, with
every chart drawn and no chart label cut off, and with the latest blocks listed with their
evidence. The rendered page and a screenshot are kept in $VERBATIM_REPORT_OUT (default: a
temporary folder) for a person to look at; `scripts/report-demo.sh` runs this test for that.
"""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request

import pytest
from playwright.sync_api import sync_playwright

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "sdk"))
import mock_upstream as mock  # noqa: E402
import verbatim_proc  # noqa: E402

BIN = verbatim_proc.BIN
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# The flags this machine's closed network needs (no background connections).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

PLAN = [("COPY", "sk-team-payments", True), ("SHORT", "sk-team-docs", True),
        ("PLAIN", "sk-team-docs", True), ("COPY", "sk-team-search", False),
        ("SHORT", "sk-team-payments", False), ("PLAIN", "sk-team-search", False)] * 4


def make_audit_log(path):
    up = mock.start()
    url = f"http://127.0.0.1:{up.server_address[1]}"
    p, addr = verbatim_proc.start(["--index", os.path.join(ROOT, "tests/fixtures/index-v5"),
                                   "--upstream-openai", url, "--upstream-anthropic", url, "--audit-log", path])
    try:
        for i, (marker, key, stream) in enumerate(PLAN):
            route = "/v1/messages" if i % 3 == 0 else "/v1/chat/completions"
            body = {"model": "mock-model", "max_tokens": 100, "stream": stream,
                    "messages": [{"role": "user", "content": marker}]}
            req = urllib.request.Request(
                f"http://{addr}{route}", data=json.dumps(body).encode(),
                headers={"content-type": "application/json", "authorization": f"Bearer {key}", "x-api-key": key})
            urllib.request.urlopen(req, timeout=20).read()
    finally:
        p.terminate()  # graceful: the writer flushes and syncs
        p.wait(timeout=10)
        up.shutdown()


@pytest.fixture(scope="module")
def report():
    out = os.environ.get("VERBATIM_REPORT_OUT") or tempfile.mkdtemp(prefix="verbatim-report-")
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "audit.jsonl")
    if os.path.exists(log):
        os.remove(log)
    make_audit_log(log)
    html = os.path.join(out, "report.html")
    r = subprocess.run([BIN, "report", "--audit-log", log, "--out", html], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    n = len(PLAN)
    # Every response is in the log: 24 responses, each copy or quote decided once.
    assert f"{n // 3 * 2} decisions, {n} responses" in r.stdout, r.stdout
    return out, html


def test_the_report_reads_well_in_chromium(report):
    out, html = report
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests = []
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith("file:") else None)
        page.goto("file://" + html)
        page.wait_for_load_state("load")
        page.screenshot(path=os.path.join(out, "report.png"), full_page=True)

        assert errors == [], errors
        assert requests == [], f"the page is not self-contained: {requests}"
        # No horizontal scrolling at a laptop width.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        # Every chart is drawn, and no label spills out of its chart.
        charts = page.evaluate("""() => [...document.querySelectorAll('svg')].map(svg => {
            const box = svg.getBoundingClientRect();
            const texts = [...svg.querySelectorAll('text')].map(t => t.getBoundingClientRect());
            const shapes = svg.querySelectorAll('rect, path, line, circle, polyline').length;
            const out = texts.filter(t => t.left < box.left - 1 || t.right > box.right + 1
                                       || t.top < box.top - 1 || t.bottom > box.bottom + 1).length;
            return {w: box.width, h: box.height, texts: texts.length, shapes, out};
        })""")
        assert len(charts) >= 4, charts
        for c in charts:
            assert c["w"] > 100 and c["h"] > 20, c
            assert c["shapes"] > 0 and c["texts"] > 0, c
            assert c["out"] == 0, f"a label is cut off: {c}"
        body = page.inner_text("body")
        for words in ["block", "acme-books", "chapter-01.md", "LicenseRef-Acme-Proprietary"]:
            assert words in body, words
        # The latest blocks, with their evidence, fit their table.
        rows = page.evaluate("""() => [...document.querySelectorAll('table')].map(t => ({
            rows: t.querySelectorAll('tbody tr, tr').length,
            fits: t.getBoundingClientRect().right <= window.innerWidth}))""")
        assert rows and any(r["rows"] > 1 for r in rows), rows
        assert all(r["fits"] for r in rows), rows
        # The text is legible: nothing below 11 px.
        smallest = page.evaluate("""() => Math.min(...[...document.querySelectorAll('body *')]
            .filter(e => e.childNodes.length && [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()))
            .map(e => parseFloat(getComputedStyle(e).fontSize)))""")
        assert smallest >= 11, smallest
        browser.close()
