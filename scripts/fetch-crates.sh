#!/usr/bin/env bash
# Fetches the sources of a few hundred crates from the Rust crate registry — the crate versions
# pinned in corpora/crates.tsv, each checked against the sha256 recorded there — and writes one
# corpus manifest per crate version, with the SPDX license its Cargo.toml declares. Pinned so
# that a run months later indexes the same text: unpinned, the newest versions fetched on
# another day changed the quality benchmark's sample (docs/quality.md). Nothing here is
# committed: everything goes under $OUT (default bench-data/crates).
#
#   scripts/fetch-crates.sh [OUT]             # then: verbatim index build --corpus OUT/manifests ...
#   scripts/fetch-crates.sh --refresh [OUT]   # resolve the newest versions again (`cargo fetch`
#                                             # of each crate below) and rewrite corpora/crates.tsv
set -euo pipefail
cd "$(dirname "$0")/.."
REFRESH=0
if [ "${1:-}" = "--refresh" ]; then REFRESH=1; shift; fi
OUT=${1:-bench-data/crates}
LIST=$PWD/corpora/crates.tsv
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export CARGO_HOME="$OUT/cargo-home"
mkdir -p "$OUT/crates" "$OUT/src" "$OUT/manifests"

# Popular crates of every kind, several with large vendored C/C++ sources, and copyleft ones
# (sequoia-openpgp LGPL, rug LGPL, libpijul GPL, lemmy_utils AGPL).
CRATES="serde serde_json serde_yaml toml tokio hyper reqwest axum actix-web warp tonic prost
rustls ring openssl native-tls clap anyhow thiserror log env_logger tracing tracing-subscriber
rand regex aho-corasick memchr bytes futures async-trait itertools rayon crossbeam parking_lot
once_cell chrono time uuid url http base64 hex sha2 md-5 blake3 flate2 zstd brotli tar zip
image wgpu winit egui nalgebra ndarray num diesel rusqlite redis sled tantivy syn quote nom pest
logos cranelift-codegen wasmtime gimli object goblin pyo3 wasm-bindgen web-sys windows
windows-sys winapi libc nix rustix mio socket2 tokio-util tower tower-http h2 quinn
hickory-resolver lettre handlebars tera minijinja pulldown-cmark comrak syntect grep-searcher
ignore walkdir notify crossterm ratatui indicatif git2 gix polars arrow sequoia-openpgp rug
libpijul lemmy_utils"


if [ $REFRESH = 1 ]; then
  # Each crate and its dependencies, resolved in its own scratch project so `links` conflicts
  # cannot stop the run.
  rm -rf "$OUT/scratch" "$OUT/meta"
  mkdir -p "$OUT/scratch" "$OUT/meta"
  for c in $CRATES; do
    d="$OUT/scratch/$c"
    mkdir -p "$d/src"
    printf '[package]\nname = "scratch-%s"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\n%s = "*"\n' "$c" "$c" > "$d/Cargo.toml"
    : > "$d/src/lib.rs"
    if (cd "$d" && cargo fetch --quiet 2>"$d/fetch.err" && cargo metadata --format-version 1 --quiet > "$OUT/meta/$c.json" 2>>"$d/fetch.err"); then
      echo "resolved $c"
    else
      echo "could not fetch $c: $(tail -1 "$d/fetch.err")" >&2
      rm -f "$OUT/meta/$c.json"
    fi
  done
  python3 - "$OUT" "$LIST" <<'PY'
import datetime, glob, json, os, sys, tomllib
out, path = sys.argv[1:]
sums, seen = {}, set()
for lock in glob.glob(os.path.join(out, "scratch", "*", "Cargo.lock")):
    for p in tomllib.load(open(lock, "rb")).get("package", []):
        if "checksum" in p:
            sums[(p["name"], p["version"])] = p["checksum"]
for f in glob.glob(os.path.join(out, "meta", "*.json")):
    for p in json.load(open(f))["packages"]:
        if not p["name"].startswith("scratch-"):
            seen.add((p["name"], p["version"]))
with open(path, "w") as o:
    o.write("# The crate versions scripts/fetch-crates.sh downloads (name, version, sha256 of the .crate):\n")
    o.write("# the top-level crates it lists and their dependencies as `cargo fetch` resolved them on\n")
    o.write(f"# {datetime.date.today()} (`scripts/fetch-crates.sh --refresh` resolves them again and rewrites this file).\n")
    for n, v in sorted(seen):
        o.write(f"{n}\t{v}\t{sums[(n, v)]}\n")
print(f"{path}: {len(seen)} crate versions")
PY
fi

# Download and unpack each pinned version from the registry's download host (the one `cargo
# fetch` uses; a .crate already in the scratch projects' cache is copied instead).
fetch_one() {
  local name=$1 version=$2 sum=$3 f cached
  [ -d "$OUT/src/$name-$version" ] && return 0
  f="$OUT/crates/$name-$version.crate"
  if [ ! -f "$f" ]; then
    cached=$(ls "$CARGO_HOME"/registry/cache/*/"$name-$version.crate" 2>/dev/null | head -1 || true)
    if [ -n "$cached" ]; then
      cp "$cached" "$f.tmp"
    else
      curl -sSf --retry 3 --max-time 120 -o "$f.tmp" "https://static.crates.io/crates/$name/$name-$version.crate"
    fi
    mv "$f.tmp" "$f"
  fi
  if [ "$(sha256sum "$f" | cut -d' ' -f1)" != "$sum" ]; then
    echo "fetch-crates: $name $version: the download's sha256 is not corpora/crates.tsv's" >&2
    rm -f "$f"
    return 1
  fi
  rm -rf "$OUT/src/.tmp-$name-$version"
  mkdir -p "$OUT/src/.tmp-$name-$version"
  tar -xzf "$f" -C "$OUT/src/.tmp-$name-$version"
  mv "$OUT/src/.tmp-$name-$version/$name-$version" "$OUT/src/$name-$version"
  rmdir "$OUT/src/.tmp-$name-$version"
}
export -f fetch_one
export OUT CARGO_HOME
grep -v '^#' "$LIST" | xargs -P 8 -n 3 bash -c 'fetch_one "$@"' _
echo "fetched $(grep -vc '^#' "$LIST") pinned crate versions"

# One manifest per crate version; sources are reached through a symlink so document paths read
# `src/<crate>-<version>/<file>`.
python3 - "$OUT" "$LIST" <<'PY'
import os, re, sys, tomllib
out, path = sys.argv[1:]
seen = [tuple(l.split("\t")[:2]) for l in open(path) if l.strip() and not l.startswith("#")]
os.makedirs(os.path.join(out, "manifests", "src"), exist_ok=True)
total = 0
licenses = {}
for name, ver in sorted(seen):
    root = os.path.join(out, "src", f"{name}-{ver}")
    corpus = re.sub(r"[^A-Za-z0-9._-]", "_", f"{name}-{ver}")
    link = os.path.join(out, "manifests", "src", corpus)
    if os.path.islink(link) and os.readlink(link) != root:
        os.remove(link)
    if not os.path.islink(link):
        os.symlink(root, link)
    # The license its Cargo.toml declares (what `cargo metadata` reports).
    with open(os.path.join(root, "Cargo.toml"), "rb") as f:
        lic = tomllib.load(f).get("package", {}).get("license") or ""
    if not isinstance(lic, str):
        lic = ""  # `license.workspace = true` is resolved before publishing; never in a .crate
    lic = re.sub(r"\s*/\s*", " OR ", lic).strip()
    lines = [f'name = "{corpus}"', 'kind = "auto"', 'rights = "licensed"',
             f'paths = ["src/{corpus}"]',
             f'url = "https://docs.rs/crate/{name}/{ver}/source/{{path}}"',
             'exclude = ["**/target/**", "**/.git/**"]']
    if lic:
        lines.append(f'license = "{lic}"')
    lines += ["", "[metadata]", f'title = "{name} {ver}"']
    open(os.path.join(out, "manifests", f"{corpus}.toml"), "w").write("\n".join(lines) + "\n")
    for dp, _, fs in os.walk(root):
        for fn in fs:
            try:
                total += os.lstat(os.path.join(dp, fn)).st_size
            except OSError:
                pass
    licenses[lic or "NOASSERTION"] = licenses.get(lic or "NOASSERTION", 0) + 1
print(f"{len(seen)} crate versions, {total/1e6:.0f} MB of source")
top = sorted(licenses.items(), key=lambda kv: -kv[1])[:12]
print("licenses:", ", ".join(f"{k} ({v})" for k, v in top))
PY
