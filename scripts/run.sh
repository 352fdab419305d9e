#!/usr/bin/env bash
# The main job on its built-in default (README Quick start): build dsv3, write a small
# random-weight DeepSeek-V3-shaped checkpoint (FP8 projections with 128x128 block scales),
# describe it, and run a forward pass over a prompt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/build.sh" release
dsv3="$root/build/bin/dsv3"
model="$root/out/dsv3-tiny-fp8"
if [ ! -f "$model/config.json" ]; then
  "$dsv3" init --config "$root/configs/dsv3-tiny.json" --out "$model" --dtype fp8 --seed 0
fi
"$dsv3" info --model "$model"
# "Hello, world!" in DeepSeek-V3's tokenizer, after the BOS token.
"$dsv3" forward --model "$model" --ids 0,19923,14,2058,3
