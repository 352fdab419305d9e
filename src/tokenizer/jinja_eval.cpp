// Evaluator for the Jinja subset: statements, expressions and the builtin functions,
// methods, filters and tests, on the Python value model of jinja_value.cpp.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <optional>
#include <unordered_map>

#include "tokenizer/jinja_internal.h"

namespace dsv3::jinja {
namespace {

// ---------------------------------------------------------------- evaluator
class Renderer {
 public:
  Renderer(const Where& w, const Value& ctx) : w_(w) {
    scopes_.emplace_back();
    if (ctx.k != VK::kDict) fail("template context must be a JSON object");
    for (const auto& [k, v] : *ctx.dict) scopes_.back()[k] = v;
  }

  enum class Flow { kNormal, kBreak, kContinue };

  Flow exec(const std::vector<NodeP>& body) {
    for (const auto& n : body) {
      Flow f = exec_one(*n);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  std::string out;

 private:
  Flow exec_one(const Node& n) {
    switch (n.k) {
      case NK::kText:
        out += n.str;
        return Flow::kNormal;
      case NK::kOutput:
        out += py_str(eval(*n.a[0]));
        return Flow::kNormal;
      case NK::kIf:
        for (size_t i = 0; i < n.a.size(); ++i)
          if (truthy(eval(*n.a[i]))) return exec(n.blocks[i]);
        return n.blocks.size() > n.a.size() ? exec(n.blocks.back()) : Flow::kNormal;
      case NK::kFor:
        return exec_for(n);
      case NK::kSet: {
        Value v = eval(*n.a[0]);
        if (n.names.size() == 1) {
          scopes_.back()[n.names[0]] = std::move(v);
          return Flow::kNormal;
        }
        Value ns = lookup(n.names[0]);
        if (ns.k != VK::kNs)
          w_.fail(n.pos, "cannot set attribute '{}' of '{}': it is a {}, not a namespace()",
                  n.names[1], n.names[0], type_name(ns));
        for (auto& [k, old] : *ns.dict)
          if (k == n.names[1]) {
            old = std::move(v);
            return Flow::kNormal;
          }
        ns.dict->emplace_back(n.names[1], std::move(v));
        return Flow::kNormal;
      }
      case NK::kBreak:
        return Flow::kBreak;
      case NK::kContinue:
        return Flow::kContinue;
      default:
        w_.fail(n.pos, "internal error: expression node used as a statement");
    }
  }

  Flow exec_for(const Node& n) {
    Value it = eval(*n.a[0]);
    List items = iterate(it, n.a[0]->pos);
    const size_t len = items.size();
    for (size_t i = 0; i < len; ++i) {
      // Jinja scoping: assignments in the body last for one iteration and never leak out.
      scopes_.emplace_back();
      auto& sc = scopes_.back();
      Dict loop = {{"index", Value::integer(static_cast<int64_t>(i + 1))},
                   {"index0", Value::integer(static_cast<int64_t>(i))},
                   {"revindex", Value::integer(static_cast<int64_t>(len - i))},
                   {"revindex0", Value::integer(static_cast<int64_t>(len - i - 1))},
                   {"first", Value::boolean(i == 0)},
                   {"last", Value::boolean(i + 1 == len)},
                   {"length", Value::integer(static_cast<int64_t>(len))}};
      if (i > 0) loop.emplace_back("previtem", items[i - 1]);
      if (i + 1 < len) loop.emplace_back("nextitem", items[i + 1]);
      sc["loop"] = Value::make_dict(std::move(loop));
      if (n.names.size() == 1) {
        sc[n.names[0]] = items[i];
      } else {
        const Value& pair = items[i];
        if (pair.k != VK::kList || pair.list->size() != 2)
          w_.fail(n.pos, "cannot unpack a {} into '{}, {}'", type_name(pair), n.names[0],
                  n.names[1]);
        sc[n.names[0]] = (*pair.list)[0];
        sc[n.names[1]] = (*pair.list)[1];
      }
      const Flow f = exec(n.blocks[0]);
      scopes_.pop_back();
      if (f == Flow::kBreak) break;
    }
    if (len == 0 && n.blocks.size() > 1) return exec(n.blocks[1]);
    return Flow::kNormal;
  }

  List iterate(const Value& v, size_t pos) {
    switch (v.k) {
      case VK::kUndef:
        return {};
      case VK::kList:
        return *v.list;
      case VK::kDict: {
        List keys;
        for (const auto& kv : *v.dict) keys.push_back(Value::str(kv.first));
        return keys;
      }
      case VK::kStr: {
        List chars;
        auto st = cp_starts(v.s);
        for (size_t i = 0; i < st.size(); ++i)
          chars.push_back(
              Value::str(v.s.substr(st[i], (i + 1 < st.size() ? st[i + 1] : v.s.size()) - st[i])));
        return chars;
      }
      default:
        w_.fail(pos, "'{}' object is not iterable", type_name(v));
    }
  }

  Value lookup(const std::string& name) const {
    for (auto s = scopes_.rbegin(); s != scopes_.rend(); ++s) {
      auto f = s->find(name);
      if (f != s->end()) return f->second;
    }
    return Value::undef(fmt::format("'{}' is undefined", name));
  }

  // Undefined values fail on any use but printing, testing and iterating (jinja2.Undefined).
  void defined_or_fail(const Value& v, size_t pos) {
    if (v.k == VK::kUndef) w_.fail(pos, "{}", v.s);
  }

  Value get_attr(const Value& obj, const std::string& name, size_t pos) {
    defined_or_fail(obj, pos);
    if (obj.k == VK::kDict || obj.k == VK::kNs)
      if (const Value* v = dict_find(*obj.dict, name)) return *v;
    return Value::undef(fmt::format("'{}' object has no attribute '{}'",
                                    obj.k == VK::kDict ? "dict" : type_name(obj), name));
  }

  Value get_item(const Value& obj, const Value& key, size_t pos) {
    defined_or_fail(obj, pos);
    if (key.k == VK::kStr) return get_attr(obj, key.s, pos);
    if ((obj.k == VK::kList || obj.k == VK::kStr) && (key.k == VK::kInt || key.k == VK::kBool)) {
      int64_t idx = as_int(key);
      auto st = obj.k == VK::kStr ? cp_starts(obj.s) : std::vector<size_t>{};
      const int64_t n = static_cast<int64_t>(obj.k == VK::kList ? obj.list->size() : st.size());
      if (idx < 0) idx += n;
      if (idx < 0 || idx >= n)
        return Value::undef(
            fmt::format("'{}' object has no element {}", type_name(obj), as_int(key)));
      if (obj.k == VK::kList) return (*obj.list)[static_cast<size_t>(idx)];
      size_t b = st[static_cast<size_t>(idx)];
      size_t e = idx + 1 < n ? st[static_cast<size_t>(idx + 1)] : obj.s.size();
      return Value::str(obj.s.substr(b, e - b));
    }
    return Value::undef(
        fmt::format("'{}' object has no element {}", type_name(obj), py_str(key, true)));
  }

  // Python slice semantics (PySlice_AdjustIndices), over code points for strings.
  Value slice(const Node& n) {
    Value obj = eval(*n.a[0]);
    defined_or_fail(obj, n.pos);
    if (obj.k != VK::kList && obj.k != VK::kStr)
      w_.fail(n.pos, "cannot slice a {}", type_name(obj));
    auto st = obj.k == VK::kStr ? cp_starts(obj.s) : std::vector<size_t>{};
    const int64_t len = static_cast<int64_t>(obj.k == VK::kList ? obj.list->size() : st.size());
    auto bound = [&](size_t which) -> std::optional<int64_t> {
      if (!n.a[which]) return std::nullopt;
      Value v = eval(*n.a[which]);
      if (v.k == VK::kNone) return std::nullopt;
      if (v.k != VK::kInt && v.k != VK::kBool)
        w_.fail(n.a[which]->pos, "slice indices must be integers");
      return as_int(v);
    };
    int64_t step = bound(3).value_or(1);
    if (step == 0) w_.fail(n.pos, "slice step cannot be zero");
    auto adjust = [&](std::optional<int64_t> x, int64_t dflt) {
      if (!x) return dflt;
      int64_t v = *x;
      if (v < 0)
        v = std::max<int64_t>(v + len, step < 0 ? -1 : 0);
      else
        v = std::min<int64_t>(v, step < 0 ? len - 1 : len);
      return v;
    };
    int64_t start = adjust(bound(1), step < 0 ? len - 1 : 0);
    int64_t stop = adjust(bound(2), step < 0 ? -1 : len);
    List l;
    std::string s;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      size_t u = static_cast<size_t>(i);
      if (obj.k == VK::kList)
        l.push_back((*obj.list)[u]);
      else
        s += obj.s.substr(st[u], (u + 1 < st.size() ? st[u + 1] : obj.s.size()) - st[u]);
    }
    return obj.k == VK::kList ? Value::make_list(std::move(l)) : Value::str(std::move(s));
  }

  // Positional-or-keyword argument `idx`/`name` of a call, or null.
  struct Args {
    std::vector<Value> pos;
    std::vector<std::pair<std::string, Value>> kw;
    const Value* get(size_t idx, std::string_view name) const {
      if (idx < pos.size()) return &pos[idx];
      for (const auto& [k, v] : kw)
        if (k == name) return &v;
      return nullptr;
    }
  };
  Args eval_args(const Node& n, size_t skip) {
    Args a;
    for (size_t i = skip; i < n.a.size(); ++i) a.pos.push_back(eval(*n.a[i]));
    for (const auto& [k, v] : n.kw) a.kw.emplace_back(k, eval(*v));
    return a;
  }
  void check_arity(const Args& a, size_t max_pos, std::initializer_list<std::string_view> kws,
                   const std::string& what, size_t pos) {
    if (a.pos.size() > max_pos) w_.fail(pos, "{}: too many arguments", what);
    for (const auto& [k, v] : a.kw)
      if (std::find(kws.begin(), kws.end(), k) == kws.end())
        w_.fail(pos, "{}: unsupported keyword argument '{}'", what, k);
  }
  const std::string& want_str(const Value* v, const std::string& what, size_t pos) {
    if (!v || v->k != VK::kStr) w_.fail(pos, "{}: expected a string argument", what);
    return v->s;
  }
  void ascii_only(const std::string& s, const std::string& what, size_t pos) {
    for (char c : s)
      if (static_cast<unsigned char>(c) >= 0x80)
        w_.fail(pos, "{} of non-ASCII text is not supported (Python's Unicode case tables)", what);
  }

  Value call(const Node& n);
  Value method(const Value& obj, const std::string& name, const Args& a, size_t pos);
  Value filter(const Node& n);
  bool test(const Node& n);
  Value binary(const std::string& op, const Value& l, const Value& r, size_t pos);
  bool compare(const std::string& op, const Value& l, const Value& r, size_t pos);

 public:
  Value eval(const Node& n) {
    switch (n.k) {
      case NK::kLiteral:
        return n.lit;
      case NK::kName:
        return lookup(n.str);
      case NK::kAttr:
        return get_attr(eval(*n.a[0]), n.str, n.pos);
      case NK::kItem: {
        Value o = eval(*n.a[0]);
        return get_item(o, eval(*n.a[1]), n.pos);
      }
      case NK::kSlice:
        return slice(n);
      case NK::kCall:
        return call(n);
      case NK::kFilter:
        return filter(n);
      case NK::kTest:
        return Value::boolean(test(n) != n.neg);
      case NK::kNeg: {
        Value v = eval(*n.a[0]);
        defined_or_fail(v, n.pos);
        if (!is_num(v)) w_.fail(n.pos, "bad operand type for unary {}: '{}'", n.str, type_name(v));
        if (n.str == "+") return v.k == VK::kBool ? Value::integer(v.b) : v;
        return v.k == VK::kFloat ? Value::flt(-v.f) : Value::integer(-as_int(v));
      }
      case NK::kBinary: {
        Value l = eval(*n.a[0]);
        return binary(n.str, l, eval(*n.a[1]), n.pos);
      }
      case NK::kCompare: {
        Value l = eval(*n.a[0]);
        for (size_t i = 0; i < n.names.size(); ++i) {
          Value r = eval(*n.a[i + 1]);
          if (!compare(n.names[i], l, r, n.a[i + 1]->pos)) return Value::boolean(false);
          l = std::move(r);
        }
        return Value::boolean(true);
      }
      case NK::kAnd: {
        Value l = eval(*n.a[0]);
        return truthy(l) ? eval(*n.a[1]) : l;
      }
      case NK::kOr: {
        Value l = eval(*n.a[0]);
        return truthy(l) ? l : eval(*n.a[1]);
      }
      case NK::kNot:
        return Value::boolean(!truthy(eval(*n.a[0])));
      case NK::kCond:
        if (truthy(eval(*n.a[0]))) return eval(*n.a[1]);
        if (n.a.size() > 2) return eval(*n.a[2]);
        return Value::undef("the inline if-expression evaluated to false and has no else");
      case NK::kList: {
        List l;
        for (const auto& e : n.a) l.push_back(eval(*e));
        return Value::make_list(std::move(l));
      }
      case NK::kDict: {
        Dict d;
        for (size_t i = 0; i + 1 < n.a.size(); i += 2) {
          Value k = eval(*n.a[i]);
          if (k.k != VK::kStr) w_.fail(n.a[i]->pos, "dict keys must be strings here");
          Value v = eval(*n.a[i + 1]);
          auto it = std::find_if(d.begin(), d.end(), [&](auto& kv) { return kv.first == k.s; });
          if (it != d.end())
            it->second = std::move(v);
          else
            d.emplace_back(k.s, std::move(v));
        }
        return Value::make_dict(std::move(d));
      }
      default:
        w_.fail(n.pos, "internal error: statement node used as an expression");
    }
  }

 private:
  const Where& w_;
  std::vector<std::unordered_map<std::string, Value>> scopes_;
};

// ---------------------------------------------------------------- builtins
Value Renderer::call(const Node& n) {
  const Node& c = *n.callee;
  if (c.k == NK::kAttr) {
    Value obj = eval(*c.a[0]);
    defined_or_fail(obj, c.pos);
    return method(obj, c.str, eval_args(n, 0), n.pos);
  }
  if (c.k != NK::kName) w_.fail(n.pos, "this expression is not callable");
  Args a = eval_args(n, 0);
  if (c.str == "namespace") {
    Dict d;
    if (!a.pos.empty()) {
      if (a.pos.size() > 1 || a.pos[0].k != VK::kDict)
        w_.fail(n.pos, "namespace() takes keyword arguments or one dict");
      d = *a.pos[0].dict;
    }
    for (auto& [k, v] : a.kw) d.emplace_back(k, v);
    return Value::make_dict(std::move(d), VK::kNs);
  }
  if (c.str == "raise_exception") {
    w_.fail(n.pos, "the chat template raised an error: {}", a.pos.empty() ? "" : py_str(a.pos[0]));
  }
  if (c.str == "range") {
    check_arity(a, 3, {}, "range()", n.pos);
    int64_t r[3] = {0, 0, 1};
    for (const auto& v : a.pos)
      if (v.k != VK::kInt) w_.fail(n.pos, "range() takes integers");
    if (a.pos.size() == 1) r[1] = a.pos[0].i;
    for (size_t i = 0; a.pos.size() > 1 && i < a.pos.size(); ++i) r[i] = a.pos[i].i;
    if (r[2] == 0) w_.fail(n.pos, "range() step must not be zero");
    List l;
    for (int64_t i = r[0]; r[2] > 0 ? i < r[1] : i > r[1]; i += r[2]) {
      if (l.size() >= 1000000) w_.fail(n.pos, "range() is too long");
      l.push_back(Value::integer(i));
    }
    return Value::make_list(std::move(l));
  }
  Value v = lookup(c.str);
  if (v.k == VK::kUndef) w_.fail(c.pos, "unknown function '{}'", c.str);
  w_.fail(c.pos, "'{}' is a {}, not a function", c.str, type_name(v));
}

Value Renderer::method(const Value& obj, const std::string& name, const Args& a, size_t pos) {
  const std::string what = fmt::format("{}.{}()", type_name(obj), name);
  if (obj.k == VK::kStr) {
    const std::string& s = obj.s;
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      check_arity(a, 1, {}, what, pos);
      const Value* ch = a.get(0, "");
      if (ch && ch->k != VK::kNone && ch->k != VK::kStr)
        w_.fail(pos, "{}: chars must be a string", what);
      return Value::str(py_strip(s, ch && ch->k == VK::kStr ? &ch->s : nullptr, name != "rstrip",
                                 name != "lstrip"));
    }
    if (name == "split") {
      check_arity(a, 2, {"sep", "maxsplit"}, what, pos);
      const Value* sep = a.get(0, "sep");
      const Value* mx = a.get(1, "maxsplit");
      int64_t maxsplit = mx ? as_int(*mx) : -1;
      List parts;
      if (sep && sep->k != VK::kNone) {
        const std::string& d = want_str(sep, what, pos);
        if (d.empty()) w_.fail(pos, "{}: empty separator", what);
        size_t b = 0, f;
        while ((maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) &&
               (f = s.find(d, b)) != std::string::npos) {
          parts.push_back(Value::str(s.substr(b, f - b)));
          b = f + d.size();
        }
        parts.push_back(Value::str(s.substr(b)));
      } else {  // runs of whitespace, ends ignored
        auto st = cp_starts(s);
        size_t i = 0;
        auto sp = [&](size_t k) { return py_isspace(decode_at(s, st[k], s.size())); };
        while (i < st.size()) {
          while (i < st.size() && sp(i)) ++i;
          if (i == st.size()) break;
          if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
            parts.push_back(Value::str(s.substr(st[i])));  // the rest, trailing space kept
            break;
          }
          size_t j = i;
          while (j < st.size() && !sp(j)) ++j;
          size_t e = j < st.size() ? st[j] : s.size();
          parts.push_back(Value::str(s.substr(st[i], e - st[i])));
          i = j;
        }
      }
      return Value::make_list(std::move(parts));
    }
    if (name == "startswith" || name == "endswith") {
      check_arity(a, 1, {}, what, pos);
      const std::string& x = want_str(a.get(0, ""), what, pos);
      bool r = x.size() <= s.size() &&
               (name == "startswith" ? s.compare(0, x.size(), x) == 0
                                     : s.compare(s.size() - x.size(), x.size(), x) == 0);
      return Value::boolean(r);
    }
    if (name == "upper" || name == "lower") {
      check_arity(a, 0, {}, what, pos);
      ascii_only(s, what, pos);
      std::string r = s;
      for (char& ch : r)
        ch = static_cast<char>(name == "upper" ? std::toupper(ch) : std::tolower(ch));
      return Value::str(std::move(r));
    }
    if (name == "replace") {
      check_arity(a, 3, {}, what, pos);
      const std::string& from = want_str(a.get(0, ""), what, pos);
      const std::string& to = want_str(a.get(1, ""), what, pos);
      int64_t count = a.get(2, "") ? as_int(*a.get(2, "")) : -1;
      if (from.empty()) w_.fail(pos, "{}: replacing an empty string is not supported", what);
      std::string r;
      size_t b = 0, f;
      for (int64_t k = 0; (count < 0 || k < count) && (f = s.find(from, b)) != std::string::npos;
           ++k) {
        r += s.substr(b, f - b) + to;
        b = f + from.size();
      }
      return Value::str(r + s.substr(b));
    }
    if (name == "find") {
      check_arity(a, 1, {}, what, pos);
      size_t f = s.find(want_str(a.get(0, ""), what, pos));
      if (f == std::string::npos) return Value::integer(-1);
      return Value::integer(static_cast<int64_t>(cp_starts(s.substr(0, f)).size()));
    }
  } else if (obj.k == VK::kDict) {
    if (name == "get") {
      check_arity(a, 2, {}, what, pos);
      const Value* k = a.get(0, "");
      if (!k) w_.fail(pos, "{}: missing key", what);
      const Value* v = k->k == VK::kStr ? dict_find(*obj.dict, k->s) : nullptr;
      return v ? *v : a.get(1, "") ? *a.get(1, "") : Value::none();
    }
    if (name == "items" || name == "keys" || name == "values") {
      check_arity(a, 0, {}, what, pos);
      List l;
      for (const auto& [k, v] : *obj.dict) {
        if (name == "items") {
          l.push_back(Value::make_list({Value::str(k), v}));
          l.back().b = true;  // a tuple, as far as printing goes
        } else
          l.push_back(name == "keys" ? Value::str(k) : v);
      }
      return Value::make_list(std::move(l));
    }
  }
  w_.fail(pos, "unsupported method {}", what);
}

Value Renderer::filter(const Node& n) {
  Value v = eval(*n.a[0]);
  Args a = eval_args(n, 1);
  const std::string& f = n.str;
  const std::string what = "|" + f;
  if (f == "default" || f == "d") {
    check_arity(a, 2, {"default_value", "boolean"}, what, n.pos);
    const Value* dv = a.get(0, "default_value");
    const Value* boolean = a.get(1, "boolean");
    bool use = v.k == VK::kUndef || (boolean && truthy(*boolean) && !truthy(v));
    return use ? (dv ? *dv : Value::str("")) : v;
  }
  if (f == "length" || f == "count") {
    check_arity(a, 0, {}, what, n.pos);
    switch (v.k) {
      case VK::kUndef:
        return Value::integer(0);
      case VK::kStr:
        return Value::integer(static_cast<int64_t>(cp_starts(v.s).size()));
      case VK::kList:
        return Value::integer(static_cast<int64_t>(v.list->size()));
      case VK::kDict:
        return Value::integer(static_cast<int64_t>(v.dict->size()));
      default:
        w_.fail(n.pos, "object of type '{}' has no len()", type_name(v));
    }
  }
  if (f == "trim") {
    check_arity(a, 1, {"chars"}, what, n.pos);
    const Value* ch = a.get(0, "chars");
    return Value::str(py_strip(py_str(v), ch && ch->k == VK::kStr ? &ch->s : nullptr, true, true));
  }
  if (f == "string") return Value::str(py_str(v));
  defined_or_fail(v, n.pos);  // the rest fail on undefined, as in Jinja
  if (f == "tojson") {
    check_arity(a, 1, {"indent"}, what, n.pos);
    const Value* ind = a.get(0, "indent");
    if (ind && ind->k != VK::kNone && ind->k != VK::kInt)
      w_.fail(n.pos, "|tojson: indent must be an integer");
    std::string o;
    dump_json(v, ind && ind->k == VK::kInt ? static_cast<int>(std::max<int64_t>(0, ind->i)) : -1, 0,
              o, w_, n.pos);
    return Value::str(std::move(o));
  }
  if (f == "lower" || f == "upper") {
    check_arity(a, 0, {}, what, n.pos);
    return method(Value::str(py_str(v)), f, a, n.pos);
  }
  if (f == "replace") return method(Value::str(py_str(v)), "replace", a, n.pos);
  if (f == "first" || f == "last" || f == "reverse" || f == "list") {
    check_arity(a, 0, {}, what, n.pos);
    List items = iterate(v, n.pos);
    if (f == "list") return Value::make_list(std::move(items));
    if (f == "reverse") {
      std::reverse(items.begin(), items.end());
      if (v.k != VK::kStr) return Value::make_list(std::move(items));
      std::string s;
      for (const auto& c : items) s += c.s;
      return Value::str(std::move(s));
    }
    if (items.empty()) return Value::undef(fmt::format("{} of an empty sequence", what));
    return f == "first" ? items.front() : items.back();
  }
  if (f == "join") {
    check_arity(a, 1, {"d"}, what, n.pos);
    const Value* d = a.get(0, "d");
    std::string sep = d ? py_str(*d) : "", o;
    List items = iterate(v, n.pos);
    for (size_t i = 0; i < items.size(); ++i) o += (i ? sep : "") + py_str(items[i]);
    return Value::str(std::move(o));
  }
  if (f == "items") {
    if (v.k != VK::kDict) w_.fail(n.pos, "|items needs a dict, got {}", type_name(v));
    return method(v, "items", a, n.pos);
  }
  if (f == "int") {
    if (v.k == VK::kFloat) return Value::integer(static_cast<int64_t>(v.f));
    if (is_num(v)) return Value::integer(as_int(v));
    int64_t r = 0;
    std::string s = v.k == VK::kStr ? py_strip(v.s, nullptr, true, true) : "";
    auto res = std::from_chars(s.data(), s.data() + s.size(), r);
    return Value::integer(res.ec == std::errc() && res.ptr == s.data() + s.size() ? r : 0);
  }
  if (f == "abs") {
    if (!is_num(v)) w_.fail(n.pos, "|abs needs a number, got {}", type_name(v));
    return v.k == VK::kFloat ? Value::flt(std::fabs(v.f)) : Value::integer(std::abs(as_int(v)));
  }
  w_.fail(n.pos, "internal error: filter '{}' has no implementation", f);
}

bool Renderer::test(const Node& n) {
  Value v = eval(*n.a[0]);
  const std::string& t = n.str;
  if (t == "defined") return v.k != VK::kUndef;
  if (t == "undefined") return v.k == VK::kUndef;
  if (t == "none") return v.k == VK::kNone;
  if (t == "boolean") return v.k == VK::kBool;
  if (t == "true") return v.k == VK::kBool && v.b;
  if (t == "false") return v.k == VK::kBool && !v.b;
  if (t == "integer") return v.k == VK::kInt;
  if (t == "float") return v.k == VK::kFloat;
  if (t == "number") return is_num(v);
  if (t == "string") return v.k == VK::kStr;
  if (t == "mapping") return v.k == VK::kDict;
  if (t == "sequence") return v.k == VK::kStr || v.k == VK::kList || v.k == VK::kDict;
  if (t == "iterable")
    return v.k == VK::kStr || v.k == VK::kList || v.k == VK::kDict || v.k == VK::kUndef;
  if (t == "odd" || t == "even") {
    if (v.k != VK::kInt) w_.fail(n.pos, "'{}' test needs an integer", t);
    return (v.i % 2 != 0) == (t == "odd");
  }
  if (n.a.size() != 2) w_.fail(n.pos, "'{}' test takes one argument", t);
  bool eq = py_eq(v, eval(*n.a[1]));
  return t == "ne" ? !eq : eq;
}

Value Renderer::binary(const std::string& op, const Value& l, const Value& r, size_t pos) {
  if (op == "~") return Value::str(py_str(l) + py_str(r));
  defined_or_fail(l, pos);
  defined_or_fail(r, pos);
  auto bad = [&]() -> Value {
    w_.fail(pos, "unsupported operand types for {}: '{}' and '{}'", op, type_name(l), type_name(r));
  };
  if (op == "+" && l.k == VK::kStr && r.k == VK::kStr) return Value::str(l.s + r.s);
  if (op == "+" && l.k == VK::kList && r.k == VK::kList) {
    List c = *l.list;
    c.insert(c.end(), r.list->begin(), r.list->end());
    return Value::make_list(std::move(c));
  }
  if (op == "*" && ((l.k == VK::kStr && r.k == VK::kInt) || (l.k == VK::kInt && r.k == VK::kStr))) {
    const Value& s = l.k == VK::kStr ? l : r;
    int64_t times = l.k == VK::kInt ? l.i : r.i;
    if (times > 0 && s.s.size() * static_cast<uint64_t>(times) > (64u << 20))
      w_.fail(pos, "string repetition is too large");
    std::string o;
    for (int64_t k = 0; k < times; ++k) o += s.s;
    return Value::str(std::move(o));
  }
  if (!is_num(l) || !is_num(r)) return bad();
  const bool fl = l.k == VK::kFloat || r.k == VK::kFloat || op == "/";
  if (fl) {
    double x = as_double(l), y = as_double(r);
    if ((op == "/" || op == "//" || op == "%") && y == 0) w_.fail(pos, "division by zero");
    if (op == "+") return Value::flt(x + y);
    if (op == "-") return Value::flt(x - y);
    if (op == "*") return Value::flt(x * y);
    if (op == "/") return Value::flt(x / y);
    if (op == "//") return Value::flt(std::floor(x / y));
    if (op == "%") {
      double m = std::fmod(x, y);
      return Value::flt(m != 0 && ((m < 0) != (y < 0)) ? m + y : m);
    }
    return Value::flt(std::pow(x, y));
  }
  int64_t x = as_int(l), y = as_int(r), o = 0;
  bool overflow = false;
  if (op == "+")
    overflow = __builtin_add_overflow(x, y, &o);
  else if (op == "-")
    overflow = __builtin_sub_overflow(x, y, &o);
  else if (op == "*")
    overflow = __builtin_mul_overflow(x, y, &o);
  else if (op == "//" || op == "%") {
    if (y == 0) w_.fail(pos, "integer division or modulo by zero");
    if (x == INT64_MIN && y == -1)
      overflow = true;
    else {
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        q -= 1;
        m += y;
      }
      o = op == "//" ? q : m;
    }
  } else {  // **
    if (y < 0) return Value::flt(std::pow(static_cast<double>(x), static_cast<double>(y)));
    o = 1;
    for (int64_t k = 0; k < y && !overflow; ++k) overflow = __builtin_mul_overflow(o, x, &o);
  }
  if (overflow) w_.fail(pos, "integer overflow in {}", op);
  return Value::integer(o);
}

bool Renderer::compare(const std::string& op, const Value& l, const Value& r, size_t pos) {
  if (op == "==") return py_eq(l, r);
  if (op == "!=") return !py_eq(l, r);
  if (op == "in" || op == "not in") {
    bool found = false;
    if (r.k == VK::kStr) {
      if (l.k != VK::kStr)
        w_.fail(pos, "'in <string>' requires a string on the left, not {}", type_name(l));
      found = r.s.find(l.s) != std::string::npos;
    } else if (r.k == VK::kList) {
      found =
          std::any_of(r.list->begin(), r.list->end(), [&](const Value& e) { return py_eq(l, e); });
    } else if (r.k == VK::kDict) {
      found = l.k == VK::kStr && dict_find(*r.dict, l.s) != nullptr;
    } else if (r.k != VK::kUndef) {
      w_.fail(pos, "argument of type '{}' is not iterable", type_name(r));
    }
    return found == (op == "in");
  }
  defined_or_fail(l, pos);
  defined_or_fail(r, pos);
  int c;
  if (is_num(l) && is_num(r)) {
    double x = as_double(l), y = as_double(r);
    c = x < y ? -1 : x > y ? 1 : 0;
  } else if (l.k == VK::kStr && r.k == VK::kStr) {
    c = l.s.compare(r.s);  // UTF-8 byte order is code point order
  } else {
    w_.fail(pos, "'{}' not supported between '{}' and '{}'", op, type_name(l), type_name(r));
  }
  if (op == "<") return c < 0;
  if (op == ">") return c > 0;
  if (op == "<=") return c <= 0;
  return c >= 0;
}

}  // namespace

std::string render_nodes(const std::vector<NodeP>& body, const Where& where, const Value& context) {
  Renderer r(where, context);
  r.exec(body);
  return std::move(r.out);
}

}  // namespace dsv3::jinja
