// Chat templates: turning an OpenAI-style messages array into the exact prompt string that
// HF transformers' tokenizer.apply_chat_template(messages, tokenize=False, ...) produces,
// using the Jinja template shipped in tokenizer_config.json (DeepSeek-V3) or another one
// (DeepSeek-R1's, from a .jinja file or a JSON with "chat_template").
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "tokenizer/jinja.h"

namespace dsv3 {

// The template text and the special tokens it is rendered with.
struct ChatTemplateConfig {
  std::string chat_template;
  std::string bos_token;  // empty when the config has none
  std::string eos_token;
};

// Reads DIR/tokenizer_config.json: "chat_template" (a string, or a list of {name, template}
// from which "default" is taken) and bos_token/eos_token (a string or an AddedToken object
// {"content": ...}). Throws dsv3::Error naming the file on anything missing or malformed.
// With require_template=false a config without "chat_template" is accepted (the caller
// brings its own template and needs only the special tokens).
ChatTemplateConfig load_chat_template_config(const std::string& tokenizer_dir,
                                             bool require_template = true);

// Reads a template file: a JSON object with "chat_template" (e.g. a tokenizer_config.json or
// shared/assets/deepseek-r1-chat-template.json), or else raw Jinja text (a .jinja file).
std::string load_chat_template_file(const std::string& path);

// A parsed template, reusable across requests.
class ChatTemplate {
 public:
  // Throws dsv3::Error (with line:column) if the template uses unsupported Jinja.
  explicit ChatTemplate(const ChatTemplateConfig& cfg, std::string name = "chat_template");

  // `messages`: a non-empty JSON array of objects ({"role", "content" (string or null),
  // "tool_calls": [{"type", "function": {"name", "arguments"}}], ...}); they reach the
  // template unchanged, as in transformers. Throws dsv3::Error on a malformed array or when
  // the template fails (e.g. a null content the template concatenates).
  std::string render(const nlohmann::json& messages, bool add_generation_prompt) const;
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt) const;

 private:
  jinja::Template tpl_;
  std::string bos_, eos_;
};

// One-shot form of ChatTemplate(...).render(...).
std::string render_chat(const std::string& template_src, const nlohmann::json& messages,
                        bool add_generation_prompt, const std::string& bos_token,
                        const std::string& eos_token);

}  // namespace dsv3
