// Python value semantics for the Jinja interpreter: str(), repr(), ==, truthiness,
// str.strip/split helpers and json.dumps, reproduced byte for byte, because the output is a
// prompt that gets tokenized.
#include <algorithm>
#include <charconv>
#include <cmath>

#include "tokenizer/jinja_internal.h"

namespace dsv3::jinja {

// Byte offsets of each code point: Python indexes and measures str by code point.
std::vector<size_t> cp_starts(const std::string& s) {
  std::vector<size_t> r;
  for (size_t i = 0; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) r.push_back(i);
  return r;
}

uint32_t decode_at(const std::string& s, size_t i, size_t end) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  uint32_t cp = len == 1 ? c : c & (0x3F >> (len - 1));
  for (int k = 1; k < len && i + k < end; ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
  return cp;
}

// str.isspace() for the code points Python counts as whitespace.
bool py_isspace(uint32_t c) {
  return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// str.strip/lstrip/rstrip; `chars` null means whitespace.
std::string py_strip(const std::string& s, const std::string* chars, bool left, bool right) {
  std::vector<uint32_t> set;
  if (chars)
    for (size_t i : cp_starts(*chars)) set.push_back(decode_at(*chars, i, chars->size()));
  auto strip_me = [&](uint32_t c) {
    return chars ? std::find(set.begin(), set.end(), c) != set.end() : py_isspace(c);
  };
  auto starts = cp_starts(s);
  size_t b = 0, e = starts.size();
  while (left && b < e && strip_me(decode_at(s, starts[b], s.size()))) ++b;
  while (right && e > b && strip_me(decode_at(s, starts[e - 1], s.size()))) --e;
  size_t from = b < starts.size() ? starts[b] : s.size();
  size_t to = e < starts.size() ? starts[e] : s.size();
  return s.substr(from, to - from);
}

std::string py_float(double d, bool json) {
  if (std::isnan(d)) return json ? "NaN" : "nan";
  if (std::isinf(d)) return d < 0 ? (json ? "-Infinity" : "-inf") : (json ? "Infinity" : "inf");
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // shortest round-trip digits, e.g. "-1.25e+02"
  size_t e = sci.find('e');
  int exp = std::stoi(sci.substr(e + 1));
  std::string sign = sci[0] == '-' ? "-" : "";
  std::string digits;
  for (size_t i = sign.size(); i < e; ++i)
    if (sci[i] != '.') digits += sci[i];
  // repr(float) switches to exponent notation outside 1e-4 <= |d| < 1e16.
  if (exp < -4 || exp >= 16) {
    std::string m = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    return fmt::format("{}{}e{}{:02d}", sign, m, exp < 0 ? '-' : '+', std::abs(exp));
  }
  if (exp < 0) return sign + "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  size_t ip = static_cast<size_t>(exp) + 1;
  if (digits.size() <= ip) return sign + digits + std::string(ip - digits.size(), '0') + ".0";
  return sign + digits.substr(0, ip) + "." + digits.substr(ip);
}

std::string py_repr_str(const std::string& s) {
  char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string o(1, q);
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (c == q || c == '\\')
      o += std::string("\\") + c;
    else if (c == '\n')
      o += "\\n";
    else if (c == '\r')
      o += "\\r";
    else if (c == '\t')
      o += "\\t";
    else if (u < 0x20 || u == 0x7F)
      o += fmt::format("\\x{:02x}", u);
    else
      o += c;
  }
  return o + q;
}

const char* type_name(const Value& v) {
  static const char* names[] = {"Undefined", "NoneType", "bool", "int",      "float",
                                "str",       "list",     "dict", "Namespace"};
  return names[static_cast<int>(v.k)];
}

std::string py_repr(const Value& v) {
  return py_str(v, true);
}

// str(v) (or repr(v)) as Python prints it; undefined prints as nothing.
std::string py_str(const Value& v, bool repr) {
  switch (v.k) {
    case VK::kUndef:
      return "";
    case VK::kNone:
      return "None";
    case VK::kBool:
      return v.b ? "True" : "False";
    case VK::kInt:
      return std::to_string(v.i);
    case VK::kFloat:
      return py_float(v.f, false);
    case VK::kStr:
      return repr ? py_repr_str(v.s) : v.s;
    case VK::kList: {  // b marks a tuple (from dict.items())
      std::string o = v.b ? "(" : "[";
      for (size_t i = 0; i < v.list->size(); ++i) o += (i ? ", " : "") + py_repr((*v.list)[i]);
      return o + (v.b ? (v.list->size() == 1 ? ",)" : ")") : "]");
    }
    case VK::kDict:
    case VK::kNs: {
      std::string o = v.k == VK::kNs ? "<Namespace {" : "{";
      for (size_t i = 0; i < v.dict->size(); ++i)
        o +=
            (i ? ", " : "") + py_repr_str((*v.dict)[i].first) + ": " + py_repr((*v.dict)[i].second);
      return o + (v.k == VK::kNs ? "}>" : "}");
    }
  }
  return "";
}

bool truthy(const Value& v) {
  switch (v.k) {
    case VK::kUndef:
    case VK::kNone:
      return false;
    case VK::kBool:
      return v.b;
    case VK::kInt:
      return v.i != 0;
    case VK::kFloat:
      return v.f != 0;
    case VK::kStr:
      return !v.s.empty();
    case VK::kList:
      return !v.list->empty();
    case VK::kDict:
      return !v.dict->empty();
    case VK::kNs:
      return true;
  }
  return false;
}

bool is_num(const Value& v) {
  return v.k == VK::kBool || v.k == VK::kInt || v.k == VK::kFloat;
}
double as_double(const Value& v) {
  return v.k == VK::kFloat ? v.f : v.k == VK::kInt ? static_cast<double>(v.i) : v.b;
}
int64_t as_int(const Value& v) {
  return v.k == VK::kInt ? v.i : v.b;
}

const Value* dict_find(const Dict& d, std::string_view key) {
  for (const auto& [k, val] : d)
    if (k == key) return &val;
  return nullptr;
}

bool py_eq(const Value& a, const Value& b) {
  if (is_num(a) && is_num(b)) {
    if (a.k == VK::kFloat || b.k == VK::kFloat) return as_double(a) == as_double(b);
    return as_int(a) == as_int(b);
  }
  if (a.k != b.k) return false;
  switch (a.k) {
    case VK::kUndef:
    case VK::kNone:
      return true;
    case VK::kStr:
      return a.s == b.s;
    case VK::kList:
      return a.list->size() == b.list->size() &&
             std::equal(a.list->begin(), a.list->end(), b.list->begin(), py_eq);
    case VK::kDict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* o = dict_find(*b.dict, k);
        if (!o || !py_eq(v, *o)) return false;
      }
      return true;
    default:
      return a.dict == b.dict;
  }
}

// json.dumps(v, ensure_ascii=False, indent=indent) — transformers' own tojson filter.
void dump_json(const Value& v, int indent, int level, std::string& o, const Where& w, size_t pos) {
  auto nl = [&](int lv) {
    if (indent < 0) return;
    o += '\n';
    o.append(static_cast<size_t>(indent * lv), ' ');
  };
  const char* sep = indent >= 0 ? "," : ", ";
  switch (v.k) {
    case VK::kNone:
      o += "null";
      return;
    case VK::kBool:
      o += v.b ? "true" : "false";
      return;
    case VK::kInt:
      o += std::to_string(v.i);
      return;
    case VK::kFloat:
      o += py_float(v.f, true);
      return;
    case VK::kStr:
      o += '"';
      for (char c : v.s) {
        unsigned char u = static_cast<unsigned char>(c);
        if (c == '"')
          o += "\\\"";
        else if (c == '\\')
          o += "\\\\";
        else if (c == '\n')
          o += "\\n";
        else if (c == '\r')
          o += "\\r";
        else if (c == '\t')
          o += "\\t";
        else if (c == '\b')
          o += "\\b";
        else if (c == '\f')
          o += "\\f";
        else if (u < 0x20)
          o += fmt::format("\\u{:04x}", u);
        else
          o += c;
      }
      o += '"';
      return;
    case VK::kList:
      if (v.list->empty()) {
        o += "[]";
        return;
      }
      o += '[';
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i) o += sep;
        nl(level + 1);
        dump_json((*v.list)[i], indent, level + 1, o, w, pos);
      }
      nl(level);
      o += ']';
      return;
    case VK::kDict:
      if (v.dict->empty()) {
        o += "{}";
        return;
      }
      o += '{';
      for (size_t i = 0; i < v.dict->size(); ++i) {
        if (i) o += sep;
        nl(level + 1);
        dump_json(Value::str((*v.dict)[i].first), indent, level + 1, o, w, pos);
        o += ": ";
        dump_json((*v.dict)[i].second, indent, level + 1, o, w, pos);
      }
      nl(level);
      o += '}';
      return;
    default:
      w.fail(pos, "|tojson: a value of type {} is not JSON serializable", type_name(v));
  }
}

namespace {

template <class J>
Value from_json_impl(const J& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value::none();
    case nlohmann::json::value_t::boolean:
      return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      auto u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX))
        fail("JSON integer {} is too large for a template", u);
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float:
      return Value::flt(j.template get<double>());
    case nlohmann::json::value_t::string:
      return Value::str(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(from_json_impl(e));
      return Value::make_list(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.emplace_back(it.key(), from_json_impl(*it));
      return Value::make_dict(std::move(d));
    }
    default:
      fail("template context: unsupported JSON value (binary or discarded)");
  }
}

}  // namespace

Value from_json(const nlohmann::json& j) {
  return from_json_impl(j);
}
Value from_json(const nlohmann::ordered_json& j) {
  return from_json_impl(j);
}

}  // namespace dsv3::jinja
