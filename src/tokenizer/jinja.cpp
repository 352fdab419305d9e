// Jinja2 subset interpreter. Semantics follow Python Jinja 3.1 as configured by transformers'
// chat-template environment; where Python and C++ differ (str(None), float repr, dict order,
// Unicode whitespace, negative indices) Python's behaviour is reproduced, because a chat
// prompt that differs by one byte tokenizes differently.
#include "tokenizer/jinja.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <utility>
#include <vector>

#include "core/error.h"
#include "tokenizer/jinja_internal.h"

namespace dsv3::jinja {
namespace {

// ---------------------------------------------------------------- lexer
enum class T {
  kText,
  kVarBegin,
  kVarEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kStr,
  kInt,
  kFloat,
  kOp,
  kEof
};

struct Token {
  T t;
  std::string text;  // text data, name, operator, or the unescaped string literal
  size_t pos;
  Value num;  // kInt / kFloat
};

bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

void rstrip_ws(std::string& s) {
  while (!s.empty() && is_ws(s.back())) s.pop_back();
}

class Lexer {
 public:
  Lexer(const std::string& src, const Where& where) : s_(src), where_(where) {}

  std::vector<Token> run() {
    size_t pos = 0;
    bool strip_lead = false;  // the previous tag ended with '-'
    const size_t n = s_.size();
    while (pos < n) {
      size_t t = pos;
      while (t < n && !(s_[t] == '{' && t + 1 < n &&
                        (s_[t + 1] == '{' || s_[t + 1] == '%' || s_[t + 1] == '#')))
        ++t;
      std::string text = s_.substr(pos, t - pos);
      if (strip_lead)
        text.erase(0, std::find_if(text.begin(), text.end(), [](char c) { return !is_ws(c); }) -
                          text.begin());
      strip_lead = false;
      if (t == n) {
        emit_text(std::move(text), pos);
        break;
      }
      const char kind = s_[t + 1];
      const char mod = t + 2 < n ? s_[t + 2] : '\0';
      if (mod == '-') {
        rstrip_ws(text);
      } else if (kind != '{' && mod != '+') {
        // lstrip_blocks: spaces/tabs between the line start and a block or comment tag go.
        size_t k = t;
        while (k > pos && (s_[k - 1] == ' ' || s_[k - 1] == '\t')) --k;
        if (k == 0 || s_[k - 1] == '\n') text.resize(text.size() - std::min(text.size(), t - k));
      }
      emit_text(std::move(text), pos);
      size_t p = t + 2 + ((mod == '-' || mod == '+') ? 1 : 0);
      if (kind == '#') {
        size_t e = s_.find("#}", p);
        if (e == std::string::npos) where_.fail(t, "comment '{{#' is never closed with '#}}'");
        pos = e + 2;
        if (e > p && s_[e - 1] == '-')
          strip_lead = true;
        else if (!(e > p && s_[e - 1] == '+'))
          pos = trim_newline(pos);
        continue;
      }
      out_.push_back({kind == '{' ? T::kVarBegin : T::kBlockBegin, "", t, {}});
      pos = lex_tag(kind, p, t, strip_lead);
    }
    out_.push_back({T::kEof, "", n, {}});
    return std::move(out_);
  }

 private:
  void emit_text(std::string text, size_t pos) {
    if (!text.empty()) out_.push_back({T::kText, std::move(text), pos, {}});
  }
  size_t trim_newline(size_t pos) const {  // trim_blocks: one newline after a tag goes
    return pos < s_.size() && s_[pos] == '\n' ? pos + 1 : pos;
  }
  bool at(size_t p, std::string_view w) const { return s_.compare(p, w.size(), w) == 0; }

  // Lexes the inside of {{ }} or {% %}; returns the position after the closing delimiter.
  size_t lex_tag(char kind, size_t p, size_t open, bool& strip_lead) {
    const std::string_view close = kind == '{' ? "}}" : "%}";
    int depth = 0;
    for (;;) {
      while (p < s_.size() && is_ws(s_[p])) ++p;
      if (p >= s_.size())
        where_.fail(open, "'{}' is never closed with '{}'", kind == '{' ? "{{" : "{%", close);
      if (depth == 0) {
        bool minus = at(p, "-") && at(p + 1, close);
        bool plus = kind == '%' && at(p, "+") && at(p + 1, close);
        if (minus || plus || at(p, close)) {
          out_.push_back({kind == '{' ? T::kVarEnd : T::kBlockEnd, "", p, {}});
          size_t end = p + close.size() + (minus || plus ? 1 : 0);
          if (minus)
            strip_lead = true;
          else if (kind == '%' && !plus)
            end = trim_newline(end);
          return end;
        }
      }
      const char c = s_[p];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = p;
        while (e < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[e])) || s_[e] == '_'))
          ++e;
        out_.push_back({T::kName, s_.substr(p, e - p), p, {}});
        p = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        p = lex_number(p);
      } else if (c == '\'' || c == '"') {
        p = lex_string(p);
      } else {
        static const char* kOps[] = {"==", "!=", "<=", ">=", "//", "**", "+", "-", "*",
                                     "/",  "%",  "~",  "<",  ">",  "=",  "(", ")", "[",
                                     "]",  "{",  "}",  ".",  ",",  ":",  "|"};
        const char* op = nullptr;
        for (const char* o : kOps)
          if (at(p, o)) {
            op = o;
            break;
          }
        if (!op) {
          size_t e = p + 1;  // the whole UTF-8 sequence, so the message stays valid text
          while (e < s_.size() && (static_cast<unsigned char>(s_[e]) & 0xC0) == 0x80) ++e;
          where_.fail(p, "unexpected character '{}' inside a tag", s_.substr(p, e - p));
        }
        if (*op == '(' || *op == '[' || *op == '{') ++depth;
        if (*op == ')' || *op == ']' || *op == '}') --depth;
        out_.push_back({T::kOp, op, p, {}});
        p += std::string_view(op).size();
      }
    }
  }

  size_t lex_number(size_t p) {
    size_t e = p;
    bool is_float = false;
    std::string digits;
    auto run = [&] {
      while (e < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[e])) || s_[e] == '_'))
        if (s_[e++] != '_') digits += s_[e - 1];
    };
    run();
    if (e + 1 < s_.size() && s_[e] == '.' && std::isdigit(static_cast<unsigned char>(s_[e + 1]))) {
      is_float = true;
      digits += s_[e++];
      run();
    }
    if (e < s_.size() && (s_[e] == 'e' || s_[e] == 'E')) {
      size_t q = e + 1 + (e + 1 < s_.size() && (s_[e + 1] == '+' || s_[e + 1] == '-'));
      if (q < s_.size() && std::isdigit(static_cast<unsigned char>(s_[q]))) {
        is_float = true;
        digits += s_.substr(e, q - e);
        e = q;
        run();
      }
    }
    Token tok{is_float ? T::kFloat : T::kInt, s_.substr(p, e - p), p, {}};
    if (is_float) {
      tok.num = Value::flt(std::strtod(digits.c_str(), nullptr));
    } else {
      int64_t v = 0;
      auto r = std::from_chars(digits.data(), digits.data() + digits.size(), v);
      if (r.ec != std::errc()) where_.fail(p, "integer literal {} is out of range", tok.text);
      tok.num = Value::integer(v);
    }
    out_.push_back(std::move(tok));
    return e;
  }

  // Python string-literal escapes (Jinja decodes literals with 'unicode-escape').
  size_t lex_string(size_t p) {
    const char q = s_[p];
    std::string v;
    size_t i = p + 1;
    auto hex = [&](size_t len) {
      uint32_t cp = 0;
      for (size_t k = 0; k < len; ++k, ++i) {
        if (i >= s_.size() || !std::isxdigit(static_cast<unsigned char>(s_[i])))
          where_.fail(i, "bad \\x/\\u escape in a string literal");
        cp = cp * 16 + static_cast<uint32_t>(std::stoi(std::string(1, s_[i]), nullptr, 16));
      }
      if (cp > 0x10FFFF) where_.fail(i, "escape is beyond U+10FFFF");
      append_utf8(v, cp);
    };
    for (;;) {
      if (i >= s_.size()) where_.fail(p, "string literal is never closed");
      char c = s_[i];
      if (c == q) break;
      if (c != '\\') {
        v += c;
        ++i;
        continue;
      }
      if (++i >= s_.size()) where_.fail(p, "string literal is never closed");
      char e = s_[i++];
      switch (e) {
        case 'n':
          v += '\n';
          break;
        case 't':
          v += '\t';
          break;
        case 'r':
          v += '\r';
          break;
        case 'a':
          v += '\a';
          break;
        case 'b':
          v += '\b';
          break;
        case 'f':
          v += '\f';
          break;
        case 'v':
          v += '\v';
          break;
        case '\\':
        case '\'':
        case '"':
          v += e;
          break;
        case '\n':
          break;  // line continuation
        case 'x':
          hex(2);
          break;
        case 'u':
          hex(4);
          break;
        case 'U':
          hex(8);
          break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && i < s_.size() && s_[i] >= '0' && s_[i] <= '7'; ++k)
              cp = cp * 8 + static_cast<uint32_t>(s_[i++] - '0');
            append_utf8(v, cp);
          } else {  // Python keeps unknown escapes verbatim
            v += '\\';
            v += e;
          }
      }
    }
    out_.push_back({T::kStr, std::move(v), p, {}});
    return i + 1;
  }

  const std::string& s_;
  const Where& where_;
  std::vector<Token> out_;
};

// ---------------------------------------------------------------- parser
const char* const kFilters[] = {"tojson",  "trim",  "length", "count", "string",  "lower",
                                "upper",   "first", "last",   "join",  "default", "d",
                                "replace", "int",   "list",   "items", "reverse", "abs"};
const char* const kTests[] = {"defined",  "undefined", "none",    "boolean", "true",    "false",
                              "integer",  "float",     "number",  "string",  "mapping", "sequence",
                              "iterable", "eq",        "equalto", "ne",      "odd",     "even"};

class Parser {
 public:
  Parser(std::vector<Token> toks, const Where& where) : tk_(std::move(toks)), where_(where) {}

  std::vector<NodeP> parse_template() {
    std::string end;
    auto body = parse_body({}, end);
    return body;
  }

 private:
  const Token& cur() const { return tk_[i_]; }
  const Token& next() { return tk_[i_++]; }
  bool is_op(std::string_view op) const { return cur().t == T::kOp && cur().text == op; }
  bool is_name(std::string_view w) const { return cur().t == T::kName && cur().text == w; }
  bool skip_op(std::string_view op) { return is_op(op) ? (++i_, true) : false; }
  bool skip_name(std::string_view w) { return is_name(w) ? (++i_, true) : false; }
  std::string describe(const Token& t) const {
    switch (t.t) {
      case T::kEof:
        return "end of template";
      case T::kVarEnd:
        return "'}}'";
      case T::kBlockEnd:
        return "'%}'";
      case T::kText:
        return "text";
      case T::kStr:
        return "a string";
      default:
        return "'" + t.text + "'";
    }
  }
  void expect_op(std::string_view op) {
    if (!skip_op(op)) where_.fail(cur().pos, "expected '{}', found {}", op, describe(cur()));
  }
  void expect(T t, const char* what) {
    if (cur().t != t) where_.fail(cur().pos, "expected {}, found {}", what, describe(cur()));
    ++i_;
  }
  std::string expect_name() {
    if (cur().t != T::kName) where_.fail(cur().pos, "expected a name, found {}", describe(cur()));
    return next().text;
  }
  NodeP node(NK k, size_t pos) {
    auto n = std::make_unique<Node>();
    n->k = k;
    n->pos = pos;
    return n;
  }

  // Parses until a block tag whose keyword is in `ends` (consumed; its name put in `found`)
  // or the end of the template (allowed only when `ends` is empty).
  std::vector<NodeP> parse_body(std::vector<std::string_view> ends, std::string& found,
                                size_t opened_at = 0, std::string_view opener = "") {
    std::vector<NodeP> body;
    for (;;) {
      const Token& t = cur();
      if (t.t == T::kEof) {
        if (ends.empty()) return body;
        std::string want;
        for (auto e : ends) want += (want.empty() ? "'" : " or '") + std::string(e) + "'";
        where_.fail(opened_at,
                    "'{}' is never closed: reached the end of the template looking "
                    "for {}",
                    opener, want);
      }
      if (t.t == T::kText) {
        auto n = node(NK::kText, t.pos);
        n->str = t.text;
        body.push_back(std::move(n));
        ++i_;
      } else if (t.t == T::kVarBegin) {
        ++i_;
        auto n = node(NK::kOutput, t.pos);
        n->a.push_back(parse_expr());
        expect(T::kVarEnd, "'}}'");
        body.push_back(std::move(n));
      } else if (t.t == T::kBlockBegin) {
        ++i_;
        if (cur().t != T::kName) where_.fail(cur().pos, "expected a statement keyword after '{{%'");
        for (auto e : ends)
          if (cur().text == e) {
            found = next().text;
            return body;
          }
        body.push_back(parse_statement(t.pos));
      } else {
        where_.fail(t.pos, "unexpected {}", describe(t));
      }
    }
  }

  // `tag` is where the statement's '{%' starts: unclosed blocks are reported there.
  NodeP parse_statement(size_t tag) {
    const Token& kw = next();
    const std::string& w = kw.text;
    std::string found;
    if (w == "if") {
      auto n = node(NK::kIf, kw.pos);
      n->a.push_back(parse_expr());
      expect(T::kBlockEnd, "'%}'");
      for (;;) {
        n->blocks.push_back(parse_body({"elif", "else", "endif"}, found, tag, "if"));
        if (found == "elif") {
          n->a.push_back(parse_expr());
          expect(T::kBlockEnd, "'%}'");
        } else {
          expect(T::kBlockEnd, "'%}'");
          if (found == "else") {
            n->blocks.push_back(parse_body({"endif"}, found, tag, "if"));
            expect(T::kBlockEnd, "'%}'");
          }
          return n;
        }
      }
    }
    if (w == "for") {
      auto n = node(NK::kFor, kw.pos);
      n->names.push_back(expect_name());
      if (skip_op(",")) n->names.push_back(expect_name());
      if (is_op(",")) where_.fail(cur().pos, "for-loops unpack at most two names");
      if (!skip_name("in")) where_.fail(cur().pos, "expected 'in' in the for-loop");
      n->a.push_back(parse_or());
      if (is_name("if") || is_name("recursive"))
        where_.fail(cur().pos, "'for ... {}' is not supported", cur().text);
      expect(T::kBlockEnd, "'%}'");
      ++loop_depth_;
      n->blocks.push_back(parse_body({"else", "endfor"}, found, tag, "for"));
      --loop_depth_;
      expect(T::kBlockEnd, "'%}'");
      if (found == "else") {
        n->blocks.push_back(parse_body({"endfor"}, found, tag, "for"));
        expect(T::kBlockEnd, "'%}'");
      }
      return n;
    }
    if (w == "set") {
      auto n = node(NK::kSet, kw.pos);
      n->names.push_back(expect_name());
      if (skip_op(".")) n->names.push_back(expect_name());
      if (!is_op("="))
        where_.fail(cur().pos,
                    "only '{{% set name = expr %}}' and '{{% set ns.attr = expr %}}' "
                    "are supported");
      ++i_;
      n->a.push_back(parse_expr());
      expect(T::kBlockEnd, "'%}'");
      return n;
    }
    if (w == "break" || w == "continue") {
      if (loop_depth_ == 0) where_.fail(kw.pos, "'{}' outside a for-loop", w);
      expect(T::kBlockEnd, "'%}'");
      return node(w == "break" ? NK::kBreak : NK::kContinue, kw.pos);
    }
    static const char* kEnds[] = {"elif", "else", "endif", "endfor", "endset", "endmacro"};
    for (const char* e : kEnds)
      if (w == e) where_.fail(kw.pos, "unexpected '{}' (no open block it could close)", w);
    where_.fail(kw.pos,
                "unsupported statement '{}' (this interpreter handles if/for/set/"
                "break/continue)",
                w);
  }

  // Guards the C++ stack against pathological nesting in untrusted templates.
  struct Depth {
    Parser& p;
    explicit Depth(Parser& pp) : p(pp) {
      if (++p.depth_ > 200) p.where_.fail(p.cur().pos, "expression is nested too deeply");
    }
    ~Depth() { --p.depth_; }
  };

  NodeP parse_expr() {
    Depth d(*this);
    NodeP e = parse_or();
    while (is_name("if")) {
      auto n = node(NK::kCond, next().pos);
      n->a.push_back(parse_or());  // condition
      n->a.push_back(std::move(e));
      if (skip_name("else")) n->a.push_back(parse_expr());
      e = std::move(n);
    }
    return e;
  }
  NodeP binary(NK k, std::string op, NodeP l, NodeP r, size_t pos) {
    auto n = node(k, pos);
    n->str = std::move(op);
    n->a.push_back(std::move(l));
    n->a.push_back(std::move(r));
    return n;
  }
  NodeP parse_or() {
    NodeP l = parse_and();
    while (is_name("or")) {
      size_t p = next().pos;
      l = binary(NK::kOr, "or", std::move(l), parse_and(), p);
    }
    return l;
  }
  NodeP parse_and() {
    NodeP l = parse_not();
    while (is_name("and")) {
      size_t p = next().pos;
      l = binary(NK::kAnd, "and", std::move(l), parse_not(), p);
    }
    return l;
  }
  NodeP parse_not() {
    if (is_name("not")) {
      Depth d(*this);
      auto n = node(NK::kNot, next().pos);
      n->a.push_back(parse_not());
      return n;
    }
    return parse_compare();
  }
  NodeP parse_compare() {
    NodeP first = parse_math1();
    auto n = node(NK::kCompare, first->pos);
    n->a.push_back(std::move(first));
    for (;;) {
      std::string op;
      if (cur().t == T::kOp && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        op = next().text;
      } else if (is_name("not") && tk_[i_ + 1].t == T::kName && tk_[i_ + 1].text == "in") {
        i_ += 2;
        op = "not in";
      } else {
        break;
      }
      n->names.push_back(op);
      n->a.push_back(parse_math1());
    }
    return n->names.empty() ? std::move(n->a[0]) : std::move(n);
  }
  // Jinja's precedence: + and - bind looser than ~, which binds looser than * / // %.
  NodeP parse_math1() {
    NodeP l = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      l = binary(NK::kBinary, t.text, std::move(l), parse_concat(), t.pos);
    }
    return l;
  }
  NodeP parse_concat() {
    NodeP l = parse_math2();
    while (is_op("~")) {
      size_t p = next().pos;
      l = binary(NK::kBinary, "~", std::move(l), parse_math2(), p);
    }
    return l;
  }
  NodeP parse_math2() {
    NodeP l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      l = binary(NK::kBinary, t.text, std::move(l), parse_pow(), t.pos);
    }
    return l;
  }
  NodeP parse_pow() {
    NodeP l = parse_unary(true);
    while (is_op("**")) {
      size_t p = next().pos;
      l = binary(NK::kBinary, "**", std::move(l), parse_unary(true), p);
    }
    return l;
  }
  NodeP parse_unary(bool with_filter) {
    Depth d(*this);
    NodeP n;
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      n = node(NK::kNeg, t.pos);
      n->str = t.text;
      n->a.push_back(parse_unary(false));
    } else {
      n = parse_primary();
    }
    n = parse_postfix(std::move(n));
    return with_filter ? parse_filters(std::move(n)) : std::move(n);
  }
  NodeP parse_primary() {
    const Token& t = cur();
    if (t.t == T::kName) {
      ++i_;
      auto n = node(NK::kLiteral, t.pos);
      if (t.text == "true" || t.text == "True")
        n->lit = Value::boolean(true);
      else if (t.text == "false" || t.text == "False")
        n->lit = Value::boolean(false);
      else if (t.text == "none" || t.text == "None")
        n->lit = Value::none();
      else {
        n->k = NK::kName;
        n->str = t.text;
      }
      return n;
    }
    if (t.t == T::kStr) {
      auto n = node(NK::kLiteral, t.pos);
      std::string s;
      while (cur().t == T::kStr) s += next().text;  // adjacent literals concatenate
      n->lit = Value::str(std::move(s));
      return n;
    }
    if (t.t == T::kInt || t.t == T::kFloat) {
      auto n = node(NK::kLiteral, t.pos);
      n->lit = next().num;
      return n;
    }
    if (skip_op("(")) {
      NodeP e = parse_expr();
      if (is_op(",")) where_.fail(cur().pos, "tuples are not supported; use a list [...]");
      expect_op(")");
      return e;
    }
    if (is_op("[") || is_op("{")) {
      bool is_list = next().text == "[";
      auto n = node(is_list ? NK::kList : NK::kDict, t.pos);
      const char* close = is_list ? "]" : "}";
      while (!is_op(close)) {
        if (!n->a.empty()) expect_op(",");
        if (is_op(close)) break;  // trailing comma
        n->a.push_back(parse_expr());
        if (!is_list) {
          expect_op(":");
          n->a.push_back(parse_expr());
        }
      }
      ++i_;
      return n;
    }
    where_.fail(t.pos, "unexpected {} in an expression", describe(t));
  }
  void parse_args(Node& n) {  // after '('
    for (bool first = true; !skip_op(")"); first = false) {
      if (!first) expect_op(",");
      if (skip_op(")")) break;
      if (is_op("*") || is_op("**")) where_.fail(cur().pos, "*args/**kwargs are not supported");
      if (cur().t == T::kName && tk_[i_ + 1].t == T::kOp && tk_[i_ + 1].text == "=") {
        std::string k = next().text;
        ++i_;
        n.kw.emplace_back(k, parse_expr());
      } else {
        if (!n.kw.empty()) where_.fail(cur().pos, "positional argument after a keyword argument");
        n.a.push_back(parse_expr());
      }
    }
  }
  NodeP parse_postfix(NodeP n) {
    for (;;) {
      if (is_op(".")) {
        size_t p = next().pos;
        if (cur().t == T::kInt || cur().t == T::kFloat) {  // x.0 is x[0]; x.1.2 lexes as 1.2
          const Token& t = next();
          if (t.text.find_first_not_of("0123456789.") != std::string::npos)
            where_.fail(t.pos, "expected an attribute name or index after '.'");
          size_t dot = t.text.find('.');
          for (std::string idx :
               {t.text.substr(0, dot), dot == std::string::npos ? "" : t.text.substr(dot + 1)}) {
            if (idx.empty()) continue;
            auto it = node(NK::kItem, t.pos);
            auto lit = node(NK::kLiteral, t.pos);
            lit->lit = Value::integer(std::stoll(idx.substr(0, 18)));
            it->a.push_back(std::move(n));
            it->a.push_back(std::move(lit));
            n = std::move(it);
          }
          continue;
        }
        auto a = node(NK::kAttr, p);
        a->str = expect_name();
        a->a.push_back(std::move(n));
        n = std::move(a);
      } else if (is_op("[")) {
        size_t p = next().pos;
        auto it = node(NK::kItem, p);
        it->a.push_back(std::move(n));
        NodeP parts[3];
        int colons = 0;
        for (;;) {
          if (is_op(":")) {
            if (++colons > 2) where_.fail(cur().pos, "too many ':' in a slice");
            ++i_;
          } else if (is_op("]")) {
            break;
          } else {
            if (parts[colons]) where_.fail(cur().pos, "expected ']' or ':' in a subscript");
            parts[colons] = parse_expr();
          }
        }
        ++i_;
        if (colons == 0) {
          if (!parts[0]) where_.fail(p, "empty subscript []");
          it->a.push_back(std::move(parts[0]));
        } else {
          it->k = NK::kSlice;
          for (auto& q : parts) it->a.push_back(std::move(q));  // null = omitted
        }
        n = std::move(it);
      } else if (is_op("(")) {
        auto c = node(NK::kCall, next().pos);
        c->callee = std::move(n);
        parse_args(*c);
        n = std::move(c);
      } else {
        return n;
      }
    }
  }
  NodeP parse_filters(NodeP n) {
    for (;;) {
      if (is_op("|")) {
        ++i_;
        size_t p = cur().pos;
        auto f = node(NK::kFilter, p);
        f->str = expect_name();
        if (std::find_if(std::begin(kFilters), std::end(kFilters),
                         [&](const char* k) { return f->str == k; }) == std::end(kFilters))
          where_.fail(p,
                      "no filter named '{}' (supported: tojson, trim, length, join, default, ...)",
                      f->str);
        f->a.push_back(std::move(n));
        if (skip_op("(")) parse_args(*f);
        n = std::move(f);
      } else if (is_name("is")) {
        ++i_;
        auto t = node(NK::kTest, cur().pos);
        t->neg = skip_name("not");
        t->str = expect_name();
        if (std::find_if(std::begin(kTests), std::end(kTests),
                         [&](const char* k) { return t->str == k; }) == std::end(kTests))
          where_.fail(t->pos, "no test named '{}'", t->str);
        t->a.push_back(std::move(n));
        if (skip_op("(")) {
          parse_args(*t);
        } else if ((cur().t == T::kName || cur().t == T::kStr || cur().t == T::kInt ||
                    cur().t == T::kFloat || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          t->a.push_back(parse_postfix(parse_primary()));
        }
        n = std::move(t);
      } else if (is_op("(")) {
        auto c = node(NK::kCall, next().pos);
        c->callee = std::move(n);
        parse_args(*c);
        n = std::move(c);
      } else {
        return n;
      }
    }
  }

  std::vector<Token> tk_;
  size_t i_ = 0;
  const Where& where_;
  int loop_depth_ = 0;
  int depth_ = 0;
};

}  // namespace

struct Template::Impl {
  std::string source;  // newline-normalised, as Jinja lexes it
  Where where;
  std::vector<NodeP> body;
};

Template::Template(std::string source, std::string name) : impl_(std::make_unique<Impl>()) {
  // Jinja normalises \r\n and \r to \n and, without keep_trailing_newline, drops one final
  // newline of the template source.
  std::string s;
  s.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      s += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      s += source[i];
    }
  }
  if (!s.empty() && s.back() == '\n') s.pop_back();
  impl_->source = std::move(s);
  impl_->where = Where{&impl_->source, std::move(name)};
  Lexer lex(impl_->source, impl_->where);
  Parser parser(lex.run(), impl_->where);
  impl_->body = parser.parse_template();
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const nlohmann::ordered_json& context) const {
  return render_nodes(impl_->body, impl_->where, from_json(context));
}
std::string Template::render(const nlohmann::json& context) const {
  return render_nodes(impl_->body, impl_->where, from_json(context));
}

}  // namespace dsv3::jinja
