// AdamW with FP32 master weights and optional BF16 moments (TRAINING_SPEC §1, §4), global
// gradient-norm clipping, and the report's learning-rate schedule.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dsv3::train {

struct AdamWConfig {
  double lr = 2.2e-4;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  bool bf16_moments = true;  // the report keeps both moments in BF16
};

// One parameter tensor as the optimizer sees it: FP32 master values, their gradient, and
// whether weight decay applies (matrices yes; norms, biases, router bias no).
struct ParamRef {
  std::string name;
  float* value = nullptr;
  const float* grad = nullptr;
  int64_t size = 0;
  bool decay = true;
};

class AdamW {
 public:
  AdamW(AdamWConfig cfg, std::vector<ParamRef> params);

  // One update with learning rate `lr` (from the schedule); step count advances first, so
  // the bias corrections use t = 1 on the first call (PyTorch semantics):
  //   m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²
  //   p ← p·(1 − lr·wd) − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + eps)
  // `grad_scale` multiplies every gradient first (gradient clipping).
  void step(double lr, float grad_scale = 1.0f);

  int64_t steps() const { return t_; }
  const AdamWConfig& config() const { return cfg_; }
  const std::vector<ParamRef>& params() const { return params_; }

  // The moments as tensors (F32 or BF16 [size]) for checkpoints, in params() order.
  std::vector<Tensor>& first_moments() { return m_; }
  std::vector<Tensor>& second_moments() { return v_; }
  void set_steps(int64_t t) { t_ = t; }

 private:
  AdamWConfig cfg_;
  std::vector<ParamRef> params_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
};

// sqrt(Σ g²) over every parameter's gradient (double accumulation).
double global_grad_norm(const std::vector<ParamRef>& params);
// The factor that brings the global norm down to max_norm (1 when already below).
float clip_factor(double norm, double max_norm);

// The report's schedule (TRAINING_SPEC §1), in steps: linear warm-up from 0 to `peak` over
// `warmup`, constant `peak` until `decay_start`, cosine down to `min_lr` over `decay_steps`,
// then `min_lr` until `final_start`, then `final_lr`.
struct LrSchedule {
  double peak = 2.2e-4, min_lr = 2.2e-5, final_lr = 7.3e-6;
  int64_t warmup = 2000, decay_start = 0, decay_steps = 0, final_start = -1;
  // step counts from 0; warm-up reaches peak·(step + 1)/warmup, so step 0 already moves.
  double at(int64_t step) const;
  // Validates the phases fit together; throws dsv3::Error naming the field.
  void validate() const;
};

}  // namespace dsv3::train
