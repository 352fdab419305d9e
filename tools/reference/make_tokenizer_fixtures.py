#!/usr/bin/env python3
"""Generate tokenizer parity fixtures with the real Hugging Face `tokenizers` library.

Run where `tokenizers` (and optionally `transformers`) is installed, offline:

  python3 tools/reference/make_tokenizer_fixtures.py \
      --tokenizer .cache/tokenizer/deepseek_v3 --out tests/fixtures/tokenizer

Writes into --out:
  deepseek_v3_parity.jsonl   {"text", "ids"} from Tokenizer.encode(text, add_special_tokens=False);
                             a few lines also carry "add_special_tokens": true with
                             "ids" from tokenizers and "transformers_ids" from AutoTokenizer.
  deepseek_v3_decode.jsonl   {"ids", "skip_special_tokens", "text"} from Tokenizer.decode.
  gpt2_style.tokenizer.json  a small ByteLevel(use_regex=True) BPE trained here, with added
                             tokens using lstrip/rstrip/single_word, and its parity file
                             gpt2_style_parity.jsonl.
  llama3_style.tokenizer.json a small Split(regex)+ByteLevel BPE with ignore_merges and a
                             TemplateProcessing BOS, and llama3_style_parity.jsonl.
With --corpus FILE --corpus-mb N it instead writes a deterministic benchmark text.

The strings are generated deterministically from --seed; the ids come only from HF.
"""
import argparse
import json
import os
import random
import sys
import unicodedata

WORDS = (
    "the of and to in is was that for it as with be on not he by are this at from had his "
    "they which or have an one you were her all she there would their we him been has when "
    "who will more no if out so said what up its about into than them can only other new some "
    "could time these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down should "
    "because each just those people Mr how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while last "
    "might us great old year off come since against go came right used take three tokenizer "
    "transformer attention gradient DeepSeek mixture experts latent compression inference "
    "don't can't won't I'm you're they've we'll she'd it's O'Neil rock'n'roll naïve café "
    "coöperate résumé façade jalapeño Zürich São Paulo Ångström"
).split()

PUNCT = [".", ",", ";", ":", "!", "?", "...", " - ", " -- ", "—", "–", "(", ")", "\"", "'",
         "“", "”", "‘", "’", "«", "»", "[", "]", "{", "}", "/", "\\", "&", "%", "$", "#", "@",
         "*", "+", "=", "<", ">", "|", "~", "^", "`", "_", "¿", "¡", "§", "©", "®", "€", "£"]

SPECIAL_MARKERS = [
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
    "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁sep｜>", "<｜fim▁hole｜>",
    "<｜fim▁begin｜>", "<｜fim▁end｜>", "<｜▁pad▁｜>", "<think>", "</think>",
    "<｜place▁holder▁no▁0｜>", "<｜place▁holder▁no▁17｜>", "<｜User", "｜>", "<｜",
    "<｜end▁of▁sentence", "<|endoftext|>", "<s>", "</s>",
]

WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r", "\r\n", "\r\n\r\n", "\u00a0",
              "\u2000", "\u2002", "\u2003", "\u2009", "\u200a", "\u3000", "\u200b", "\u180e",
              "\u0085", "\u2028", "\u2029", "\u202f", "\u205f", "\u1680", "\x0b", "\x0c",
              "\ufeff", "\u200c", "\u200d", " \n", "\n ", " \t\n", "    \n    "]

EMOJI = ["😀", "😂", "🤖", "🚀", "❤️", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸",
         "🇩🇪", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "✨", "🔥", "🧑🏿‍🚀", "☕", "⚡", "🙏🏻", "🐍", "🦀", "1️⃣", "#️⃣", "©️"]

SCRIPTS = {
    "cjk": [(0x4E00, 0x9FA5)],
    "kana": [(0x3041, 0x3096), (0x30A1, 0x30FA), (0x30FC, 0x30FC)],
    "hangul": [(0xAC00, 0xD7A3)],
    "arabic": [(0x0621, 0x064A), (0x064B, 0x0652), (0x0660, 0x0669)],
    "hebrew": [(0x05D0, 0x05EA), (0x05B0, 0x05BC)],
    "devanagari": [(0x0905, 0x0939), (0x093E, 0x094D), (0x0966, 0x096F)],
    "cyrillic": [(0x0410, 0x044F), (0x0451, 0x0451)],
    "greek": [(0x0391, 0x03A9), (0x03B1, 0x03C9), (0x03AC, 0x03AF)],
    "thai": [(0x0E01, 0x0E30), (0x0E31, 0x0E3A), (0x0E40, 0x0E4E)],
    "fullwidth": [(0xFF01, 0xFF5E)],
}


def pick(rng, ranges):
    lo, hi = rng.choice(ranges)
    return chr(rng.randint(lo, hi))


def script_text(rng, name, n):
    out = []
    for _ in range(n):
        wl = rng.randint(1, 8)
        out.append("".join(pick(rng, SCRIPTS[name]) for _ in range(wl)))
        out.append(rng.choice([" ", " ", " ", "", "，", "。", ", ", ". ", "、", "\n", "!", "؟ ", "।"]))
    return "".join(out)


def prose(rng, n_words=None):
    n = n_words or rng.randint(1, 60)
    out = []
    for i in range(n):
        w = rng.choice(WORDS)
        r = rng.random()
        if r < 0.1:
            w = w.capitalize()
        elif r < 0.13:
            w = w.upper()
        out.append(w)
        r = rng.random()
        if r < 0.15:
            out.append(rng.choice(PUNCT))
        if r < 0.02:
            out.append(rng.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL"]))
        out.append(" " if rng.random() < 0.9 else rng.choice(WHITESPACE))
    return "".join(out).rstrip(" ") if rng.random() < 0.7 else "".join(out)


def ident(rng):
    parts = [rng.choice(["get", "set", "num", "x", "buf", "ptr", "idx", "Tensor", "self",
                         "value", "HTTP", "json", "kv", "q_proj", "i", "j"]) for _ in range(rng.randint(1, 3))]
    return rng.choice(["_", "", "__"]).join(parts) if rng.random() < 0.5 else "".join(
        p.capitalize() for p in parts)


def code(rng):
    kind = rng.randrange(6)
    ind = rng.choice(["    ", "  ", "\t", "        "])
    a, b, c = ident(rng), ident(rng), ident(rng)
    n = rng.randint(0, 100000)
    if kind == 0:
        return f"def {a}({b}, {c}=None):\n{ind}if {c} is None:\n{ind}{ind}return {b} * {n}\n{ind}return [{b}[i] for i in range(len({c}))]  # {prose(rng, 5)}\n"
    if kind == 1:
        return f"#include <vector>\nint {a}(const std::vector<int>& {b}) {{\n{ind}for (size_t i = 0; i < {b}.size(); ++i) {{\n{ind}{ind}{c} += {b}[i] << {n % 31};\n{ind}}}\n{ind}return {c} != 0 ? -1 : 0x{n:X};\n}}\n"
    if kind == 2:
        return json.dumps({a: [n, n / 7, None, True, b], c: {"k": "v\u00e9", "arr": list(range(rng.randint(0, 12)))}}, indent=rng.choice([None, 2, 4]))
    if kind == 3:
        return f"<div class=\"{a}\" id='{b}'>\n  <p>{prose(rng, 8)}</p>\n  <a href=\"https://example.com/{c}?q={n}&x=1\">link</a>\n</div>\r\n"
    if kind == 4:
        return f"SELECT {a}, COUNT(*) FROM {b} WHERE {c} >= {n} AND name LIKE '%{a}%' GROUP BY 1;\n"
    return f"fn {a}(&mut self, {b}: &[u8]) -> Result<Vec<{c}>, Error> {{\n{ind}let x: u64 = {n}u64.wrapping_mul(0x9E3779B97F4A7C15);\n{ind}Ok(vec![])\n}}\n"


def digits(rng):
    kind = rng.randrange(7)
    if kind == 0:
        return str(rng.randint(0, 10 ** rng.randint(1, 40)))
    if kind == 1:
        return f"{rng.randint(0, 9999)}.{rng.randint(0, 99999)} {rng.randint(1, 12)}/{rng.randint(1, 31)}/{rng.randint(1900, 2100)}"
    if kind == 2:
        return "".join(chr(0x0660 + rng.randint(0, 9)) for _ in range(rng.randint(1, 9)))
    if kind == 3:
        return "".join(chr(0xFF10 + rng.randint(0, 9)) for _ in range(rng.randint(1, 9)))
    if kind == 4:
        return rng.choice(["x²+y³=z¹", "½ ¼ ¾", "Ⅻ Ⅳ ⅷ", "①②③④", "𝟙𝟚𝟛", "৪৫৬", "٣.١٤", "१२३४५"])
    if kind == 5:
        return " ".join(str(rng.randint(0, 10 ** 6)) for _ in range(rng.randint(1, 10)))
    return f"v{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}-rc{rng.randint(0, 9)} 0x{rng.getrandbits(64):x} 1e-{rng.randint(1, 20)}"


def whitespace_case(rng):
    out = []
    for _ in range(rng.randint(1, 12)):
        r = rng.random()
        if r < 0.5:
            out.append(rng.choice(WHITESPACE) * rng.randint(1, 4))
        elif r < 0.8:
            out.append(rng.choice(WORDS))
        else:
            out.append(rng.choice(PUNCT + ["123", "日本", "😀"]))
    return "".join(out)


def random_unicode(rng):
    out = []
    n = rng.randint(1, 40)
    while len(out) < n:
        r = rng.random()
        if r < 0.3:
            cp = rng.randint(0x20, 0x2FF)
        elif r < 0.8:
            cp = rng.randint(0x300, 0xFFFF)
        else:
            cp = rng.randint(0x10000, 0x10FFFF)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        cat = unicodedata.category(chr(cp))
        if cat in ("Cn", "Cs", "Co") and rng.random() < 0.95:
            continue
        out.append(chr(cp))
    return "".join(out)


def combining(rng):
    out = []
    for _ in range(rng.randint(1, 10)):
        out.append(rng.choice("aeiouAEOnyz"))
        for _ in range(rng.randint(0, 6)):
            out.append(chr(rng.randint(0x300, 0x36F)))
        if rng.random() < 0.3:
            out.append(" ")
    s = "".join(out)
    return s if rng.random() < 0.5 else unicodedata.normalize(rng.choice(["NFC", "NFD"]), s)


def special_in_prose(rng):
    out = []
    for _ in range(rng.randint(1, 6)):
        out.append(prose(rng, rng.randint(0, 6)))
        out.append(rng.choice([" ", "", "\n", "  "]) if rng.random() < 0.5 else "")
        out.append(rng.choice(SPECIAL_MARKERS))
    return "".join(out)


def long_word(rng):
    kind = rng.randrange(6)
    n = rng.randint(200, 4000)
    if kind == 0:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
    if kind == 1:
        return rng.choice(["a", "ab", "xyz", "=", "-", "😀", "日", " "]) * (n // 2)
    if kind == 2:
        return "".join(str(rng.randint(0, 9)) for _ in range(n))
    if kind == 3:
        return "".join(rng.choice("!@#$%^&*()_+-=[]{};:,.<>/?") for _ in range(n // 4))
    if kind == 4:
        return "Pneumonoultramicroscopicsilicovolcanoconiosis" * rng.randint(2, 40)
    return "https://example.com/" + "/".join(ident(rng) for _ in range(n // 20))


def edge_cases():
    out = ["", " ", "  ", "\n", "\r\n", "\t", "a", "A", "0", "00", "000", "0000", "1234567",
           "'s", " 's", "'", "''", "\x00", "\x00\x01\x7f", "\u00a0", "\u200b", "\ufeff",
           "hello", " hello", "hello ", "  hello  ", "hello\n", "hello\n\nworld", "a\r\nb",
           "!!!", " !!!", "!!!\n\n", "...\r\n", "<", "<｜", "｜>", "▁", "Ġ", "Ċ", "ĠĠ",
           "日本語", "日本語123", "한국어", "你好，世界！", "abc日本def", "a1b2c3", "12a", "a12"]
    out += [chr(b) for b in range(0x20, 0x7F)]
    out += [chr(cp) for cp in (0x80, 0x85, 0xA0, 0xAD, 0xFF, 0x100, 0x7FF, 0x800, 0xFFFD,
                               0xFFFF, 0x10000, 0x1F600, 0x10FFFF, 0xE000)]
    return out


def make_strings(rng):
    texts = edge_cases()
    gens = [
        (320, lambda: prose(rng)),
        (250, lambda: code(rng)),
        (130, lambda: script_text(rng, "cjk", rng.randint(1, 20))),
        (100, lambda: script_text(rng, "kana", rng.randint(1, 15)) + script_text(rng, "cjk", rng.randint(0, 5))),
        (90, lambda: script_text(rng, "hangul", rng.randint(1, 15))),
        (50, lambda: script_text(rng, "arabic", rng.randint(1, 15))),
        (50, lambda: script_text(rng, "hebrew", rng.randint(1, 15))),
        (50, lambda: script_text(rng, "devanagari", rng.randint(1, 15))),
        (50, lambda: script_text(rng, "cyrillic", rng.randint(1, 15))),
        (50, lambda: script_text(rng, "greek", rng.randint(1, 15))),
        (30, lambda: script_text(rng, "thai", rng.randint(1, 15))),
        (60, lambda: script_text(rng, "fullwidth", rng.randint(1, 10))),
        (100, lambda: "".join(rng.choice(EMOJI + [" ", "", "a", "!"]) for _ in range(rng.randint(1, 12)))),
        (60, lambda: combining(rng)),
        (100, lambda: digits(rng)),
        (200, lambda: whitespace_case(rng)),
        (150, lambda: special_in_prose(rng)),
        (40, lambda: long_word(rng)),
        (300, lambda: random_unicode(rng)),
        (200, lambda: " ".join([prose(rng, 10), script_text(rng, rng.choice(list(SCRIPTS)), 3),
                                digits(rng), rng.choice(EMOJI), code(rng)[:80], whitespace_case(rng)])),
    ]
    for count, g in gens:
        texts += [g() for _ in range(count)]
    return texts


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(rows)} lines, {os.path.getsize(path)} bytes")


def deepseek(args, rng):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    texts = make_strings(rng)
    rows = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]
    hf = None
    try:
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(args.tokenizer)
    except Exception as e:  # transformers is optional: its BOS behaviour is a bonus check
        print("transformers unavailable:", repr(e))
    agree = 0
    for t in texts[::25]:
        row = {"text": t, "add_special_tokens": True,
               "ids": tok.encode(t, add_special_tokens=True).ids}
        if hf is not None:
            plain = hf.encode(t, add_special_tokens=False)
            if plain == tok.encode(t, add_special_tokens=False).ids:
                agree += 1
                row["transformers_ids"] = hf.encode(t, add_special_tokens=True)
        rows.append(row)
    print(f"transformers agrees with tokenizers on {agree}/{len(texts[::25])} plain encodings")
    write_jsonl(os.path.join(args.out, "deepseek_v3_parity.jsonl"), rows)

    vocab_n = tok.get_vocab_size(with_added_tokens=True)
    drows = []
    for i in range(300):
        kind = i % 3
        if kind == 0:  # ids of a real string, so a round trip with specials
            ids = rows[rng.randrange(len(texts))]["ids"] + [rng.choice([0, 1, 128803, 128804])]
        elif kind == 1:  # arbitrary ids: partial UTF-8 bytes give U+FFFD in HF's lossy decode
            ids = [rng.randrange(vocab_n) for _ in range(rng.randint(1, 30))]
        else:  # byte tokens in isolation
            ids = [rng.randrange(0, 1500) for _ in range(rng.randint(1, 30))]
        skip = bool(rng.getrandbits(1))
        drows.append({"ids": ids, "skip_special_tokens": skip,
                      "text": tok.decode(ids, skip_special_tokens=skip)})
    write_jsonl(os.path.join(args.out, "deepseek_v3_decode.jsonl"), drows)
    return texts


LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def small_tokenizers(args, texts, rng):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    train = texts * 2
    # GPT-2 style: ByteLevel with its built-in regex, plus added tokens with every flag.
    g = Tokenizer(models.BPE())
    g.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    g.decoder = decoders.ByteLevel()
    g.train_from_iterator(train, trainers.BpeTrainer(
        vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]))
    g.add_tokens([AddedToken("<mask>", lstrip=True, rstrip=True),
                  AddedToken("ony", single_word=True),
                  AddedToken("[L]", lstrip=True), AddedToken("[R]", rstrip=True)])
    g.add_special_tokens([AddedToken("<|im_start|>", special=True)])
    # Llama-3 style: Split regex then ByteLevel without regex, ignore_merges, BOS template.
    m = models.BPE(ignore_merges=True)
    l3 = Tokenizer(m)
    l3.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    l3.decoder = decoders.ByteLevel()
    l3.train_from_iterator(train, trainers.BpeTrainer(
        vocab_size=1500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"]))
    bos = l3.token_to_id("<|begin_of_text|>")
    l3.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    extra = ["<mask> there", "Hi <mask> there\t<mask>\t<mask>\u2000", "[L]x [L] y  [R]  z[R]\n",
             "Anthony ony  ony, <mask>ony", "<|im_start|>user\nhi<|endoftext|>", "ony", " ony "]
    for name, t in (("gpt2_style", g), ("llama3_style", l3)):
        path = os.path.join(args.out, f"{name}.tokenizer.json")
        t.save(path)
        print(f"wrote {path}: {os.path.getsize(path)} bytes")
        sample = extra + texts[::6]
        rows = [{"text": s, "ids": t.encode(s, add_special_tokens=False).ids} for s in sample]
        rows += [{"text": s, "add_special_tokens": True, "ids": t.encode(s, add_special_tokens=True).ids}
                 for s in sample[::10]]
        write_jsonl(os.path.join(args.out, f"{name}_parity.jsonl"), rows)


def corpus(args, rng):
    parts, size = [], 0
    while size < args.corpus_mb * 1e6:
        r = rng.random()
        if r < 0.55:
            s = prose(rng, rng.randint(20, 120)) + "\n"
        elif r < 0.75:
            s = code(rng)
        elif r < 0.85:
            s = script_text(rng, rng.choice(["cjk", "kana", "hangul"]), rng.randint(5, 40)) + "\n"
        elif r < 0.95:
            s = script_text(rng, rng.choice(list(SCRIPTS)), rng.randint(5, 40)) + "\n"
        else:
            s = digits(rng) + " " + rng.choice(EMOJI) + "\n"
        parts.append(s)
        size += len(s.encode("utf-8"))
    with open(args.corpus, "w", encoding="utf-8", newline="") as f:
        f.write("".join(parts))
    print(f"wrote {args.corpus}: {size} bytes")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=".cache/tokenizer/deepseek_v3")
    p.add_argument("--out", default="tests/fixtures/tokenizer")
    p.add_argument("--seed", type=int, default=20250101)
    p.add_argument("--corpus", help="write a benchmark text here instead of fixtures")
    p.add_argument("--corpus-mb", type=float, default=20)
    args = p.parse_args()
    rng = random.Random(args.seed)
    if args.corpus:
        corpus(args, rng)
        return
    os.makedirs(args.out, exist_ok=True)
    texts = deepseek(args, rng)
    small_tokenizers(args, texts, random.Random(args.seed + 1))


if __name__ == "__main__":
    sys.exit(main())
