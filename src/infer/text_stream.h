// Streaming text out of generated ids: detokenises incrementally (whole UTF-8 characters
// only), cuts at the earliest stop string (which is not emitted, OpenAI semantics) and holds
// back the tail that could still grow into a stop string. One per sequence; used by the CLI
// and the server alike.
#pragma once

#include <string>
#include <vector>

#include "infer/sampler.h"
#include "tokenizer/tokenizer.h"

namespace dsv3 {

class TextStream {
 public:
  TextStream(const Tokenizer& tok, std::vector<std::string> stop_strings,
             bool skip_special_tokens = true);

  struct Piece {
    std::string text;      // ready to show
    bool stopped = false;  // a stop string matched: the sequence is over
  };
  Piece push(int32_t id);
  // The held-back rest once generation has ended without a stop string.
  std::string finish();
  // Everything emitted so far.
  const std::string& text() const { return text_; }

 private:
  StreamDecoder decoder_;
  infer::StopChecker stops_;
  std::string text_;    // decoded so far (up to a stop, once one matched)
  size_t emitted_ = 0;  // bytes of text_ handed out
  bool stopped_ = false;
};

}  // namespace dsv3
