#!/usr/bin/env bash
# Issue 8 on a GPU machine: `dsv3 serve --device cuda` end to end (tools/gpu/check_serve_cuda.py)
# on a tiny random model with the real vocabulary, with binaries from tools/gpu/pack.sh.
# Usage (device tool, carry .gpu): export LD_LIBRARY_PATH=$PWD/.gpu/lib; tools/gpu/run_issue8.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/issue8}
mkdir -p "$OUT"
BIN=${BIN:-.gpu/bin}
TOK=${TOK:-.gpu/tokenizer}
model=/tmp/issue8-tiny
echo "== serve on CUDA, binaries of $(cat .gpu/COMMIT 2>/dev/null || echo '?')"
"$BIN/dsv3" init --config tests/fixtures/configs/tiny_real_vocab.json --out "$model" \
  --dtype bf16 > /dev/null
OUT=$OUT python3 tools/gpu/check_serve_cuda.py --dsv3 "$BIN/dsv3" --model "$model" \
  --tokenizer "$TOK"
