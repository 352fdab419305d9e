#include "commands.h"

namespace dsv3::apps {

void add_detokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("detokenize", "(not yet implemented)");
  cmd->callback([] {});
}

}  // namespace dsv3::apps
