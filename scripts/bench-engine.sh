#!/usr/bin/env bash
# The detection-engine benchmark of docs/benchmarks.md, end to end:
#   1. fetch ~1 GB of crate sources from the crate registry (scripts/fetch-crates.sh);
#   2. hold out every crate whose name hashes to 0 mod 10 (all its versions) as unrelated text;
#   3. build an index of the rest, timed by /usr/bin/time (wall, CPU, peak RSS);
#   4. run `cargo bench --bench engine` (memory to serve, throughput, per-chunk latency).
# Results go to bench-data/results/ (not committed); docs/benchmarks.md quotes them.
set -euo pipefail
cd "$(dirname "$0")/.."
D=bench-data/crates
R=bench-data/results
mkdir -p "$R"
[ -d "$D/manifests/src" ] || scripts/fetch-crates.sh "$D"
# Unrelated prose: the Python documentation sources from Debian's python3.11-doc.
P=bench-data/debian/pydoc
if [ ! -d "$P" ]; then
  mkdir -p bench-data/debian
  (cd bench-data/debian && { apt-get download python3.11-doc || { apt-get update -qq && apt-get download python3.11-doc; }; } \
    && dpkg-deb -x python3.11-doc_*.deb pydoc)
fi

scripts/split-crates.sh "$D"

cargo build --release --quiet
/usr/bin/time -v -o "$R/build-time.txt" ./target/release/verbatim index build \
  --corpus "$D/indexed" --out bench-data/idx-crates --force --quiet --json > "$R/build.json"
grep -E "Elapsed|User time|System time|Maximum resident" "$R/build-time.txt"
python3 - "$R/build.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
st = s["stats"]; gb = st["corpus_bytes"] / 1e9; secs = s["elapsed"]["secs"] + s["elapsed"]["nanos"] / 1e9
print(f"corpus {gb*1000:.0f} MB, {st['documents']} documents, {st['units']} units, {st['postings']} postings, {st['common_keys']} common keys")
print(f"build {secs:.1f} s = {gb*1000/secs:.1f} MB/s wall; index on disk {s['size_on_disk']/1e9:.2f} GB = {s['size_on_disk']/1e9/gb:.2f} GB per GB")
print(f"peak build RSS {s['peak_rss']/1e6:.0f} MB; memory to serve (estimate) {s['resident_bytes']/1e6:.1f} MB = {s['resident_bytes']/1e9/gb:.3f} GB per GB")
PY
cargo bench --quiet --bench engine -- --index bench-data/idx-crates --corpus-root "$D/indexed" \
  --unrelated-root "$D/held-out" --prose-root "$P/usr/share/doc/python3.11/html/_sources" --json "$R/engine.json" > /dev/null
cat "$R/engine.json"
