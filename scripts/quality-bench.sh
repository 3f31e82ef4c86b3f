#!/usr/bin/env bash
# Quality benchmark (issue #6): fetches the corpora from the package registries, splits each by
# document into an indexed part and a never-indexed part, builds the index, generates and scans
# the positives and negatives (benches/quality.rs), runs the peer tools on the same cases
# (scripts/quality_peers.py: copydetect, datasketch MinHash LSH Ensemble, jscpd, Dolos) and
# writes docs/quality.md with its plots. Nothing fetched is committed: it all lives under $Q.
#
#   scripts/quality-bench.sh [--per-cell N] [--negatives N]
#
# Corpora: the King James Bible (Debian bible-kjv, split by book), the Python 3.11
# documentation sources (Debian python3.11-doc, split by file), crate sources from the Rust
# crate registry (scripts/fetch-crates.sh; a sample of its indexed crates, including the copyleft
# ones, and its held-out crates), and the Python sources of twelve GPL and LGPL packages from
# PyPI (scripts/fetch-pypi.sh; split by package).
set -euo pipefail
cd "$(dirname "$0")/.."
PER_CELL=40
NEGATIVES=3000
while [ $# -gt 0 ]; do
  case "$1" in
    --per-cell) PER_CELL=$2; shift 2 ;;
    --negatives) NEGATIVES=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
Q=bench-data/quality
mkdir -p "$Q"
Q=$(cd "$Q" && pwd)

# --- King James Bible, one file per book -------------------------------------------------------
if [ ! -d "$Q/kjv/books" ]; then
  (cd "$Q" && apt-get download bible-kjv bible-kjv-text >/dev/null 2>&1)
  mkdir -p "$Q/kjv/root"
  for d in "$Q"/bible-kjv*.deb; do dpkg-deb -x "$d" "$Q/kjv/root"; done
  mkdir -p "$Q/kjv/books"
  # The `bible` program prints "Ge1:1 In the beginning ..."; group by book, drop the references.
  COLUMNS=100000 "$Q/kjv/root/usr/bin/bible" -f -p "$Q/kjv/root/usr/lib" "Gen1:1-Rev22:21" | python3 -c '
import re, sys, os
out = sys.argv[1]
books, order = {}, []
for line in sys.stdin:
    m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)", line)
    if not m:
        continue
    b = m.group(1)
    if b not in books:
        books[b] = []
        order.append(b)
    books[b].append(m.group(4))
for i, b in enumerate(order):
    with open(os.path.join(out, f"{i+1:02d}-{b}.txt"), "w") as f:
        f.write("\n".join(books[b]) + "\n")
' "$Q/kjv/books"
fi

# --- Python documentation sources --------------------------------------------------------------
P=bench-data/debian/pydoc
if [ ! -d "$P/usr/share/doc/python3.11/html/_sources" ]; then
  mkdir -p bench-data/debian
  (cd bench-data/debian && apt-get download python3.11-doc >/dev/null 2>&1)
  dpkg-deb -x bench-data/debian/python3.11-doc_*.deb "$P"
fi
PYDOC=$(cd "$P/usr/share/doc/python3.11/html/_sources" && pwd -P)

# --- Crates -------------------------------------------------------------------------------------
C=bench-data/crates
[ -d "$C/manifests/src" ] || scripts/fetch-crates.sh "$C"
[ -d "$C/indexed" ] || scripts/split-crates.sh "$C"
C=$(cd "$C" && pwd -P)

# --- PyPI: GPL and LGPL Python packages ------------------------------------------------------------
PY=bench-data/pypi
[ -f "$PY/packages.tsv" ] || scripts/fetch-pypi.sh "$PY"
PY=$(cd "$PY" && pwd -P)

# --- Manifests: indexed and never-indexed parts -------------------------------------------------
M="$Q/manifests"
rm -rf "$M"
mkdir -p "$M/indexed" "$M/held-out"
python3 - "$Q" "$PYDOC" "$C" "$M" "$PY" <<'PY'
import os, sys, zlib, glob
q, pydoc, crates, m, pypi = sys.argv[1:]
def pick(name, mod, keep):  # a stable split by name
    return zlib.crc32(name.encode()) % mod in keep
def manifest(path, name, kind, rights, paths, extra=""):
    quoted = ", ".join(f'"{p}"' for p in paths)
    with open(path, "w") as f:
        f.write(f'name = "{name}"\nkind = "{kind}"\nrights = "{rights}"\npaths = [{quoted}]\n{extra}')
# Document paths stay short and relative: each part reaches its sources through symlinks.
for part in ("indexed", "held-out"):
    os.symlink(os.path.join(q, "kjv", "books"), os.path.join(m, part, "kjv"))
    os.symlink(pydoc, os.path.join(m, part, "pydoc"))
    os.symlink(os.path.join(crates, "manifests", "src"), os.path.join(m, part, "src"))
    os.symlink(os.path.join(pypi, "src"), os.path.join(m, part, "pypi"))
books = sorted(os.listdir(os.path.join(q, "kjv", "books")))
for part, held in [("indexed", False), ("held-out", True)]:
    files = [f"kjv/{b}" for b in books if pick(b, 3, {0}) == held]
    manifest(os.path.join(m, part, "kjv.toml"), "kjv", "prose", "public-domain", files,
             'license = "LicenseRef-Public-Domain"\n[metadata]\ntitle = "The King James Bible"\n')
docs = sorted(os.path.relpath(d, pydoc) for d in glob.glob(os.path.join(pydoc, "**", "*.txt"), recursive=True))
for part, held in [("indexed", False), ("held-out", True)]:
    files = [f"pydoc/{d}" for d in docs if pick(d, 5, {0}) == held]
    manifest(os.path.join(m, part, "python-docs.toml"), "python-docs", "prose", "licensed", files,
             'license = "PSF-2.0"\n[metadata]\ntitle = "Python 3.11 documentation"\n')
# Crates: every copyleft crate of the engine's indexed split and a 1-in-6 sample of the others;
# all of its held-out crates (every version of a crate is on one side).
n = 0
for t in sorted(glob.glob(os.path.join(crates, "indexed", "*.toml"))):
    name = os.path.basename(t)[:-5]
    text = open(t).read()
    if "GPL" in text or pick(name, 6, {0}):
        open(os.path.join(m, "indexed", f"crate-{name}.toml"), "w").write(text)
        n += 1
h = 0
for d in sorted(glob.glob(os.path.join(crates, "held-out", "*"))):
    name = os.path.basename(d)
    manifest(os.path.join(m, "held-out", f"crate-{name}.toml"), name, "auto", "licensed",
             [f"src/{name}"], 'exclude = ["**/target/**", "**/.git/**"]\n')
    h += 1
# PyPI packages: a third of them (by name) never indexed; their Python sources only, without
# tests and documentation.
pn = {"indexed": 0, "held-out": 0}
for line in open(os.path.join(pypi, "packages.tsv")):
    name, version, spdx = line.rstrip("\n").split("\t")
    part = "held-out" if pick(name, 3, {0}) else "indexed"
    manifest(os.path.join(m, part, f"pypi-{name}.toml"), f"pypi-{name}", "code", "licensed",
             [f"pypi/{name}-{version}"],
             'include = ["**/*.py"]\n'
             'exclude = ["**/test/**", "**/tests/**", "**/unittests/**", "**/doc/**", "**/docs/**"]\n'
             f'license = "{spdx}"\nurl = "https://pypi.org/project/{name}/{version}/"\n'
             f'[metadata]\ntitle = "{name} {version} (PyPI)"\n')
    pn[part] += 1
print(f"manifests: kjv and python docs split by document; {n} indexed crates, {h} held-out crates; "
      f"{pn['indexed']} indexed and {pn['held-out']} held-out PyPI packages")
PY

# --- Index ---------------------------------------------------------------------------------------
cargo build --release --quiet
IDX="$Q/idx"
# Rebuilt when the corpus or the binary (normaliser, parameters) changes: a build takes seconds.
SIG=$(cat "$M"/indexed/*.toml target/release/verbatim | sha256sum | cut -c1-16)
if [ "$(cat "$IDX.sig" 2>/dev/null)" != "$SIG" ]; then
  target/release/verbatim index build --corpus "$M/indexed" --out "$IDX" --force --quiet
  echo "$SIG" > "$IDX.sig"
fi

# --- Our run -------------------------------------------------------------------------------------
RUN="$Q/run"
cargo bench --quiet --bench quality -- gen --corpus "$M/indexed" --held-out "$M/held-out" \
  --index "$IDX" --out "$RUN" --per-cell "$PER_CELL" --negatives "$NEGATIVES"

# --- Peers ---------------------------------------------------------------------------------------
V="$Q/venv"
if [ ! -x "$V/bin/python" ]; then
  python3 -m venv "$V"
  "$V/bin/pip" install --quiet copydetect==0.5.0 datasketch==2.0.0
fi
N="$Q/node"
if [ ! -d "$N/node_modules/jscpd" ] || [ ! -d "$N/node_modules/@dodona/dolos-lib" ]; then
  mkdir -p "$N"
  (cd "$N" && npm init -y >/dev/null && npm install --silent -E jscpd@5.3.2 @dodona/dolos-lib@3.5.1 >/dev/null)
fi
PYTHONHASHSEED=0 "$V/bin/python" scripts/quality_peers.py "$RUN" --node "$N"

# --- Report --------------------------------------------------------------------------------------
cargo bench --quiet --bench quality -- report --out "$RUN" --doc docs/quality.md
echo "wrote docs/quality.md"
