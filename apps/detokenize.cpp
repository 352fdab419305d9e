// `dsv3 detokenize`: token ids -> text with the model's tokenizer.json.
#include <cstdio>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::apps {
namespace {

struct DetokenizeArgs {
  std::string tokenizer;
  bool jsonl = false;
  bool skip_special = false;
};

int32_t parse_id(const std::string& s) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  DSV3_CHECK(used == s.size() && v >= INT32_MIN && v <= INT32_MAX,
             "detokenize: '{}' is not a token id (expected integers separated by whitespace)", s);
  return static_cast<int32_t>(v);
}

void run(const DetokenizeArgs& a) {
  Tokenizer tok = Tokenizer::load(a.tokenizer);
  if (!a.jsonl) {
    std::vector<int32_t> ids;
    std::string word;
    while (std::cin >> word) ids.push_back(parse_id(word));
    std::string text = tok.decode(ids, a.skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return;
  }
  std::string line;
  for (size_t lineno = 1; std::getline(std::cin, line); ++lineno) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      fail("detokenize: stdin line {} is not JSON (with --jsonl each line is an array of ids)",
           lineno);
    }
    DSV3_CHECK(j.is_array(), "detokenize: stdin line {} is not a JSON array of ids", lineno);
    std::vector<int32_t> ids;
    for (const auto& v : j) {
      DSV3_CHECK(v.is_number_integer(), "detokenize: stdin line {}: {} is not a token id", lineno,
                 v.dump());
      ids.push_back(v.get<int32_t>());
    }
    std::string out = nlohmann::json(tok.decode(ids, a.skip_special))
                          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    std::printf("%s\n", out.c_str());
  }
}

}  // namespace

void add_detokenize(CLI::App& app) {
  auto args = std::make_shared<DetokenizeArgs>();
  auto* cmd = app.add_subcommand(
      "detokenize",
      "Decode token ids from stdin to text, as Hugging Face tokenizers does.\n"
      "Plain: stdin holds ids separated by whitespace; writes the text as-is.\n"
      "--jsonl: each stdin line is a JSON array of ids; writes one JSON string per line.");
  cmd->add_option("--tokenizer", args->tokenizer, "tokenizer.json, or a folder holding one")
      ->required();
  cmd->add_flag("--jsonl", args->jsonl, "read JSON arrays, write JSON strings, line by line");
  cmd->add_flag("--skip-special-tokens", args->skip_special,
                "leave out special tokens (BOS, EOS, ...); chat markers are not special");
  cmd->callback([args] { run(*args); });
}

}  // namespace dsv3::apps
