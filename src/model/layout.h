// Every tensor a DeepSeek-V3 checkpoint holds for a given config, in the HF layout
// (MODEL_SPEC §7): the one list `dsv3 init` writes, `dsv3 info` counts, and tests check.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/config.h"

namespace dsv3 {

enum class TensorRole {
  kProjection,  // *_proj.weight of attention/MLP/experts: FP8 with block scales in FP8 checkpoints
  kEmbedding,   // embed_tokens, lm_head, shared_head.head: stay BF16
  kNorm,        // RMSNorm weights
  kRouter,      // mlp.gate.weight
  kBias,        // e_score_correction_bias: F32
};

struct TensorSpec {
  std::string name;
  Shape shape;
  TensorRole role;
  int64_t layer = -1;   // layer index, -1 for embedding/final norm/head
  int64_t expert = -1;  // routed expert index, -1 otherwise
  bool mtp = false;     // belongs to an MTP layer
};

std::vector<TensorSpec> checkpoint_layout(const ModelConfig& c);

struct ParamCounts {
  int64_t total = 0;      // main model (no MTP)
  int64_t activated = 0;  // per token: all but the routed experts a token does not use
  int64_t mtp = 0;        // MTP layers
  int64_t embedding = 0;  // embed_tokens + lm_head
};
ParamCounts count_params(const ModelConfig& c);

}  // namespace dsv3
