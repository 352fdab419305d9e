// Rotary frequencies, plain or YaRN (MODEL_SPEC §4), for the qk_rope_head_dim slice.
#pragma once

#include <vector>

#include "io/config.h"

namespace dsv3 {

struct RopeTable {
  std::vector<float> inv_freq;  // [qk_rope_head_dim / 2], f32 as the references keep it
  float factor = 1.0f;          // multiplies cos and sin
  static RopeTable build(const ModelConfig& c);
};

}  // namespace dsv3
