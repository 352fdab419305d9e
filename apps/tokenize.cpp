// `dsv3 tokenize`: text -> token ids with the model's tokenizer.json.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::apps {
namespace {

struct TokenizeArgs {
  std::string tokenizer;
  bool jsonl = false;
  bool add_bos = false;
};

std::vector<int32_t> encode_one(const Tokenizer& tok, const std::string& text, bool add_bos) {
  if (!add_bos) return tok.encode(text);
  // A template post-processor (Llama-3 style) adds BOS itself; otherwise prepend it.
  std::vector<int32_t> ids = tok.encode(text);
  std::vector<int32_t> with_template = tok.encode(text, /*add_special_tokens=*/true);
  if (with_template.size() > ids.size()) return with_template;
  ids.insert(ids.begin(), tok.bos_id());
  return ids;
}

void run(const TokenizeArgs& a) {
  Tokenizer tok = Tokenizer::load(a.tokenizer);
  DSV3_CHECK(!a.add_bos || tok.bos_id() >= 0,
             "tokenize: --add-bos given but {} names no BOS token (no tokenizer_config.json "
             "bos_token and no BOS template)",
             a.tokenizer);
  if (!a.jsonl) {
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    auto ids = encode_one(tok, text, a.add_bos);
    std::string out;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) out += ' ';
      out += std::to_string(ids[i]);
    }
    std::printf("%s\n", out.c_str());
    return;
  }
  std::string line;
  for (size_t lineno = 1; std::getline(std::cin, line); ++lineno) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      fail("tokenize: stdin line {} is not JSON (with --jsonl each line is a JSON string)", lineno);
    }
    DSV3_CHECK(j.is_string(), "tokenize: stdin line {} is not a JSON string", lineno);
    std::printf("%s\n",
                nlohmann::json(encode_one(tok, j.get<std::string>(), a.add_bos)).dump().c_str());
  }
}

}  // namespace

void add_tokenize(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  auto* cmd = app.add_subcommand(
      "tokenize",
      "Encode text from stdin to token ids, exactly as Hugging Face tokenizers does.\n"
      "Plain: all of stdin is one text; prints its ids space-separated on one line.\n"
      "--jsonl: each stdin line is a JSON string; prints one JSON array of ids per line.");
  cmd->add_option("--tokenizer", args->tokenizer, "tokenizer.json, or a folder holding one")
      ->required();
  cmd->add_flag("--jsonl", args->jsonl, "read JSON strings, write JSON arrays, line by line");
  cmd->add_flag("--add-bos", args->add_bos,
                "start each sequence with the BOS token (special-token text in the input is "
                "always recognised)");
  cmd->callback([args] { run(*args); });
}

}  // namespace dsv3::apps
