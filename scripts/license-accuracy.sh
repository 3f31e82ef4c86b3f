#!/usr/bin/env bash
# License identification accuracy: Verbatim, askalono (the `spdx` crate's detection) and
# ScanCode side by side on the same inputs, and the table in docs/license-detection.md.
#
#   scripts/license-accuracy.sh [OUT]        # default bench-data/license-accuracy
#
# Inputs: every current SPDX text whole, reformatted and in part (made by the bench program);
# ScanCode's own labelled rules (license texts, notices, mentions), a held-out set none of the
# tools was built from except ScanCode itself; and prose that is no license (Python's
# documentation, from Debian's python3.11-doc) for false positives. ScanCode comes from PyPI
# (`scancode-toolkit`, `pluggy<1.6`) into its own virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-data/license-accuracy}
mkdir -p "$OUT"
VENV=bench-data/venv-scancode
if [ ! -x "$VENV/bin/scancode" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "scancode-toolkit" "pluggy<1.6"
fi
P=bench-data/debian/pydoc
if [ ! -d "$P" ]; then
  mkdir -p bench-data/debian
  (cd bench-data/debian && { apt-get download python3.11-doc || { apt-get update -qq && apt-get download python3.11-doc; }; } \
    && dpkg-deb -x python3.11-doc_*.deb pydoc)
fi
DATA=$("$VENV/bin/python" -c 'import licensedcode, os; print(os.path.join(os.path.dirname(licensedcode.__file__), "data"))')

# 1. Cases from ScanCode's rules (at most 300 a set, every k-th rule by name) and negatives.
"$VENV/bin/python" - "$DATA" "$OUT" "$P" <<'PY'
import json, os, re, sys, glob
data, out, pydoc = sys.argv[1:4]

def front(path):
    t = open(path, encoding="utf-8", errors="replace").read()
    m = re.match(r"---\n(.*?)\n---\n?(.*)", t, re.S)
    if not m:
        return {}, t
    meta = {}
    for line in m.group(1).splitlines():
        if ":" in line and not line.startswith(" "):
            k, v = line.split(":", 1)
            meta[k.strip()] = v.strip()
    return meta, m.group(2)

spdx = {}
for p in glob.glob(os.path.join(data, "licenses", "*.LICENSE")):
    meta, _ = front(p)
    k = meta.get("spdx_license_key", "")
    if k and not k.startswith("LicenseRef"):
        spdx[meta.get("key", os.path.basename(p)[:-8])] = k

def to_spdx(expr):
    out = []
    for tok in re.split(r"(\s+|\(|\))", expr):
        t = tok.strip()
        if not t or t in "()":
            out.append(tok)
        elif t.upper() in ("AND", "OR", "WITH"):
            out.append(t.upper())
        elif t in spdx:
            out.append(spdx[t])
        else:
            return None
    return "".join(out).strip()

sets = {"sc-text": [], "sc-notice": [], "sc-mention": []}
for p in sorted(glob.glob(os.path.join(data, "rules", "*.RULE"))):
    meta, text = front(p)
    if meta.get("is_deprecated") == "yes" or meta.get("is_false_positive") == "yes":
        continue
    e = to_spdx(meta.get("license_expression", ""))
    if not e or len(text.strip()) < 20:
        continue
    if meta.get("is_license_text") == "yes" and len(text) >= 300:
        sets["sc-text"].append((e, text))
    elif meta.get("is_license_notice") == "yes":
        sets["sc-notice"].append((e, text))
    elif meta.get("is_license_reference") == "yes" or meta.get("is_license_tag") == "yes":
        sets["sc-mention"].append((e, text))
with open(os.path.join(out, "scancode-cases.jsonl"), "w") as f:
    for name, items in sets.items():
        step = max(1, len(items) // 300)
        for e, text in items[::step][:300]:
            f.write(json.dumps({"set": name, "expected": e, "text": text}) + "\n")
        print(f"{name}: {len(items)} rules, {len(items[::step][:300])} sampled")
# Negatives: 300 paragraphs-sized chunks of Python's documentation (no license pages).
files = sorted(p for p in glob.glob(os.path.join(pydoc, "**", "*.rst.txt"), recursive=True)
               if "license" not in p.lower() and "copyright" not in p.lower())
chunks = []
for p in files:
    t = open(p, encoding="utf-8", errors="replace").read()
    for i in range(0, len(t) - 2000, 20000):
        chunks.append(t[i:i + 2000])
step = max(1, len(chunks) // 300)
with open(os.path.join(out, "negative-cases.jsonl"), "w") as f:
    for c in chunks[::step][:300]:
        f.write(json.dumps({"set": "negative", "expected": "", "text": c}) + "\n")
print(f"negative: {len(chunks[::step][:300])} chunks of Python's documentation")
PY

# 2. Verbatim and askalono (the bench program writes every case as a file and their answers).
rm -rf "$OUT/cases"
cargo bench --bench license_accuracy -- --out "$OUT" \
  --cases "$OUT/scancode-cases.jsonl" --cases "$OUT/negative-cases.jsonl" | tee "$OUT/bench.txt"

# 3. ScanCode on the same files (license detection only, 2 processes; timed). The cases are
#    made the same way every run, so REUSE_SCANCODE=1 keeps an earlier run's results.
if [ "${REUSE_SCANCODE:-0}" != 1 ] || [ ! -f "$OUT/scancode.json" ]; then
  START=$(date +%s.%N)
  "$VENV/bin/scancode" --license --json "$OUT/scancode.json" -n 2 --timeout 120 --quiet "$OUT/cases"
  END=$(date +%s.%N)
  echo "$START $END" > "$OUT/scancode-time.txt"
fi

# 4. The table.
"$VENV/bin/python" - "$OUT" <<'PY'
import json, os, re, sys
out = sys.argv[1]
answers = [json.loads(l) for l in open(os.path.join(out, "answers.jsonl"))]
summary = json.load(open(os.path.join(out, "summary.json")))
sc = json.load(open(os.path.join(out, "scancode.json")))
start, end = map(float, open(os.path.join(out, "scancode-time.txt")).read().split())
got = {}
for f in sc["files"]:
    if f.get("type") != "file":
        continue
    rel = "cases/" + os.path.basename(f["path"])
    got[rel] = f.get("detected_license_expression_spdx") or None

def ids(e):
    return set(t for t in re.split(r"[\s()]+", e or "") if t and t not in ("AND", "OR", "WITH"))

def base(i):
    return re.sub(r"-(only|or-later)$|\+$", "", i)

def right(expected, g):
    if not expected:
        return g is None
    if g is None:
        return False
    # ScanCode's file-level expression may repeat a license ("MIT AND MIT"): compare the set of
    # licenses named, with -only/-or-later as one (the texts are one text).
    return {base(i) for i in ids(g)} == {base(i) for i in ids(expected)}

rows = {}
for a in answers:
    r = rows.setdefault(a["set"], [0, 0, 0, 0, 0, 0, 0])
    r[0] += 1
    r[1] += a["verbatim_right"]
    r[2] += a["askalono_right"]
    s = got.get(a["file"])
    r[3] += right(a["expected"], s)
    # Wrong answers that name a license (false identifications), per tool.
    if a["expected"]:
        r[4] += (not a["verbatim_right"]) and a["verbatim"] is not None
        r[5] += (not a["askalono_right"]) and a["askalono"] is not None
        r[6] += (not right(a["expected"], s)) and s is not None
mb = summary["bytes"] / 1e6
sc_s = end - start
names = {
    "full": "SPDX texts, whole",
    "reformatted": "SPDX texts, rewrapped, upper-case, comment prefixes",
    "partial": "SPDX texts, middle 60 % of lines",
    "sc-text": "ScanCode's license-text rules (held out)",
    "sc-notice": "ScanCode's notice rules (license headers)",
    "sc-mention": "ScanCode's reference/tag rules (short mentions)",
    "negative": "Python documentation, no license (false positives)",
}
lines = [
    "| inputs | n | Verbatim | askalono | ScanCode |",
    "|---|---:|---:|---:|---:|",
]
for s, r in rows.items():
    n = r[0]
    pct = lambda k: f"{100 * r[k] / n:.1f} %"
    if s == "negative":
        fp = lambda k: f"{100 * (n - r[k]) / n:.1f} % FP"
        lines.append(f"| {names.get(s, s)} | {n} | {fp(1)} | {fp(2)} | {fp(3)} |")
    else:
        lines.append(f"| {names.get(s, s)} | {n} | {pct(1)} ({r[4]} wrong) | {pct(2)} ({r[5]} wrong) | {pct(3)} ({r[6]} wrong) |")
lines.append("")
lines.append(f"Time per MB of input ({summary['cases']} inputs, {mb:.2f} MB): Verbatim "
             f"{summary['verbatim_seconds_per_mb']:.2f} s, askalono {summary['askalono_seconds_per_mb']:.2f} s "
             f"(both one thread, in process; loading once: Verbatim {summary['verbatim_load_seconds']:.2f} s to build "
             f"its index of the SPDX texts, askalono {summary['askalono_load_seconds']:.2f} s to prepare its store), "
             f"ScanCode {sc_s / mb:.1f} s "
             f"(whole `scancode --license -n 2` run, 2 processes, including its start-up; {sc_s:.0f} s in all).")
table = "\n".join(lines)
open(os.path.join(out, "table.md"), "w").write(table + "\n")
print(table)
PY
echo "results in $OUT (table.md, answers.jsonl, scancode.json)"
