// Pre-tokenization as HF tokenizers does it for byte-level BPE: a pipeline of Split steps
// (regex or literal pattern, one of HF's five delimiter behaviours, optional invert) and a
// ByteLevel step (optional prefix space, optional GPT-2 regex). Regexes run on PCRE2 in UTF +
// UCP mode, JIT-compiled; `\s`/`\S` are rewritten to Unicode White_Space so they match what
// HF's regex engine matches (PCRE2's UCP `\s` also takes U+180E).
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dsv3::tok {

// A compiled PCRE2 pattern; thread-safe to use from many threads at once.
class Regex {
 public:
  // literal: match the pattern text as-is. Throws dsv3::Error on a bad pattern.
  Regex(std::string_view pattern, bool literal = false);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Finds the next match in subject[from..]; the lookarounds see only `subject`.
  // Returns false when none. `subject` must be valid UTF-8.
  bool find(std::string_view subject, size_t from, size_t* begin, size_t* end) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

// Rewrites `\s` and `\S` in a regex to explicit Unicode White_Space classes.
std::string rewrite_whitespace_classes(std::string_view pattern);

// GPT-2's pre-tokenizer regex (what ByteLevel with use_regex=true applies).
extern const char* const kGpt2Pattern;

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

class PreTokenizer {
 public:
  // From tokenizer.json's "pre_tokenizer" (null allowed). Throws dsv3::Error naming any
  // component we do not support.
  static PreTokenizer from_json(const nlohmann::json& j);

  // Splits `text` into pieces. Pieces point into `text` or into `arena` (when a prefix space
  // was added); both must outlive their use.
  void split(std::string_view text, std::vector<std::string_view>* pieces,
             std::deque<std::string>* arena) const;
  // The same pieces, in order, handed to `emit` one at a time (depth-first through the
  // steps, so a long text never needs a list of all its pieces).
  void for_each_piece(std::string_view text, const std::function<void(std::string_view)>& emit,
                      std::deque<std::string>* arena) const;
  bool has_byte_level() const { return has_byte_level_; }

 private:
  struct Step {
    std::shared_ptr<Regex> regex;  // null for a ByteLevel step without regex
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
    bool prefix_space = false;  // ByteLevel add_prefix_space
  };
  void add_step(const nlohmann::json& j);
  void run_step(size_t k, std::string_view piece, const std::function<void(std::string_view)>& emit,
                std::deque<std::string>* arena) const;
  std::vector<Step> steps_;
  bool has_byte_level_ = false;
};

}  // namespace dsv3::tok
