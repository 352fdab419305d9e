#include "commands.h"

namespace dsv3::apps {

void add_init(CLI::App& app) {
  auto* cmd = app.add_subcommand("init", "TODO");
  cmd->callback([] {});
}

}  // namespace dsv3::apps
