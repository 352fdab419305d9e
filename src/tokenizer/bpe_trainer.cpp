#include "tokenizer/bpe_trainer.h"

#include <algorithm>
#include <array>
#include <deque>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace dsv3::tok {

// Copied from DeepSeek-V3's tokenizer.json (the test compares them with the file).
const char* const kDeepSeekV3NormalizerJson = R"json({"type":"Sequence","normalizers":[]})json";
const char* const kDeepSeekV3PreTokenizerJson =
    R"json({"type":"Sequence","pretokenizers":[)json"
    R"json({"type":"Split","pattern":{"Regex":"\\p{N}{1,3}"},"behavior":"Isolated","invert":false},)json"
    R"json({"type":"Split","pattern":{"Regex":"[一-龥぀-ゟ゠-ヿ]+"},"behavior":"Isolated","invert":false},)json"
    R"json({"type":"Split","pattern":{"Regex":"[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+)json"
    R"json(|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+)json"
    R"json(|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},)json"
    R"json({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})json";
const char* const kDeepSeekV3PostProcessorJson =
    R"json({"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true})json";
const char* const kDeepSeekV3DecoderJson =
    R"json({"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true})json";

std::vector<AddedToken> deepseek_v3_special_tokens() {
  // {content, special, normalized} as DeepSeek-V3's added_tokens have them (R1's for think).
  struct Spec {
    const char* content;
    bool special, normalized;
  };
  static const Spec kSpecs[] = {
      {"<｜begin▁of▁sentence｜>", true, false},
      {"<｜end▁of▁sentence｜>", true, false},
      {"<｜▁pad▁｜>", true, false},
      {"<｜User｜>", false, true},
      {"<｜Assistant｜>", false, true},
      {"<think>", false, true},
      {"</think>", false, true},
      {"<｜tool▁calls▁begin｜>", false, true},
      {"<｜tool▁calls▁end｜>", false, true},
      {"<｜tool▁call▁begin｜>", false, true},
      {"<｜tool▁call▁end｜>", false, true},
      {"<｜tool▁outputs▁begin｜>", false, true},
      {"<｜tool▁outputs▁end｜>", false, true},
      {"<｜tool▁output▁begin｜>", false, true},
      {"<｜tool▁output▁end｜>", false, true},
      {"<｜tool▁sep｜>", false, true},
  };
  std::vector<AddedToken> out;
  for (const Spec& s : kSpecs) {
    AddedToken t;
    t.id = static_cast<int32_t>(out.size());
    t.content = s.content;
    t.special = s.special;
    t.normalized = s.normalized;
    out.push_back(std::move(t));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Word counting

WordCounter::WordCounter(std::vector<std::string> special_tokens)
    : pre_(PreTokenizer::from_json(nlohmann::json::parse(kDeepSeekV3PreTokenizerJson))),
      specials_(std::move(special_tokens)) {
  std::erase_if(specials_, [](const std::string& s) { return s.empty(); });
}

WordCounter::~WordCounter() = default;

void WordCounter::add_segment(std::string_view text) {
  if (text.empty()) return;
  std::deque<std::string> arena;
  pre_.for_each_piece(
      text,
      [&](std::string_view piece) {
        if (piece.empty()) return;
        auto it = counts_.find(piece);
        if (it == counts_.end()) it = counts_.emplace(std::string(piece), 0).first;
        ++it->second;
        ++total_;
      },
      &arena);
}

void WordCounter::add_text(std::string_view text, std::string_view what) {
  size_t bad = find_invalid_utf8(text);
  DSV3_CHECK(bad == std::string_view::npos,
             "{}: invalid UTF-8 at byte offset {} (training text must be UTF-8)", what, bad);
  // Special tokens are cut out first (leftmost, longest on a tie), as HF's added-vocabulary
  // extraction does, so their text never becomes part of a word.
  std::vector<size_t> next(specials_.size(), 0);
  for (size_t k = 0; k < specials_.size(); ++k) next[k] = text.find(specials_[k]);
  size_t pos = 0;
  for (;;) {
    size_t best = std::string_view::npos, best_len = 0;
    for (size_t k = 0; k < specials_.size(); ++k) {
      if (next[k] != std::string_view::npos && next[k] < pos)
        next[k] = text.find(specials_[k], pos);
      if (next[k] == std::string_view::npos) continue;
      if (next[k] < best || (next[k] == best && specials_[k].size() > best_len)) {
        best = next[k];
        best_len = specials_[k].size();
      }
    }
    if (best == std::string_view::npos) break;
    add_segment(text.substr(pos, best - pos));
    pos = best + best_len;
  }
  add_segment(text.substr(pos));
}

namespace {

// Where a plain-text file may be cut without changing its pre-tokenization: right after a
// '\n' that is followed by a non-whitespace character. No pre-tokenizer match runs over
// such a point (every alternative that takes a '\n' stops before a non-space), there are
// no lookbehinds, and the only lookahead, (?!\S), sees a non-space either way. Returns the
// last such point in buf[from..], or 0 when none.
size_t last_safe_cut(std::string_view buf, size_t from) {
  for (size_t i = buf.size(); i-- > std::max<size_t>(from, 1);) {
    if (buf[i - 1] != '\n') continue;
    unsigned char c = buf[i];
    if ((c & 0xC0) == 0x80) continue;
    // The character must be complete to be classified; an incomplete tail is left for later.
    size_t need = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    if (i + need > buf.size()) continue;
    if (find_invalid_utf8(buf.substr(i, need)) != std::string_view::npos) continue;
    int len = 0;
    if (!is_white_space(decode_utf8(buf, i, &len))) return i;
  }
  return 0;
}

}  // namespace

void WordCounter::add_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DSV3_CHECK(f.good(), "tokenizer train: cannot open input file {} (check the path)", path);
  bool jsonl = path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
  if (jsonl) {
    std::string line;
    for (size_t lineno = 1; std::getline(f, line); ++lineno) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      DSV3_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(),
                 "{}:{}: not a JSON object with a string \"text\" field (each .jsonl line "
                 "must be one)",
                 path, lineno);
      add_text(j["text"].get_ref<const std::string&>(), fmt::format("{}:{}", path, lineno));
    }
    return;
  }
  // A special token holding '\n' could straddle a cut; such files are read whole.
  bool cut_ok = std::none_of(specials_.begin(), specials_.end(),
                             [](const std::string& s) { return s.find('\n') != s.npos; });
  constexpr size_t kBlock = 1 << 20;
  std::string buf;
  size_t buf_offset = 0;  // file offset of buf[0], for error messages
  for (;;) {
    size_t old = buf.size();
    buf.resize(old + kBlock);
    f.read(buf.data() + old, kBlock);
    buf.resize(old + static_cast<size_t>(f.gcount()));
    bool eof = f.gcount() == 0 || f.eof();
    // Only the new bytes (and the few before them that waited for a complete character)
    // can hold a cut that an earlier scan did not see, so a long line is not rescanned.
    size_t cut = eof ? buf.size() : cut_ok ? last_safe_cut(buf, old >= 4 ? old - 4 : 0) : 0;
    if (cut > 0) {
      std::string_view chunk(buf.data(), cut);
      size_t bad = find_invalid_utf8(chunk);
      DSV3_CHECK(bad == std::string_view::npos,
                 "{}: invalid UTF-8 at byte offset {} (training text must be UTF-8)", path,
                 buf_offset + bad);
      add_text(chunk, path);
      buf.erase(0, cut);
      buf_offset += cut;
    }
    if (eof) break;
  }
  DSV3_CHECK(!f.bad(), "tokenizer train: error reading {}", path);
}

// ---------------------------------------------------------------------------------------------
// Training

namespace {

using PairKey = uint64_t;  // left id << 32 | right id: numeric order = (left, right) order

inline PairKey pair_key(int32_t a, int32_t b) {
  return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}
inline int32_t left_of(PairKey k) {
  return static_cast<int32_t>(k >> 32);
}
inline int32_t right_of(PairKey k) {
  return static_cast<int32_t>(k & 0xFFFFFFFFu);
}

struct PairInfo {
  int64_t count = 0;
  std::vector<uint32_t> words;  // may hold stale entries and repeats; filtered when used
};

struct HeapEntry {
  int64_t count;
  PairKey pair;
};
// std heap functions build a max-heap: "less" = lower count, or same count and larger pair.
inline bool heap_less(const HeapEntry& x, const HeapEntry& y) {
  return x.count != y.count ? x.count < y.count : x.pair > y.pair;
}

class Trainer {
 public:
  Trainer(const WordCounts& counts, const std::array<int32_t, 256>& byte_id) {
    // The word order changes only the order of the index lists, never a result.
    for (const auto& [word, count] : counts) {
      if (word.size() < 2) continue;  // no pairs; its bytes are in the alphabet anyway
      offset_.push_back(symbols_.size());
      len_.push_back(static_cast<uint32_t>(word.size()));
      count_.push_back(count);
      for (unsigned char c : word) symbols_.push_back(byte_id[c]);
    }
    seen_.assign(count_.size(), 0);
    for (uint32_t w = 0; w < count_.size(); ++w) {
      const int32_t* s = &symbols_[offset_[w]];
      for (uint32_t i = 0; i + 1 < len_[w]; ++i) add(pair_key(s[i], s[i + 1]), count_[w], w);
    }
    heap_.reserve(pairs_.size());
    for (const auto& [key, info] : pairs_) heap_.push_back({info.count, key});
    std::make_heap(heap_.begin(), heap_.end(), heap_less);
  }

  // The next pair to merge and its count; false when none has count >= min_count.
  bool best(int64_t min_count, PairKey* pair, int64_t* count) {
    while (!heap_.empty()) {
      HeapEntry top = heap_.front();
      std::pop_heap(heap_.begin(), heap_.end(), heap_less);
      heap_.pop_back();
      auto it = pairs_.find(top.pair);
      int64_t now = it == pairs_.end() ? 0 : it->second.count;
      if (now != top.count) {  // stale: counts changed since it was pushed
        if (now > 0) push(top.pair, now);
        continue;
      }
      if (now < min_count) return false;
      *pair = top.pair;
      *count = now;
      return true;
    }
    return false;
  }

  // Replaces every occurrence of `pair` (left to right in each word) with `merged`.
  void merge(PairKey pair, int32_t merged) {
    auto it = pairs_.find(pair);
    DSV3_ASSERT(it != pairs_.end());
    std::vector<uint32_t> where = std::move(it->second.words);
    pairs_.erase(it);
    merging_ = pair;
    in_merge_ = true;
    ++stamp_;
    created_.clear();
    const int32_t a = left_of(pair), b = right_of(pair);
    for (uint32_t w : where) {
      if (seen_[w] == stamp_) continue;
      seen_[w] = stamp_;
      int32_t* s = &symbols_[offset_[w]];
      const uint32_t n = len_[w];
      const int64_t c = count_[w];
      uint32_t i = 0, j = 0;
      while (i < n) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
          // The neighbours' pairs move from the old symbols to the merged one. With runs
          // like "a a a" the right neighbour is itself merged next; its -1/+1 then cancel.
          if (j > 0) {
            add(pair_key(s[j - 1], a), -c, w);
            add(pair_key(s[j - 1], merged), c, w);
          }
          if (i + 2 < n) {
            add(pair_key(b, s[i + 2]), -c, w);
            add(pair_key(merged, s[i + 2]), c, w);
          }
          s[j++] = merged;
          i += 2;
        } else {
          s[j++] = s[i++];
        }
      }
      len_[w] = j;
    }
    in_merge_ = false;
    std::sort(created_.begin(), created_.end());
    created_.erase(std::unique(created_.begin(), created_.end()), created_.end());
    for (PairKey k : created_) {
      auto jt = pairs_.find(k);
      if (jt != pairs_.end() && jt->second.count > 0) push(k, jt->second.count);
    }
  }

 private:
  void add(PairKey key, int64_t delta, uint32_t w) {
    if (key == merging_) return;  // being removed as a whole
    if (delta < 0) {
      auto it = pairs_.find(key);
      DSV3_ASSERT(it != pairs_.end() && it->second.count >= -delta);
      it->second.count += delta;
      if (it->second.count == 0) pairs_.erase(it);
      return;
    }
    PairInfo& info = pairs_[key];
    info.count += delta;
    if (in_merge_) created_.push_back(key);
    if (info.words.empty() || info.words.back() != w) info.words.push_back(w);
  }
  void push(PairKey key, int64_t count) {
    heap_.push_back({count, key});
    std::push_heap(heap_.begin(), heap_.end(), heap_less);
  }

  std::vector<int32_t> symbols_;  // all words' symbols, word w at offset_[w], len_[w] long
  std::vector<size_t> offset_;
  std::vector<uint32_t> len_;
  std::vector<int64_t> count_;
  std::vector<uint32_t> seen_;  // stamp_ of the last merge that visited the word
  uint32_t stamp_ = 0;
  std::unordered_map<PairKey, PairInfo> pairs_;
  std::vector<HeapEntry> heap_;
  std::vector<PairKey> created_;  // pairs whose count grew in this merge
  PairKey merging_ = std::numeric_limits<PairKey>::max();
  bool in_merge_ = false;
};

}  // namespace

TrainedBpe train_bpe(const WordCounts& word_counts, const BpeTrainerOptions& options) {
  const auto& specials = options.special_tokens;
  const size_t min_vocab = specials.size() + 256;
  DSV3_CHECK(options.vocab_size >= min_vocab,
             "tokenizer train: vocab size {} is too small: it must hold the {} special tokens "
             "and the 256 byte symbols, so use at least {}",
             options.vocab_size, specials.size(), min_vocab);
  DSV3_CHECK(options.vocab_size <= size_t(std::numeric_limits<int32_t>::max()),
             "tokenizer train: vocab size {} is too large", options.vocab_size);
  DSV3_CHECK(!word_counts.empty(),
             "tokenizer train: the input holds no text to train on (empty files?)");

  TrainedBpe out;
  BpeModel& m = out.model;
  auto add_token = [&](std::string tok) {
    int32_t id = static_cast<int32_t>(m.id_to_token.size());
    m.token_to_id.emplace(tok, id);
    m.id_to_token.push_back(std::move(tok));
    return id;
  };
  for (const AddedToken& s : specials) {
    DSV3_CHECK(!s.content.empty(), "tokenizer train: a special token is empty");
    check_utf8(s.content, fmt::format("tokenizer train: special token '{}'", s.content));
    DSV3_CHECK(!m.token_to_id.count(s.content), "tokenizer train: special token '{}' given twice",
               s.content);
    AddedToken t = s;
    t.id = add_token(s.content);
    out.added_tokens.push_back(std::move(t));
  }
  // The byte symbols in code point order of their byte-level spelling, as HF's trainer
  // orders its alphabet (so '!' comes first, as in DeepSeek-V3's vocab).
  std::array<uint8_t, 256> bytes;
  for (int b = 0; b < 256; ++b) bytes[b] = static_cast<uint8_t>(b);
  const auto& b2u = byte_to_unicode();
  std::sort(bytes.begin(), bytes.end(), [&](uint8_t x, uint8_t y) { return b2u[x] < b2u[y]; });
  std::array<int32_t, 256> byte_id{};
  for (uint8_t b : bytes) {
    std::string spelled = bytes_to_byte_level(std::string_view(reinterpret_cast<char*>(&b), 1));
    // A special token may already spell a byte symbol; the byte still needs its own id.
    DSV3_CHECK(!m.token_to_id.count(spelled),
               "tokenizer train: special token '{}' collides with a byte symbol", spelled);
    byte_id[b] = add_token(std::move(spelled));
  }

  Trainer trainer(word_counts, byte_id);
  const int64_t min_count = std::max<int64_t>(1, options.min_frequency);
  PairKey pair;
  int64_t count;
  while (m.id_to_token.size() < options.vocab_size && trainer.best(min_count, &pair, &count)) {
    const std::string& left = m.id_to_token[left_of(pair)];
    const std::string& right = m.id_to_token[right_of(pair)];
    std::string tok = left + right;
    // Two merge paths can spell the same token ("ab"+"c", "a"+"bc"): it keeps its first id,
    // and the merge is still recorded (as HF's trainer does).
    auto it = m.token_to_id.find(tok);
    int32_t id = it != m.token_to_id.end() ? it->second : -1;
    m.merges.emplace_back(left, right);
    if (id < 0) id = add_token(std::move(tok));
    out.merge_counts.push_back(count);
    trainer.merge(pair, id);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Output

namespace {

using ojson = nlohmann::ordered_json;

ojson added_token_json(const AddedToken& t) {
  ojson j;
  j["id"] = t.id;
  j["content"] = t.content;
  j["single_word"] = t.single_word;
  j["lstrip"] = t.lstrip;
  j["rstrip"] = t.rstrip;
  j["normalized"] = t.normalized;
  j["special"] = t.special;
  return j;
}

}  // namespace

std::string tokenizer_json(const TrainedBpe& bpe) {
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = ojson::array();
  for (const AddedToken& t : bpe.added_tokens) j["added_tokens"].push_back(added_token_json(t));
  j["normalizer"] = ojson::parse(kDeepSeekV3NormalizerJson);
  j["pre_tokenizer"] = ojson::parse(kDeepSeekV3PreTokenizerJson);
  j["post_processor"] = ojson::parse(kDeepSeekV3PostProcessorJson);
  j["decoder"] = ojson::parse(kDeepSeekV3DecoderJson);
  ojson model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["ignore_merges"] = false;
  ojson vocab = ojson::object();
  for (size_t id = 0; id < bpe.model.id_to_token.size(); ++id)
    vocab[bpe.model.id_to_token[id]] = id;
  model["vocab"] = std::move(vocab);
  ojson merges = ojson::array();
  for (const auto& [l, r] : bpe.model.merges) merges.push_back(ojson::array({l, r}));
  model["merges"] = std::move(merges);
  j["model"] = std::move(model);
  return j.dump(2) + "\n";
}

std::string tokenizer_config_json(const TrainedBpe& bpe, const std::string& chat_template) {
  auto token_obj = [](const std::string& content) {
    ojson t;
    t["__type"] = "AddedToken";
    t["content"] = content;
    t["lstrip"] = false;
    t["normalized"] = true;
    t["rstrip"] = false;
    t["single_word"] = false;
    return t;
  };
  auto content_of = [&](int32_t id) -> const std::string* {
    for (const AddedToken& t : bpe.added_tokens)
      if (t.id == id) return &t.content;
    return nullptr;
  };
  ojson j;
  j["add_bos_token"] = true;
  j["add_eos_token"] = false;
  ojson decoder = ojson::object();
  for (const AddedToken& t : bpe.added_tokens) {
    ojson d;
    d["content"] = t.content;
    d["lstrip"] = t.lstrip;
    d["normalized"] = t.normalized;
    d["rstrip"] = t.rstrip;
    d["single_word"] = t.single_word;
    d["special"] = t.special;
    decoder[std::to_string(t.id)] = std::move(d);
  }
  j["added_tokens_decoder"] = std::move(decoder);
  // BOS/EOS are ids 0 and 1, as in DeepSeek-V3 (pad is EOS there too).
  if (const std::string* bos = content_of(0)) j["bos_token"] = token_obj(*bos);
  j["clean_up_tokenization_spaces"] = false;
  if (const std::string* eos = content_of(1)) {
    j["eos_token"] = token_obj(*eos);
  }
  j["legacy"] = true;
  j["model_max_length"] = 131072;
  if (const std::string* eos = content_of(1)) j["pad_token"] = token_obj(*eos);
  j["sp_model_kwargs"] = ojson::object();
  j["unk_token"] = nullptr;
  j["tokenizer_class"] = "LlamaTokenizerFast";
  if (!chat_template.empty()) j["chat_template"] = chat_template;
  return j.dump(2) + "\n";
}

}  // namespace dsv3::tok
