#!/usr/bin/env bash
# End-to-end test of `dsv3 tokenize` / `dsv3 detokenize` with the real DeepSeek-V3 tokenizer.
# Expected ids come from HF tokenizers (tests/fixtures/tokenizer/deepseek_v3_parity.jsonl).
set -euo pipefail
DSV3=${1:?usage: tokenize.sh path/to/dsv3}
SRC=${DSV3_SOURCE_DIR:?set DSV3_SOURCE_DIR to the repo root}
TOK=$SRC/.cache/tokenizer/deepseek_v3
FIX=$SRC/tests/fixtures/tokenizer/deepseek_v3_parity.jsonl
[[ -f $TOK/tokenizer.json ]] || { echo "missing $TOK/tokenizer.json: run scripts/setup.sh"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
passes=0
check() {  # name, expected, actual
  if [[ "$2" == "$3" ]]; then echo "ok: $1"; passes=$((passes + 1)); else echo "FAIL: $1: expected [$2] got [$3]"; fails=$((fails + 1)); fi
}

# --jsonl: 300 fixture strings in, their HF ids out, line for line.
python3 - "$FIX" "$tmp" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
rows = [r for r in rows if not r.get("add_special_tokens")][:300]
with open(sys.argv[2] + "/in.jsonl", "w", encoding="utf-8") as f:
    for r in rows: f.write(json.dumps(r["text"], ensure_ascii=False) + "\n")
with open(sys.argv[2] + "/want.jsonl", "w") as f:
    for r in rows: f.write(json.dumps(r["ids"]) + "\n")
PY
"$DSV3" tokenize --tokenizer "$TOK" --jsonl <"$tmp/in.jsonl" >"$tmp/got.jsonl"
python3 - "$tmp" <<'PY' && r=same || r=differ
import json, sys
got = [json.loads(l) for l in open(sys.argv[1] + "/got.jsonl")]
want = [json.loads(l) for l in open(sys.argv[1] + "/want.jsonl")]
sys.exit(0 if got == want else 1)
PY
check "tokenize --jsonl matches HF on 300 strings" same "$r"

# Round trip through detokenize --jsonl gives the strings back.
"$DSV3" detokenize --tokenizer "$TOK" --jsonl <"$tmp/got.jsonl" >"$tmp/back.jsonl"
python3 - "$tmp" <<'PY' && r=same || r=differ
import json, sys
back = [json.loads(l) for l in open(sys.argv[1] + "/back.jsonl", encoding="utf-8")]
src = [json.loads(l) for l in open(sys.argv[1] + "/in.jsonl", encoding="utf-8")]
sys.exit(0 if back == src else 1)
PY
check "detokenize --jsonl round trip" same "$r"

# Plain mode: the folder or the file itself as --tokenizer; ids for "Hello world" from HF.
want=$(python3 -c 'import json,sys
for l in open(sys.argv[1], encoding="utf-8"):
    r = json.loads(l)
    if r["text"] == "hello" and not r.get("add_special_tokens"): print(" ".join(map(str, r["ids"]))); break' "$FIX")
got=$(printf 'hello' | "$DSV3" tokenize --tokenizer "$TOK/tokenizer.json")
check "plain tokenize" "$want" "$got"
got=$(printf 'hello' | "$DSV3" tokenize --tokenizer "$TOK" --add-bos)
check "--add-bos prepends BOS (id 0)" "0 $want" "$got"
got=$(printf '0 %s 1' "$want" | "$DSV3" detokenize --tokenizer "$TOK")
check "plain detokenize keeps specials" "<｜begin▁of▁sentence｜>hello<｜end▁of▁sentence｜>" "$got"
got=$(printf '0 %s 1' "$want" | "$DSV3" detokenize --tokenizer "$TOK" --skip-special-tokens)
check "detokenize --skip-special-tokens" "hello" "$got"

# Errors: one line on stderr, exit code 1.
if printf '\xff' | "$DSV3" tokenize --tokenizer "$TOK" 2>"$tmp/err"; then r=ok; else r=$?; fi
check "invalid UTF-8 exits 1" 1 "$r"
grep -q "byte offset 0" "$tmp/err" && r=yes || r=no
check "invalid UTF-8 error names the offset" yes "$r"
if printf '5 999999' | "$DSV3" detokenize --tokenizer "$TOK" 2>"$tmp/err"; then r=ok; else r=$?; fi
check "unknown id exits 1" 1 "$r"
if printf 'x' | "$DSV3" tokenize --tokenizer /nonexistent 2>"$tmp/err"; then r=ok; else r=$?; fi
check "missing tokenizer exits 1" 1 "$r"
"$DSV3" tokenize --help | grep -q -- "--jsonl" && r=yes || r=no
check "tokenize --help documents --jsonl" yes "$r"

echo "$passes passed, $fails failed"
[[ $fails -eq 0 ]]
