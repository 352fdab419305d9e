// Training checkpoints: RUN/checkpoints/step-NNNNNNNN/ is a DeepSeek-V3 HF model directory
// (config.json + model.safetensors with the FP32 master weights: `dsv3 generate` and HF
// transformers load it as is) plus trainer/ with what an exact resume needs (AdamW moments
// and step count, data position, the run's state as JSON).
//
// A checkpoint is written into a temporary directory and renamed into place, then `latest`
// is updated and older checkpoints beyond keep_last are removed: a crash or a full disk at any
// moment leaves the previous checkpoint whole and `latest` pointing at a complete one.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "train/model.h"
#include "train/optimizer.h"

namespace dsv3::train {

// Writes checkpoint `step` under run_dir/checkpoints/ and returns its path. On failure
// (e.g. ENOSPC) removes the partial directory and throws, naming the intact previous one.
std::string save_checkpoint(const std::string& run_dir, int64_t step, const TrainModel& model,
                            const AdamW& opt, const nlohmann::json& state, int64_t keep_last);

// The newest complete checkpoint of a run ("" if none).
std::string latest_checkpoint(const std::string& run_dir);

// Restores model weights, optimizer moments/step and returns the saved state JSON. The
// checkpoint must match the model's layout and the optimizer's parameters.
nlohmann::json load_checkpoint(const std::string& ckpt_dir, TrainModel& model, AdamW& opt);

}  // namespace dsv3::train
