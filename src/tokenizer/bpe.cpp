#include "tokenizer/bpe.h"

#include <functional>
#include <limits>
#include <mutex>
#include <queue>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace dsv3::tok {
namespace {

constexpr uint64_t kEmpty = std::numeric_limits<uint64_t>::max();
constexpr uint64_t kNone = std::numeric_limits<uint64_t>::max();

inline uint64_t pair_key(int32_t a, int32_t b) {
  return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}
inline uint64_t mix(uint64_t k) {
  k ^= k >> 31;
  k *= 0x9E3779B97F4A7C15ull;
  return k ^ (k >> 29);
}

// Pieces longer than this are merged with a heap instead of repeated linear scans.
constexpr size_t kShortWord = 48;
// Pieces longer than this are not cached (rare, and they would crowd out the common ones).
constexpr size_t kMaxCachedLen = 256;
constexpr size_t kShards = 64;
constexpr size_t kMaxPerShard = 1 << 14;

}  // namespace

// Sharded so that threads encoding at once rarely contend on one lock.
struct BpeEncoder::Cache {
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>> map;
  };
  std::array<Shard, kShards> shards;
};

BpeModel BpeModel::from_json(const nlohmann::json& m) {
  DSV3_CHECK(m.is_object(), "tokenizer.json: \"model\" is missing or not an object");
  std::string type = m.value("type", "BPE");
  DSV3_CHECK(type == "BPE", "tokenizer.json: model type '{}' is not supported (only BPE)", type);
  auto is_set = [&](const char* key) { return m.contains(key) && !m[key].is_null(); };
  DSV3_CHECK(!is_set("dropout") || m["dropout"].get<double>() == 0.0,
             "tokenizer.json: BPE dropout is not supported");
  DSV3_CHECK(!m.value("byte_fallback", false),
             "tokenizer.json: BPE byte_fallback=true is not supported (byte-level BPE only)");
  DSV3_CHECK(!is_set("continuing_subword_prefix") && !is_set("end_of_word_suffix"),
             "tokenizer.json: BPE continuing_subword_prefix/end_of_word_suffix are not supported");
  DSV3_CHECK(m.contains("vocab") && m["vocab"].is_object(),
             "tokenizer.json: model has no \"vocab\" object");
  DSV3_CHECK(m.contains("merges") && m["merges"].is_array(),
             "tokenizer.json: model has no \"merges\" list");
  BpeModel bpe;
  bpe.ignore_merges = m.value("ignore_merges", false);
  for (const auto& [tok, idj] : m["vocab"].items()) {
    DSV3_CHECK(idj.is_number_integer() && idj.get<int64_t>() >= 0 &&
                   idj.get<int64_t>() < std::numeric_limits<int32_t>::max(),
               "tokenizer.json: vocab entry '{}' has a bad id {}", tok, idj.dump());
    auto id = idj.get<int32_t>();
    if (static_cast<size_t>(id) >= bpe.id_to_token.size()) bpe.id_to_token.resize(id + 1);
    DSV3_CHECK(bpe.id_to_token[id].empty(), "tokenizer.json: vocab id {} is used twice", id);
    bpe.id_to_token[id] = tok;
    bpe.token_to_id.emplace(tok, id);
  }
  bpe.merges.reserve(m["merges"].size());
  for (const auto& mj : m["merges"]) {
    if (mj.is_string()) {  // "a b"
      const auto& s = mj.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      DSV3_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
                 "tokenizer.json: merge '{}' is not two tokens separated by one space", s);
      bpe.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (mj.is_array() && mj.size() == 2 && mj[0].is_string() && mj[1].is_string()) {
      bpe.merges.emplace_back(mj[0].get<std::string>(), mj[1].get<std::string>());
    } else {
      fail("tokenizer.json: merge {} is neither \"a b\" nor [\"a\", \"b\"]", mj.dump());
    }
  }
  return bpe;
}

BpeEncoder::BpeEncoder(const BpeModel& model)
    : ignore_merges_(model.ignore_merges), cache_(std::make_unique<Cache>()) {
  const auto& alphabet = byte_to_unicode();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    append_utf8(s, alphabet[b]);
    auto it = model.token_to_id.find(s);
    DSV3_CHECK(it != model.token_to_id.end(),
               "tokenizer.json: the vocab has no token for byte 0x{:02X} ('{}'); a byte-level "
               "BPE vocab needs all 256",
               b, s);
    byte_id_[b] = it->second;
  }
  size_t cap = 16;
  while (cap < model.merges.size() * 2 + 16) cap *= 2;
  keys_.assign(cap, kEmpty);
  values_.assign(cap, 0);
  mask_ = cap - 1;
  auto id_of = [&](const std::string& t, size_t rank) {
    auto it = model.token_to_id.find(t);
    DSV3_CHECK(it != model.token_to_id.end(),
               "tokenizer.json: merge #{} ('{} {}') needs token '{}', which is not in the vocab",
               rank, model.merges[rank].first, model.merges[rank].second, t);
    return it->second;
  };
  for (size_t r = 0; r < model.merges.size(); ++r) {
    const auto& [a, b] = model.merges[r];
    int32_t ia = id_of(a, r), ib = id_of(b, r), inew = id_of(a + b, r);
    uint64_t key = pair_key(ia, ib);
    size_t slot = mix(key) & mask_;
    while (keys_[slot] != kEmpty && keys_[slot] != key) slot = (slot + 1) & mask_;
    keys_[slot] = key;  // a repeated pair takes its last rank, as HF's map does
    values_[slot] = (uint64_t(r) << 32) | uint32_t(inew);
  }
  if (ignore_merges_) {
    std::string raw;
    for (const auto& [tok, id] : model.token_to_id)
      if (byte_level_to_bytes(tok, &raw)) bytes_to_id_.emplace(raw, id);
  }
}

BpeEncoder::~BpeEncoder() = default;

uint64_t BpeEncoder::lookup(int32_t a, int32_t b) const {
  uint64_t key = pair_key(a, b);
  size_t slot = mix(key) & mask_;
  while (true) {
    uint64_t k = keys_[slot];
    if (k == key) return values_[slot];
    if (k == kEmpty) return kNone;
    slot = (slot + 1) & mask_;
  }
}

void BpeEncoder::encode(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.size() == 1) {
    out->push_back(byte_id_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (ignore_merges_) {
    auto it = bytes_to_id_.find(std::string(piece));
    if (it != bytes_to_id_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  if (piece.size() > kMaxCachedLen) {
    piece.size() > kShortWord ? merge_long(piece, out) : merge(piece, out);
    return;
  }
  size_t h = std::hash<std::string_view>{}(piece);
  auto& shard = cache_->shards[mix(h) % kShards];
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.map.find(std::string(piece));
    if (it != shard.map.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t start = out->size();
  piece.size() > kShortWord ? merge_long(piece, out) : merge(piece, out);
  std::lock_guard<std::mutex> lock(shard.mu);
  if (shard.map.size() >= kMaxPerShard) shard.map.clear();  // bounded memory
  shard.map.emplace(std::string(piece), std::vector<int32_t>(out->begin() + start, out->end()));
}

// Short pieces: repeatedly merge the lowest-ranked adjacent pair (leftmost on ties).
void BpeEncoder::merge(std::string_view piece, std::vector<int32_t>* out) const {
  int32_t ids[kMaxCachedLen];
  size_t n = piece.size();
  for (size_t i = 0; i < n; ++i) ids[i] = byte_id_[static_cast<uint8_t>(piece[i])];
  while (n > 1) {
    uint64_t best = kNone;
    size_t at = 0;
    for (size_t i = 0; i + 1 < n; ++i) {
      uint64_t v = lookup(ids[i], ids[i + 1]);
      if (v < best) {  // compares rank first (high bits); strict: leftmost wins ties
        best = v;
        at = i;
      }
    }
    if (best == kNone) break;
    ids[at] = static_cast<int32_t>(best & 0xFFFFFFFFu);
    for (size_t i = at + 1; i + 1 < n; ++i) ids[i] = ids[i + 1];
    --n;
  }
  out->insert(out->end(), ids, ids + n);
}

// Long pieces: the same order of merges, found with a heap over (rank, position).
void BpeEncoder::merge_long(std::string_view piece, std::vector<int32_t>* out) const {
  struct Sym {
    int32_t id, prev, next;
  };
  struct Cand {
    uint32_t rank;
    int32_t pos, left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  const int32_t n = static_cast<int32_t>(piece.size());
  std::vector<Sym> sym(n);
  for (int32_t i = 0; i < n; ++i)
    sym[i] = {byte_id_[static_cast<uint8_t>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int32_t i) {
    int32_t j = sym[i].next;
    if (i < 0 || j < 0) return;
    uint64_t v = lookup(sym[i].id, sym[j].id);
    if (v != kNone) heap.push({uint32_t(v >> 32), i, sym[i].id, sym[j].id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    Sym& s = sym[c.pos];
    if (s.id != c.left || s.next < 0 || sym[s.next].id != c.right) continue;  // stale
    int32_t j = s.next;
    s.id = static_cast<int32_t>(lookup(c.left, c.right) & 0xFFFFFFFFu);
    s.next = sym[j].next;
    if (s.next >= 0) sym[s.next].prev = c.pos;
    sym[j].id = -1;
    if (s.prev >= 0) push(s.prev);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out->push_back(sym[i].id);
}

}  // namespace dsv3::tok
