#include "commands.h"

namespace dsv3::apps {

void add_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "(not yet implemented)");
  cmd->callback([] {});
}

}  // namespace dsv3::apps
