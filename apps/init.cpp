// dsv3 init: a random-weight checkpoint in the DeepSeek-V3 HF layout.
#include <fmt/format.h>

#include "commands.h"
#include "io/config.h"
#include "model/init.h"

namespace dsv3::apps {

void add_init(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "init",
      "Write a random-weight checkpoint (config.json + safetensors) in the DeepSeek-V3 HF "
      "layout, for tests and benchmarks");
  struct Args {
    std::string config, out;
    InitOptions opt;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("--config", args->config, "config.json (HF style) describing the model")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", args->out, "output directory")->required();
  cmd->add_option("--dtype", args->opt.dtype,
                  "f32, bf16, or fp8 (E4M3 projections with 128x128 block scales)")
      ->capture_default_str();
  cmd->add_option("--seed", args->opt.seed, "random seed")->capture_default_str();
  cmd->add_option("--std", args->opt.std, "standard deviation of the weights")
      ->capture_default_str();
  cmd->callback([args] {
    const ModelConfig c = ModelConfig::load(args->config);
    const size_t bytes = write_random_checkpoint(c, args->out, args->opt);
    fmt::print("wrote {} ({:.1f} MiB of {} weights)\n", args->out, double(bytes) / (1 << 20),
               args->opt.dtype);
  });
}

}  // namespace dsv3::apps
