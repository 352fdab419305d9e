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
# A context of 512 (the fixture's is 64): room for prompts that fill whole 64-token cache
# blocks, which a repeated prompt then shares.
python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c["max_position_embeddings"]=512; print(json.dumps(c))' \
  tests/fixtures/configs/tiny_real_vocab.json > /tmp/issue8-tiny.json
"$BIN/dsv3" init --config /tmp/issue8-tiny.json --out "$model" --dtype bf16 > /dev/null
OUT=$OUT python3 tools/gpu/check_serve_cuda.py --dsv3 "$BIN/dsv3" --model "$model" \
  --tokenizer "$TOK"
