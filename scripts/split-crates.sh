#!/usr/bin/env bash
# Splits the fetched crates (scripts/fetch-crates.sh) into an indexed part and a held-out part:
# every version of a crate whose name hashes to 0 mod 10 is held out (never indexed), so held-out
# text shares no crate with the index. Used by scripts/bench-engine.sh and scripts/quality-bench.sh.
#
#   scripts/split-crates.sh [DIR]      # DIR defaults to bench-data/crates
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-bench-data/crates}
rm -rf "$D/indexed" "$D/held-out"
mkdir -p "$D/indexed" "$D/held-out"
ln -s ../manifests/src "$D/indexed/src"
for m in "$D"/manifests/*.toml; do
  base=$(basename "$m" .toml)
  crate=${base%-[0-9]*}
  if [ $(( $(printf '%s' "$crate" | cksum | cut -d' ' -f1) % 10 )) -eq 0 ]; then
    ln -s "$(cd "$D/manifests/src/$base" && pwd -P)" "$D/held-out/$base"
  else
    ln -s "../manifests/$base.toml" "$D/indexed/$base.toml"
  fi
done
echo "indexed manifests: $(ls "$D"/indexed/*.toml | wc -l), held-out crate versions: $(ls "$D/held-out" | wc -l)"
