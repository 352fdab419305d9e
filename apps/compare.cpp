// dsv3 compare: several training runs side by side (final validation loss, relative
// differences, validation curves on one plot), e.g. the bf16 and fp8 runs of one model.
#include <fmt/format.h>

#include "commands.h"
#include "train/trainer.h"

namespace dsv3::apps {

void add_compare(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "compare",
      "Compare `dsv3 train` runs: final validation loss of each, its relative difference from "
      "the first run, and (with --plot) their validation curves in one SVG.");
  struct Args {
    std::vector<std::string> runs, labels;
    std::string plot;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("runs", a->runs, "run directories (the first is the baseline)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--label", a->labels, "a name per run, in order (default: directory names)");
  cmd->add_option("--plot", a->plot, "write the validation curves to this SVG file");
  cmd->callback([a] {
    fmt::print("{}", train::compare_runs(a->runs, a->labels, a->plot));
    if (!a->plot.empty()) fmt::print("plot {}\n", a->plot);
  });
}

}  // namespace dsv3::apps
