#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace dsv3::tok {

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

// Unicode White_Space, as the inside of a character class.
constexpr const char* kWhiteSpace =
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";

// Per-thread PCRE2 match state: match data with room for the whole-match pair and a JIT
// stack that can grow for long runs of one class (e.g. megabytes of spaces).
struct MatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
  MatchState() { pcre2_jit_stack_assign(context, nullptr, stack); }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchState& match_state() {
  thread_local MatchState state;
  return state;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

std::string rewrite_whitespace_classes(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  const size_t n = p.size();
  for (size_t i = 0; i < n; ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < n) {
      char d = p[i + 1];
      ++i;
      if (d == 's') {
        if (!in_class) out += '[';
        out.append(kWhiteSpace);
        if (!in_class) out += ']';
      } else if (d == 'S' && !in_class) {
        out.append("[^");
        out.append(kWhiteSpace);
        out += ']';
      } else if (d == 'Q') {  // \Q...\E is literal text: copy it untouched
        size_t e = p.find("\\E", i + 1);
        size_t stop = e == std::string_view::npos ? n : e + 2;
        out += "\\Q";
        out.append(p.substr(i + 1, stop - (i + 1)));
        i = stop - 1;
      } else {
        // Inside a class `\S` cannot be spelled out; PCRE2's differs only at U+180E.
        out += c;
        out += d;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < n && p[i + 1] == '^') out += p[++i];
      if (i + 1 < n && p[i + 1] == ']') out += p[++i];  // a leading ']' is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') {  // POSIX [:name:]
      size_t e = p.find(":]", i + 2);
      size_t stop = e == std::string_view::npos ? n : e + 2;
      out.append(p.substr(i, stop - i));
      i = stop - 1;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

Regex::Regex(std::string_view pattern, bool literal) : pattern_(pattern) {
  int err = 0;
  PCRE2_SIZE offset = 0;
  uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  std::string compiled = literal ? std::string(pattern) : rewrite_whitespace_classes(pattern);
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled.data()), compiled.size(), opts, &err,
                        &offset, nullptr);
  if (!code_) fail("tokenizer regex '{}': {} at offset {}", pattern_, pcre2_message(err), offset);
  jit_ = pcre2_jit_compile(static_cast<pcre2_code*>(code_), PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  pcre2_code_free(static_cast<pcre2_code*>(code_));
}

bool Regex::find(std::string_view subject, size_t from, size_t* begin, size_t* end) const {
  MatchState& st = match_state();
  auto* code = static_cast<pcre2_code*>(code_);
  auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  int rc =
      jit_ ? pcre2_jit_match(code, s, subject.size(), from, 0, st.data, st.context)
           : pcre2_match(code, s, subject.size(), from, PCRE2_NO_UTF_CHECK, st.data, st.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) fail("tokenizer regex '{}': match failed: {}", pattern_, pcre2_message(rc));
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
  *begin = ov[0];
  *end = ov[1];
  return true;
}

namespace {

struct Interval {
  size_t begin, end;
  bool match;
};

// HF's Pattern::find_matches: matches and the gaps between them, covering the piece.
void find_intervals(const Regex& re, std::string_view piece, std::vector<Interval>* out) {
  out->clear();
  size_t prev = 0, pos = 0, b, e;
  while (pos <= piece.size() && re.find(piece, pos, &b, &e)) {
    if (prev != b) out->push_back({prev, b, false});
    out->push_back({b, e, true});
    prev = e;
    if (e == b) {  // an empty match: step over one character
      if (b >= piece.size()) break;
      int len;
      decode_utf8(piece, b, &len);
      pos = b + len;
    } else {
      pos = e;
    }
  }
  if (prev != piece.size()) out->push_back({prev, piece.size(), false});
}

// HF's SplitDelimiterBehavior, applied to intervals whose `match` marks the delimiters.
void apply_behavior(SplitBehavior behavior, std::vector<Interval>& iv, std::vector<Interval>* out) {
  out->clear();
  bool prev_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      *out = iv;
      break;
    case SplitBehavior::kRemoved:
      for (auto& x : iv)
        if (!x.match) out->push_back(x);
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (auto& x : iv) {
        if (x.match && !prev_match && !out->empty())
          out->back().end = x.end;
        else
          out->push_back(x);
        prev_match = x.match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (size_t k = iv.size(); k-- > 0;) {
        auto& x = iv[k];
        if (x.match && !prev_match && !out->empty())
          out->back().begin = x.begin;
        else
          out->push_back(x);
        prev_match = x.match;
      }
      std::reverse(out->begin(), out->end());
      break;
    case SplitBehavior::kContiguous:
      for (auto& x : iv) {
        if (x.match == prev_match && !out->empty())
          out->back().end = x.end;
        else
          out->push_back(x);
        prev_match = x.match;
      }
      break;
  }
}

SplitBehavior parse_behavior(const nlohmann::json& j) {
  std::string b = j.is_string() ? j.get<std::string>() : "";
  for (auto& c : b) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (b == "removed") return SplitBehavior::kRemoved;
  if (b == "isolated") return SplitBehavior::kIsolated;
  if (b == "mergedwithprevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "mergedwithnext") return SplitBehavior::kMergedWithNext;
  if (b == "contiguous") return SplitBehavior::kContiguous;
  fail(
      "tokenizer.json: Split pre-tokenizer behavior {} is not one of Removed, Isolated, "
      "MergedWithPrevious, MergedWithNext, Contiguous",
      j.dump());
}

}  // namespace

void PreTokenizer::add_step(const nlohmann::json& j) {
  DSV3_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(),
             "tokenizer.json: pre_tokenizer entry without a \"type\": {}", j.dump().substr(0, 200));
  const std::string type = j["type"];
  if (type == "Sequence") {
    DSV3_CHECK(j.contains("pretokenizers") && j["pretokenizers"].is_array(),
               "tokenizer.json: Sequence pre-tokenizer without a \"pretokenizers\" list");
    for (const auto& s : j["pretokenizers"]) add_step(s);
  } else if (type == "Split") {
    DSV3_CHECK(j.contains("pattern") && j["pattern"].is_object(),
               "tokenizer.json: Split pre-tokenizer without a \"pattern\" object");
    const auto& pat = j["pattern"];
    Step s;
    if (pat.contains("Regex") && pat["Regex"].is_string()) {
      s.regex = std::make_shared<Regex>(pat["Regex"].get<std::string>());
    } else if (pat.contains("String") && pat["String"].is_string()) {
      s.regex = std::make_shared<Regex>(pat["String"].get<std::string>(), /*literal=*/true);
    } else {
      fail("tokenizer.json: Split pattern {} is neither {{\"Regex\": ...}} nor {{\"String\": ...}}",
           pat.dump());
    }
    s.behavior = parse_behavior(j.value("behavior", nlohmann::json("Isolated")));
    s.invert = j.value("invert", false);
    steps_.push_back(std::move(s));
  } else if (type == "ByteLevel") {
    Step s;
    s.prefix_space = j.value("add_prefix_space", false);
    if (j.value("use_regex", true)) s.regex = std::make_shared<Regex>(kGpt2Pattern);
    if (s.regex || s.prefix_space) steps_.push_back(std::move(s));
    has_byte_level_ = true;
  } else {
    fail(
        "tokenizer.json: pre-tokenizer type '{}' is not supported (supported: Sequence, Split, "
        "ByteLevel)",
        type);
  }
}

PreTokenizer PreTokenizer::from_json(const nlohmann::json& j) {
  PreTokenizer p;
  if (!j.is_null()) p.add_step(j);
  return p;
}

void PreTokenizer::run_step(size_t k, std::string_view piece,
                            const std::function<void(std::string_view)>& emit,
                            std::deque<std::string>* arena) const {
  if (k == steps_.size()) {
    emit(piece);
    return;
  }
  const Step& step = steps_[k];
  if (step.prefix_space && (piece.empty() || piece[0] != ' ')) {
    std::string& prefixed = arena->emplace_back(1, ' ');
    prefixed.append(piece);
    piece = prefixed;
  }
  if (!step.regex) {
    run_step(k + 1, piece, emit, arena);
    return;
  }
  if (step.behavior == SplitBehavior::kIsolated && !step.invert) {
    // The hot path (every DeepSeek/GPT-2/Llama-3 split): no interval list needed.
    size_t prev = 0, pos = 0, b, e;
    while (pos <= piece.size() && step.regex->find(piece, pos, &b, &e)) {
      if (prev != b) run_step(k + 1, piece.substr(prev, b - prev), emit, arena);
      if (e != b) {
        run_step(k + 1, piece.substr(b, e - b), emit, arena);
        pos = e;
      } else {
        if (b >= piece.size()) break;
        int len;
        decode_utf8(piece, b, &len);
        pos = b + len;
      }
      prev = e;
    }
    if (prev != piece.size()) run_step(k + 1, piece.substr(prev), emit, arena);
    return;
  }
  std::vector<Interval> iv, merged;
  find_intervals(*step.regex, piece, &iv);
  if (step.invert)
    for (auto& x : iv) x.match = !x.match;
  apply_behavior(step.behavior, iv, &merged);
  for (const auto& x : merged)
    if (x.end > x.begin) run_step(k + 1, piece.substr(x.begin, x.end - x.begin), emit, arena);
}

void PreTokenizer::for_each_piece(std::string_view text,
                                  const std::function<void(std::string_view)>& emit,
                                  std::deque<std::string>* arena) const {
  if (!text.empty()) run_step(0, text, emit, arena);
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>* pieces,
                         std::deque<std::string>* arena) const {
  pieces->clear();
  for_each_piece(
      text, [&](std::string_view p) { pieces->push_back(p); }, arena);
}

}  // namespace dsv3::tok
