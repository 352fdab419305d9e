// FP8 recipe ablations (src/train/fp8.h, TRAINING_SPEC §4), all against float64:
//  (i)   quantisation error of activations with outliers (a few channels, or a few tokens, k×
//        larger), per-tensor scale vs 1×128 tiles: of the dequantised matrix (all elements, and
//        the non-outlier ones) and of the GEMM output y = x·Wᵀ (W per-tensor vs 128×128 blocks);
//  (ii)  accumulation error of the Hopper tensor-core model, promoting every 128 vs never, at
//        K = 512, 4096, 16384 (per-tensor operands, so that both paths see the same codes);
//  (iii) speed of the FP32-promotion FP8 GEMM against plain sgemm at a training shape.
// Usage: bench_fp8   (about 10 s)
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <vector>

#include "core/threads.h"
#include "train/fp8.h"
#include "train/ops.h"

using namespace dsv3;
using namespace dsv3::train::fp8;
using Clock = std::chrono::steady_clock;

namespace {

std::vector<float> randn(int64_t n, uint32_t seed, float mean = 0.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(mean, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

GemmOptions hopper(int64_t promote_every) {
  GemmOptions o;
  o.accum = Accum::kHopperEmulated;
  o.promote_every = promote_every;
  return o;
}

Recipe recipe(Precision p) {
  Recipe r;
  r.precision = p;
  return r;
}

double rel_err(const std::vector<float>& got, const std::vector<double>& ref,
               const std::vector<uint8_t>* mask = nullptr) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (mask && !(*mask)[i]) continue;
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

// float64 a [M, K] · b [N, K]ᵀ.
std::vector<double> ref_abt(const std::vector<float>& a, const std::vector<float>& b, int64_t M,
                            int64_t N, int64_t K) {
  std::vector<double> c(size_t(M * N));
  parallel_for(M, [&](int64_t m0, int64_t m1, int) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += double(a[size_t(m * K + k)]) * b[size_t(n * K + k)];
        c[size_t(m * N + n)] = s;
      }
  });
  return c;
}

void outlier_ablation() {
  const int64_t rows = 512, in = 1024, out = 256;
  const std::vector<float> W = randn(out * in, 2);
  fmt::print(
      "(i) activations x [{}, {}] ~ N(0,1) with outliers scaled k×; y = x·Wᵀ, W [{}, {}] ~ N(0,1)\n"
      "    relative Frobenius error vs float64; 'normal' = the non-outlier elements; 'zero' = "
      "non-zero elements quantised to 0\n",
      rows, in, out, in);
  fmt::print("    {:<22} {:>6}  {:<22} {:>10} {:>10} {:>8} {:>10}\n", "outliers", "k",
             "x / W scales", "x all", "x normal", "zero", "y = x·Wᵀ");
  for (int kind = 0; kind < 2; ++kind) {
    for (float k : {10.0f, 100.0f, 1000.0f, 10000.0f}) {
      std::vector<float> x = randn(rows * in, 1);
      std::vector<uint8_t> normal(x.size(), 1);
      // 4 channels (columns) or 4 tokens (rows), spread out.
      for (int o = 0; o < 4; ++o) {
        if (kind == 0) {
          const int64_t c = 37 + o * 251;
          for (int64_t r = 0; r < rows; ++r)
            x[size_t(r * in + c)] *= k, normal[size_t(r * in + c)] = 0;
        } else {
          const int64_t r = 11 + o * 127;
          for (int64_t c = 0; c < in; ++c)
            x[size_t(r * in + c)] *= k, normal[size_t(r * in + c)] = 0;
        }
      }
      const std::vector<double> x64(x.begin(), x.end());
      const std::vector<double> y64 = ref_abt(x, W, rows, out, in);
      struct Setting {
        const char* name;
        Granularity gx, gw;
        bool pow2;
      };
      for (Setting s :
           {Setting{"per-tensor", Granularity::kTensor, Granularity::kTensor, false},
            Setting{"1x128 / 128x128", Granularity::kRowTiles, Granularity::kBlocks, false},
            Setting{"1x128 / 128x128, pow2", Granularity::kRowTiles, Granularity::kBlocks, true}}) {
        const Quantized xq = quantize(x.data(), rows, in, s.gx, s.pow2);
        const Quantized wq = quantize(W.data(), out, in, s.gw, s.pow2);
        const std::vector<float> xd = xq.dequantize();
        int64_t zeros = 0, nonzero = 0;
        for (size_t i = 0; i < x.size(); ++i)
          if (x[i] != 0) ++nonzero, zeros += xd[i] == 0;
        std::vector<float> y(size_t(rows * out));
        gemm(Op::kN, xq, Op::kT, wq, y.data(), false);
        fmt::print("    {:<22} {:>6g}  {:<22} {:>10.3e} {:>10.3e} {:>7.2f}% {:>10.3e}\n",
                   kind == 0 ? "4 channels" : "4 tokens", k, s.name, rel_err(xd, x64),
                   rel_err(xd, x64, &normal), 100.0 * double(zeros) / double(nonzero),
                   rel_err(y, y64));
      }
    }
  }
}

void accumulation_ablation() {
  const int64_t M = 32, N = 32;
  fmt::print(
      "\n(ii) accumulation: C [{}, {}] = A·Bᵀ, per-tensor E4M3 operands; relative Frobenius error "
      "vs "
      "float64 of the same dequantised operands\n"
      "     Hopper model: 32-product groups aligned to the max exponent, 13 mantissa bits kept "
      "(FP22), promotion to FP32 every N_C\n",
      M, N);
  fmt::print("     {:<16} {:>6} {:>12} {:>14} {:>14} {:>14}\n", "data", "K", "FP32 accum",
             "promote /128", "never promote", "recipe tiles");
  for (int kind = 0; kind < 2; ++kind)
    for (int64_t K : {512, 4096, 16384}) {
      const float mean = kind == 0 ? 0.0f : 1.0f;
      const std::vector<float> a = randn(M * K, 100 + uint32_t(K), mean),
                               b = randn(N * K, 200 + uint32_t(K), mean);
      const Quantized qa = quantize(a.data(), M, K, Granularity::kTensor);
      const Quantized qb = quantize(b.data(), N, K, Granularity::kTensor);
      const std::vector<float> da = qa.dequantize(), db = qb.dequantize();
      const std::vector<double> ref = ref_abt(da, db, M, N, K);
      auto err = [&](const GemmOptions& o) {
        std::vector<float> c(size_t(M * N));
        gemm(Op::kN, qa, Op::kT, qb, c.data(), false, o);
        return rel_err(c, ref);
      };
      // The recipe proper: 1×128 / 128×128 tiles, promotion every 128 (its own reference).
      const Quantized ta = quantize(a.data(), M, K, Granularity::kRowTiles);
      const Quantized tb = quantize(b.data(), N, K, Granularity::kBlocks);
      std::vector<float> ct(size_t(M * N));
      gemm(Op::kN, ta, Op::kT, tb, ct.data(), false, hopper(128));
      const double e_tiles = rel_err(ct, ref_abt(ta.dequantize(), tb.dequantize(), M, N, K));
      fmt::print("     {:<16} {:>6} {:>12.2e} {:>14.2e} {:>14.2e} {:>14.2e}\n",
                 kind == 0 ? "N(0,1)" : "N(1,1)", K, err(GemmOptions{}), err(hopper(128)),
                 err(hopper(0)), e_tiles);
    }
}

// The model's free parameters: the accumulator's mantissa bits p (never promoting, K = 4096,
// the report's ~2% case) and the rounding of the product alignment (promoting, K = 16384).
void accumulator_parameters() {
  const int64_t M = 32, N = 32;
  fmt::print("\n(ii-b) the Hopper model's parameters, per-tensor operands\n");
  for (float mean : {0.0f, 1.0f}) {
    const int64_t K = 4096;
    const std::vector<float> a = randn(M * K, 300, mean), b = randn(N * K, 400, mean);
    const Quantized qa = quantize(a.data(), M, K, Granularity::kTensor);
    const Quantized qb = quantize(b.data(), N, K, Granularity::kTensor);
    const std::vector<double> ref = ref_abt(qa.dequantize(), qb.dequantize(), M, N, K);
    fmt::print("     N({:g},1), K {}, never promote, error by mantissa bits p:", mean, K);
    for (int p : {13, 12, 11, 10, 9}) {
      GemmOptions o = hopper(0);
      o.mantissa_bits = p;
      std::vector<float> c(size_t(M * N));
      gemm(Op::kN, qa, Op::kT, qb, c.data(), false, o);
      fmt::print("  p={} {:.2e}", p, rel_err(c, ref));
    }
    fmt::print("\n");
  }
  for (int64_t K : {512, 4096, 16384}) {
    const std::vector<float> a = randn(M * K, 500 + uint32_t(K)),
                             b = randn(N * K, 600 + uint32_t(K));
    const Quantized qa = quantize(a.data(), M, K, Granularity::kTensor);
    const Quantized qb = quantize(b.data(), N, K, Granularity::kTensor);
    const std::vector<double> ref = ref_abt(qa.dequantize(), qb.dequantize(), M, N, K);
    fmt::print("     N(0,1), K {:>5}, promote /128, product alignment:", K);
    for (bool rz : {false, true}) {
      GemmOptions o = hopper(128);
      o.align_toward_zero = rz;
      std::vector<float> c(size_t(M * N));
      gemm(Op::kN, qa, Op::kT, qb, c.data(), false, o);
      fmt::print("  {} {:.2e}", rz ? "toward zero" : "floor (default)", rel_err(c, ref));
    }
    fmt::print("\n");
  }
}

template <typename F>
double best_ms(F&& f, int reps = 5) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  return best;
}

void speed() {
  const int64_t rows = 2048, in = 1024, out = 256;
  const std::vector<float> x = randn(rows * in, 5), W = randn(out * in, 6),
                           dy = randn(rows * out, 7);
  std::vector<float> y(size_t(rows * out)), dx(size_t(rows * in)), dW(size_t(out * in));
  const double gflop = 2.0 * double(rows) * double(in) * double(out) * 1e-9;
  fmt::print(
      "\n(iii) speed, {} threads: linear rows {} × in {} → out {} ({:.2f} GFLOP per GEMM), best of "
      "5\n",
      num_threads(), rows, in, out, gflop);
  fmt::print("      {:<34} {:>9} {:>9} {:>8}\n", "", "ms", "GFLOP/s", "× sgemm");
  const Recipe fp32r = recipe(Precision::kF32), bf16r = recipe(Precision::kBf16),
               fp8r = recipe(Precision::kFp8);
  const Quantized xq = quantize(x.data(), rows, in, Granularity::kRowTiles);
  const Quantized wq = quantize(W.data(), out, in, Granularity::kBlocks);
  const double base_f = best_ms([&] { fprop(x.data(), W.data(), rows, in, out, y.data(), fp32r); });
  const double base_d =
      best_ms([&] { dgrad(dy.data(), W.data(), rows, in, out, dx.data(), fp32r); });
  const double base_w =
      best_ms([&] { wgrad(x.data(), dy.data(), rows, in, out, dW.data(), fp32r); });
  auto line = [&](const char* name, double ms, double base) {
    fmt::print("      {:<34} {:>9.2f} {:>9.1f} {:>8.2f}\n", name, ms, gflop / ms * 1e3, ms / base);
  };
  line("Fprop sgemm (FP32)", base_f, base_f);
  line("Fprop BF16 inputs",
       best_ms([&] { fprop(x.data(), W.data(), rows, in, out, y.data(), bf16r); }), base_f);
  line("Fprop FP8 (quantise + GEMM)",
       best_ms([&] { fprop(x.data(), W.data(), rows, in, out, y.data(), fp8r); }), base_f);
  line("Fprop FP8 GEMM only (pre-quantised)",
       best_ms([&] { gemm(Op::kN, xq, Op::kT, wq, y.data(), false); }), base_f);
  line("Fprop FP8 quantise x and W only", best_ms([&] {
         const Quantized a = quantize(x.data(), rows, in, Granularity::kRowTiles);
         const Quantized b = quantize(W.data(), out, in, Granularity::kBlocks);
         (void)a, (void)b;
       }),
       base_f);
  line("Dgrad sgemm (FP32)", base_d, base_d);
  line("Dgrad FP8 (quantise + GEMM)",
       best_ms([&] { dgrad(dy.data(), W.data(), rows, in, out, dx.data(), fp8r); }), base_d);
  line("Wgrad sgemm (FP32)", base_w, base_w);
  line("Wgrad FP8 (quantise + GEMM)",
       best_ms([&] { wgrad(x.data(), dy.data(), rows, in, out, dW.data(), fp8r); }), base_w);
}

}  // namespace

int main() {
  const auto t0 = Clock::now();
  outlier_ablation();
  accumulation_ablation();
  accumulator_parameters();
  speed();
  fmt::print("\ntotal {:.1f} s\n", std::chrono::duration<double>(Clock::now() - t0).count());
  return 0;
}
