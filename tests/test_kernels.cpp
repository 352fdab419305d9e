// CPU kernels against float64 references written here from the math (MODEL_SPEC §2-§5).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>

#include <atomic>

#include "core/threads.h"
#include "kernels/ops.h"
#include "model/moe.h"
#include "model/rope.h"
#include "train/fp8.h"

using namespace dsv3;

namespace {

Tensor random_f32(Shape shape, uint32_t seed, float scale = 1.0f) {
  Tensor t = Tensor::zeros(DType::F32, std::move(shape));
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<float>()[i] = d(g);
  return t;
}

// ‖a − b‖ / ‖b‖ with b in float64.
double rel(const float* a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST(Kernels, LinearEveryWeightDtypeAgainstFloat64) {
  // 200 x 300: FP8 blocks at the edges are partial (200 = 128 + 72, 300 = 2·128 + 44).
  // Row counts cover both CPU paths: weight streaming (decode, ≤ 16 rows, in groups of 8) and
  // dequantise + sgemm (prefill). k = 304 keeps the vector path (multiple of 16); 300 does not.
  const int64_t n = 200;
  for (int64_t rows : {1, 5, 11, 40})
    for (int64_t k : {300, 304})
      for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3, DType::F8_E5M2}) {
        const Tensor x = random_f32({rows, k}, 1);
        const Tensor w32 = random_f32({n, k}, 2, 0.05f);
        Linear lin;
        if (dt == DType::F8_E4M3) {
          lin = Linear::quantize_fp8(w32.ptr<float>(), n, k);
        } else if (dt == DType::F8_E5M2) {  // FP8 E5M2 with unit block scales
          lin.weight = w32.to(dt);
          lin.scale_inv = Tensor::zeros(DType::F32, {2, 3});
          for (int i = 0; i < 6; ++i) lin.scale_inv.ptr<float>()[i] = 1.0f;
        } else {
          lin.weight = w32.to(dt);
        }
        // The reference dequantises element by element from the stored codes.
        std::vector<double> ref(size_t(rows * n), 0.0);
        for (int64_t r = 0; r < n; ++r) {
          for (int64_t c = 0; c < k; ++c) {
            double wv;
            if (dt == DType::F8_E5M2) {
              wv = double(e5m2_to_f32(lin.weight.ptr<uint8_t>()[r * k + c]));
            } else if (dt == DType::F8_E4M3) {
              wv = double(e4m3_to_f32(lin.weight.ptr<uint8_t>()[r * k + c])) *
                   lin.scale_inv.ptr<float>()[(r / 128) * lin.scale_inv.dim(1) + c / 128];
            } else {
              float f;
              convert_to_f32(
                  dt, static_cast<const char*>(lin.weight.data()) + (r * k + c) * dtype_size(dt),
                  &f, 1);
              wv = f;
            }
            for (int64_t t = 0; t < rows; ++t)
              ref[size_t(t * n + r)] += double(x.ptr<float>()[t * k + c]) * wv;
          }
        }
        Tensor y = Tensor::zeros(DType::F32, {rows, n});
        ops::linear(x, lin, y);
        EXPECT_LT(rel(y.ptr<float>(), ref), 1e-6)
            << dtype_name(dt) << " rows " << rows << " k " << k;
      }
}

TEST(Kernels, Fp8BlockQuantisationError) {
  // One scale per 128x128 block: every element is within half an E4M3 step of its value
  // (relative 2^-4), except flushes near zero (absolute ≤ scale · 2^-10).
  const int64_t n = 130, k = 260;
  const Tensor w = random_f32({n, k}, 3);
  const Linear q = Linear::quantize_fp8(w.ptr<float>(), n, k);
  ASSERT_EQ(q.scale_inv.shape(), (Shape{2, 3}));
  std::vector<float> deq(size_t(n * k));
  q.dequantize_rows(0, n, deq.data());
  for (int64_t i = 0; i < n * k; ++i) {
    const float s = q.scale_inv.ptr<float>()[(i / k / 128) * 3 + (i % k) / 128];
    const float v = w.ptr<float>()[i];
    EXPECT_LE(std::fabs(deq[size_t(i)] - v), std::max(std::fabs(v) / 16.0f, s * 0x1p-10f)) << i;
  }
}

// The CPU emulation of FP8 inference (the reference of the CUDA engine's FP8 GEMMs): with it on,
// an FP8 linear with 128×128 blocks sees its input as the training recipe's 1×128 E4M3 tiles
// (train/fp8.h, a separate implementation) dequantised; other linears are untouched.
TEST(Kernels, Fp8ActivationsRoundInputsThroughRecipeTiles) {
  const int64_t rows = 5, in = 256, out = 64;
  Tensor x = random_f32({rows, in}, 21);
  for (int64_t c = 128; c < in; ++c) x.ptr<float>()[c] *= 1e-3f;  // a tile of its own scale
  const Tensor wf = random_f32({out, in}, 22, 0.05f);
  const Linear w8 = Linear::quantize_fp8(wf.ptr<float>(), out, in);
  const train::fp8::Quantized q =
      train::fp8::quantize(x.ptr<float>(), rows, in, train::fp8::Granularity::kRowTiles);
  const std::vector<float> xd = q.dequantize();
  Tensor xq = Tensor::zeros(DType::F32, {rows, in});
  std::copy(xd.begin(), xd.end(), xq.ptr<float>());
  Tensor want = Tensor::zeros(DType::F32, {rows, out});
  Tensor plain = Tensor::zeros(DType::F32, {rows, out});
  ops::linear(xq, w8, want);
  ops::linear(x, w8, plain);
  Tensor got = Tensor::zeros(DType::F32, {rows, out});
  ops::set_fp8_activations(true);
  ops::linear(x, w8, got);
  Tensor bf = Tensor::zeros(DType::F32, {rows, out});
  Tensor bf_plain = Tensor::zeros(DType::F32, {rows, out});
  const Linear wb = Linear::plain(wf);
  ops::linear(x, wb, bf);
  ops::set_fp8_activations(false);
  ops::linear(x, wb, bf_plain);
  for (int64_t i = 0; i < rows * out; ++i) {
    EXPECT_EQ(got.ptr<float>()[i], want.ptr<float>()[i]) << i;
    EXPECT_EQ(bf.ptr<float>()[i], bf_plain.ptr<float>()[i]) << i;
  }
  double diff = 0;
  for (int64_t i = 0; i < rows * out; ++i)
    diff = std::max(diff, double(std::fabs(got.ptr<float>()[i] - plain.ptr<float>()[i])));
  EXPECT_GT(diff, 0.0) << "the input was not rounded";
}

TEST(Kernels, RmsNorm) {
  const Tensor x = random_f32({3, 50}, 4), w = random_f32({50}, 5);
  Tensor y = Tensor::zeros(DType::F32, {3, 50});
  ops::rmsnorm(x, w, 1e-6f, y);
  std::vector<double> ref(150);
  for (int r = 0; r < 3; ++r) {
    double ss = 0;
    for (int i = 0; i < 50; ++i)
      ss += double(x.ptr<float>()[r * 50 + i]) * x.ptr<float>()[r * 50 + i];
    const double inv = 1.0 / std::sqrt(ss / 50 + 1e-6);
    for (int i = 0; i < 50; ++i)
      ref[size_t(r * 50 + i)] = w.ptr<float>()[i] * x.ptr<float>()[r * 50 + i] * inv;
  }
  EXPECT_LT(rel(y.ptr<float>(), ref), 1e-6);
}

TEST(Kernels, RopeIsAComplexRotationOfInterleavedPairs) {
  const int64_t t = 7, heads = 3, width = 24, offset = 8, dim = 16;
  Tensor x = random_f32({t, heads, width}, 6);
  const Tensor x0 = x.to(DType::F32);
  Tensor pos = Tensor::zeros(DType::I32, {t});
  for (int i = 0; i < t; ++i) pos.ptr<int32_t>()[i] = 1000 * i + 3;
  std::vector<float> inv(dim / 2);
  for (int i = 0; i < dim / 2; ++i) inv[size_t(i)] = float(std::pow(10000.0, -2.0 * i / dim));
  ops::rope_interleaved(x, offset, inv, 1.25f, pos);
  std::vector<double> ref(size_t(x.numel()));
  for (int64_t r = 0; r < t * heads; ++r) {
    for (int64_t c = 0; c < width; ++c) ref[size_t(r * width + c)] = x0.ptr<float>()[r * width + c];
    for (int64_t i = 0; i < dim / 2; ++i) {
      // (a + ib)·e^{iθ}·factor, θ formed in f32 as the references do.
      const double theta = double(float(pos.ptr<int32_t>()[r / heads]) * inv[size_t(i)]);
      const double a = x0.ptr<float>()[r * width + offset + 2 * i];
      const double b = x0.ptr<float>()[r * width + offset + 2 * i + 1];
      ref[size_t(r * width + offset + 2 * i)] = 1.25 * (a * std::cos(theta) - b * std::sin(theta));
      ref[size_t(r * width + offset + 2 * i + 1)] =
          1.25 * (a * std::sin(theta) + b * std::cos(theta));
    }
  }
  EXPECT_LT(rel(x.ptr<float>(), ref), 1e-6);
}

TEST(Kernels, CausalAttention) {
  const int64_t t = 9, h = 2, dqk = 12, dv = 5;
  const Tensor q = random_f32({t, h, dqk}, 7), k = random_f32({t, h, dqk}, 8),
               v = random_f32({t, h, dv}, 9);
  Tensor o = Tensor::zeros(DType::F32, {t, h, dv});
  ops::attention_causal(q, k, v, 0.3f, o);
  std::vector<double> ref(size_t(t * h * dv), 0.0);
  for (int64_t hd = 0; hd < h; ++hd) {
    for (int64_t i = 0; i < t; ++i) {
      std::vector<double> s(size_t(i + 1));
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        double d = 0;
        for (int64_t c = 0; c < dqk; ++c)
          d += double(q.ptr<float>()[(i * h + hd) * dqk + c]) *
               k.ptr<float>()[(j * h + hd) * dqk + c];
        s[size_t(j)] = 0.3 * d;
        mx = std::max(mx, s[size_t(j)]);
      }
      for (auto& e : s) sum += e = std::exp(e - mx);
      for (int64_t j = 0; j <= i; ++j)
        for (int64_t c = 0; c < dv; ++c)
          ref[size_t((i * h + hd) * dv + c)] +=
              s[size_t(j)] / sum * v.ptr<float>()[(j * h + hd) * dv + c];
    }
  }
  EXPECT_LT(rel(o.ptr<float>(), ref), 1e-6);
}

TEST(Kernels, YarnFrequenciesFollowTheSpec) {
  // MODEL_SPEC §4 with V3's numbers, computed here in float64.
  ModelConfig c;
  c.qk_rope_head_dim = 64;
  c.rope_theta = 10000;
  c.rope.type = "yarn";
  c.rope.factor = 40;
  c.rope.original_max_position_embeddings = 4096;
  c.rope.beta_fast = 32;
  c.rope.beta_slow = 1;
  const RopeTable t = RopeTable::build(c);
  auto corr = [](double n) {
    return 64 * std::log(4096 / (n * 2 * M_PI)) / (2 * std::log(10000.0));
  };
  const double low = std::max(std::floor(corr(32)), 0.0), high = std::min(std::ceil(corr(1)), 63.0);
  for (int i = 0; i < 32; ++i) {
    const double extra = std::pow(10000.0, -2.0 * i / 64), inter = extra / 40;
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    EXPECT_NEAR(t.inv_freq[size_t(i)], inter * ramp + extra * (1 - ramp), 1e-6 * extra) << i;
  }
}

TEST(Routing, GroupLimitedSigmoidWithBias) {
  // 8 experts in 4 groups of 2, keep 2 groups, pick 2 experts. The bias steers selection but
  // the weights use the unbiased scores, normalised and scaled (MODEL_SPEC §5).
  ModelConfig c;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  const float logits[8] = {2.0f, -1.0f, 0.5f, 0.4f, 0.0f, 0.0f, 3.0f, -3.0f};
  const float bias[8] = {0, 0, 0, 0, 0, 0, -0.9f, 0};
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  // Group sums of s+b: g0 = σ(2)+σ(-1), g1 = σ(.5)+σ(.4), g2 = 2σ(0), g3 = σ(3)-.9+σ(-3).
  // g0 = 1.1497, g1 = 1.2209, g2 = 1.0, g3 = 0.1. Keep g1, g0; best biased: e0 (0.881), e2 (0.622).
  const Routing r = route_tokens(c, logits, bias, 1);
  std::set<int> got = {r.expert[0], r.expert[1]};
  EXPECT_EQ(got, (std::set<int>{0, 2}));
  const double s0 = sig(2.0), s2 = sig(0.5);
  for (int j = 0; j < 2; ++j) {
    const double s = r.expert[size_t(j)] == 0 ? s0 : s2;
    EXPECT_NEAR(r.weight[size_t(j)], 2.5 * s / (s0 + s2), 1e-6);
  }
}

TEST(Routing, SoftmaxGreedyV2) {
  ModelConfig c;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.scoring_func = "softmax";
  c.topk_method = "greedy";
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 1.5;
  const float logits[4] = {0.1f, 1.0f, -0.5f, 0.7f};
  const Routing r = route_tokens(c, logits, nullptr, 1);
  double z = 0;
  for (float l : logits) z += std::exp(double(l));
  EXPECT_EQ(r.expert[0], 1);
  EXPECT_EQ(r.expert[1], 3);
  EXPECT_NEAR(r.weight[0], 1.5 * std::exp(1.0) / z, 1e-6);
  EXPECT_NEAR(r.weight[1], 1.5 * std::exp(0.7) / z, 1e-6);
}

TEST(Threads, ResizingThePoolAfterWorkIsSafe) {
  // Workers created by a resize must not replay the previous job.
  std::atomic<int64_t> sum{0};
  parallel_for(1000, [&](int64_t a, int64_t b, int) { sum += b - a; });
  EXPECT_EQ(sum.load(), 1000);
  const int n = num_threads();
  for (int threads : {1, 3, n}) {
    set_num_threads(threads);
    sum = 0;
    parallel_for(1000, [&](int64_t a, int64_t b, int) { sum += b - a; });
    EXPECT_EQ(sum.load(), 1000) << threads << " threads";
  }
}

TEST(Threads, OversubscribedPoolRunsEachChunkOnceAndWaits) {
  // More workers than cores, and jobs alternating between few and many chunks: a worker
  // descheduled between seeing a job and reading its size once ran a later job's chunk twice
  // and let the caller return early (a crash in training with 4 threads on 2 cores). Each
  // index must be visited exactly once, and all of it before parallel_for returns.
  const int n = num_threads();
  set_num_threads(8);
  std::vector<int> hits;
  for (int rep = 0; rep < 1500; ++rep) {
    const int64_t len = rep % 3 == 0 ? 2 : 64 + rep % 50;
    hits.assign(size_t(len), 0);
    parallel_for(
        len,
        [&](int64_t a, int64_t b, int) {
          for (int64_t i = a; i < b; ++i) ++hits[size_t(i)];
        },
        1);
    for (int64_t i = 0; i < len; ++i) ASSERT_EQ(hits[size_t(i)], 1) << "rep " << rep << " i " << i;
  }
  set_num_threads(n);
}
