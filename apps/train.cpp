// dsv3 train: trains a DeepSeek-V3-architecture model from a JSON/YAML config
// (src/train/train_config.h), with checkpoints, exact resume and plots.
#include <fmt/format.h>

#include <atomic>
#include <csignal>

#include "commands.h"
#include "train/trainer.h"

namespace dsv3::apps {

namespace {

std::atomic<bool> g_stop{false};

// First Ctrl-C: finish the current step, write a checkpoint and exit cleanly. Second: the
// default action (immediate exit).
void on_sigint(int) {
  g_stop.store(true);
  std::signal(SIGINT, SIG_DFL);
}

}  // namespace

void add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "train",
      "Train a DeepSeek-V3-architecture model (MLA, DeepSeekMoE, MTP) on data from `dsv3 data "
      "prepare`. Ctrl-C saves a checkpoint; --resume continues exactly where it stopped.");
  struct Args {
    std::string config, out, data, resume_from, precision;
    std::vector<std::string> sets;
    int64_t steps = -1;
    int threads = -1;
    bool resume = false, quiet = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--config", a->config, "training config (.json, .yaml or .yml)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--set", a->sets,
                  "override a config field, e.g. --set optimizer.lr=1e-3 --set loss.mtp_lambda=0.1 "
                  "(repeatable; dotted paths; values parse as JSON)");
  cmd->add_option("--out", a->out, "run directory (overrides 'out')");
  cmd->add_option("--data", a->data, "prepared data directory (overrides 'data')");
  cmd->add_option("--steps", a->steps, "total steps (overrides 'steps')");
  cmd->add_option("--threads", a->threads, "CPU threads (overrides 'threads'; 0: all cores)");
  cmd->add_option("--precision", a->precision,
                  "projection GEMMs in f32, bf16 or fp8 (the report's fine-grained FP8 recipe); "
                  "overrides 'precision'");
  cmd->add_flag("--resume", a->resume, "continue from the run directory's latest checkpoint");
  cmd->add_option("--resume-from", a->resume_from, "continue from this checkpoint directory")
      ->check(CLI::ExistingDirectory);
  cmd->add_flag("--quiet", a->quiet, "no progress output");
  cmd->callback([a] {
    nlohmann::json j = train::TrainConfig::read_file(a->config);
    std::vector<std::string> sets = a->sets;
    auto quoted = [](const std::string& s) { return nlohmann::json(s).dump(); };
    if (!a->out.empty()) sets.push_back("out=" + quoted(a->out));
    if (!a->data.empty()) sets.push_back("data=" + quoted(a->data));
    if (a->steps >= 0) sets.push_back(fmt::format("steps={}", a->steps));
    if (a->threads >= 0) sets.push_back(fmt::format("threads={}", a->threads));
    if (!a->precision.empty()) sets.push_back("precision=" + quoted(a->precision));
    train::TrainConfig::apply_overrides(j, sets);
    const train::TrainConfig cfg = train::TrainConfig::from_json(j, a->config);
    train::TrainOptions opt;
    opt.resume = a->resume;
    opt.resume_from = a->resume_from;
    opt.stop = &g_stop;
    opt.progress = !a->quiet;
    std::signal(SIGINT, on_sigint);
    const train::TrainSummary s = train::run_training(cfg, opt);
    std::signal(SIGINT, SIG_DFL);
    if (s.interrupted)
      fmt::print("interrupted at step {}: checkpoint {} (continue with --resume)\n", s.steps,
                 s.checkpoint);
    else
      fmt::print(
          "trained steps {}..{}: train loss {:.4f}, val loss {:.4f} nats/token, {:.0f} "
          "tokens/s\ncheckpoint {}\n",
          s.first_step, s.steps, s.train_loss, s.val_loss, s.tokens_per_s, s.checkpoint);
  });
}

}  // namespace dsv3::apps
