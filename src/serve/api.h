// The OpenAI-compatible request layer: JSON bodies in, validated generation requests out, and
// the pieces of responses (errors, logprobs, reasoning split). No HTTP here, so all of it is
// unit-testable.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "infer/sampler.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::serve {

// An error answered to the client as OpenAI does:
// {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = "",
           std::string code = "invalid_value", std::string type = "invalid_request_error");
  int status;
  std::string type, param, code;
  nlohmann::json body() const;
};

struct ModelInfo {
  std::string name;     // served model name: requests must name it
  int64_t context = 0;  // longest sequence (prompt + output) a request may make
  int64_t vocab = 0;    // model vocabulary size
};

struct ParsedRequest {
  std::vector<int32_t> prompt;
  infer::SamplingParams params;
  int n = 1;
  bool stream = false, include_usage = false;
  bool logprobs = false;          // report logprobs (chat: logprobs=true; completions: logprobs=N)
  bool thinking = false;          // chat prompt ended with "<think>\n": text up to </think> is
                                  // reasoning_content (DeepSeek API semantics)
  bool return_token_ids = false;  // extension: choices[i].token_ids
};

// Parses a request body; malformed JSON, invalid UTF-8 or a non-object is a 400.
nlohmann::json parse_body(std::string_view body);

// POST /v1/chat/completions. Throws ApiError.
ParsedRequest parse_chat_request(const nlohmann::json& body, const ModelInfo& model,
                                 const Tokenizer& tok, const ChatTemplate& tpl);
// POST /v1/completions: "prompt" is a string, a token-id array or a one-string array.
ParsedRequest parse_completion_request(const nlohmann::json& body, const ModelInfo& model,
                                       const Tokenizer& tok);

// Splits streamed chat text into reasoning (before </think>) and answer, holding back a tail
// that could still become the marker.
class ReasoningSplitter {
 public:
  explicit ReasoningSplitter(bool thinking) : thinking_(thinking) {}
  struct Out {
    std::string reasoning, content;
  };
  Out push(const std::string& text);
  Out finish();

 private:
  bool thinking_;
  std::string pending_;
};

// The text and bytes of one token as logprobs report them.
nlohmann::json chat_logprob_entry(const Tokenizer& tok, const infer::SampleResult& r);
// Completions' legacy format appends to {"tokens", "token_logprobs", "top_logprobs"}.
void append_completion_logprobs(const Tokenizer& tok, const infer::SampleResult& r,
                                nlohmann::json* lp);

}  // namespace dsv3::serve
