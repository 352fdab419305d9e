#!/usr/bin/env bash
# `dsv3 data brown` on a tiny fake Brown corpus (two tagged files), then `dsv3 data prepare`
# with the real DeepSeek-V3 tokenizer and `dsv3 data bigram` on the result; errors exit 1 with
# a message naming the problem.
set -euo pipefail
dsv3=${1:?usage: brown.sh path/to/dsv3}
tok="${DSV3_SOURCE_DIR:?set DSV3_SOURCE_DIR to the repo root}/.cache/tokenizer/deepseek_v3"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -f "$tok/tokenizer.json" ] || fail "run scripts/setup.sh first (it fetches the tokenizer)"

expect_error() {  # message fragment, command...
  local want="$1"; shift
  if "$@" >"$tmp/out" 2>"$tmp/err"; then fail "expected failure: $*"; fi
  grep -q -- "$want" "$tmp/err" || { cat "$tmp/err" >&2; fail "message lacks '$want': $*"; }
}

"$dsv3" data --help >"$tmp/help"
for c in prepare brown bigram; do
  grep -q "^  $c" "$tmp/help" || fail "dsv3 data --help does not list $c"
  "$dsv3" data "$c" --help >/dev/null || fail "data $c --help"
done

mkdir "$tmp/corpus"
printf '\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at investigation/nn of/in Atlanta'"'"'s/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at evidence/nn '"''"'/'"''"' that/cs any/dti irregularities/nns took/vbd place/nn ./.\n\n\n\tThe/at jury/nn said/vbd it/pps did/dod find/vb that/cs many/ap laws/nns ``/`` are/ber outmoded/jj '"''"'/'"''"' ,/, and/cc didn'"'"'t/dod* (/( it/pps said/vbd )/) stop/vb ./.\n' >"$tmp/corpus/ca01"
printf '\n\n\tDan/np Morgan/np told/vbd himself/ppl he/pps would/md forget/vb Ann/np Turner/np ./.\nHe/pps was/bedz well/rb rid/jj of/in her/ppo ./.\n\n\n\tBut/cc all/abn of/in this/dt was/bedz rationalization/nn ;/. ;/.\nSometimes/rb he/pps woke/vbd up/rp ?/. ?/.\n' >"$tmp/corpus/cn01"
echo "not part of the corpus" >"$tmp/corpus/README"

"$dsv3" data brown --input "$tmp/corpus" --out "$tmp/brown.jsonl" >"$tmp/out"
grep -q "^2 documents, 4 paragraphs" "$tmp/out" || { cat "$tmp/out"; fail "brown summary"; }
[ "$(wc -l <"$tmp/brown.jsonl")" = 2 ] || fail "brown.jsonl should hold 2 lines"
python3 - "$tmp/brown.jsonl" <<'PY' || fail "brown.jsonl text"
import json, sys
docs = [json.loads(l)["text"] for l in open(sys.argv[1], encoding="utf-8")]
want = [
    "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary "
    "election produced \"no evidence\" that any irregularities took place.\n"
    "The jury said it did find that many laws \"are outmoded\", and didn't (it said) stop.",
    "Dan Morgan told himself he would forget Ann Turner. He was well rid of her.\n"
    "But all of this was rationalization; Sometimes he woke up?",
]
for got, exp in zip(docs, want):
    if got != exp:
        print("got:     ", repr(got), "\nexpected:", repr(exp))
        sys.exit(1)
sys.exit(0 if len(docs) == 2 else 1)
PY

# Two documents: find a seed that holds one out for validation.
for seed in $(seq 0 40); do
  rm -rf "$tmp/data"
  "$dsv3" data prepare --tokenizer "$tok" --input "$tmp/brown.jsonl" --out "$tmp/data" \
    --val-fraction 0.5 --seed "$seed" >"$tmp/prep" 2>&1 || continue
  grep -q "in 1 documents" "$tmp/prep" && break
done
grep -q "val: .* in 1 documents" "$tmp/prep" || { cat "$tmp/prep"; fail "prepare: no 1/1 split"; }

"$dsv3" data bigram --data "$tmp/data" >"$tmp/bigram"
line=$(head -1 "$tmp/bigram")
[[ $line =~ ^bigram\ val\ loss:\ ([0-9]+\.[0-9]{4})\ nats/token\ \(ppl\ [0-9.]+\)$ ]] ||
  fail "bigram output: $line"
loss=${BASH_REMATCH[1]}
# Most val tokens were never seen after their context in 1 training document: the loss is
# finite and large, yet below uniform over the 128k vocabulary (ln 128815 = 11.77).
python3 -c "import sys; l = float(sys.argv[1]); sys.exit(0 if 1 < l < 11.77 else 1)" "$loss" ||
  fail "bigram loss $loss out of range"
grep -q "vocabulary 128815" "$tmp/bigram" || fail "bigram vocabulary from meta.json"
"$dsv3" data bigram --data "$tmp/data" --discount 0.5 | grep -q "^bigram val loss" ||
  fail "--discount"

# Errors.
expect_error "nope" "$dsv3" data brown --input "$tmp/nope" --out "$tmp/x.jsonl"
expect_error "scripts/setup.sh" "$dsv3" data brown --input "$tmp/nope" --out "$tmp/x.jsonl"
mkdir "$tmp/empty"
expect_error "no Brown corpus files" "$dsv3" data brown --input "$tmp/empty" --out "$tmp/x.jsonl"
[ ! -e "$tmp/x.jsonl" ] || fail "a failed run wrote output"
expect_error "dsv3 data prepare" "$dsv3" data bigram --data "$tmp/empty"
expect_error "discount" "$dsv3" data bigram --data "$tmp/data" --discount 1.5
echo "data brown / prepare / bigram: ok (bigram val loss $loss)"
