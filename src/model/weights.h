// The model's weights as views into the memory-mapped checkpoint (MODEL_SPEC §7 names).
// Loading checks every tensor's presence, shape and dtype against the config and fails with
// a message naming the tensor and file; nothing is converted or copied.
#pragma once

#include <string>
#include <vector>

#include "io/config.h"
#include "io/safetensors.h"
#include "kernels/linear.h"

namespace dsv3 {

struct MlpWeights {  // SwiGLU: down(silu(gate(x)) ⊙ up(x))
  Linear gate, up, down;
};

struct MoeWeights {
  Tensor gate;  // router [E, H]
  Tensor bias;  // e_score_correction_bias [E] (sigmoid/noaux_tc only)
  std::vector<MlpWeights> experts;
  bool has_shared = false;
  MlpWeights shared;  // n_shared · moe_intermediate_size wide
};

struct AttentionWeights {
  Linear q_a, q_b;  // with q_lora_rank
  Tensor q_a_norm;
  Linear q;     // without q_lora_rank
  Linear kv_a;  // kv_a_proj_with_mqa: [kv_lora_rank + rope, H]
  Tensor kv_a_norm;
  Linear kv_b;  // [heads · (nope + v), kv_lora_rank]
  Linear o;     // [H, heads · v]
};

struct MtpWeights {  // extra tensors of an MTP layer (MODEL_SPEC §6)
  Tensor enorm, hnorm;
  Linear eh_proj;    // [H, 2H]: embedding half first
  Tensor head_norm;  // shared_head.norm
  Tensor head;       // shared_head.head [V, H]
};

struct LayerWeights {
  Tensor input_norm, post_attention_norm;
  AttentionWeights attn;
  bool is_moe = false;
  MlpWeights mlp;  // dense layers
  MoeWeights moe;  // MoE layers
  MtpWeights mtp;  // MTP layers only
};

struct ModelWeights {
  ModelConfig config;
  TensorStore store;
  Tensor embed;                      // [V, H]
  Tensor final_norm;                 // [H]
  Tensor lm_head;                    // [V, H]
  std::vector<LayerWeights> layers;  // num_hidden_layers main layers
  std::vector<LayerWeights> mtp;     // num_nextn_predict_layers MTP layers

  // Opens a checkpoint directory (config.json + safetensors).
  static ModelWeights load(const std::string& dir);
  // Same, with a config already parsed (tests).
  static ModelWeights load(const ModelConfig& config, TensorStore store);
};

}  // namespace dsv3
