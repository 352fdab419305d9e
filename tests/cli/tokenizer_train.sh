#!/usr/bin/env bash
# End-to-end test of `dsv3 tokenizer train`: train on generated text (.txt and .jsonl), then
# `dsv3 tokenize --tokenizer OUT` and `dsv3 detokenize` give the text back; errors exit 1.
set -euo pipefail
DSV3=${1:?usage: tokenizer_train.sh path/to/dsv3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
passes=0
check() {  # name, expected, actual
  if [[ "$2" == "$3" ]]; then echo "ok: $1"; passes=$((passes + 1)); else echo "FAIL: $1: expected [$2] got [$3]"; fails=$((fails + 1)); fi
}

python3 - "$tmp" <<'PY'
import json, random, sys
rng = random.Random(5)
words = ("the of and to in is model token training expert attention latent deep seek "
         "mixture compute 中文 模型 训练 日本語 カタカナ 😀 café naïve").split()
syl = "ka to ri mon sel va qu ex lo dre ph ith ung ze bra ny".split()
def doc(n):
    out = []
    for _ in range(n):
        w = rng.choice(words[:8]) if rng.random() < 0.5 else rng.choice(words)
        if rng.random() < 0.3: w = "".join(rng.choice(syl) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.1: w += " " + str(rng.randint(0, 99999))
        out.append(w + ("\n" if rng.random() < 0.08 else " "))
    return "".join(out)
with open(sys.argv[1] + "/a.txt", "w", encoding="utf-8") as f: f.write(doc(30000))
with open(sys.argv[1] + "/b.jsonl", "w", encoding="utf-8") as f:
    for _ in range(200): f.write(json.dumps({"text": doc(50)}, ensure_ascii=False) + "\n")
PY

mkdir "$tmp/out" "$tmp/out2"
"$DSV3" tokenizer train --vocab-size 800 --input "$tmp/a.txt" "$tmp/b.jsonl" \
  --output "$tmp/out/tokenizer.json" --no-chat-template 2>"$tmp/log"
check "train exits 0 and writes tokenizer.json" yes "$([[ -s $tmp/out/tokenizer.json ]] && echo yes || echo no)"
check "writes tokenizer_config.json beside it" yes "$([[ -s $tmp/out/tokenizer_config.json ]] && echo yes || echo no)"

r=$(python3 - "$tmp/out" <<'PY'
import json, sys
j = json.load(open(sys.argv[1] + "/tokenizer.json", encoding="utf-8"))
c = json.load(open(sys.argv[1] + "/tokenizer_config.json", encoding="utf-8"))
ok = (len(j["model"]["vocab"]) == 800 and j["model"]["type"] == "BPE"
      and j["added_tokens"][0]["content"] == "<｜begin▁of▁sentence｜>" and j["added_tokens"][0]["id"] == 0
      and j["added_tokens"][1]["content"] == "<｜end▁of▁sentence｜>" and j["added_tokens"][1]["id"] == 1
      and c["add_bos_token"] is True and c["bos_token"]["content"] == j["added_tokens"][0]["content"]
      and "chat_template" not in c)
print("yes" if ok else "no")
PY
)
check "800 tokens, BOS=0, EOS=1, config names them" yes "$r"

# Same input, same bytes.
"$DSV3" tokenizer train --vocab-size 800 --input "$tmp/a.txt" "$tmp/b.jsonl" \
  --output "$tmp/out2" --no-chat-template 2>/dev/null
cmp -s "$tmp/out/tokenizer.json" "$tmp/out2/tokenizer.json" && r=same || r=differ
check "two runs are byte-identical" same "$r"

# Round trip of held-out text, special tokens included.
text=$'Held-out: the mixture model 训练 😀🚀 12345 café\n\n  end <｜User｜>hi<｜Assistant｜>'
ids=$(printf '%s' "$text" | "$DSV3" tokenize --tokenizer "$tmp/out/tokenizer.json")
back=$(printf '%s' "$ids" | "$DSV3" detokenize --tokenizer "$tmp/out/tokenizer.json")
check "tokenize | detokenize round trip" "$text" "$back"
ids=$(printf 'the' | "$DSV3" tokenize --tokenizer "$tmp/out" --add-bos)
check "--add-bos uses id 0 and 'the' is one token" 2 "$(wc -w <<<"$ids")"
check "BOS id is 0" 0 "${ids%% *}"

# Chat template copied from a given config.
printf '{"chat_template": "{{ bos_token }}{%% for m in messages %%}<｜User｜>{{ m[\\"content\\"] }}{%% endfor %%}"}' >"$tmp/tpl.json"
"$DSV3" tokenizer train --vocab-size 400 --input "$tmp/a.txt" --output "$tmp/out2" \
  --chat-template "$tmp/tpl.json" 2>/dev/null
r=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["chat_template"][:14])' "$tmp/out2/tokenizer_config.json")
check "--chat-template is copied" "{{ bos_token }" "$r"

# Errors: one line, exit 1.
if "$DSV3" tokenizer train --vocab-size 100 --input "$tmp/a.txt" --output "$tmp/x.json" 2>"$tmp/err"; then r=ok; else r=$?; fi
check "vocab too small exits 1" 1 "$r"
grep -q "too small" "$tmp/err" && r=yes || r=no
check "vocab too small says so" yes "$r"
if "$DSV3" tokenizer train --vocab-size 1000 --input "$tmp/missing.txt" --output "$tmp/x.json" 2>"$tmp/err"; then r=ok; else r=$?; fi
check "missing input exits 1" 1 "$r"
grep -q "missing.txt" "$tmp/err" && r=yes || r=no
check "missing input is named" yes "$r"
: >"$tmp/empty.txt"
if "$DSV3" tokenizer train --vocab-size 1000 --input "$tmp/empty.txt" --output "$tmp/x.json" --no-chat-template 2>"$tmp/err"; then r=ok; else r=$?; fi
check "empty input exits 1" 1 "$r"
"$DSV3" tokenizer train --help | grep -q -- "--min-frequency" && r=yes || r=no
check "help documents --min-frequency" yes "$r"

echo "$passes passed, $fails failed"
[[ $fails -eq 0 ]]
