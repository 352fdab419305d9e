#!/usr/bin/env bash
# The main job on its built-in default (README Quick start): build dsv3, write a small
# random-weight DeepSeek-V3-shaped checkpoint (FP8 projections with 128x128 block scales, MTP),
# describe it, run a forward pass and generate with MTP speculative decoding, using the real
# DeepSeek-V3 tokenizer. (Random weights: the text is noise; the machinery is real.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/build.sh" release
dsv3="$root/build/bin/dsv3"
tok="$root/.cache/tokenizer/deepseek_v3"
model="$root/out/dsv3-tiny-fp8"
if [ ! -f "$model/config.json" ]; then
  "$dsv3" init --config "$root/configs/dsv3-tiny.json" --out "$model" --dtype fp8 --seed 0
fi
"$dsv3" info --model "$model"
ids="$(printf 'The capital of France is' | "$dsv3" tokenize --tokenizer "$tok" --add-bos | tr ' ' ',')"
echo "prompt ids: $ids"
"$dsv3" forward --model "$model" --ids "$ids"
"$dsv3" generate --model "$model" --tokenizer "$tok" --prompt "The capital of France is" \
  --max-new-tokens 32 --temperature 0 --speculative --print-ids
