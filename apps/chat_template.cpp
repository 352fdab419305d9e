#include "commands.h"

namespace dsv3::apps {

void add_chat_template(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat-template", "(not yet implemented)");
  cmd->callback([] {});
}

}  // namespace dsv3::apps
