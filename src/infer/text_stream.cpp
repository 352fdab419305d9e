#include "infer/text_stream.h"

namespace dsv3 {

TextStream::TextStream(const Tokenizer& tok, std::vector<std::string> stop_strings,
                       bool skip_special_tokens)
    : decoder_(tok, skip_special_tokens), stops_(std::move(stop_strings)) {}

TextStream::Piece TextStream::push(int32_t id) {
  Piece p;
  if (stopped_) return p;
  text_ += decoder_.push(id);
  size_t ready = text_.size();
  if (!stops_.empty()) {
    if (auto cut = stops_.find(text_)) {
      text_.resize(*cut);
      ready = *cut;
      stopped_ = p.stopped = true;
    } else {
      ready -= stops_.holdback(text_);
    }
  }
  if (ready > emitted_) {
    p.text = text_.substr(emitted_, ready - emitted_);
    emitted_ = ready;
  }
  return p;
}

std::string TextStream::finish() {
  if (!stopped_) text_ += decoder_.flush();
  std::string rest = emitted_ < text_.size() ? text_.substr(emitted_) : std::string();
  emitted_ = text_.size();
  return rest;
}

}  // namespace dsv3
