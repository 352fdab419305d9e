#include "commands.h"

namespace dsv3::apps {

void add_tokenizer_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenizer", "(not yet implemented)");
  cmd->callback([] {});
}

}  // namespace dsv3::apps
