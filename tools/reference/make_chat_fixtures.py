#!/usr/bin/env python3
"""Reference renderings of the DeepSeek-V3 and DeepSeek-R1 chat templates, made by
HF transformers itself, for tests/test_chat_template.cpp and tests/test_jinja.cpp.

Usage (on a machine with transformers + jinja2; no network needed):
  python3 tools/reference/make_chat_fixtures.py \
      --tokenizer-dir .cache/tokenizer/deepseek_v3 \
      --r1 tests/fixtures/chat/deepseek-r1-chat-template.json --out OUTDIR

Writes OUTDIR/chat_fixtures.json:
  [{"name", "template": "v3"|"r1", "messages", "add_generation_prompt",
    "rendered" (str, or null when transformers raised), "error" (str or null)}]
OUTDIR/jinja_cases.json: small templates rendered through transformers' own compiled
Jinja environment (same trim_blocks/lstrip_blocks/filters as apply_chat_template):
  [{"template", "context", "rendered" or null, "error" or null}]
OUTDIR/chat_fixtures_meta.json: versions and the environment settings seen.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile


def tc(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}


THINK = "<think>\nThe user wants 2+2. That is 4.\n</think>\n\n2 + 2 = 4."

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "system_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "two_systems": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Bonjour?"},
    ],
    "multi_turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another one."},
        {"role": "assistant", "content": "11"},
        {"role": "user", "content": "And one more?"},
    ],
    "ends_with_assistant": [
        {"role": "user", "content": "Say yes."},
        {"role": "assistant", "content": "Yes."},
    ],
    "tool_call_single": [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None,
         "tool_calls": [tc("c1", "get_weather", '{"city": "Paris"}')]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 18, "sky": "cloudy"}'},
        {"role": "assistant", "content": "It is 18 °C and cloudy in Paris."},
    ],
    "tool_calls_several": [
        {"role": "user", "content": "Weather in Paris, Tokyo and Lima?"},
        {"role": "assistant", "content": None,
         "tool_calls": [tc("a", "get_weather", '{"city": "Paris"}'),
                        tc("b", "get_weather", '{"city": "Tokyo"}'),
                        tc("c", "get_weather", '{"city": "Lima"}')]},
        {"role": "tool", "tool_call_id": "a", "content": "18"},
        {"role": "tool", "tool_call_id": "b", "content": "25"},
        {"role": "tool", "tool_call_id": "c", "content": "12"},
        {"role": "assistant", "content": "Paris 18, Tokyo 25, Lima 12."},
        {"role": "user", "content": "Thanks"},
    ],
    "tool_call_with_content_ends_in_tool": [
        {"role": "user", "content": "Compute 17*23 with the calculator."},
        {"role": "assistant", "content": "Let me calculate that.",
         "tool_calls": [tc("x", "calculator", '{"expr": "17*23"}')]},
        {"role": "tool", "tool_call_id": "x", "content": "391"},
    ],
    "tool_calls_two_rounds": [
        {"role": "user", "content": "Look up A then B."},
        {"role": "assistant", "content": None, "tool_calls": [tc("1", "lookup", '{"k": "A"}')]},
        {"role": "tool", "tool_call_id": "1", "content": "alpha"},
        {"role": "assistant", "content": None,
         "tool_calls": [tc("2", "lookup", '{"k": "B"}'), tc("3", "lookup", '{"k": "C"}')]},
        {"role": "tool", "tool_call_id": "2", "content": "beta"},
        {"role": "tool", "tool_call_id": "3", "content": "gamma"},
        {"role": "assistant", "content": "A=alpha, B=beta, C=gamma."},
    ],
    "tool_then_user": [
        {"role": "user", "content": "ping"},
        {"role": "assistant", "content": None, "tool_calls": [tc("p", "ping", "{}")]},
        {"role": "tool", "tool_call_id": "p", "content": "pong"},
        {"role": "user", "content": "and now?"},
    ],
    "r1_think_turns": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": THINK},
        {"role": "user", "content": "Double it, and think again."},
        {"role": "assistant",
         "content": "<think>a</think>first</think>\nonly the last part stays"},
        {"role": "user", "content": "ok"},
    ],
    "unicode_emoji": [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "Héllo 👋🏽 — café, naïve, 日本語, עברית, e\u0301, \u200b zero-width"},
        {"role": "assistant", "content": "🙂 Привет! 🇫🇷"},
        {"role": "user", "content": "<｜User｜> literal special tokens <｜end▁of▁sentence｜>"},
    ],
    "empty_contents": [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": ""},
    ],
    "jinja_lookalike_content": [
        {"role": "user", "content": "{{ not_a_var }} {% if x %}y{% endif %} {# c #}\n  \tline2\\n 'q' \"dq\""},
        {"role": "assistant", "content": "  leading and trailing spaces  \n\n"},
        {"role": "user", "content": "\n"},
    ],
    "extra_fields_ignored": [
        {"role": "user", "content": "hi", "name": "bob"},
        {"role": "assistant", "content": "hello", "reasoning_content": "should not appear"},
        {"role": "user", "content": "bye"},
    ],
    "no_messages": [],
    # Error cases: transformers raises; our renderer must fail too.
    "error_user_content_null": [{"role": "user", "content": None}],
    "error_assistant_tool_calls_no_content_key": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [tc("z", "f", "{}")]},
    ],
}

# Small templates for the interpreter's unit tests, rendered by transformers' compiled env.
JINJA_CASES = [
    ("plain text", {}),
    ("{{ 'a' + 'b' }}|{{ \"x\\ny\" }}|{{ 'it\\'s' }}", {}),
    ("{{ x }}|{{ y }}|{{ n }}|{{ t }}|{{ f }}|{{ i }}", {"x": "s", "n": None, "t": True, "f": False, "i": 42}),
    ("{% if a %}A{% elif b %}B{% else %}C{% endif %}", {"a": False, "b": True}),
    ("{% if a %}A{% elif b %}B{% else %}C{% endif %}", {"a": False, "b": False}),
    ("{% for x in xs %}{{ loop.index }}{{ x }}{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %},{% endfor %}",
     {"xs": ["a", "b", "c"]}),
    ("{% for x in xs %}{{ loop.index0 }}:{{ loop.length }} {% endfor %}", {"xs": [1, 2]}),
    ("{% set ns = namespace(c=0, s='') %}{% for x in xs %}{% set ns.s = ns.s + x %}{% endfor %}{{ ns.s }}",
     {"xs": ["p", "q", "r"]}),
    ("{% set y = 'out' %}{% for x in xs %}{% set y = x %}{% endfor %}{{ y }}", {"xs": ["in"]}),
    ("{{ 'b' in 'abc' }} {{ 'z' not in 'abc' }} {{ 'k' in d }} {{ 'q' in d }} {{ 2 in xs }}",
     {"d": {"k": 1}, "xs": [1, 2]}),
    ("{{ a == b }} {{ a != b }} {{ not a }} {{ a and b }} {{ a or b }} {{ 1 == 1.0 }}", {"a": "x", "b": "y"}),
    ("{{ m['k'] }}{{ m.k }}{{ m['nested']['z'] }}{{ xs[-1] }}{{ xs[0] }}", {"m": {"k": "v", "nested": {"z": "Z"}}, "xs": [1, 2, 3]}),
    ("{{ s.split('</think>')[-1] }}|{{ s.split('</think>')[0] }}", {"s": "a</think>b</think>c"}),
    ("{{ u is defined }} {{ d is defined }} {{ n is none }} {{ d is not none }} {{ not u is defined }}",
     {"d": 1, "n": None}),
    ("{{ m.missing }}|{{ m['missing'] is defined }}|{{ m.missing is none }}", {"m": {}}),
    ("a  {{- ' b ' -}}  c {%- if true -%}   d   {%- endif -%}  e", {}),
    ("x{# a comment #}y{#- c -#}  z", {}),
    ("line1\n  {% if true %}\n  inner\n  {% endif %}\nline2\n", {}),
    ("{% for x in xs %}\n    {{ x }}\n{% endfor %}\n", {"xs": [1, 2]}),
    ("  {{ 'v' }}  \n{% set q = 1 %}\nend", {}),
    ("{{ d|tojson }}|{{ s|tojson }}|{{ xs|tojson }}", {"d": {"b": 1, "a": [True, None, 1.5], "c": "é\"\n"}, "s": "ü", "xs": []}),
    ("[{{ s|trim }}]", {"s": " \n\t padded \n "}),
    ("{{ 1 + 2 }} {{ 7 - 10 }} {{ 'ab' ~ 3 }}", {}),
    ("{{ xs|length }} {{ s|length }}", {"xs": [1, 2, 3], "s": "héllo"}),
    ("{{ s.strip() }}|{{ s.startswith(' a') }}|{{ s.endswith('b ') }}", {"s": " ab "}),
    ("{% if xs %}nonempty{% else %}empty{% endif %}{% if s %}S{% endif %}{% if d %}D{% endif %}", {"xs": [], "s": "", "d": {}}),
    # Errors (the interpreter must raise, as Jinja does).
    ("{% if x %}never closed", {"x": True}),
    ("{{ x|no_such_filter }}", {"x": 1}),
    ("{{ 'a' + n }}", {"n": None}),
    ("{{ 'a' + u }}", {}),
    ("{{ x ", {}),
]


def render_with(tok, messages, agp):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer-dir", required=True)
    ap.add_argument("--r1", required=True, help="JSON with key chat_template (DeepSeek-R1)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import jinja2
    import transformers
    from transformers import AutoTokenizer
    from transformers.utils import chat_template_utils as ctu

    with open(os.path.join(args.tokenizer_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    with open(args.r1, encoding="utf-8") as f:
        r1_template = json.load(f)["chat_template"]

    tmp = tempfile.mkdtemp()
    r1_dir = os.path.join(tmp, "r1")
    os.makedirs(r1_dir)
    shutil.copy(os.path.join(args.tokenizer_dir, "tokenizer.json"), r1_dir)
    cfg_r1 = dict(cfg)
    cfg_r1["chat_template"] = r1_template
    with open(os.path.join(r1_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg_r1, f, ensure_ascii=False)

    loader = "AutoTokenizer"
    try:
        toks = {"v3": AutoTokenizer.from_pretrained(args.tokenizer_dir),
                "r1": AutoTokenizer.from_pretrained(r1_dir)}
    except Exception as e:  # noqa: BLE001 - fall back to the plain tokenizers-backed class
        print(f"AutoTokenizer failed ({type(e).__name__}: {e}); using PreTrainedTokenizerFast")
        loader = "PreTrainedTokenizerFast"
        toks = {"v3": transformers.PreTrainedTokenizerFast.from_pretrained(args.tokenizer_dir),
                "r1": transformers.PreTrainedTokenizerFast.from_pretrained(r1_dir)}
    assert toks["v3"].chat_template == cfg["chat_template"]
    assert toks["r1"].chat_template == r1_template

    fixtures = []
    for name, msgs in CONVERSATIONS.items():
        for tname, tok in toks.items():
            for agp in (False, True):
                rendered, err = None, None
                try:
                    rendered = render_with(tok, msgs, agp)
                    assert isinstance(rendered, str), type(rendered)
                except Exception as e:  # noqa: BLE001 - the failure itself is the fixture
                    err = f"{type(e).__name__}: {e}"
                fixtures.append({"name": name, "template": tname, "messages": msgs,
                                 "add_generation_prompt": agp, "rendered": rendered, "error": err})
    n_err = sum(1 for f in fixtures if f["error"])
    print(f"{len(fixtures)} chat fixtures, {n_err} of them errors")

    cases = []
    for src, ctx in JINJA_CASES:
        rendered, err = None, None
        try:
            rendered = ctu._compile_jinja_template(src).render(**ctx)
        except Exception as e:  # noqa: BLE001
            err = f"{type(e).__name__}: {e}"
        cases.append({"template": src, "context": ctx, "rendered": rendered, "error": err})

    env = ctu._compile_jinja_template("x").environment
    meta = {"transformers": transformers.__version__, "jinja2": jinja2.__version__,
            "python": sys.version, "env_class": type(env).__name__,
            "trim_blocks": env.trim_blocks, "lstrip_blocks": env.lstrip_blocks,
            "keep_trailing_newline": env.keep_trailing_newline,
            "tokenizer_class": type(toks["v3"]).__name__, "loader": loader,
            "bos_token": toks["v3"].bos_token, "eos_token": toks["v3"].eos_token}
    print(json.dumps(meta, ensure_ascii=False))

    os.makedirs(args.out, exist_ok=True)
    for fname, obj in (("chat_fixtures.json", fixtures), ("jinja_cases.json", cases),
                       ("chat_fixtures_meta.json", meta)):
        with open(os.path.join(args.out, fname), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
