// `dsv3 tokenizer train`: byte-level BPE training with DeepSeek-V3's pre-tokenizer, writing
// tokenizer.json and tokenizer_config.json that the other commands (and HF) load.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/chat_template.h"

namespace dsv3::apps {
namespace {

namespace fs = std::filesystem;

constexpr const char* kDefaultTemplateConfig = ".cache/tokenizer/deepseek_v3/tokenizer_config.json";

struct TrainArgs {
  size_t vocab_size = 0;
  std::vector<std::string> inputs;
  std::string output;
  int64_t min_frequency = 2;
  std::vector<std::string> special_tokens;
  std::string chat_template;
  bool no_chat_template = false;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  DSV3_CHECK(f.good(), "tokenizer train: cannot write {} (does its folder exist?)", path.string());
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  f.close();
  DSV3_CHECK(f.good(), "tokenizer train: error writing {}", path.string());
}

void run(const TrainArgs& a) {
  tok::BpeTrainerOptions opts;
  opts.vocab_size = a.vocab_size;
  opts.min_frequency = a.min_frequency;
  for (const std::string& s : a.special_tokens) {
    AddedToken t;
    t.content = s;
    t.special = true;
    opts.special_tokens.push_back(std::move(t));
  }
  // Checked before reading the corpus, so a bad flag fails fast.
  DSV3_CHECK(a.vocab_size >= opts.special_tokens.size() + 256,
             "tokenizer train: --vocab-size {} is too small: it must hold the {} special tokens "
             "and the 256 byte symbols, so use at least {}",
             a.vocab_size, opts.special_tokens.size(), opts.special_tokens.size() + 256);
  DSV3_CHECK(a.min_frequency >= 1, "tokenizer train: --min-frequency must be at least 1");

  std::string chat_template;
  if (!a.no_chat_template) {
    if (!a.chat_template.empty()) {
      chat_template = load_chat_template_file(a.chat_template);
    } else if (fs::exists(kDefaultTemplateConfig)) {
      chat_template = load_chat_template_file(kDefaultTemplateConfig);
    } else {
      std::fprintf(stderr,
                   "tokenizer train: no %s here and no --chat-template: tokenizer_config.json "
                   "gets no chat_template\n",
                   kDefaultTemplateConfig);
    }
  }

  fs::path out = a.output;
  if (fs::is_directory(out)) out /= "tokenizer.json";
  fs::path dir = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  DSV3_CHECK(fs::is_directory(dir), "tokenizer train: output folder {} does not exist",
             dir.string());

  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> names;
  for (const auto& t : opts.special_tokens) names.push_back(t.content);
  tok::WordCounter counter(names);
  for (const std::string& path : a.inputs) {
    DSV3_CHECK(fs::is_regular_file(path), "tokenizer train: input file {} does not exist", path);
    counter.add_file(path);
  }
  double t_count = seconds_since(t0);
  std::fprintf(stderr, "counted %lld words (%zu distinct) in %zu file(s) in %.2f s\n",
               static_cast<long long>(counter.total_words()), counter.counts().size(),
               a.inputs.size(), t_count);

  auto t1 = std::chrono::steady_clock::now();
  tok::TrainedBpe bpe = tok::train_bpe(counter.counts(), opts);
  double t_train = seconds_since(t1);
  std::fprintf(stderr, "trained %zu tokens (%zu merges) in %.2f s\n", bpe.model.vocab_size(),
               bpe.model.merges.size(), t_train);
  if (bpe.model.vocab_size() < a.vocab_size)
    std::fprintf(stderr,
                 "warning: the corpus ran out of pairs with count >= %lld: the vocabulary has "
                 "%zu tokens, not %zu\n",
                 static_cast<long long>(a.min_frequency), bpe.model.vocab_size(), a.vocab_size);

  write_file(out, tok::tokenizer_json(bpe));
  write_file(dir / "tokenizer_config.json", tok::tokenizer_config_json(bpe, chat_template));
  std::fprintf(stderr, "wrote %s and %s\n", out.string().c_str(),
               (dir / "tokenizer_config.json").string().c_str());
}

}  // namespace

void add_tokenizer_train(CLI::App& app) {
  auto* tokenizer = app.add_subcommand("tokenizer", "Tokenizer tools (see `train`)");
  tokenizer->require_subcommand(1);
  auto args = std::make_shared<TrainArgs>();
  auto* cmd = tokenizer->add_subcommand(
      "train",
      "Train a byte-level BPE tokenizer with DeepSeek-V3's pre-tokenizer and special tokens.\n"
      "Inputs: .jsonl files (one {\"text\": ...} object per line, each a document) or plain "
      "UTF-8 text (each file one document).\n"
      "Merges: most frequent adjacent pair first; ties go to the smallest (left id, right id), "
      "as in HF tokenizers' BpeTrainer.\n"
      "Writes tokenizer.json and, beside it, tokenizer_config.json (BOS/EOS, add_bos_token, "
      "chat template).");
  cmd->add_option("--vocab-size", args->vocab_size,
                  "total vocabulary size, special tokens and the 256 bytes included")
      ->required();
  cmd->add_option("--input", args->inputs, "training files (.txt or .jsonl)")
      ->required()
      ->expected(1, -1);
  cmd->add_option("--output", args->output,
                  "tokenizer.json to write (or a folder to write it into)")
      ->required();
  cmd->add_option("--min-frequency", args->min_frequency,
                  "stop merging when the best pair occurs fewer times than this")
      ->capture_default_str();
  cmd->add_option("--special-tokens", args->special_tokens,
                  "extra special tokens, given ids after DeepSeek-V3's (BOS=0, EOS=1, pad, chat "
                  "markers)")
      ->expected(1, -1);
  cmd->add_option("--chat-template", args->chat_template,
                  std::string("tokenizer_config.json or .jinja whose template to copy (default: ") +
                      kDefaultTemplateConfig + " when present)");
  cmd->add_flag("--no-chat-template", args->no_chat_template,
                "write tokenizer_config.json without a chat template");
  cmd->callback([args] { run(*args); });
}

}  // namespace dsv3::apps
