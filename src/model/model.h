// The DeepSeek-V3 model's full forward pass (f32 arithmetic, weights in their stored dtype):
// embedding → layers (MLA + dense MLP or DeepSeekMoE) → final norm → lm_head, and the MTP
// modules' own forward. The layers process all tokens of a batch together; attention runs
// per sequence. MODEL_SPEC §2–§6.
#pragma once

#include "core/tensor.h"
#include "model/rope.h"
#include "model/weights.h"

namespace dsv3 {

class Model {
 public:
  explicit Model(ModelWeights weights);

  const ModelConfig& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }

  // ids: I32 [B, T] (every id < vocab_size, T ≤ max_position_embeddings).
  // Returns logits F32 [B, T, V]. If `hidden` is non-null it receives the final-normed hidden
  // states F32 [B, T, H], the input of the MTP modules.
  Tensor forward(const Tensor& ids, Tensor* hidden = nullptr) const;

  // MTP module `depth` (1-based, ≤ num_nextn_predict_layers) given the main model's `hidden`
  // [B, T, H]: logits F32 [B, T - depth, V] where row i predicts token i + depth + 1.
  // Depth k consumes the hidden states of depth k - 1 (computed on the way).
  Tensor forward_mtp(const Tensor& ids, const Tensor& hidden, int depth = 1) const;

 private:
  // One transformer block on x [B·T, H] in place; positions I32 [B·T]; sequences of length T.
  void block(const LayerWeights& L, Tensor& x, const Tensor& positions, int64_t seq_len) const;
  Tensor attention(const AttentionWeights& a, const Tensor& h, const Tensor& positions,
                   int64_t seq_len) const;
  Tensor logits(const Tensor& normed, const Tensor& head) const;

  ModelWeights w_;
  RopeTable rope_;
};

}  // namespace dsv3
