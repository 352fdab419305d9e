// Byte-level BPE: the model part of tokenizer.json ("model": {"type": "BPE", ...}) and a fast
// encoder that applies merges by rank (lowest rank first, leftmost on ties, as HF does) to the
// bytes of one pre-tokenized piece, with a thread-safe per-piece cache.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dsv3::tok {

// The vocabulary and merges as tokenizer.json stores them: tokens in their byte-level
// spelling (e.g. "Ġthe" for " the"). Public so that the BPE trainer can read and build one.
struct BpeModel {
  std::vector<std::string> id_to_token;  // "" where an id has no token
  std::unordered_map<std::string, int32_t> token_to_id;
  std::vector<std::pair<std::string, std::string>> merges;  // index = rank
  bool ignore_merges = false;  // a piece that is itself a token is emitted whole

  // Parses the "model" object; throws dsv3::Error naming anything unsupported
  // (non-BPE type, dropout, byte_fallback, continuing_subword_prefix, end_of_word_suffix).
  static BpeModel from_json(const nlohmann::json& model);
  size_t vocab_size() const { return token_to_id.size(); }
};

class BpeEncoder {
 public:
  // Throws dsv3::Error when a merge names a missing token or a byte has no token.
  explicit BpeEncoder(const BpeModel& model);
  ~BpeEncoder();
  // Appends the ids of one piece (raw bytes, not byte-level spelling).
  void encode(std::string_view piece, std::vector<int32_t>* out) const;
  int32_t byte_id(uint8_t b) const { return byte_id_[b]; }

 private:
  struct Cache;
  // (left id, right id) -> (rank << 32 | merged id), open addressing.
  uint64_t lookup(int32_t a, int32_t b) const;
  void merge(std::string_view piece, std::vector<int32_t>* out) const;
  void merge_long(std::string_view piece, std::vector<int32_t>* out) const;

  std::array<int32_t, 256> byte_id_{};
  std::vector<uint64_t> keys_, values_;
  uint64_t mask_ = 0;
  bool ignore_merges_ = false;
  std::unordered_map<std::string, int32_t> bytes_to_id_;  // only with ignore_merges
  std::unique_ptr<Cache> cache_;
};

}  // namespace dsv3::tok
