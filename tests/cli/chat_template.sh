#!/usr/bin/env bash
# `dsv3 chat-template` as a user runs it: its output must equal, byte for byte, what HF
# transformers rendered for the same messages (tests/fixtures/chat/chat_fixtures.json).
# Usage: chat_template.sh /path/to/dsv3   (env DSV3_SOURCE_DIR = repo root)
set -euo pipefail
dsv3=$1
root=${DSV3_SOURCE_DIR:?set DSV3_SOURCE_DIR to the repo root}
tok="$root/.cache/tokenizer/deepseek_v3"
fixtures="$root/tests/fixtures/chat/chat_fixtures.json"
r1="$root/tests/fixtures/chat/deepseek-r1-chat-template.json"
[[ -f $tok/tokenizer_config.json ]] || { echo "missing $tok: run scripts/setup.sh" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed to read the fixtures" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { if ! "$@"; then echo "FAIL: $*" >&2; fails=$((fails + 1)); fi; }

# --help documents every option.
"$dsv3" chat-template --help >"$tmp/help"
for opt in --tokenizer-dir --messages --add-generation-prompt --template; do
  check grep -q -- "$opt" "$tmp/help"
done

# Split the fixtures into messages / expected files: NAME.TEMPLATE.AGP.{json,expected}.
python3 - "$fixtures" "$tmp" <<'PY'
import json, sys
for f in json.load(open(sys.argv[1], encoding="utf-8")):
    if f["rendered"] is None:
        continue
    stem = f"{sys.argv[2]}/{f['name']}.{f['template']}.{int(f['add_generation_prompt'])}"
    json.dump(f["messages"], open(stem + ".json", "w", encoding="utf-8"), ensure_ascii=False)
    open(stem + ".expected", "w", encoding="utf-8", newline="").write(f["rendered"])
PY

n=0
for msgs in "$tmp"/*.json; do
  stem=${msgs%.json}
  IFS=. read -r _ tpl agp <<<"$(basename "$stem")"
  args=(--tokenizer-dir "$tok" --messages "$msgs")
  [[ $agp == 1 ]] && args+=(--add-generation-prompt)
  [[ $tpl == r1 ]] && args+=(--template "$r1")
  "$dsv3" chat-template "${args[@]}" >"$stem.out"
  check cmp -s "$stem.out" "$stem.expected"
  n=$((n + 1))
done
[[ $n -ge 48 ]] || { echo "FAIL: only $n fixtures" >&2; fails=$((fails + 1)); }

# Messages from stdin, wrapped in a request object; the R1 template as a .jinja file.
python3 -c "import json,sys; sys.stdout.write(json.load(open(sys.argv[1], encoding='utf-8'))['chat_template'])" \
  "$r1" >"$tmp/r1.jinja"
python3 -c "import json,sys; print(json.dumps({'model': 'x', 'messages': json.load(open(sys.argv[1]))}))" \
  "$tmp/r1_think_turns.r1.1.json" >"$tmp/request.json"
"$dsv3" chat-template --tokenizer-dir "$tok" --messages - --template "$tmp/r1.jinja" \
  --add-generation-prompt <"$tmp/request.json" >"$tmp/stdin.out"
check cmp -s "$tmp/stdin.out" "$tmp/r1_think_turns.r1.1.expected"

# Errors: one line on stderr, non-zero exit, no partial prompt on stdout.
echo '[{"role": "user", "content": null}]' >"$tmp/null.json"
if "$dsv3" chat-template --tokenizer-dir "$tok" --messages "$tmp/null.json" >"$tmp/err.out" 2>"$tmp/err"; then
  echo "FAIL: null content rendered" >&2; fails=$((fails + 1))
fi
check grep -q "dsv3: error: .*:[0-9]*:[0-9]*: unsupported operand types for +: 'str' and 'NoneType'" "$tmp/err"
check test ! -s "$tmp/err.out"
if "$dsv3" chat-template --tokenizer-dir "$tok" --messages "$tmp/nope.json" 2>"$tmp/err"; then
  echo "FAIL: missing messages file accepted" >&2; fails=$((fails + 1))
fi
check grep -q "cannot open messages file" "$tmp/err"
echo '{% macro m() %}{% endmacro %}' >"$tmp/bad.jinja"
if "$dsv3" chat-template --tokenizer-dir "$tok" --messages "$tmp/null.json" --template "$tmp/bad.jinja" 2>"$tmp/err"; then
  echo "FAIL: unsupported template accepted" >&2; fails=$((fails + 1))
fi
check grep -q "bad.jinja:1:4: unsupported statement 'macro'" "$tmp/err"

if [[ $fails -ne 0 ]]; then echo "$fails check(s) failed" >&2; exit 1; fi
echo "chat-template: $n fixtures byte-identical, errors reported"
