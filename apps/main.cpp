// dsv3: the DeepSeek-V3 system's command-line front end. Subcommands are thin: they parse
// flags and call the library. Errors from user input are one line on stderr, exit code 1.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"dsv3: DeepSeek-V3 inference and training (run `dsv3 COMMAND --help`)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "dsv3 0.1.0");
  dsv3::apps::add_info(app);
  dsv3::apps::add_init(app);
  dsv3::apps::add_forward(app);
#ifndef DSV3_MINIMAL  // a DSV3_MINIMAL build (GPU machines) has no tokenizer, server or trainer
  dsv3::apps::add_tokenize(app);
  dsv3::apps::add_detokenize(app);
  dsv3::apps::add_chat_template(app);
  dsv3::apps::add_tokenizer_train(app);
  dsv3::apps::add_generate(app);
  dsv3::apps::add_chat(app);
  dsv3::apps::add_serve(app);
  dsv3::apps::add_data(app);
  dsv3::apps::add_train(app);
  dsv3::apps::add_compare(app);
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dsv3::Error& e) {
    std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
