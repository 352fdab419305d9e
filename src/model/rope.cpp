#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace dsv3 {

RopeTable RopeTable::build(const ModelConfig& c) {
  const int64_t dim = c.qk_rope_head_dim;
  const double base = c.rope_theta;
  RopeTable t;
  t.inv_freq.resize(size_t(dim / 2));
  t.factor = float(c.rope_attention_factor());
  for (int64_t i = 0; i < dim / 2; ++i) {
    // base^(-2i/dim), computed in f32 like the references' torch code.
    const float extra = 1.0f / std::pow(float(base), float(2 * i) / float(dim));
    t.inv_freq[size_t(i)] = extra;
  }
  if (!c.rope.is_yarn() || c.rope.factor <= 1.0) return t;

  const double factor = c.rope.factor;
  const double orig = double(c.rope.original_max_position_embeddings);
  // Dimension index at which a frequency completes n rotations over the original context.
  auto corr = [&](double n) {
    return double(dim) * std::log(orig / (n * 2.0 * M_PI)) / (2.0 * std::log(base));
  };
  double low = std::max(std::floor(corr(c.rope.beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(c.rope.beta_slow)), double(dim - 1));
  if (low == high) high += 0.001;  // avoid dividing by zero in the ramp
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float ramp = std::clamp(float((double(i) - low) / (high - low)), 0.0f, 1.0f);
    const float extra = t.inv_freq[size_t(i)];
    const float inter = extra / float(factor);
    // ramp = 1: interpolate (low frequencies); ramp = 0: extrapolate (high frequencies).
    t.inv_freq[size_t(i)] = inter * ramp + extra * (1.0f - ramp);
  }
  return t;
}

}  // namespace dsv3
