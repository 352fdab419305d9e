// Byte-level BPE training with DeepSeek-V3's pre-tokenizer, writing a tokenizer.json that
// Hugging Face tokenizers and our Tokenizer load like DeepSeek-V3's own.
//
// Algorithm (the one HF tokenizers' BpeTrainer uses, so the result is the same for the same
// word counts): texts are split around special tokens, pre-tokenized (three Split regexes +
// ByteLevel) and the pieces counted. The vocabulary starts as the special tokens (ids
// 0..k-1, BOS=0, EOS=1) followed by the 256 byte-level symbols ordered by code point. Then,
// until the vocabulary has vocab_size entries, the most frequent adjacent pair of symbols
// (counting every adjacent position in every word, weighted by word count) is merged into a
// new token with the next id; every word merges its occurrences left to right. Ties: the
// highest count wins, then the smallest (left id, right id). Training stops early when the
// best count falls below min_frequency or no pairs are left. Pair counts are updated
// incrementally (an index from each pair to the words holding it, a lazy max-heap), so one
// merge costs time proportional to the words it touches. Deterministic: the result depends
// only on the word counts, never on hash or file order.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::tok {

// DeepSeek-V3's special tokens (attributes as in its tokenizer.json) with the lowest ids:
// BOS, EOS, pad, then the chat-template markers (User/Assistant, tool calls/outputs) and
// R1's <think>/</think>. Ids are 0, 1, 2, ... in this order.
std::vector<AddedToken> deepseek_v3_special_tokens();

// The tokenizer.json components copied from DeepSeek-V3's file, as JSON text.
extern const char* const kDeepSeekV3PreTokenizerJson;
extern const char* const kDeepSeekV3PostProcessorJson;
extern const char* const kDeepSeekV3DecoderJson;
extern const char* const kDeepSeekV3NormalizerJson;

// Pre-tokenized word (raw bytes) -> occurrences; looked up by string_view without a copy.
struct WordHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using WordCounts = std::unordered_map<std::string, int64_t, WordHash, std::equal_to<>>;

// Counts pre-tokenized words (raw bytes, not byte-level spelling) over many texts.
class WordCounter {
 public:
  // Special-token text found in the input is cut out and not counted, as HF does.
  explicit WordCounter(std::vector<std::string> special_tokens);
  ~WordCounter();

  // One document. `what` names it in errors (invalid UTF-8 is an error with its offset).
  void add_text(std::string_view text, std::string_view what = "text");
  // A .jsonl file: one JSON object with a string "text" per line, each line a document.
  // Any other file: plain UTF-8 text, the whole file one document (read in chunks cut only
  // where pre-tokenization is known not to cross, so the counts equal one-piece reading).
  void add_file(const std::string& path);

  const WordCounts& counts() const { return counts_; }
  int64_t total_words() const { return total_; }

 private:
  void add_segment(std::string_view text);
  PreTokenizer pre_;
  std::vector<std::string> specials_;
  WordCounts counts_;
  int64_t total_ = 0;
};

struct BpeTrainerOptions {
  size_t vocab_size = 0;  // total, special tokens included
  int64_t min_frequency = 2;
  std::vector<AddedToken> special_tokens = deepseek_v3_special_tokens();
};

struct TrainedBpe {
  BpeModel model;  // vocab (specials, 256 bytes, merges) and merges in rank order
  std::vector<AddedToken> added_tokens;  // the special tokens with their ids
  std::vector<int64_t> merge_counts;     // the pair count each merge was chosen with
};

// Trains on word counts (raw bytes -> count). Throws dsv3::Error when vocab_size is smaller
// than the specials plus the 256 bytes, when there are no words, or on a duplicate special.
// The vocabulary is smaller than vocab_size only when the corpus runs out of pairs
// (count >= min_frequency); the caller can compare model.vocab_size().
TrainedBpe train_bpe(const WordCounts& word_counts, const BpeTrainerOptions& options);

// tokenizer.json text in DeepSeek-V3's layout (HF key order, merges as [left, right]
// pairs, vocab in id order). Byte-identical for identical input.
std::string tokenizer_json(const TrainedBpe& bpe);

// tokenizer_config.json text: bos/eos/pad tokens as in DeepSeek-V3's config, add_bos_token
// true and, when `chat_template` is non-empty, the chat template.
std::string tokenizer_config_json(const TrainedBpe& bpe, const std::string& chat_template);

}  // namespace dsv3::tok
