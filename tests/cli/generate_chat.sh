#!/usr/bin/env bash
# dsv3 generate and dsv3 chat end to end with the real DeepSeek-V3 tokenizer, on a tiny
# random model whose vocabulary matches it; and their errors for bad input.
set -euo pipefail
dsv3="$1"
tok="$DSV3_SOURCE_DIR/.cache/tokenizer/deepseek_v3"
cfg="$DSV3_SOURCE_DIR/tests/fixtures/configs/tiny_real_vocab.json"
r1="$DSV3_SOURCE_DIR/tests/fixtures/chat/deepseek-r1-chat-template.json"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_error() {
  local want="$1"; shift
  if "$@" >"$tmp/out" 2>"$tmp/err"; then fail "expected failure: $*"; fi
  grep -q -- "$want" "$tmp/err" || { cat "$tmp/err" >&2; fail "message lacks '$want': $*"; }
}
[ -f "$tok/tokenizer.json" ] || fail "run scripts/setup.sh first (it fetches the tokenizer)"
"$dsv3" init --config "$cfg" --out "$tmp/m" --dtype bf16 --seed 3 >/dev/null
for c in generate chat; do "$dsv3" "$c" --help >/dev/null || fail "$c --help"; done

# Greedy generation: the ids on the last line; speculative decoding gives the same ids.
"$dsv3" generate --model "$tmp/m" --tokenizer "$tok" --prompt "Hello, world" -n 12 -t 0 \
  --print-ids >"$tmp/plain" 2>"$tmp/plain.err"
"$dsv3" generate --model "$tmp/m" --tokenizer "$tok" --prompt "Hello, world" -n 12 -t 0 \
  --print-ids --speculative >"$tmp/spec" 2>"$tmp/spec.err"
[ "$(tail -n1 "$tmp/plain" | wc -w)" -ge 1 ] || fail "no ids printed"
[ "$(tail -n1 "$tmp/plain")" = "$(tail -n1 "$tmp/spec")" ] || fail "speculative ids differ from plain"
grep -q "decode:" "$tmp/plain.err" || fail "no timing summary"
grep -q "drafts accepted" "$tmp/spec.err" || fail "no acceptance rate"
# The same seed gives the same sample; ids in, ids out.
a="$("$dsv3" generate --model "$tmp/m" --prompt-ids 0,100,200 -n 8 --seed 5 --print-ids 2>/dev/null | tail -n1)"
b="$("$dsv3" generate --model "$tmp/m" --prompt-ids 0,100,200 -n 8 --seed 5 --print-ids 2>/dev/null | tail -n1)"
[ "$a" = "$b" ] || fail "seeded sampling is not reproducible"
# A batch of two prompts.
"$dsv3" generate --model "$tmp/m" --tokenizer "$tok" --prompt "one" --prompt "two three" -n 4 -t 0 \
  >"$tmp/batch" 2>/dev/null
[ "$(grep -c '^--- \[' "$tmp/batch")" = 2 ] || fail "batch output"

# Chat: two turns, /reset, and the R1 template's reasoning block.
printf 'Hello\nHow are you?\n/reset\nBye\n' |
  "$dsv3" chat --model "$tmp/m" --tokenizer "$tok" -n 6 -t 0 >"$tmp/chat" 2>"$tmp/chat.err"
grep -q "history cleared" "$tmp/chat" || fail "chat /reset"
[ "$(grep -c 'prompt tokens' "$tmp/chat.err")" = 3 ] || fail "chat did not answer three turns"
printf 'Hi\n' | "$dsv3" chat --model "$tmp/m" --tokenizer "$tok" --template "$r1" -n 6 -t 0 \
  >"$tmp/r1" 2>/dev/null
grep -q "\[thinking\]" "$tmp/r1" || fail "R1 reasoning not shown apart"

# Bad input.
expect_error "not both" "$dsv3" generate --model "$tmp/m" --prompt-ids 1 --prompt x --tokenizer "$tok"
expect_error "empty" "$dsv3" generate --model "$tmp/m" --tokenizer "$tok" --prompt "" --no-special
expect_error "vocabulary" "$dsv3" generate --model "$tmp/m" --prompt-ids 0,999999
expect_error "not a token id" "$dsv3" generate --model "$tmp/m" --prompt-ids 0,abc
expect_error "temperature" "$dsv3" generate --model "$tmp/m" --prompt-ids 0,1 -t -1
expect_error "top_p" "$dsv3" generate --model "$tmp/m" --prompt-ids 0,1 --top-p 0
expect_error "context" "$dsv3" generate --model "$tmp/m" --prompt-ids "$(seq -s, 1 70)"
expect_error "tokenizer" "$dsv3" generate --model "$tmp/m" --prompt "no tokenizer here"
echo "generate/chat: all checks passed"
