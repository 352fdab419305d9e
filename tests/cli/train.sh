#!/usr/bin/env bash
# `dsv3 train` as a user runs it: tokenizer → data → a YAML config with --set overrides →
# training with metrics, plots and a checkpoint `dsv3 generate` loads; Ctrl-C saves and
# --resume continues; a full disk during a save keeps the previous checkpoint; bad configs
# get one-line errors.
set -euo pipefail
dsv3="$1"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_error() {
  local want="$1"; shift
  if "$@" >"$tmp/out" 2>"$tmp/err"; then fail "expected failure: $*"; fi
  grep -q -- "$want" "$tmp/err" || { cat "$tmp/err" >&2; fail "message lacks '$want': $*"; }
}

python3 - "$tmp/text.txt" <<'PY'
import random, sys
rng = random.Random(3)
words = "the jury said that city election was a good thing for all of us and then we went home".split()
with open(sys.argv[1], "w") as f:
    for _ in range(600):
        f.write(" ".join(rng.choice(words) for _ in range(rng.randint(8, 30))) + ".\n")
PY
mkdir -p "$tmp/tok"
"$dsv3" tokenizer train --vocab-size 400 --input "$tmp/text.txt" --output "$tmp/tok/tokenizer.json" \
  --no-chat-template >/dev/null 2>&1
"$dsv3" data prepare --tokenizer "$tmp/tok" --input "$tmp/text.txt" --lines --out "$tmp/data" >/dev/null

cat >"$tmp/train.yaml" <<YAML
# A tiny DeepSeek-V3: MLA, 1 dense + 1 MoE layer, MTP.
model:
  vocab_size: 400
  hidden_size: 32
  intermediate_size: 64
  moe_intermediate_size: 16
  num_hidden_layers: 2
  first_k_dense_replace: 1
  num_attention_heads: 2
  num_key_value_heads: 2
  q_lora_rank: 16
  kv_lora_rank: 16
  qk_nope_head_dim: 8
  qk_rope_head_dim: 8
  v_head_dim: 8
  n_routed_experts: 8
  n_shared_experts: 1
  num_experts_per_tok: 2
  n_group: 2
  topk_group: 1
  routed_scaling_factor: 2.5
  max_position_embeddings: 128
  num_nextn_predict_layers: 1
  eos_token_id: 1
data: $tmp/data
out: $tmp/run
seq_len: 32
batch_size: 4
steps: 1000
optimizer:
  lr: 3.0e-3
eval:
  every: 10
  batches: 2
checkpoint:
  every: 10
  keep_last: 2
log_every: 5
YAML

# A short run with overrides: metrics, plots, a loadable checkpoint.
"$dsv3" train --config "$tmp/train.yaml" --steps 20 --set optimizer.lr=2e-3 --quiet >"$tmp/log"
grep -q "val loss" "$tmp/log" || fail "no val loss in the summary"
[[ $(grep -c '"loss"' "$tmp/run/metrics.jsonl") == 4 ]] || fail "expected 4 logged steps"
grep -q '"lr":0.002' "$tmp/run/train_config.json" ||
  grep -q '"lr": 0.002' "$tmp/run/train_config.json" || fail "--set not applied"
for f in loss.svg expert_load.svg; do [[ -s "$tmp/run/$f" ]] || fail "no $f"; done
ck="$tmp/run/checkpoints/step-00000020"
[[ -s "$ck/model.safetensors" && -s "$ck/config.json" ]] || fail "no checkpoint at step 20"
"$dsv3" generate --model "$ck" --tokenizer "$tmp/tok" --prompt "the jury" --max-new-tokens 4 \
  --temperature 0 >"$tmp/gen" || fail "generate cannot load the checkpoint"

# Ctrl-C: checkpoint and a clean exit, then --resume continues from that step.
"$dsv3" train --config "$tmp/train.yaml" --out "$tmp/run2" --quiet >"$tmp/log2" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  [[ -f "$tmp/run2/metrics.jsonl" ]] && (($(grep -c '"loss"' "$tmp/run2/metrics.jsonl") >= 2)) && break
  sleep 0.1
done
kill -INT "$pid"
wait "$pid" || fail "Ctrl-C exit status $?"
grep -q "interrupted at step" "$tmp/log2" || fail "no interruption message"
step=$(sed -n 's/.*interrupted at step \([0-9]*\).*/\1/p' "$tmp/log2")
"$dsv3" train --config "$tmp/train.yaml" --out "$tmp/run2" --steps $((step + 5)) --resume --quiet \
  >"$tmp/log3"
grep -q "trained steps $step..$((step + 5))" "$tmp/log3" || { cat "$tmp/log3"; fail "resume"; }

# A full disk (file size limit) during a save: exit 1, previous checkpoint intact and loadable.
before=$(cat "$tmp/run2/checkpoints/latest")
if (trap '' XFSZ; ulimit -f 40; "$dsv3" train --config "$tmp/train.yaml" --out "$tmp/run2" \
    --steps $((step + 10)) --resume --quiet) >"$tmp/out" 2>"$tmp/err"; then
  fail "a save beyond the file size limit succeeded"
fi
grep -q "could not write checkpoint" "$tmp/err" || { cat "$tmp/err"; fail "disk-full message"; }
grep -q "is intact" "$tmp/err" || fail "disk-full message does not name the intact checkpoint"
[[ $(cat "$tmp/run2/checkpoints/latest") == "$before" ]] || fail "latest moved after a failed save"
ls "$tmp/run2/checkpoints" | grep -q '^\.tmp' && fail "partial checkpoint left behind"
"$dsv3" train --config "$tmp/train.yaml" --out "$tmp/run2" --steps $((step + 6)) --resume --quiet \
  >/dev/null || fail "cannot resume after the failed save"

# Bad input.
expect_error "unknown setting 'optimizer.learning_rate'" \
  "$dsv3" train --config "$tmp/train.yaml" --set optimizer.learning_rate=1
expect_error "do not match" "$dsv3" train --config "$tmp/train.yaml" --set model.vocab_size=100 \
  --out "$tmp/run3"
printf 'steps: [1,\n' >"$tmp/bad.yaml"
expect_error "not valid YAML" "$dsv3" train --config "$tmp/bad.yaml"
echo "train CLI: all checks passed"
