#!/usr/bin/env bash
# dsv3 init / info / forward as a user runs them, including the errors for bad input.
set -euo pipefail
dsv3="$1"
fix="$DSV3_SOURCE_DIR/tests/fixtures/models"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# Every subcommand answers --help, and every one the CLI lists is checked here.
"$dsv3" --help >"$tmp/help"
for c in info init forward generate chat serve tokenize detokenize chat-template "tokenizer train" train \
         "data prepare"; do
  # shellcheck disable=SC2086
  "$dsv3" $c --help >/dev/null || fail "$c --help"
  grep -q "^  ${c%% *} " "$tmp/help" || fail "dsv3 --help does not list ${c%% *}"
done

# An error run: non-zero exit and a one-line message containing $2.
expect_error() {
  local want="$1"; shift
  if "$@" >"$tmp/out" 2>"$tmp/err"; then fail "expected failure: $*"; fi
  grep -q -- "$want" "$tmp/err" || { cat "$tmp/err" >&2; fail "message lacks '$want': $*"; }
}

# init -> info -> forward on every dtype.
for dt in f32 bf16 fp8; do
  "$dsv3" init --config "$fix/v3_fp8_blocks/config.json" --out "$tmp/m_$dt" --dtype "$dt" --seed 1 >/dev/null
  "$dsv3" info --model "$tmp/m_$dt" >"$tmp/info"
  grep -q "KV cache / token" "$tmp/info" || fail "info lacks the KV-cache line"
  grep -q "activated per token" "$tmp/info" || fail "info lacks parameter counts"
  "$dsv3" forward --model "$tmp/m_$dt" --input "$fix/v3_fp8_blocks/reference.safetensors" \
    --output "$tmp/out_$dt.safetensors" 2>/dev/null
  [ -s "$tmp/out_$dt.safetensors" ] || fail "forward wrote nothing ($dt)"
done
grep -q "F8_E4M3" <("$dsv3" info --model "$tmp/m_fp8") || fail "fp8 checkpoint has no F8_E4M3 tensors"

# Bad input.
expect_error "unknown --dtype" "$dsv3" init --config "$fix/v3_plain_f32/config.json" --out "$tmp/x" --dtype int4
cp -r "$fix/v3_plain_f32" "$tmp/trunc"
head -c 5000 "$fix/v3_plain_f32/model.safetensors" >"$tmp/trunc/model.safetensors"
expect_error "model.safetensors" "$dsv3" info --model "$tmp/trunc"
mkdir -p "$tmp/noconfig" && cp "$fix/v3_plain_f32/model.safetensors" "$tmp/noconfig/"
expect_error "config.json" "$dsv3" info --model "$tmp/noconfig"
expect_error "input_ids" "$dsv3" forward --model "$fix/v3_plain_f32" \
  --input "$fix/v3_plain_f32/model.safetensors" --output "$tmp/o.safetensors"
for flag in --batch-gemms --batch-invariant; do
  expect_error "add --device cuda" "$dsv3" generate --model "$fix/v3_plain_f32" --prompt-ids 1,2 \
    "$flag"
  expect_error "add --device cuda" "$dsv3" serve --model "$fix/v3_plain_f32" "$flag"
  expect_error "add --device cuda" "$dsv3" chat --model "$fix/v3_plain_f32" "$flag"
  "$dsv3" serve --help | grep -q -- "$flag" || fail "serve --help lacks $flag"
done
# Checked before any device is opened (a build without CUDA says so first).
expect_error "pick one\\|built without the CUDA" "$dsv3" generate --model "$fix/v3_plain_f32" \
  --prompt-ids 1,2 --device cuda --batch-gemms --batch-invariant
expect_error "add --device cuda" "$dsv3" generate --model "$fix/v3_plain_f32" --prompt-ids 1,2 \
  --kv-cache-dtype fp8
expect_error "add --device cuda" "$dsv3" chat --model "$fix/v3_plain_f32" --kv-cache-dtype fp8
expect_error "fp8" "$dsv3" serve --model "$fix/v3_plain_f32" --kv-cache-dtype fp16
for c in generate chat serve; do
  "$dsv3" $c --help | grep -q -- "--kv-cache-dtype" || fail "$c --help lacks --kv-cache-dtype"
done
echo "model commands: all checks passed"
