// The CPU inference engine: runs new tokens of several sequences through the model in one
// step, each sequence against its own latent cache (absorbed MLA, MODEL_SPEC §3; rows read
// and written through the cache's block table, infer/kv_cache.h). Sequences in
// a step may have any lengths; the linear layers and experts see all rows at once, attention
// runs per sequence. The MTP module (MODEL_SPEC §6) has its own step and caches, for drafting.
#pragma once

#include <vector>

#include "infer/kv_cache.h"
#include "infer/step_engine.h"
#include "model/model.h"

namespace dsv3 {

struct EngineOptions {
  bool absorbed = true;  // false: expand K/V from the latent each step (the naive form, a check)
};

class Engine : public StepEngine {
 public:
  Engine(const Model& model, EngineOptions opt = {});

  const Model& model() const override { return model_; }
  int64_t context() const override { return model_.config().max_position_embeddings; }

  // A cache for one sequence of up to `capacity` tokens (default: the model's context).
  LatentCache new_cache(int64_t capacity = 0) const override;
  LatentCache new_mtp_cache(int64_t capacity = 0) const override;
  bool takes_pooled_caches() const override { return true; }

  // Logits F32 [rows, V]: per input, all its rows or its last, in input order. `hidden`
  // receives the final-normed hidden states F32 [all new tokens, H] (the MTP input).
  Tensor step(const std::vector<Input>& inputs, Tensor* hidden = nullptr) const override;
  // MTP depth 1: logits F32 [inputs, V] of the last row of each input (predicting i + 2).
  Tensor mtp_step(const std::vector<MtpInput>& inputs) const override;

 private:
  // One transformer block over x [N, H] with rows grouped per input as `counts`.
  void block(const LayerWeights& L, int64_t cache_layer, Tensor& x,
             const std::vector<LatentCache*>& caches, const std::vector<int64_t>& counts,
             const Tensor& positions) const;

  const Model& model_;
  EngineOptions opt_;
  RopeTable rope_;
};

}  // namespace dsv3
