#include "commands.h"

namespace dsv3::apps {

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "TODO");
  cmd->callback([] {});
}

}  // namespace dsv3::apps
