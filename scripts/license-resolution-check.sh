#!/usr/bin/env bash
# License resolution against the registry's word: every crate version fetched by
# scripts/fetch-crates.sh, with the license taken out of its corpus manifest, resolved file by
# file by `verbatim corpus inspect` (SPDX identifiers, LICENSE files, Cargo.toml, …) and
# compared with the license `cargo metadata` gives for the crate.
#   scripts/license-resolution-check.sh [CRATES_DIR]     # default bench-data/crates
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-bench-data/crates}
[ -d "$D/manifests/src" ] || scripts/fetch-crates.sh "$D"
C="$D/resolve-check"
rm -rf "$C" && mkdir -p "$C"
ln -s ../manifests/src "$C/src"
for m in "$D"/manifests/*.toml; do
  grep -v '^license = ' "$m" > "$C/$(basename "$m")"
done
cargo build --release --quiet --locked
START=$(date +%s.%N)
target/release/verbatim corpus inspect --format jsonl "$C" > "$C/inspect.jsonl"
END=$(date +%s.%N)
python3 - "$D" "$C" "$START" "$END" <<'PY'
import json, os, re, sys, glob, collections
d, c, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
truth = {}
for m in glob.glob(os.path.join(d, "manifests", "*.toml")):
    t = open(m).read()
    name = re.search(r'^name = "(.*)"', t, re.M).group(1)
    lic = re.search(r'^license = "(.*)"', t, re.M)
    truth[name] = lic.group(1) if lic else None
def ids(e):
    return frozenset(t for t in re.split(r"[\s()]+", (e or "").replace("/", " OR ")) if t and t.upper() not in ("AND", "OR", "WITH"))
def same(a, b):
    # The same set of licenses, -only/-or-later apart, and ignoring AND/OR (a crate's LICENSE
    # files cannot say which of the two the authors meant).
    f = lambda s: frozenset(re.sub(r"-(only|or-later)$|\+$", "", i) for i in s)
    return f(ids(a)) == f(ids(b))
n = right = 0
by_source = collections.Counter(); right_by_source = collections.Counter()
wrong = collections.Counter()
for line in open(os.path.join(c, "inspect.jsonl")):
    r = json.loads(line)
    t = truth.get(r["corpus"])
    if not t:
        continue
    n += 1
    ok = same(r["expression"], t)
    right += ok
    by_source[r["source"]] += 1
    right_by_source[r["source"]] += ok
    if not ok:
        wrong[(r["source"], r["expression"], t)] += 1
print(f"{n} files of {len(truth)} crate versions, {right / n:.1%} resolved to the registry's license set; "
      f"{end - start:.0f} s")
for s, k in by_source.most_common():
    print(f"  {s:18} {k:7} files, {right_by_source[s] / k:.1%} agree")
print("most frequent disagreements (source, resolved, registry, files):")
for (s, e, t), k in wrong.most_common(12):
    print(f"  {s:18} {e!r:40} registry {t!r:30} {k}")
PY
