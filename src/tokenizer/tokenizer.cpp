#include "tokenizer/tokenizer.h"

#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

namespace dsv3 {
namespace {

using nlohmann::json;

// Byte trie over added-token contents, matched leftmost-longest (HF's Aho-Corasick with
// MatchKind::LeftmostLongest gives the same matches).
class Trie {
 public:
  void add(std::string_view s, int32_t token_index) {
    if (s.empty()) return;
    int32_t node = 0;
    for (char c : s) {
      uint64_t key = (uint64_t(node) << 8) | static_cast<uint8_t>(c);
      auto it = edges_.find(key);
      if (it == edges_.end()) {
        it = edges_.emplace(key, static_cast<int32_t>(terminal_.size())).first;
        terminal_.push_back(-1);
      }
      node = it->second;
    }
    terminal_[node] = token_index;
    first_[static_cast<uint8_t>(s[0])] = true;
  }
  bool empty() const { return terminal_.size() == 1; }
  // Leftmost-longest match starting at or after `from`: {begin, end, token_index}.
  bool find(std::string_view s, size_t from, size_t* b, size_t* e, int32_t* tok) const {
    for (size_t i = from; i < s.size(); ++i) {
      if (!first_[static_cast<uint8_t>(s[i])]) continue;
      int32_t node = 0, best = -1;
      size_t best_end = 0;
      for (size_t k = i; k < s.size(); ++k) {
        auto it = edges_.find((uint64_t(node) << 8) | static_cast<uint8_t>(s[k]));
        if (it == edges_.end()) break;
        node = it->second;
        if (terminal_[node] >= 0) {
          best = terminal_[node];
          best_end = k + 1;
        }
      }
      if (best >= 0) {
        *b = i;
        *e = best_end;
        *tok = best;
        return true;
      }
    }
    return false;
  }

 private:
  std::unordered_map<uint64_t, int32_t> edges_;
  std::vector<int32_t> terminal_{-1};
  bool first_[256] = {};
};

struct Segment {
  size_t begin, end;
  int32_t id;  // -1: text still to be tokenized
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DSV3_CHECK(f, "tokenizer: cannot open {}", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// tokenizer_config.json writes tokens either as "text" or as {"content": "text", ...}.
std::string config_token(const json& cfg, const char* key) {
  if (!cfg.contains(key)) return "";
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return "";
}

}  // namespace

struct Tokenizer::Impl {
  std::string name;
  tok::BpeModel bpe;
  std::unique_ptr<tok::BpeEncoder> encoder;
  tok::PreTokenizer pre;
  std::vector<AddedToken> added;
  std::unordered_map<std::string, int32_t> added_by_content;
  Trie raw_trie, normalized_trie;         // HF's split_trie and split_normalized_trie
  std::unique_ptr<tok::Regex> word_char;  // Rust regex's Unicode \w, for single_word

  std::vector<std::string> id_bytes;  // what each id decodes to
  std::vector<int8_t> id_kind;        // 0 unknown, 1 vocab, 2 added, 3 added special
  bool template_set = false;
  std::vector<std::vector<int32_t>> template_prefix, template_suffix;  // around $A
  int32_t bos = -1, eos = -1;
  bool add_bos = false;

  void parse(const json& j);
  void parse_post_processor(const json& p);
  void find_added(std::string_view s, const Trie& trie, size_t base,
                  std::vector<Segment>* out) const;
  bool is_word_char_before(std::string_view s, size_t pos) const;
  bool is_word_char_at(std::string_view s, size_t pos) const;
};

void Tokenizer::Impl::parse_post_processor(const json& p) {
  if (p.is_null()) return;
  std::string type = p.value("type", "");
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "Sequence") {
    DSV3_CHECK(p.contains("processors") && p["processors"].is_array(),
               "{}: Sequence post_processor without a \"processors\" list", name);
    for (const auto& q : p["processors"]) parse_post_processor(q);
    return;
  }
  DSV3_CHECK(type == "TemplateProcessing",
             "{}: post_processor type '{}' is not supported (supported: ByteLevel, "
             "TemplateProcessing, Sequence)",
             name, type);
  DSV3_CHECK(p.contains("single") && p["single"].is_array(),
             "{}: TemplateProcessing without a \"single\" template", name);
  const json specials = p.value("special_tokens", json::object());
  bool seen_sequence = false;
  template_set = true;
  for (const auto& piece : p["single"]) {
    if (piece.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    DSV3_CHECK(piece.contains("SpecialToken"), "{}: TemplateProcessing piece {} not understood",
               name, piece.dump());
    std::string key = piece["SpecialToken"].value("id", "");
    DSV3_CHECK(specials.contains(key) && specials[key].contains("ids"),
               "{}: TemplateProcessing names special token '{}' with no ids", name, key);
    auto ids = specials[key]["ids"].get<std::vector<int32_t>>();
    (seen_sequence ? template_suffix : template_prefix).push_back(ids);
  }
}

void Tokenizer::Impl::parse(const json& j) {
  DSV3_CHECK(j.is_object(), "{}: not a JSON object", name);
  DSV3_CHECK(j.contains("model"), "{}: no \"model\" section (is this a tokenizer.json?)", name);
  bpe = tok::BpeModel::from_json(j["model"]);
  encoder = std::make_unique<tok::BpeEncoder>(bpe);

  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const json& n = j["normalizer"];
    bool empty_seq = n.value("type", "") == "Sequence" && n.contains("normalizers") &&
                     n["normalizers"].is_array() && n["normalizers"].empty();
    DSV3_CHECK(empty_seq, "{}: normalizer type '{}' is not supported (only none)", name,
               n.value("type", "?"));
  }
  pre = tok::PreTokenizer::from_json(j.value("pre_tokenizer", json()));
  DSV3_CHECK(pre.has_byte_level(),
             "{}: the pre_tokenizer has no ByteLevel step; only byte-level BPE is supported", name);
  const json dec = j.value("decoder", json());
  DSV3_CHECK(!dec.is_null() && dec.value("type", "") == "ByteLevel",
             "{}: decoder type '{}' is not supported (only ByteLevel)", name,
             dec.is_null() ? "null" : dec.value("type", "?"));
  parse_post_processor(j.value("post_processor", json()));

  size_t n_ids = bpe.id_to_token.size();
  for (const auto& a : j.value("added_tokens", json::array())) {
    AddedToken t;
    DSV3_CHECK(a.contains("id") && a.contains("content") && a["content"].is_string(),
               "{}: added token {} needs an id and a content", name, a.dump());
    t.id = a["id"].get<int32_t>();
    DSV3_CHECK(t.id >= 0, "{}: added token {} has a negative id", name, a.dump());
    t.content = a["content"].get<std::string>();
    t.special = a.value("special", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.single_word = a.value("single_word", false);
    t.normalized = a.value("normalized", !t.special);
    if (t.content.empty()) continue;
    n_ids = std::max(n_ids, static_cast<size_t>(t.id) + 1);
    added_by_content[t.content] = t.id;
    added.push_back(t);
  }
  for (size_t i = 0; i < added.size(); ++i)
    (added[i].normalized ? normalized_trie : raw_trie)
        .add(added[i].content, static_cast<int32_t>(i));
  word_char =
      std::make_unique<tok::Regex>("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]");

  // What each id decodes to: HF's ByteLevel decoder maps a token's characters back to bytes,
  // or keeps the token's own UTF-8 when some character is outside the byte alphabet.
  id_bytes.assign(n_ids, "");
  id_kind.assign(n_ids, 0);
  std::string raw;
  for (size_t id = 0; id < bpe.id_to_token.size(); ++id) {
    const std::string& t = bpe.id_to_token[id];
    if (t.empty()) continue;
    id_bytes[id] = tok::byte_level_to_bytes(t, &raw) ? raw : t;
    id_kind[id] = 1;
  }
  for (const auto& t : added) {
    id_bytes[t.id] = tok::byte_level_to_bytes(t.content, &raw) ? raw : t.content;
    id_kind[t.id] = t.special ? 3 : 2;
  }
}

bool Tokenizer::Impl::is_word_char_at(std::string_view s, size_t pos) const {
  if (pos >= s.size()) return false;
  int len;
  tok::decode_utf8(s, pos, &len);
  size_t b, e;
  return word_char->find(s.substr(pos, len), 0, &b, &e);
}

bool Tokenizer::Impl::is_word_char_before(std::string_view s, size_t pos) const {
  if (pos == 0) return false;
  size_t p = pos - 1;
  while (p > 0 && (static_cast<uint8_t>(s[p]) & 0xC0) == 0x80) --p;
  return is_word_char_at(s, p);
}

// HF's AddedVocabulary::find_matches on `s` (offsets reported relative to `base`).
void Tokenizer::Impl::find_added(std::string_view s, const Trie& trie, size_t base,
                                 std::vector<Segment>* out) const {
  size_t start_offset = 0, pos = 0, b, e;
  int32_t ti;
  while (trie.find(s, pos, &b, &e, &ti)) {
    pos = e;
    const AddedToken& t = added[ti];
    size_t start = b, stop = e;
    if (t.single_word && (is_word_char_before(s, start) || is_word_char_at(s, stop))) continue;
    if (t.lstrip) {
      size_t ns = start;
      while (ns > 0) {
        size_t p = ns - 1;
        while (p > 0 && (static_cast<uint8_t>(s[p]) & 0xC0) == 0x80) --p;
        int len;
        if (!tok::is_white_space(tok::decode_utf8(s, p, &len))) break;
        ns = p;
      }
      start = std::max(ns, start_offset);
    }
    if (t.rstrip) {
      while (stop < s.size()) {
        int len;
        if (!tok::is_white_space(tok::decode_utf8(s, stop, &len))) break;
        stop += len;
      }
    }
    if (start_offset < start) out->push_back({base + start_offset, base + start, -1});
    out->push_back({base + start, base + stop, t.id});
    start_offset = stop;
  }
  if (start_offset < s.size()) out->push_back({base + start_offset, base + s.size(), -1});
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_json_text(std::string_view text, const std::string& name) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", name, e.what());
  }
  auto impl = std::make_unique<Impl>();
  impl->name = name;
  try {
    impl->parse(j);
  } catch (const json::exception& e) {  // a field of the wrong JSON type
    fail("{}: unexpected content ({})", name, e.what());
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path file = path;
  if (fs::is_directory(file)) file /= "tokenizer.json";
  DSV3_CHECK(fs::is_regular_file(file),
             "tokenizer: no tokenizer.json at {} (pass a tokenizer.json or a folder holding one)",
             path);
  Tokenizer t = from_json_text(read_file(file.string()), file.string());
  Impl& im = *t.impl_;
  fs::path cfg_path = file.parent_path() / "tokenizer_config.json";
  std::string bos_name, eos_name;
  if (fs::is_regular_file(cfg_path)) {
    json cfg;
    try {
      cfg = json::parse(read_file(cfg_path.string()));
    } catch (const json::exception& e) {
      fail("{}: not valid JSON ({})", cfg_path.string(), e.what());
    }
    bos_name = config_token(cfg, "bos_token");
    eos_name = config_token(cfg, "eos_token");
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean())
      im.add_bos = cfg["add_bos_token"].get<bool>();
  }
  if (!bos_name.empty()) im.bos = t.token_to_id(bos_name);
  if (!eos_name.empty()) im.eos = t.token_to_id(eos_name);
  if (im.bos < 0 && !im.template_prefix.empty() && im.template_prefix[0].size() == 1) {
    im.bos = im.template_prefix[0][0];  // a template that opens with one token: its BOS
    im.add_bos = true;
  }
  return t;
}

void Tokenizer::encode_into(std::string_view text, std::vector<int32_t>* out,
                            bool add_special_tokens) const {
  const Impl& im = *impl_;
  tok::check_utf8(text, "tokenizer input");
  if (add_special_tokens && im.template_set)
    for (const auto& ids : im.template_prefix) out->insert(out->end(), ids.begin(), ids.end());

  std::vector<Segment> segs, segs2;
  if (im.raw_trie.empty())
    segs.push_back({0, text.size(), -1});
  else
    im.find_added(text, im.raw_trie, 0, &segs);
  if (!im.normalized_trie.empty()) {
    for (const auto& s : segs) {
      if (s.id >= 0)
        segs2.push_back(s);
      else
        im.find_added(text.substr(s.begin, s.end - s.begin), im.normalized_trie, s.begin, &segs2);
    }
    segs.swap(segs2);
  }
  std::deque<std::string> arena;
  auto emit = [&](std::string_view piece) { im.encoder->encode(piece, out); };
  for (const auto& s : segs) {
    if (s.id >= 0)
      out->push_back(s.id);
    else
      im.pre.for_each_piece(text.substr(s.begin, s.end - s.begin), emit, &arena);
  }
  if (add_special_tokens && im.template_set)
    for (const auto& ids : im.template_suffix) out->insert(out->end(), ids.begin(), ids.end());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode_into(text, &out, add_special_tokens);
  return out;
}

bool Tokenizer::is_valid_id(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_kind.size() && impl_->id_kind[id] != 0;
}

bool Tokenizer::is_special(int32_t id) const {
  return is_valid_id(id) && impl_->id_kind[id] == 3;
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  DSV3_CHECK(is_valid_id(id), "tokenizer: token id {} is not in the vocabulary (ids 0..{})", id,
             vocab_size() - 1);
  return impl_->id_bytes[id];
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    std::string_view b = token_bytes(id);
    if (skip_special_tokens && impl_->id_kind[id] == 3) continue;
    bytes.append(b);
  }
  std::string out;
  out.reserve(bytes.size());
  tok::append_utf8_lossy(out, bytes);
  return out;
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
  auto a = impl_->added_by_content.find(std::string(token));
  if (a != impl_->added_by_content.end()) return a->second;
  auto v = impl_->bpe.token_to_id.find(std::string(token));
  return v == impl_->bpe.token_to_id.end() ? -1 : v->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  DSV3_CHECK(is_valid_id(id), "tokenizer: token id {} is not in the vocabulary (ids 0..{})", id,
             vocab_size() - 1);
  for (const auto& t : impl_->added)
    if (t.id == id) return t.content;
  return impl_->bpe.id_to_token[id];
}

size_t Tokenizer::vocab_size() const {
  return impl_->id_kind.size();
}
int32_t Tokenizer::bos_id() const {
  return impl_->bos;
}
int32_t Tokenizer::eos_id() const {
  return impl_->eos;
}
bool Tokenizer::add_bos_token() const {
  return impl_->add_bos;
}
const tok::BpeModel& Tokenizer::bpe() const {
  return impl_->bpe;
}
const std::vector<AddedToken>& Tokenizer::added_tokens() const {
  return impl_->added;
}

std::string StreamDecoder::push(int32_t id) {
  std::string_view b = tok_->token_bytes(id);
  if (skip_special_ && tok_->is_special(id)) return "";
  pending_.append(b);
  size_t hold = tok::incomplete_utf8_tail(pending_);
  std::string out;
  tok::append_utf8_lossy(out, std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  tok::append_utf8_lossy(out, pending_);
  pending_.clear();
  return out;
}

}  // namespace dsv3
