// `dsv3 chat-template`: prints the prompt a conversation becomes under the model's chat
// template, byte-identical to transformers' apply_chat_template(..., tokenize=False).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.h"
#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace dsv3::apps {
namespace {

struct ChatTemplateOptions {
  std::string tokenizer_dir;
  std::string messages_file;
  std::string template_file;
  bool add_generation_prompt = false;
};

// The messages: a JSON array, or an object with "messages" (an OpenAI request body).
// ordered_json keeps the user's key order, which |tojson in a template would show.
nlohmann::ordered_json read_messages(const std::string& path) {
  std::string text;
  if (path == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), {});
  } else {
    std::ifstream f(path, std::ios::binary);
    DSV3_CHECK(f.good(), "cannot open messages file {}", path);
    text.assign(std::istreambuf_iterator<char>(f), {});
  }
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail("{} is not valid JSON: {}", path, e.what());
  }
  if (j.is_object() && j.contains("messages")) j = j["messages"];
  DSV3_CHECK(j.is_array(), "{}: expected a JSON array of messages (or an object with \"messages\")",
             path);
  return j;
}

void run(const ChatTemplateOptions& o) {
  const bool own_template = !o.template_file.empty();
  ChatTemplateConfig cfg = load_chat_template_config(o.tokenizer_dir, !own_template);
  std::string name = o.tokenizer_dir + "/tokenizer_config.json:chat_template";
  if (own_template) {
    cfg.chat_template = load_chat_template_file(o.template_file);
    name = o.template_file;
  }
  const ChatTemplate tpl(cfg, name);
  const std::string prompt = tpl.render(read_messages(o.messages_file), o.add_generation_prompt);
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::fflush(stdout);
}

}  // namespace

void add_chat_template(CLI::App& app) {
  auto opts = std::make_shared<ChatTemplateOptions>();
  auto* cmd = app.add_subcommand(
      "chat-template",
      "Render a conversation into the model's prompt text with its Jinja chat template, exactly "
      "as HF transformers' apply_chat_template(messages, tokenize=False) does");
  cmd->add_option("--tokenizer-dir", opts->tokenizer_dir,
                  "Directory with tokenizer_config.json (chat_template, bos_token, eos_token)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option(
         "--messages", opts->messages_file,
         "JSON file with the messages array ([{\"role\", \"content\", \"tool_calls\"...}]) "
         "or an object with \"messages\"; '-' reads standard input")
      ->required();
  cmd->add_flag("--add-generation-prompt", opts->add_generation_prompt,
                "End with the assistant turn's opening, ready for the model to continue");
  cmd->add_option("--template", opts->template_file,
                  "Use this template instead of the config's: a .jinja file, or a JSON file with "
                  "\"chat_template\" (e.g. the DeepSeek-R1 template)")
      ->check(CLI::ExistingFile);
  cmd->footer(
      "The prompt is printed as is, with no trailing newline.\n"
      "Example: dsv3 chat-template --tokenizer-dir .cache/tokenizer/deepseek_v3 "
      "--messages chat.json --add-generation-prompt");
  cmd->callback([opts] { run(*opts); });
}

}  // namespace dsv3::apps
