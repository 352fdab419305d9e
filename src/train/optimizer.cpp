#include "train/optimizer.h"

#include <cmath>

#include "core/error.h"
#include "core/threads.h"

namespace dsv3::train {

AdamW::AdamW(AdamWConfig cfg, std::vector<ParamRef> params)
    : cfg_(cfg), params_(std::move(params)) {
  DSV3_CHECK(cfg_.beta1 >= 0 && cfg_.beta1 < 1 && cfg_.beta2 >= 0 && cfg_.beta2 < 1,
             "AdamW betas must be in [0, 1), got {} and {}", cfg_.beta1, cfg_.beta2);
  DSV3_CHECK(cfg_.eps > 0, "AdamW eps must be positive, got {}", cfg_.eps);
  DSV3_CHECK(cfg_.weight_decay >= 0, "weight decay must be >= 0, got {}", cfg_.weight_decay);
  const DType mt = cfg_.bf16_moments ? DType::BF16 : DType::F32;
  for (const ParamRef& p : params_) {
    m_.push_back(Tensor::zeros(mt, {p.size}));
    v_.push_back(Tensor::zeros(mt, {p.size}));
  }
}

void AdamW::step(double lr, float grad_scale) {
  ++t_;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, double(t_));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, double(t_));
  const float b1 = float(cfg_.beta1), b2 = float(cfg_.beta2), eps = float(cfg_.eps);
  const float step_size = float(lr / bc1), inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamRef& p = params_[i];
    const float decay = p.decay ? float(1.0 - lr * cfg_.weight_decay) : 1.0f;
    const bool bf16 = cfg_.bf16_moments;
    void* mp = m_[i].data();
    void* vp = v_[i].data();
    parallel_for(
        p.size,
        [&](int64_t a, int64_t b, int) {
          for (int64_t j = a; j < b; ++j) {
            const float g = p.grad[j] * grad_scale;
            float m =
                bf16 ? bf16_to_f32(static_cast<uint16_t*>(mp)[j]) : static_cast<float*>(mp)[j];
            float v =
                bf16 ? bf16_to_f32(static_cast<uint16_t*>(vp)[j]) : static_cast<float*>(vp)[j];
            m = b1 * m + (1.0f - b1) * g;
            v = b2 * v + (1.0f - b2) * g * g;
            if (bf16) {
              static_cast<uint16_t*>(mp)[j] = f32_to_bf16(m);
              static_cast<uint16_t*>(vp)[j] = f32_to_bf16(v);
            } else {
              static_cast<float*>(mp)[j] = m;
              static_cast<float*>(vp)[j] = v;
            }
            // The update uses the moments as computed (before storage rounding).
            p.value[j] = p.value[j] * decay - step_size * m / (std::sqrt(v) * inv_sqrt_bc2 + eps);
          }
        },
        4096);
  }
}

double global_grad_norm(const std::vector<ParamRef>& params) {
  double ss = 0;
  for (const ParamRef& p : params)
    for (int64_t j = 0; j < p.size; ++j) ss += double(p.grad[j]) * p.grad[j];
  return std::sqrt(ss);
}

float clip_factor(double norm, double max_norm) {
  if (max_norm <= 0 || !(norm > max_norm)) return 1.0f;
  return float(max_norm / (norm + 1e-6));
}

void LrSchedule::validate() const {
  DSV3_CHECK(peak > 0, "lr schedule: peak must be positive, got {}", peak);
  DSV3_CHECK(min_lr >= 0 && min_lr <= peak, "lr schedule: min_lr must be in [0, peak], got {}",
             min_lr);
  DSV3_CHECK(warmup >= 0, "lr schedule: warmup must be >= 0, got {}", warmup);
  DSV3_CHECK(decay_start >= warmup,
             "lr schedule: decay_start ({}) must not precede the end of warm-up ({})", decay_start,
             warmup);
  DSV3_CHECK(decay_steps >= 0, "lr schedule: decay_steps must be >= 0, got {}", decay_steps);
  DSV3_CHECK(final_start < 0 || final_start >= decay_start + decay_steps,
             "lr schedule: final_start ({}) must come after the cosine decay ends ({})",
             final_start, decay_start + decay_steps);
}

double LrSchedule::at(int64_t step) const {
  if (step < warmup) return peak * double(step + 1) / double(warmup);
  if (step < decay_start) return peak;
  if (final_start >= 0 && step >= final_start) return final_lr;
  if (step < decay_start + decay_steps) {
    const double progress = double(step - decay_start) / double(decay_steps);
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(M_PI * progress));
  }
  return min_lr;
}

}  // namespace dsv3::train
