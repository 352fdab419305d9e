// Internals shared by the Jinja lexer/parser (jinja.cpp) and evaluator (jinja_eval.cpp).
// Not part of the public API: include "tokenizer/jinja.h" instead.
#pragma once

#include "tokenizer/unicode.h"

#include <fmt/format.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"

namespace dsv3::jinja {

struct Value;
using List = std::vector<Value>;
// Python dicts keep insertion order; so does this (lookups are linear: dicts here are small).
using Dict = std::vector<std::pair<std::string, Value>>;

enum class VK { kUndef, kNone, kBool, kInt, kFloat, kStr, kList, kDict, kNs };

// A Python value as Jinja sees it. Lists and dicts are shared and never mutated, except a
// namespace's attributes, which every copy must see (that is what namespace() is for).
struct Value {
  VK k = VK::kUndef;
  bool b = false;  // a bool's value; on a list: it is a tuple (printed with parentheses)
  int64_t i = 0;
  double f = 0;
  std::string s;  // the string; for an undefined value, why it is undefined
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;  // a dict, or a namespace's attributes

  static Value undef(std::string why) {
    Value v;
    v.s = std::move(why);
    return v;
  }
  static Value none() {
    Value v;
    v.k = VK::kNone;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.k = VK::kBool;
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v;
    v.k = VK::kInt;
    v.i = x;
    return v;
  }
  static Value flt(double x) {
    Value v;
    v.k = VK::kFloat;
    v.f = x;
    return v;
  }
  static Value str(std::string x) {
    Value v;
    v.k = VK::kStr;
    v.s = std::move(x);
    return v;
  }
  static Value make_list(List l) {
    Value v;
    v.k = VK::kList;
    v.list = std::make_shared<List>(std::move(l));
    return v;
  }
  static Value make_dict(Dict d, VK kind = VK::kDict) {
    Value v;
    v.k = kind;
    v.dict = std::make_shared<Dict>(std::move(d));
    return v;
  }
};

// Names the template and turns byte offsets into "name:line:col: message" errors.
struct Where {
  const std::string* src = nullptr;
  std::string name;

  template <class... Args>
  [[noreturn]] void fail(size_t pos, fmt::format_string<Args...> f, Args&&... args) const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos && i < src->size(); ++i) {
      if ((*src)[i] == '\n') {
        line++;
        col = 1;
      } else if ((static_cast<unsigned char>((*src)[i]) & 0xC0) != 0x80) {
        col++;
      }
    }
    throw Error(
        fmt::format("{}:{}:{}: {}", name, line, col, fmt::format(f, std::forward<Args>(args)...)));
  }
};

enum class NK {
  // statements
  kText,
  kOutput,
  kIf,
  kFor,
  kSet,
  kBreak,
  kContinue,
  // expressions
  kLiteral,
  kName,
  kAttr,
  kItem,
  kSlice,
  kCall,
  kFilter,
  kTest,
  kNeg,
  kBinary,
  kCompare,
  kAnd,
  kOr,
  kNot,
  kCond,
  kList,
  kDict
};

struct Node;
using NodeP = std::unique_ptr<Node>;

struct Node {
  NK k = NK::kText;
  size_t pos = 0;
  std::string str;  // text, name, attribute, operator, filter or test name
  Value lit;        // kLiteral
  // Operands in order. kIf: conditions. kFor: the iterable. kSet: the value. kCond:
  // condition, then-value, [else-value]. kSlice: object, start, stop, step (null = omitted).
  // kFilter/kTest: the subject then positional arguments. kDict: key, value, key, value...
  std::vector<NodeP> a;
  std::vector<std::pair<std::string, NodeP>> kw;  // keyword arguments
  NodeP callee;                                   // kCall
  std::vector<std::vector<NodeP>> blocks;         // kIf: branch bodies (+ else); kFor: body, else
  std::vector<std::string> names;  // kFor: targets; kSet: name [, attr]; kCompare: operators
  bool neg = false;                // kTest: `is not`
};

// ---- Python value semantics (jinja_value.cpp)
// UTF-8 encoding of a code point (\u and \U escapes): the tokenizer's.
using tok::append_utf8;
// Byte offsets of each code point: Python indexes and measures str by code point.
std::vector<size_t> cp_starts(const std::string& s);
uint32_t decode_at(const std::string& s, size_t i, size_t end);  // code point at byte i
bool py_isspace(uint32_t c);                                     // str.isspace()
// str.strip/lstrip/rstrip; `chars` null means whitespace.
std::string py_strip(const std::string& s, const std::string* chars, bool left, bool right);
std::string py_float(double d, bool json);              // repr(float), or json.dumps' spelling
const char* type_name(const Value& v);                  // Python's type name, for messages
std::string py_str(const Value& v, bool repr = false);  // str(v) / repr(v); undefined is ""
bool truthy(const Value& v);
bool is_num(const Value& v);  // bool, int or float
double as_double(const Value& v);
int64_t as_int(const Value& v);
const Value* dict_find(const Dict& d, std::string_view key);
bool py_eq(const Value& a, const Value& b);  // Python ==
// json.dumps(v, ensure_ascii=False, indent=indent<0 ? None : indent).
void dump_json(const Value& v, int indent, int level, std::string& o, const Where& w, size_t pos);
Value from_json(const nlohmann::json& j);
Value from_json(const nlohmann::ordered_json& j);
std::string render_nodes(const std::vector<NodeP>& body, const Where& where, const Value& context);

}  // namespace dsv3::jinja
