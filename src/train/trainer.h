// The training loop behind `dsv3 train`: data → forward/backward → clip → AdamW → bias
// balancing, with validation, metrics, checkpoints and exact resume.
//
// A run directory holds: train_config.json (the resolved config), metrics.jsonl (one JSON
// object per logged step, per validation and per checkpoint), checkpoints/ (checkpoint.h),
// and at the end loss.svg, expert_balance.svg and expert_load.svg.
#pragma once

#include <atomic>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "train/plot.h"
#include "train/train_config.h"

namespace dsv3::train {

class DataLoader;

struct TrainOptions {
  bool resume = false;                      // continue from the run's latest checkpoint
  std::string resume_from;                  // or from this checkpoint directory
  const std::atomic<bool>* stop = nullptr;  // set (e.g. by SIGINT): checkpoint and return
  bool progress = true;                     // progress bar / log lines on stderr
};

struct TrainSummary {
  int64_t first_step = 0, steps = 0;  // this run covered steps [first_step, steps)
  double train_loss = 0;              // mean main loss over the last logged window
  double val_loss = 0;                // main loss on the whole validation split (nats/token)
  double tokens_per_s = 0;
  std::string checkpoint;  // the last checkpoint written
  bool interrupted = false;
};

TrainSummary run_training(const TrainConfig& cfg, const TrainOptions& opt);

// Mean next-token loss (nats/token) of `model` over `batches` batches of `batch` sequences
// from the start of `loader`'s order (0 batches: every sequence of the split, once).
double evaluate(TrainModel& model, DataLoader& loader, int64_t batch, int64_t batches);

// What a run's metrics.jsonl holds, by step.
struct RunMetrics {
  Series train, val;  // main loss per logged step; validation estimates (a few batches)
  // The whole validation split, scored once at the end (NaN: the run did not get there).
  double final_val = std::numeric_limits<double>::quiet_NaN();
  int64_t steps = 0, tokens = 0;  // the last step and token count logged
  std::vector<Series> balance;    // max/mean routed load, one series per MoE layer
  std::vector<std::pair<double, std::vector<std::vector<int64_t>>>> loads;  // (step, [layer][e])

  // The validation curve to plot: the estimates, ending at the whole-split figure.
  Series val_curve(const std::string& name) const;
};
RunMetrics read_metrics(const std::string& run_dir);

// From RUN/metrics.jsonl: RUN/loss.svg (train and validation loss by step),
// RUN/expert_balance.svg (max/mean routed load per MoE layer by step) and RUN/expert_load.svg
// (heatmap of every expert's load over training).
void write_plots(const std::string& run_dir);

// Several runs side by side (e.g. the same model in bf16 and fp8): a table of steps, tokens,
// final validation loss and its relative difference from the first run; and, when `svg_path`
// is given, their validation curves on one plot. Labels default to the directories' names.
std::string compare_runs(const std::vector<std::string>& run_dirs,
                         const std::vector<std::string>& labels, const std::string& svg_path);

}  // namespace dsv3::train
