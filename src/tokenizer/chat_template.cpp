#include "tokenizer/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace dsv3 {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DSV3_CHECK(f.good(), "cannot open {}: check the path", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A special token in tokenizer_config.json: "text", {"__type": "AddedToken", "content":
// "text", ...}, null, or absent.
std::string token_text(const nlohmann::json& cfg, const char* key, const std::string& file) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  fail("{}: \"{}\" must be a string or an object with a string \"content\"", file, key);
}

// "chat_template" is a string, or (newer configs) a list of {"name", "template"}.
std::string template_text(const nlohmann::json& ct, const std::string& file) {
  if (ct.is_string()) return ct.get<std::string>();
  if (ct.is_array()) {
    for (const auto& e : ct)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
          e["template"].is_string())
        return e["template"].get<std::string>();
    fail("{}: \"chat_template\" is a list without a \"default\" entry; pass --template FILE", file);
  }
  fail("{}: \"chat_template\" must be a string or a list of {{name, template}}", file);
}

nlohmann::json parse_json(const std::string& text, const std::string& file) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail("{} is not valid JSON: {}", file, e.what());
  }
}

}  // namespace

ChatTemplateConfig load_chat_template_config(const std::string& tokenizer_dir,
                                             bool require_template) {
  const std::string file =
      (std::filesystem::path(tokenizer_dir) / "tokenizer_config.json").string();
  DSV3_CHECK(std::filesystem::exists(file),
             "{} not found: --tokenizer-dir must hold the model's tokenizer_config.json", file);
  nlohmann::json cfg = parse_json(read_file(file), file);
  DSV3_CHECK(cfg.is_object(), "{}: expected a JSON object", file);
  DSV3_CHECK(cfg.contains("chat_template") || !require_template,
             "{} has no \"chat_template\"; pass a template with --template FILE", file);
  ChatTemplateConfig out;
  if (cfg.contains("chat_template")) out.chat_template = template_text(cfg["chat_template"], file);
  out.bos_token = token_text(cfg, "bos_token", file);
  out.eos_token = token_text(cfg, "eos_token", file);
  return out;
}

std::string load_chat_template_file(const std::string& path) {
  std::string text = read_file(path);
  size_t first = text.find_first_not_of(" \t\r\n");
  // A JSON object (tokenizer_config.json or an asset with "chat_template"); Jinja text never
  // starts with '{"'.
  if (first != std::string::npos && text[first] == '{' && text.compare(first, 2, "{{") != 0 &&
      text.compare(first, 2, "{%") != 0 && text.compare(first, 2, "{#") != 0) {
    nlohmann::json j = parse_json(text, path);
    DSV3_CHECK(j.is_object() && j.contains("chat_template"),
               "{}: a JSON template file needs a \"chat_template\" key", path);
    return template_text(j["chat_template"], path);
  }
  return text;
}

ChatTemplate::ChatTemplate(const ChatTemplateConfig& cfg, std::string name)
    : tpl_(cfg.chat_template, std::move(name)), bos_(cfg.bos_token), eos_(cfg.eos_token) {}

namespace {

template <class J>
std::string render_impl(const jinja::Template& tpl, const J& messages, bool agp,
                        const std::string& bos, const std::string& eos) {
  DSV3_CHECK(messages.is_array(), "chat messages must be a JSON array of message objects");
  // transformers refuses an empty conversation before rendering.
  DSV3_CHECK(!messages.empty(), "chat messages are empty: give at least one message");
  for (size_t i = 0; i < messages.size(); ++i)
    DSV3_CHECK(messages[i].is_object(), "chat message {} is not a JSON object", i);
  // The variables transformers renders with: tools/documents are None when not given; the
  // special tokens come from the tokenizer (absent ones stay undefined).
  J ctx = J::object();
  ctx["messages"] = messages;
  ctx["tools"] = nullptr;
  ctx["documents"] = nullptr;
  ctx["add_generation_prompt"] = agp;
  if (!bos.empty()) ctx["bos_token"] = bos;
  if (!eos.empty()) ctx["eos_token"] = eos;
  return tpl.render(ctx);
}

}  // namespace

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt) const {
  return render_impl(tpl_, messages, add_generation_prompt, bos_, eos_);
}
std::string ChatTemplate::render(const nlohmann::ordered_json& messages,
                                 bool add_generation_prompt) const {
  return render_impl(tpl_, messages, add_generation_prompt, bos_, eos_);
}

std::string render_chat(const std::string& template_src, const nlohmann::json& messages,
                        bool add_generation_prompt, const std::string& bos_token,
                        const std::string& eos_token) {
  return ChatTemplate({template_src, bos_token, eos_token}).render(messages, add_generation_prompt);
}

}  // namespace dsv3
