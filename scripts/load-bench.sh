#!/usr/bin/env bash
# The load benchmark of docs/benchmarks.md (issue #7), end to end:
#   1. installs the peers when missing: nginx (Debian's nginx-light) and wrk from Debian, the
#      LiteLLM proxy (PyPI `litellm[proxy]`) into bench-data/load/venv-litellm;
#   2. fetches and indexes the corpus when missing: ~0.9 GB of crate sources
#      (scripts/bench-engine.sh's index, bench-data/idx-crates) and 0.37 GB of Linux 6.1 sources
#      (Debian's linux-source-6.1: kernel/, mm/, fs/, net/, sound/, Documentation/ and
#      drivers/{net,usb,scsi,media}) — 1.26 GB together;
#   3. runs `cargo bench --bench load` with every arm (Verbatim also speaking HTTP/2 to the
#      mock upstream, `--upstream-h2`), then a soak run.
# Results (load.md, load.json, SVG plots) go to bench-data/load/results/ (not committed);
# docs/benchmarks.md quotes them. SOAK_SECS=0 skips the soak; SOAK_SECS and SOAK_STREAMS set it.
set -euo pipefail
cd "$(dirname "$0")/.."
L=bench-data/load
mkdir -p "$L"
need_apt=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v wrk >/dev/null || need_apt+=(wrk)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get install -y -q "${need_apt[@]}" || { apt-get update -qq && apt-get install -y -q "${need_apt[@]}"; }
fi
# Debian starts nginx on port 80 when it is installed; the benchmark runs its own.
nginx -s quit 2>/dev/null || true
if [ ! -x "$L/venv-litellm/bin/litellm" ]; then
  python3 -m venv "$L/venv-litellm"
  "$L/venv-litellm/bin/pip" install -q 'litellm[proxy]'
fi
# An index of another format version is rebuilt (the proxy refuses to open it).
v=$(grep -oP 'pub const FORMAT_VERSION: u32 = \K[0-9]+' src/index/format.rs)
current() { grep -q "\"format_version\": $v," "$1/manifest.json" 2>/dev/null; }
current bench-data/idx-crates || scripts/bench-engine.sh
if ! current "$L/idx-linux"; then
  if [ ! -d "$L/linux/linux-source-6.1" ]; then
    (cd "$L" && { ls linux-source-6.1_*.deb >/dev/null 2>&1 || apt-get download linux-source-6.1 || { apt-get update -qq && apt-get download linux-source-6.1; }; } \
      && mkdir -p linux && dpkg-deb -x linux-source-6.1_*.deb linux \
      && cd linux && tar -xJf usr/src/linux-source-6.1.tar.xz \
        linux-source-6.1/kernel linux-source-6.1/mm linux-source-6.1/fs linux-source-6.1/net \
        linux-source-6.1/sound linux-source-6.1/Documentation linux-source-6.1/drivers/net \
        linux-source-6.1/drivers/usb linux-source-6.1/drivers/scsi linux-source-6.1/drivers/media)
  fi
  cat > "$L/linux.toml" <<'TOML'
# Linux 6.1 sources (Debian's linux-source-6.1): GPL-2.0 with per-file SPDX identifiers.
name = "linux-6.1"
kind = "auto"
rights = "licensed"
url = "https://git.kernel.org/pub/scm/linux/kernel/git/stable/linux.git/tree/{path}?h=v6.1"
paths = ["linux/linux-source-6.1"]
include = ["**/*.c", "**/*.h", "**/*.rst", "**/*.txt"]
TOML
  cargo build --release --quiet
  ./target/release/verbatim index build --corpus "$L/linux.toml" --out "$L/idx-linux" --force --quiet
fi
cargo build --release --quiet
ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true
cargo bench --quiet --bench load -- run \
  --nginx "$(command -v nginx || echo /usr/sbin/nginx)" \
  --litellm "$L/venv-litellm/bin/litellm" \
  --index bench-data/idx-crates --index "$L/idx-linux" \
  --upstream-h2 \
  --prompt-source "$L/linux/linux-source-6.1/kernel" \
  --soak-secs "${SOAK_SECS:-600}" --soak-streams "${SOAK_STREAMS:-300}" \
  --out "$L/results" "$@"
