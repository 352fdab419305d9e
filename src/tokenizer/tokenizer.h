// The DeepSeek-V3 tokenizer (and other byte-level BPE tokenizers: GPT-2, Llama-3 style),
// loaded from a Hugging Face tokenizer.json and encoding exactly as HF `tokenizers` does:
// added tokens are matched first (leftmost-longest, with HF's lstrip/rstrip/single_word
// rules) and never split, the rest is pre-tokenized by the Split/ByteLevel pipeline and each
// piece is BPE-merged by rank. Decoding is HF's ByteLevel decoder (invalid UTF-8 becomes
// U+FFFD). Anything in tokenizer.json we do not implement is a dsv3::Error naming it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/bpe.h"

namespace dsv3 {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false, rstrip = false, single_word = false, normalized = false;
};

class Tokenizer {
 public:
  // `path` is a tokenizer.json or a folder holding one. A tokenizer_config.json beside it,
  // when present, supplies bos/eos tokens and add_bos_token.
  static Tokenizer load(const std::string& path);
  // From tokenizer.json text; `name` is used in error messages.
  static Tokenizer from_json_text(std::string_view json, const std::string& name);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // As HF's Tokenizer.encode(text, add_special_tokens).ids: add_special_tokens applies the
  // post-processor (a TemplateProcessing adds e.g. BOS; DeepSeek-V3's ByteLevel one adds
  // nothing, so callers that need BOS use add_bos_token()/bos_id()). Thread-safe.
  // Throws dsv3::Error with the byte offset when `text` is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // Appends to *out instead of returning a new vector.
  void encode_into(std::string_view text, std::vector<int32_t>* out,
                   bool add_special_tokens = false) const;

  // As HF's decode: unknown ids are an error (HF would drop them silently).
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  int32_t token_to_id(std::string_view token) const;  // -1 when unknown
  std::string id_to_token(int32_t id) const;          // throws when unknown
  // Size of the id space: largest id + 1 (128,815 for DeepSeek-V3).
  size_t vocab_size() const;
  bool is_valid_id(int32_t id) const;
  bool is_special(int32_t id) const;  // an added token marked special
  // The bytes `id` contributes to decode's output (before UTF-8 repair). Throws when unknown.
  std::string_view token_bytes(int32_t id) const;

  int32_t bos_id() const;      // -1 when the tokenizer names none
  int32_t eos_id() const;      // -1 when the tokenizer names none
  bool add_bos_token() const;  // tokenizer_config.json: model inputs start with BOS

  const tok::BpeModel& bpe() const;
  const std::vector<AddedToken>& added_tokens() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Decodes ids one at a time, for streaming generation: text comes out only once its UTF-8
// is complete, so the concatenation of push() results plus flush() equals decode(all ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false)
      : tok_(&tokenizer), skip_special_(skip_special_tokens) {}
  // Text that became complete with this id (possibly empty). Throws on an unknown id.
  std::string push(int32_t id);
  // Whatever is still held back (an incomplete sequence becomes U+FFFD), and resets.
  std::string flush();

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace dsv3
