#!/usr/bin/env bash
# Fetches the sources of a few hundred crates from the Rust crate registry (each listed crate
# and its dependencies, resolved in its own scratch project so `links` conflicts cannot stop the
# run) and writes one corpus manifest per crate version, with the SPDX license `cargo metadata`
# reports. Nothing here is committed: everything goes under $OUT (default bench-data/crates).
#
#   scripts/fetch-crates.sh [OUT]          # then: verbatim index build --corpus OUT/manifests ...
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-data/crates}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export CARGO_HOME="$OUT/cargo-home"
mkdir -p "$OUT/scratch" "$OUT/manifests" "$OUT/meta"

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

for c in $CRATES; do
  d="$OUT/scratch/$c"
  [ -f "$OUT/meta/$c.json" ] && continue
  mkdir -p "$d/src"
  printf '[package]\nname = "scratch-%s"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\n%s = "*"\n' "$c" "$c" > "$d/Cargo.toml"
  : > "$d/src/lib.rs"
  if (cd "$d" && cargo fetch --quiet 2>"$d/fetch.err" && cargo metadata --format-version 1 --quiet > "$OUT/meta/$c.json" 2>>"$d/fetch.err"); then
    echo "fetched $c"
  else
    echo "could not fetch $c: $(tail -1 "$d/fetch.err")" >&2
    rm -f "$OUT/meta/$c.json"
  fi
done

# One manifest per unique crate version; sources are reached through a symlink so document
# paths read `src/<crate>-<version>/<file>`.
python3 - "$OUT" <<'PY'
import json, os, re, sys, glob
out = sys.argv[1]
seen = {}
for f in sorted(glob.glob(os.path.join(out, "meta", "*.json"))):
    for p in json.load(open(f))["packages"]:
        if p["name"].startswith("scratch-"):
            continue
        seen[(p["name"], p["version"])] = p
os.makedirs(os.path.join(out, "manifests", "src"), exist_ok=True)
total = 0
licenses = {}
for (name, ver), p in sorted(seen.items()):
    root = os.path.dirname(p["manifest_path"])
    corpus = re.sub(r"[^A-Za-z0-9._-]", "_", f"{name}-{ver}")
    link = os.path.join(out, "manifests", "src", corpus)
    if not os.path.islink(link):
        os.symlink(root, link)
    lic = p.get("license") or ""
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
