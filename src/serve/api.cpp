#include "serve/api.h"

#include <fmt/format.h>

#include <cmath>

#include "core/error.h"

namespace dsv3::serve {

using nlohmann::json;

namespace {

constexpr int kMaxN = 16;
constexpr int kMaxTopLogprobs = 20;
constexpr size_t kMaxStops = 16;

ApiError bad(std::string message, std::string param, std::string code = "invalid_value") {
  return ApiError(400, std::move(message), std::move(param), std::move(code));
}

const char* type_name(const json& v) {
  return v.type_name();
}

// A present, non-null field, or nullptr.
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> number(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number())
    throw bad(fmt::format("'{}' must be a number, not {}", name, type_name(*v)), name,
              "invalid_type");
  return v->get<double>();
}

std::optional<int64_t> integer(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e18) return int64_t(d);
  }
  throw bad(fmt::format("'{}' must be an integer, not {}", name, type_name(*v)), name,
            "invalid_type");
}

std::optional<bool> boolean(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean())
    throw bad(fmt::format("'{}' must be a boolean, not {}", name, type_name(*v)), name,
              "invalid_type");
  return v->get<bool>();
}

void check_range(std::optional<double> v, const char* name, double lo, double hi) {
  if (v && !(*v >= lo && *v <= hi))
    throw bad(fmt::format("'{}' is {}; it must be in [{}, {}]", name, *v, lo, hi), name);
}

void check_model(const json& body, const ModelInfo& model) {
  const json* v = field(body, "model");
  if (!v) return;  // lenient: a missing model means the one served
  if (!v->is_string())
    throw bad(fmt::format("'model' must be a string, not {}", type_name(*v)), "model",
              "invalid_type");
  if (v->get<std::string>() != model.name)
    throw ApiError(404,
                   fmt::format("The model '{}' does not exist; this server serves '{}'",
                               v->get<std::string>(), model.name),
                   "model", "model_not_found");
}

// Fields shared by both endpoints. `max_default` applies when the request sets no limit.
void parse_common(const json& body, const ModelInfo& model, const Tokenizer& tok,
                  int64_t max_default, ParsedRequest* out) {
  infer::SamplingParams& p = out->params;
  const auto temperature = number(body, "temperature");
  check_range(temperature, "temperature", 0, 2);
  if (temperature) p.temperature = *temperature < 1e-5 ? 0.0f : float(*temperature);
  const auto top_p = number(body, "top_p");
  check_range(top_p, "top_p", 1e-9, 1);
  if (top_p) p.top_p = float(*top_p);
  if (auto top_k = integer(body, "top_k")) {
    if (*top_k < -1 || *top_k > INT32_MAX)
      throw bad(fmt::format("'top_k' is {}; it must be >= 0 (0 or -1 = off)", *top_k), "top_k");
    p.top_k = *top_k < 0 ? 0 : int32_t(*top_k);
  }
  const auto min_p = number(body, "min_p");
  check_range(min_p, "min_p", 0, 0.999999);
  if (min_p) p.min_p = float(*min_p);
  const auto presence = number(body, "presence_penalty");
  check_range(presence, "presence_penalty", -2, 2);
  if (presence) p.presence_penalty = float(*presence);
  const auto frequency = number(body, "frequency_penalty");
  check_range(frequency, "frequency_penalty", -2, 2);
  if (frequency) p.frequency_penalty = float(*frequency);
  const auto repetition = number(body, "repetition_penalty");
  check_range(repetition, "repetition_penalty", 1e-6, 100);
  if (repetition) p.repetition_penalty = float(*repetition);
  if (auto seed = integer(body, "seed")) p.seed = uint64_t(*seed);

  if (auto n = integer(body, "n")) {
    if (*n < 1 || *n > kMaxN)
      throw bad(fmt::format("'n' is {}; it must be in [1, {}]", *n, kMaxN), "n");
    out->n = int(*n);
  }
  out->stream = boolean(body, "stream").value_or(false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object())
      throw bad("'stream_options' must be an object", "stream_options", "invalid_type");
    if (!out->stream)
      throw bad("'stream_options' is only allowed when 'stream' is true", "stream_options");
    out->include_usage = boolean(*so, "include_usage").value_or(false);
  }
  out->return_token_ids = boolean(body, "return_token_ids").value_or(false);

  if (const json* stop = field(body, "stop")) {
    std::vector<std::string> stops;
    if (stop->is_string()) {
      stops.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& s : *stop) {
        if (!s.is_string())
          throw bad("'stop' must be a string or an array of strings", "stop", "invalid_type");
        stops.push_back(s.get<std::string>());
      }
    } else {
      throw bad("'stop' must be a string or an array of strings", "stop", "invalid_type");
    }
    if (stops.size() > kMaxStops)
      throw bad(
          fmt::format("'stop' has {} strings; at most {} are allowed", stops.size(), kMaxStops),
          "stop");
    for (const auto& s : stops)
      if (s.empty()) throw bad("'stop' strings must not be empty", "stop");
    p.stop_strings = std::move(stops);
  }
  if (tok.eos_id() >= 0) p.stop_token_ids = {tok.eos_id()};

  // The token budget: the request's own limit, or what the context leaves.
  const int64_t prompt_len = int64_t(out->prompt.size());
  if (prompt_len >= model.context)
    throw bad(fmt::format("The prompt has {} tokens; this model's context is {} tokens (the "
                          "prompt must leave room for at least one generated token)",
                          prompt_len, model.context),
              "messages", "context_length_exceeded");
  std::optional<int64_t> max_tokens = integer(body, "max_completion_tokens");
  const char* max_name = "max_completion_tokens";
  if (!max_tokens) {
    max_tokens = integer(body, "max_tokens");
    max_name = "max_tokens";
  }
  if (max_tokens) {
    if (*max_tokens < 1)
      throw bad(fmt::format("'{}' is {}; it must be at least 1", max_name, *max_tokens), max_name);
    if (prompt_len + *max_tokens > model.context)
      throw bad(
          fmt::format("'{}' is {} but the prompt has {} tokens and the context is {}: ask "
                      "for at most {} tokens",
                      max_name, *max_tokens, prompt_len, model.context, model.context - prompt_len),
          max_name, "context_length_exceeded");
    p.max_new_tokens = int32_t(*max_tokens);
  } else {
    p.max_new_tokens = int32_t(std::min(max_default, model.context - prompt_len));
  }
  try {
    p.validate();
  } catch (const Error& e) {
    throw bad(e.what(), "");
  }
}

std::string content_text(const json& content, size_t i) {
  if (content.is_null()) return "";
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {
    // Content parts: only text is understood.
    std::string text;
    for (const json& part : content) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
          !part["text"].is_string())
        throw bad(fmt::format("messages[{}].content: only text content parts "
                              "({{\"type\": \"text\", \"text\": ...}}) are supported",
                              i),
                  fmt::format("messages[{}].content", i));
      text += part["text"].get<std::string>();
    }
    return text;
  }
  throw bad(fmt::format("messages[{}].content must be a string, an array of parts or null", i),
            fmt::format("messages[{}].content", i), "invalid_type");
}

std::vector<int32_t> encode(const Tokenizer& tok, const std::string& text, bool bos) {
  std::vector<int32_t> ids;
  if (bos && tok.add_bos_token() && tok.bos_id() >= 0) ids.push_back(tok.bos_id());
  try {
    tok.encode_into(text, &ids, false);
  } catch (const Error& e) {
    throw bad(fmt::format("The prompt could not be tokenized: {}", e.what()), "prompt");
  }
  return ids;
}

}  // namespace

ApiError::ApiError(int status_, std::string message, std::string param_, std::string code_,
                   std::string type_)
    : std::runtime_error(std::move(message)),
      status(status_),
      type(std::move(type_)),
      param(std::move(param_)),
      code(std::move(code_)) {}

json ApiError::body() const {
  return {{"error",
           {{"message", what()},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

json parse_body(std::string_view body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(
        400, fmt::format("The request body is not valid JSON (or not valid UTF-8): {}", e.what()),
        "", "invalid_json");
  }
  if (!j.is_object())
    throw ApiError(400,
                   fmt::format("The request body must be a JSON object, not {}", j.type_name()), "",
                   "invalid_type");
  return j;
}

ParsedRequest parse_chat_request(const json& body, const ModelInfo& model, const Tokenizer& tok,
                                 const ChatTemplate& tpl) {
  check_model(body, model);
  ParsedRequest out;
  const json* msgs = field(body, "messages");
  if (!msgs) throw bad("'messages' is required", "messages", "missing_required_parameter");
  if (!msgs->is_array() || msgs->empty())
    throw bad("'messages' must be a non-empty array", "messages", "invalid_type");
  json clean = json::array();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw bad(fmt::format("messages[{}] must be an object with a string 'role'", i),
                fmt::format("messages[{}]", i), "invalid_type");
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant" && role != "developer" &&
        role != "tool")
      throw bad(fmt::format("messages[{}].role '{}' is not one of system, developer, user, "
                            "assistant, tool",
                            i, role),
                fmt::format("messages[{}].role", i));
    json c = m;
    c["role"] = role == "developer" ? "system" : role;
    c["content"] = content_text(m.contains("content") ? m["content"] : json(nullptr), i);
    clean.push_back(std::move(c));
  }
  std::string prompt;
  try {
    prompt = tpl.render(clean, true);
  } catch (const Error& e) {
    throw bad(fmt::format("The chat template failed on these messages: {}", e.what()), "messages");
  }
  out.thinking = prompt.ends_with("<think>\n");
  out.prompt = encode(tok, prompt, false);  // the template writes BOS itself
  if (auto lp = boolean(body, "logprobs")) out.logprobs = *lp;
  if (auto top = integer(body, "top_logprobs")) {
    if (*top < 0 || *top > kMaxTopLogprobs)
      throw bad(fmt::format("'top_logprobs' is {}; it must be in [0, {}]", *top, kMaxTopLogprobs),
                "top_logprobs");
    if (!out.logprobs) throw bad("'top_logprobs' needs 'logprobs': true", "top_logprobs");
    out.params.logprobs = int32_t(*top);
  } else if (out.logprobs) {
    out.params.logprobs = 0;
  }
  parse_common(body, model, tok, model.context, &out);
  return out;
}

ParsedRequest parse_completion_request(const json& body, const ModelInfo& model,
                                       const Tokenizer& tok) {
  check_model(body, model);
  ParsedRequest out;
  const json* prompt = field(body, "prompt");
  if (!prompt) throw bad("'prompt' is required", "prompt", "missing_required_parameter");
  const json* single = prompt;
  if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_string()) {
    if (prompt->size() != 1)
      throw bad("Only one prompt per request is supported; send several requests", "prompt");
    single = &(*prompt)[0];
  }
  if (single->is_string()) {
    out.prompt = encode(tok, single->get<std::string>(), true);
  } else if (single->is_array()) {
    for (const json& v : *single) {
      if (!v.is_number_integer())
        throw bad("'prompt' must be a string or an array of token ids", "prompt", "invalid_type");
      const int64_t id = v.get<int64_t>();
      if (id < 0 || id >= model.vocab)
        throw bad(
            fmt::format("'prompt' has token id {} outside the vocabulary [0, {})", id, model.vocab),
            "prompt");
      out.prompt.push_back(int32_t(id));
    }
  } else {
    throw bad("'prompt' must be a string or an array of token ids", "prompt", "invalid_type");
  }
  if (out.prompt.empty()) throw bad("'prompt' is empty", "prompt");
  if (auto lp = integer(body, "logprobs")) {
    if (*lp < 0 || *lp > kMaxTopLogprobs)
      throw bad(fmt::format("'logprobs' is {}; it must be in [0, {}]", *lp, kMaxTopLogprobs),
                "logprobs");
    out.logprobs = true;
    out.params.logprobs = int32_t(*lp);
  }
  if (boolean(body, "echo").value_or(false))
    throw bad("'echo' is not supported", "echo", "unsupported_parameter");
  parse_common(body, model, tok, 16, &out);
  return out;
}

ReasoningSplitter::Out ReasoningSplitter::push(const std::string& text) {
  static const std::string kEnd = "</think>";
  Out o;
  if (!thinking_) {
    o.content = text;
    return o;
  }
  pending_ += text;
  const size_t end = pending_.find(kEnd);
  if (end != std::string::npos) {
    o.reasoning = pending_.substr(0, end);
    size_t rest = end + kEnd.size();
    // The answer conventionally starts after the blank line that follows the marker.
    while (rest < pending_.size() && pending_[rest] == '\n') ++rest;
    o.content = pending_.substr(rest);
    pending_.clear();
    thinking_ = false;
    return o;
  }
  // Hold back a tail that could be the start of "</think>".
  size_t keep = 0;
  for (size_t k = std::min(pending_.size(), kEnd.size() - 1); k > 0; --k)
    if (pending_.compare(pending_.size() - k, k, kEnd, 0, k) == 0) {
      keep = k;
      break;
    }
  o.reasoning = pending_.substr(0, pending_.size() - keep);
  pending_.erase(0, pending_.size() - keep);
  return o;
}

ReasoningSplitter::Out ReasoningSplitter::finish() {
  Out o;
  if (thinking_) o.reasoning = pending_;
  pending_.clear();
  return o;
}

namespace {

// A token's text; empty for ids past the tokenizer (the model's vocabulary padding).
std::string token_text(const Tokenizer& tok, int32_t id) {
  if (!tok.is_valid_id(id)) return "";
  const int32_t one[] = {id};
  return tok.decode(one, false);
}

json token_json(const Tokenizer& tok, int32_t id, float logprob) {
  json bytes = json::array();
  if (tok.is_valid_id(id))
    for (unsigned char c : tok.token_bytes(id)) bytes.push_back(int(c));
  return {{"token", token_text(tok, id)},
          {"logprob", std::isfinite(logprob) ? json(logprob) : json(-9999.0)},
          {"bytes", bytes}};
}

}  // namespace

json chat_logprob_entry(const Tokenizer& tok, const infer::SampleResult& r) {
  json e = token_json(tok, r.token, r.logprob);
  json top = json::array();
  for (const auto& t : r.top) top.push_back(token_json(tok, t.token, t.logprob));
  e["top_logprobs"] = top;
  return e;
}

void append_completion_logprobs(const Tokenizer& tok, const infer::SampleResult& r, json* lp) {
  (*lp)["tokens"].push_back(token_text(tok, r.token));
  (*lp)["token_logprobs"].push_back(r.logprob);
  json top = json::object();
  for (const auto& t : r.top) top[token_text(tok, t.token)] = t.logprob;
  (*lp)["top_logprobs"].push_back(top);
}

}  // namespace dsv3::serve
