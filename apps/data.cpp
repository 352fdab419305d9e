// dsv3 data prepare: text files -> token shards for training.
#include <fmt/format.h>

#include "commands.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

namespace dsv3::apps {

void add_data(CLI::App& app) {
  auto* data = app.add_subcommand("data", "Training data tools");
  data->require_subcommand(1);
  auto* cmd = data->add_subcommand(
      "prepare", "Tokenise .txt / .jsonl files into token shards with a validation split");
  struct Args {
    std::string tokenizer, out;
    std::vector<std::string> inputs;
    train::PrepareOptions opt;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.json or its directory")->required();
  cmd->add_option("--input", a->inputs,
                  "input files: .txt (one document each, or one per line "
                  "with --lines) or .jsonl ({\"text\": ...} per line)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", a->out, "output directory")->required();
  cmd->add_option("--val-fraction", a->opt.val_fraction, "share of documents held out")
      ->capture_default_str();
  cmd->add_option("--seed", a->opt.seed, "which documents are held out")->capture_default_str();
  cmd->add_flag("--lines", a->opt.lines_are_documents,
                "each non-empty line of a .txt is a document");
  cmd->callback([a] {
    const Tokenizer tok = Tokenizer::load(a->tokenizer);
    const train::PrepareStats st = train::prepare_data(tok, a->inputs, a->out, a->opt);
    fmt::print(
        "train: {} tokens in {} documents ({} shards)\nval:   {} tokens in {} documents ({} "
        "shards)\nwrote {}\n",
        st.train_tokens, st.train_docs, st.train_shards.size(), st.val_tokens, st.val_docs,
        st.val_shards.size(), a->out);
  });
}

}  // namespace dsv3::apps
