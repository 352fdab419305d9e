#include "commands.h"

namespace dsv3::apps {

void add_forward(CLI::App& app) {
  auto* cmd = app.add_subcommand("forward", "TODO");
  cmd->callback([] {});
}

}  // namespace dsv3::apps
