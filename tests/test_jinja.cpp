// The Jinja interpreter against real Jinja: tests/fixtures/chat/jinja_cases.json holds small
// templates rendered (or rejected) by transformers' own compiled chat-template environment
// (tools/reference/make_chat_fixtures.py). Plus our error reporting: every unsupported or
// malformed construct is a dsv3::Error that names line and column.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/jinja.h"

namespace dsv3::jinja {
namespace {

std::string render(const std::string& src,
                   const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object()) {
  return Template(src).render(ctx);
}

// The error message for `src`, or "" if it rendered.
std::string error_of(const std::string& src,
                     const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object()) {
  try {
    render(src, ctx);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Jinja, MatchesRealJinjaCases) {
  std::ifstream f(std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/chat/jinja_cases.json");
  ASSERT_TRUE(f.good());
  auto cases = nlohmann::ordered_json::parse(f);
  ASSERT_GE(cases.size(), 30u);
  for (const auto& c : cases) {
    const std::string src = c["template"];
    SCOPED_TRACE(src);
    if (c["rendered"].is_string()) {
      std::string got;
      EXPECT_NO_THROW(got = render(src, c["context"]));
      EXPECT_EQ(got, c["rendered"].get<std::string>());
    } else {
      EXPECT_NE(error_of(src, c["context"]), "") << "Jinja raised: " << c["error"];
    }
  }
}

TEST(Jinja, SyntaxErrorsNameLineAndColumn) {
  // Unclosed block: reported where the block was opened.
  EXPECT_NE(error_of("x\n  {% if a %}never closed").find("template:2:3:"), std::string::npos)
      << error_of("x\n  {% if a %}never closed");
  EXPECT_NE(error_of("{% for x in xs %}{% endif %}").find("template:1:21:"), std::string::npos)
      << error_of("{% for x in xs %}{% endif %}");
  // Unclosed tags and comments.
  EXPECT_NE(error_of("ab {{ x ").find("template:1:4:"), std::string::npos) << error_of("ab {{ x ");
  EXPECT_NE(error_of("ab {% if x ").find("template:1:4:"), std::string::npos);
  EXPECT_NE(error_of("ab\n{# note").find("template:2:1:"), std::string::npos);
  EXPECT_NE(error_of("{{ 'abc }}").find("never closed"), std::string::npos);
  // Unknown filter / test, at the name.
  std::string e = error_of("line\n{{ x|frobnicate }}");
  EXPECT_NE(e.find("template:2:6:"), std::string::npos) << e;
  EXPECT_NE(e.find("frobnicate"), std::string::npos) << e;
  EXPECT_NE(error_of("{{ x is frob }}").find("no test named 'frob'"), std::string::npos);
  // Unsupported statements are refused, not ignored.
  e = error_of("ab\n  {% macro m() %}x{% endmacro %}");
  EXPECT_NE(e.find("template:2:6:"), std::string::npos) << e;
  EXPECT_NE(e.find("unsupported statement 'macro'"), std::string::npos) << e;
  EXPECT_NE(error_of("{% include 'x' %}").find("unsupported statement"), std::string::npos);
  EXPECT_NE(error_of("{% for x in xs if x %}{% endfor %}").find("not supported"),
            std::string::npos);
  EXPECT_NE(error_of("{% set x %}a{% endset %}").find("template:1:10:"), std::string::npos);
  EXPECT_NE(error_of("{% break %}").find("outside a for-loop"), std::string::npos);
  EXPECT_NE(error_of("{{ (1, 2) }}").find("tuples"), std::string::npos);
  EXPECT_NE(error_of("{{ x @ y }}").find("unexpected character '@'"), std::string::npos);
  const std::string deep = "{{ " + std::string(300, '[') + std::string(300, ']') + " }}";
  EXPECT_NE(error_of(deep).find("nested too deeply"), std::string::npos) << error_of(deep);
}

TEST(Jinja, RuntimeErrorsNamePosition) {
  nlohmann::ordered_json ctx = {{"n", nullptr}, {"m", {{"a", 1}}}};
  std::string e = error_of("ok\n{{ 'a' + n }}", ctx);
  EXPECT_NE(e.find("template:2:8:"), std::string::npos) << e;
  EXPECT_NE(e.find("'str' and 'NoneType'"), std::string::npos) << e;
  e = error_of("{{ m.b.c }}", ctx);
  EXPECT_NE(e.find("has no attribute 'b'"), std::string::npos) << e;
  e = error_of("{{ raise_exception('bad role') }}");
  EXPECT_NE(e.find("bad role"), std::string::npos) << e;
  EXPECT_NE(error_of("{{ 'x'.zfill(3) }}").find("unsupported method str.zfill()"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 'É'.lower() }}").find("non-ASCII"), std::string::npos);
  EXPECT_NE(error_of("{% set m.a = 2 %}", ctx).find("not a namespace"), std::string::npos);
  EXPECT_NE(error_of("{% for x in n %}{% endfor %}", ctx).find("not iterable"), std::string::npos);
}

// Python semantics the fixture cases do not pin down, checked against values Python prints
// (repr of floats, floor division and modulo signs, slices, code-point indexing).
TEST(Jinja, PythonValueSemantics) {
  nlohmann::ordered_json ctx = {{"f", {0.1, 1e16, 1e-5, 123456789.0, -0.0, 2.5e-7, 1e15}},
                                {"s", "héllo→x"}};
  EXPECT_EQ(render("{% for x in f %}{{ x }} {% endfor %}", ctx),
            "0.1 1e+16 1e-05 123456789.0 -0.0 2.5e-07 1000000000000000.0 ");
  EXPECT_EQ(render("{{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }}"), "-4 2 3.5 1024");
  EXPECT_EQ(render("{{ s[1] }}|{{ s[-1] }}|{{ s[1:3] }}|{{ s[::-1] }}|{{ s|length }}", ctx),
            "é|x|él|x→olléh|7");
  EXPECT_EQ(render("{{ ['a', 1, none, true] }}|{{ {'k': 'v'} }}"),
            "['a', 1, None, True]|{'k': 'v'}");
  EXPECT_EQ(render("{{ ' a  b\tc '.split() }}|{{ 'a,b,c'.split(',', 1) }}"),
            "['a', 'b', 'c']|['a', 'b,c']");
  EXPECT_EQ(render("{{ '\u3000x\u00a0'.strip() }}"), "x");
  EXPECT_EQ(render("{{ {'a': [1, {'b': none}]}|tojson(indent=2) }}"),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    }\n  ]\n}");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"),
            "a=1;b=2;");
  EXPECT_EQ(render("{% for x in [1,2,3,4] %}{% if x == 2 %}{% continue %}{% endif %}"
                   "{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
            "13");
  EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{{ 'yes' if 1 < 2 < 3 else 'no' }}{{ 'x' if false }}"), "yes");
}

}  // namespace
}  // namespace dsv3::jinja
