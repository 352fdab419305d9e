#include "train/corpus.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace dsv3::train {

namespace {

std::vector<std::string_view> split_ws(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    const size_t b = i;
    while (i < s.size() && !std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    if (i > b) out.push_back(s.substr(b, i - b));
  }
  return out;
}

// The tag is everything after the last '/': "and/or/cc" is the word "and/or", "//in" is "/".
std::string_view word_of(std::string_view token) {
  const size_t slash = token.rfind('/');
  return slash == std::string_view::npos || slash == 0 ? token : token.substr(0, slash);
}

bool is_headline(const std::vector<std::string_view>& tokens) {
  for (std::string_view t : tokens) {
    const size_t slash = t.rfind('/');
    if (slash == std::string_view::npos || !t.substr(slash + 1).ends_with("-hl")) return false;
  }
  return !tokens.empty();
}

bool is_clitic(std::string_view w) {
  std::string l(w);
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
  return l == "n't" || l == "'s" || l == "'ll" || l == "'re" || l == "'ve" || l == "'d" ||
         l == "'m";
}

// Joins the words of one output line (a paragraph or a headline) with English spacing.
class LineJoiner {
 public:
  void add(std::string_view w) {
    bool glue_before = false, glue_after = false;
    std::string_view text = w;
    if (w == "``") {
      text = "\"";
      glue_after = true;
    } else if (w == "''") {
      text = "\"";
      glue_before = true;
    } else if (w == "'") {
      // Brown writes both single quotes as ': opening and closing alternate in a paragraph.
      single_open_ = !single_open_;
      (single_open_ ? glue_after : glue_before) = true;
    } else if (w == "(" || w == "[") {
      glue_after = true;
    } else if (w == "," || w == "." || w == ";" || w == ":" || w == "?" || w == "!" || w == ")" ||
               w == "]" || is_clitic(w)) {
      glue_before = true;
      // "Jr. ." -> "Jr.": the sentence's period is already there. The corpus also doubles
      // sentence-ending ; ? ! (thousands of "; ;", "? ?", "! !") and a few commas.
      if (w == "." && last_.ends_with('.')) return;
      if (w != ")" && w != "]" && !is_clitic(w) && last_ == w) return;
    }
    if (!out_.empty() && !glue_next_ && !glue_before) out_ += ' ';
    out_ += text;
    glue_next_ = glue_after;
    last_ = std::string(text);
  }
  std::string take() {
    std::string s = std::move(out_);
    out_.clear();
    last_.clear();
    glue_next_ = false;
    single_open_ = false;
    return s;
  }
  bool empty() const { return out_.empty(); }

 private:
  std::string out_, last_;
  bool glue_next_ = false, single_open_ = false;
};

}  // namespace

std::string detag_brown(std::string_view tagged) {
  std::vector<std::string> lines;
  LineJoiner para;
  auto flush = [&] {
    if (!para.empty()) lines.push_back(para.take());
  };
  size_t pos = 0;
  while (pos <= tagged.size()) {
    size_t end = tagged.find('\n', pos);
    if (end == std::string_view::npos) end = tagged.size();
    const std::vector<std::string_view> tokens = split_ws(tagged.substr(pos, end - pos));
    pos = end + 1;
    if (tokens.empty()) {  // a blank line ends the paragraph
      flush();
      continue;
    }
    if (is_headline(tokens)) {  // headlines and datelines stand on their own line
      flush();
      for (std::string_view t : tokens) para.add(word_of(t));
      flush();
      continue;
    }
    for (std::string_view t : tokens) para.add(word_of(t));
  }
  flush();
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) out += '\n';
    out += lines[i];
  }
  return out;
}

std::vector<std::string> brown_files(const std::string& dir) {
  std::error_code ec;
  DSV3_CHECK(fs::is_directory(dir, ec),
             "{} is not a directory: fetch the Brown corpus with scripts/setup.sh (it goes to "
             ".cache/corpus/brown)",
             dir);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    const bool brown_name = n.size() == 4 && std::islower(static_cast<unsigned char>(n[0])) &&
                            std::islower(static_cast<unsigned char>(n[1])) &&
                            std::isdigit(static_cast<unsigned char>(n[2])) &&
                            std::isdigit(static_cast<unsigned char>(n[3]));
    if (brown_name && e.is_regular_file()) names.push_back(n);
  }
  DSV3_CHECK(!ec, "cannot list {}: {}", dir, ec.message());
  DSV3_CHECK(!names.empty(), "{} holds no Brown corpus files (named ca01 .. cr09)", dir);
  std::sort(names.begin(), names.end());
  std::vector<std::string> paths;
  for (const std::string& n : names) paths.push_back((fs::path(dir) / n).string());
  return paths;
}

BrownStats write_brown_jsonl(const std::string& dir, const std::string& out_path) {
  BrownStats st;
  std::string out;
  for (const std::string& path : brown_files(dir)) {
    std::ifstream in(path, std::ios::binary);
    DSV3_CHECK(in.good(), "cannot read {}", path);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = detag_brown(ss.str());
    DSV3_CHECK(!text.empty(), "{} holds no text", path);
    st.documents += 1;
    st.paragraphs += int64_t(std::count(text.begin(), text.end(), '\n')) + 1;
    st.words += int64_t(split_ws(text).size());
    st.chars += int64_t(text.size());
    // Invalid UTF-8 (none in the real corpus) becomes U+FFFD rather than an exception.
    out += nlohmann::json{{"text", text}}.dump(-1, ' ', false,
                                               nlohmann::json::error_handler_t::replace);
    out += '\n';
  }
  const fs::path parent = fs::path(out_path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  write_file_atomic(out_path, out);
  return st;
}

}  // namespace dsv3::train
