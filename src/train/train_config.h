// What `dsv3 train` reads: model, data, optimizer, schedule, losses, balancing and run
// settings in one JSON or YAML file (configs/train-*.json), every field overridable with
// `--set path.to.field=value`. The defaults are the report's (TRAINING_SPEC §1–3) where it
// gives one.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "io/config.h"
#include "train/model.h"
#include "train/optimizer.h"

namespace dsv3::train {

struct TrainConfig {
  // Model: a config.json-style object (or a path to one) for a fresh model, or a checkpoint
  // directory to start from (`init_from`, e.g. an exported or pre-trained model).
  nlohmann::json model;
  std::string init_from;
  double init_std = 0.006;

  std::string data;  // a directory written by `dsv3 data prepare`
  std::string out = "runs/dsv3";
  int64_t seq_len = 256;
  int64_t batch_size = 8;  // sequences per step
  // Batch-size ramp (TRAINING_SPEC §1): from ramp_start sequences up to batch_size over the
  // first ramp_steps steps (0: off).
  int64_t ramp_start = 0, ramp_steps = 0;
  int64_t steps = 1000;
  uint64_t seed = 0;  // weights and data order

  AdamWConfig adamw;
  double grad_clip = 1.0;
  // In steps; peak is optimizer.lr. Unless set: warm-up 100 steps (at most a tenth of the
  // run), cosine decay from the end of warm-up to min_lr at the last step (decay_start and
  // decay_steps given as -1 resolve to that), i.e. the usual warm-up + cosine. The report's
  // constant phase and final steps are there by setting decay_start and final_start.
  LrSchedule schedule;
  bool schedule_in_tokens = false;  // schedule.unit "tokens": positions count tokens seen
  LossOptions loss;
  double bias_gamma = 0.001;      // γ of auxiliary-loss-free balancing
  int64_t bias_gamma_until = -1;  // γ → 0 from this step on (-1: never)
  bool recompute = false;
  Precision precision = Precision::kF32;  // of the projections' GEMMs: f32 | bf16 | fp8

  int64_t eval_every = 100, eval_batches = 16;  // eval_batches 0: the whole val split
  int64_t save_every = 200, keep_last = 3;
  int64_t log_every = 10;
  int threads = 0;  // 0: all cores

  static TrainConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
  // Reads a .json or .yaml/.yml file.
  static nlohmann::json read_file(const std::string& path);
  // Applies "a.b.c=value" overrides to the JSON form; value parses as JSON when it can
  // (numbers, true/false, null, quoted strings, arrays) and is a string otherwise.
  static void apply_overrides(nlohmann::json& j, const std::vector<std::string>& sets);

  // The model config: `model` parsed (a path is loaded), or init_from's.
  ModelConfig model_config() const;
  // Sequences in the batch of step `step` (the ramp).
  int64_t batch_at(int64_t step) const;
  double gamma_at(int64_t step) const;
  // Learning rate before step `step`, after `tokens` tokens (the schedule's unit decides).
  double lr_at(int64_t step, int64_t tokens) const;
};

}  // namespace dsv3::train
