// The trainable DeepSeek-V3 model on the CPU: every parameter of the checkpoint layout in one
// FP32 buffer (the master weights), a gradient buffer of the same layout, and an explicit
// forward that keeps what backward needs followed by a hand-written backward (llm.c style).
//
// One call, forward_backward(), runs the whole step for a batch of packed sequences:
//   L = CE(main) + (λ/D)·Σ_k CE(MTP depth k) + α·balance
// where CE(main) is the mean next-token loss, MTP depth k predicts the token k + 1 ahead of
// each position (MODEL_SPEC §6, TRAINING_SPEC §3), and balance is the complementary
// sequence-wise loss (TRAINING_SPEC §2) summed over MoE layers and averaged over sequences.
// Gradients are ADDED into grads() (call zero_grads() first), so micro-batches accumulate.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/config.h"
#include "train/optimizer.h"
#include "train/precision.h"

namespace dsv3::train {

struct ParamInfo {
  std::string name;  // checkpoint name (MODEL_SPEC §7)
  Shape shape;
  int64_t offset = 0, size = 0;  // into values() / grads()
  bool trainable = true;         // false: e_score_correction_bias (moved by balancing only)
  bool decay = true;             // weight decay: matrices yes, norms no
};

struct LossOptions {
  double mtp_lambda = 0.3;      // λ; the MTP term is (λ/D)·Σ_k L_MTP^k
  double balance_alpha = 1e-4;  // α of the sequence-wise balance loss (0: off)
};

// Bytes a training step keeps, by what the recipe stores (the CPU emulation itself keeps f32
// copies): FP32 master weights and gradients, AdamW's two moments, and the activations cached
// for backward for B×T tokens — linear-layer inputs (and the SwiGLU input) in the GEMM
// precision's format (f32 4 B, bf16 2 B, fp8 1 B + an f32 scale per 128), the rest (residual
// stream, attention q/k/v, expert outputs) in BF16 under bf16/fp8 and FP32 under f32, router
// logits FP32.
struct MemoryReport {
  int64_t weights = 0, grads = 0, moments = 0, activations = 0;
};

struct StepStats {
  double loss = 0;          // the optimised total
  double loss_main = 0;     // next-token CE
  double loss_mtp = 0;      // mean over depths of the MTP CE (unweighted)
  double loss_balance = 0;  // α·Σ_layers mean_seq L_bal
  int64_t tokens = 0;       // counted targets of the main loss
  // Tokens routed to each expert in this batch, per MoE layer (main layers first, then MTP
  // layers), [n_moe_layers][n_routed_experts]. The input of bias balancing.
  std::vector<std::vector<int64_t>> expert_load;
};

class TrainModel {
 public:
  // All parameters zero (norms too): follow with init_random() or load().
  explicit TrainModel(const ModelConfig& config);
  ~TrainModel();
  TrainModel(TrainModel&&) noexcept;
  TrainModel& operator=(TrainModel&&) noexcept;

  // Weights ~ N(0, std²) from a seeded generator, norms 1, router bias 0.
  void init_random(uint64_t seed, double std);
  // Reads every parameter from a checkpoint directory (any dtype, FP8 dequantised); the
  // checkpoint's config must match this model's shapes.
  void load(const std::string& dir);
  static TrainModel from_checkpoint(const std::string& dir);
  // Writes config.json + model.safetensors in the HF layout, atomically, dtype "f32" (exact
  // master weights, what resume uses) or "bf16" (export).
  void save(const std::string& dir, const std::string& dtype = "f32") const;

  const ModelConfig& config() const { return config_; }
  const std::vector<ParamInfo>& params() const { return params_; }
  const ParamInfo& param(const std::string& name) const;  // throws if absent
  float* values() { return values_.data(); }
  const float* values() const { return values_.data(); }
  float* grads() { return grads_.data(); }
  const float* grads() const { return grads_.data(); }
  int64_t num_values() const { return int64_t(values_.size()); }
  void zero_grads();
  // The trainable parameters as AdamW sees them (router biases excluded).
  std::vector<ParamRef> optimizer_params();

  // inputs, targets: [B, T] row-major (a target < 0 is ignored). With backward=false only the
  // losses are computed (validation). Sequences longer than max_position_embeddings throw.
  StepStats forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t T,
                             const LossOptions& opt, bool backward = true);

  // Recompute RMSNorm outputs and the MLA up-projections (q_b, kv_b) in backward instead of
  // keeping them (TRAINING_SPEC §5): less activation memory, the same gradients bit for bit.
  void set_recompute(bool on);
  void set_precision(Precision p);

  // Auxiliary-loss-free balancing (TRAINING_SPEC §2): per MoE layer, each expert's
  // e_score_correction_bias moves by γ toward balance (−γ above the mean load, +γ below).
  void update_bias(const std::vector<std::vector<int64_t>>& load, double gamma);

  MemoryReport memory_report(int64_t B, int64_t T, Precision p, bool bf16_moments) const;

  // FLOPs of one forward over [B, T] (matrices and attention; backward is about twice that).
  double forward_flops(int64_t B, int64_t T) const;

  struct Impl;  // activations and scratch of the current batch (model.cpp)

 private:
  ModelConfig config_;
  std::vector<ParamInfo> params_;
  std::vector<float> values_, grads_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv3::train
