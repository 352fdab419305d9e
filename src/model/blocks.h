// The pieces of a DeepSeek-V3 layer, shared by the full forward (model.h) and the cached
// inference engine (infer/engine.h): the MLA projections, the dense MLP and DeepSeekMoE.
#pragma once

#include "core/tensor.h"
#include "model/rope.h"
#include "model/weights.h"

namespace dsv3 {

// MLA projections of hidden states h [N, H] at `positions` (MODEL_SPEC §3):
//   q   [N, heads, nope + rope]  (rope slice rotated)
//   ckv [N, kv_lora_rank]        the normalised latent, what the cache keeps
//   kpe [N, rope]                the rotated key shared by all heads, also cached
struct MlaProjection {
  Tensor q, ckv, kpe;
};
MlaProjection mla_project(const ModelConfig& c, const RopeTable& rope, const AttentionWeights& a,
                          const Tensor& h, const Tensor& positions);

// SwiGLU MLP: down(silu(gate(h)) ⊙ up(h)).
Tensor mlp_forward(const MlpWeights& m, const Tensor& h);
// DeepSeekMoE: routed experts weighted by the router plus the shared experts.
Tensor moe_forward(const ModelConfig& c, const MoeWeights& m, const Tensor& h);
// The layer's feed-forward part, dense or MoE.
Tensor ffn_forward(const ModelConfig& c, const LayerWeights& L, const Tensor& h);

// MTP module input (MODEL_SPEC §6): eh_proj([enorm(embed(next_ids)) ; hnorm(hprev)]) -> [n, H].
// next_ids: I32 [n], the token i + 1 for each row; hprev: F32 [n, H], normalised in place.
Tensor mtp_input(const ModelConfig& c, const Tensor& embed, const MtpWeights& m,
                 const Tensor& next_ids, Tensor& hprev);
// MTP logits from its block's output rows x [n, H]: shared_head.head(shared_head.norm(x)).
Tensor mtp_logits(const ModelConfig& c, const MtpWeights& m, const Tensor& x);

// F32 [rows, cols] of zeros.
Tensor f32_matrix(int64_t rows, int64_t cols);

}  // namespace dsv3
