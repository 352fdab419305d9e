// The FP8 recipe (src/train/fp8.h, TRAINING_SPEC §4):
//  - E4M3 conversion: every code round-trips, saturation at ±448, NaN; the vectorisable
//    converter is bit-identical to core/dtype.h's (itself checked against CUDA's __NV_SATFINITE
//    conversion in test_dtype.cpp) on every rounding boundary;
//  - tile scales (amax/448, power-of-two variant) and the per-element round-trip bound
//    |x̂ − x| ≤ max(2^-4·|x|, 2^-10·scale) for every tiling, partial edge tiles included;
//  - the three GEMM passes in FP32-promotion mode against float64 sums of the dequantised
//    operands;
//  - the Hopper accumulator model: bit-identical to an independent per-element reimplementation
//    of the rule in fp8.h (floating-point floor/trunc here, integer shifts there), and its
//    error against float64: promoting every 128 stays at the accumulator's precision for any K,
//    never promoting grows with K.
#include "train/fp8.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "train/ops.h"

using namespace dsv3;
using namespace dsv3::train::fp8;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Normal entries; `outliers` columns (channels) are 100× larger, as in LLM activations.
std::vector<float> randn(int64_t rows, int64_t cols, uint32_t seed, int outliers = 0,
                         float mean = 0.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(mean, 1.0f);
  std::vector<float> v(size_t(rows * cols));
  for (auto& x : v) x = d(g);
  for (int o = 0; o < outliers; ++o) {
    const int64_t c = int64_t(g() % uint32_t(cols));
    for (int64_t r = 0; r < rows; ++r) v[size_t(r * cols + c)] *= 100.0f;
  }
  return v;
}

GemmOptions hopper(int64_t promote_every) {
  GemmOptions o;
  o.accum = Accum::kHopperEmulated;
  o.promote_every = promote_every;
  return o;
}

bool is_pow2(float s) {
  int e;
  return std::frexp(s, &e) == 0.5f;
}

// Relative Frobenius error of got against ref.
double rel_err(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

// The tile edges the test expects, written independently of Quantized::tile_rows/cols.
void tile_dims(Granularity g, int64_t rows, int64_t cols, int64_t* tr, int64_t* tc) {
  switch (g) {
    case Granularity::kTensor:
      *tr = rows, *tc = cols;
      return;
    case Granularity::kRowTiles:
      *tr = 1, *tc = 128;
      return;
    case Granularity::kColTiles:
      *tr = 128, *tc = 1;
      return;
    case Granularity::kBlocks:
      *tr = 128, *tc = 128;
      return;
  }
}

const Granularity kAllTilings[] = {Granularity::kTensor, Granularity::kRowTiles,
                                   Granularity::kColTiles, Granularity::kBlocks};

// ---- E4M3 ----

TEST(Fp8, AllE4M3CodesRoundTrip) {
  int nans = 0;
  for (int c = 0; c < 256; ++c) {
    const float v = e4m3_to_f32(f8_t(c));
    if (std::isnan(v)) {
      ++nans;
      EXPECT_TRUE(c == 0x7f || c == 0xff) << c;
      EXPECT_EQ(f32_to_e4m3(v), 0x7f);
      continue;
    }
    EXPECT_EQ(f32_to_e4m3(v), c) << c;
    EXPECT_LE(std::fabs(v), 448.0f);
  }
  EXPECT_EQ(nans, 2);
}

TEST(Fp8, SaturationAndNaN) {
  // __NV_SATFINITE: anything beyond the largest finite value, infinities included, becomes
  // ±448 (0x7E / 0xFE); NaN becomes the unsigned NaN code 0x7F.
  for (float x : {448.0f, 449.0f, 463.99f, 464.0f, 480.0f, 512.0f, 1e4f, 3e38f, kInf}) {
    EXPECT_EQ(f32_to_e4m3(x), 0x7e) << x;
    EXPECT_EQ(f32_to_e4m3(-x), 0xfe) << x;
  }
  EXPECT_EQ(f32_to_e4m3(416.0f), 0x7d);  // 416 is a code; 432 ties to even (448, 0x7E)
  EXPECT_EQ(f32_to_e4m3(432.0f), 0x7e);
  EXPECT_EQ(f32_to_e4m3(431.99f), 0x7d);
  for (float x : {kNaN, -kNaN}) EXPECT_EQ(f32_to_e4m3(x), 0x7f);
  EXPECT_EQ(f32_to_e4m3(-0.0f), 0x80);
  EXPECT_EQ(f32_to_e4m3(0x1p-10f), 0x00);   // ties to even: 0
  EXPECT_EQ(f32_to_e4m3(0x1.8p-9f), 0x02);  // 1.5 quanta ties to 2
  EXPECT_EQ(f32_to_e4m3(0x1.fp-7f), 0x08);  // rounds up into the first normal
}

// The generic rounding (core/dtype.h's, as f16 and E5M2 use it: frexp, ldexp, nearbyint),
// saturated at 448: the reference f32_to_e4m3's bit tricks are held to.
f8_t e4m3_reference(float f) {
  return detail::saturating_code<4, 3>(f, 0x7eu);
}

TEST(Fp8, ConverterMatchesTheGenericRoundingOnEveryBoundary) {
  // Every float whose low 16 bits are one of these patterns: that covers every rounding
  // midpoint of E4M3 (normal midpoints have bits 0..19 zero but bit 19, subnormal ones have
  // even fewer bits) and the values one ulp either side of them.
  int64_t checked = 0;
  for (uint32_t hi = 0; hi < 65536; ++hi)
    for (uint32_t lo : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, 0x1234u}) {
      const float x = std::bit_cast<float>((hi << 16) | lo);
      ASSERT_EQ(f32_to_e4m3(x), e4m3_reference(x)) << std::hexfloat << x;
      ++checked;
    }
  std::mt19937 g(1);
  for (int i = 0; i < 1000000; ++i) {
    const float x = std::bit_cast<float>(uint32_t(g()));
    ASSERT_EQ(f32_to_e4m3(x), e4m3_reference(x)) << std::hexfloat << x;
  }
  EXPECT_EQ(checked, 65536 * 7);
}

// ---- scales and quantisation ----

TEST(Fp8, TileScale) {
  EXPECT_EQ(tile_scale(0.0f, false), 1.0f);
  EXPECT_EQ(tile_scale(0.0f, true), 1.0f);
  EXPECT_EQ(tile_scale(448.0f, false), 1.0f);
  EXPECT_EQ(tile_scale(448.0f, true), 1.0f);
  EXPECT_EQ(tile_scale(448.5f, true), 2.0f);
  EXPECT_EQ(tile_scale(224.0f, true), 0.5f);
  EXPECT_EQ(tile_scale(1.0f, false), 1.0f / 448.0f);
  std::mt19937 g(2);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  for (int i = 0; i < 20000; ++i) {
    const float amax = std::ldexp(mant(g), int(g() % 200) - 100);
    const float s = tile_scale(amax, false);
    EXPECT_EQ(s, amax / 448.0f);
    const float p = tile_scale(amax, true);
    ASSERT_TRUE(is_pow2(p)) << amax;
    EXPECT_LE(amax / p, 448.0f) << amax;        // never overflows (x / p is exact)
    EXPECT_GT(amax / (p / 2), 448.0f) << amax;  // and is the smallest such power of two
  }
  // Tiny tiles: the scale stays a normal float so 1/scale is finite.
  EXPECT_EQ(tile_scale(1e-44f, false), FLT_MIN);
  EXPECT_EQ(tile_scale(1e-44f, true), FLT_MIN);
}

// The round-trip bound for every element, the scales against a brute-force amax per tile, and
// the tile's largest element landing on ±448 (the full E4M3 range is used).
void check_quantized(const std::vector<float>& x, int64_t rows, int64_t cols, Granularity gr,
                     bool pow2) {
  SCOPED_TRACE(testing::Message() << granularity_name(gr) << " " << rows << "x" << cols
                                  << (pow2 ? " pow2" : ""));
  const Quantized q = quantize(x.data(), rows, cols, gr, pow2);
  ASSERT_EQ(q.codes.size(), size_t(rows * cols));
  int64_t tr = 1, tc = 1;
  tile_dims(gr, rows, cols, &tr, &tc);
  const int64_t sr = (rows + tr - 1) / tr, sc = (cols + tc - 1) / tc;
  ASSERT_EQ(q.scales.size(), size_t(sr * sc));
  const std::vector<float> deq = q.dequantize();
  for (int64_t bi = 0; bi < sr; ++bi)
    for (int64_t bj = 0; bj < sc; ++bj) {
      float amax = 0;
      for (int64_t r = bi * tr; r < std::min(rows, (bi + 1) * tr); ++r)
        for (int64_t c = bj * tc; c < std::min(cols, (bj + 1) * tc); ++c)
          amax = std::max(amax, std::fabs(x[size_t(r * cols + c)]));
      const float s = q.scales[size_t(bi * sc + bj)];
      ASSERT_EQ(s, tile_scale(amax, pow2)) << bi << "," << bj;
      if (pow2) {
        ASSERT_TRUE(is_pow2(s));
      }
      int top = 0;
      for (int64_t r = bi * tr; r < std::min(rows, (bi + 1) * tr); ++r)
        for (int64_t c = bj * tc; c < std::min(cols, (bj + 1) * tc); ++c) {
          const size_t i = size_t(r * cols + c);
          const float code = std::fabs(e4m3_to_f32(q.codes[i]));
          top = std::max(top, int(code));
          // E4M3 keeps 3 mantissa bits: a normal y = x/s is within half a step, 2^-4·|y|; a
          // subnormal within half the quantum 2^-9. (1 + 2^-20) absorbs the f32 roundings of
          // x / s and code · s.
          const double bound =
              std::max(0x1p-4 * std::fabs(x[i]), 0x1p-10 * double(s)) * (1 + 0x1p-20);
          ASSERT_LE(std::fabs(double(deq[i]) - x[i]), bound) << r << "," << c;
          ASSERT_EQ(deq[i], q.value(r, c));
          if (pow2) {
            ASSERT_LE(std::fabs(x[i]) / s, 448.0f);  // never saturates
          }
        }
      if (amax > 0 && !pow2) {
        EXPECT_EQ(top, 448);
      }
      if (amax > 0 && pow2) {
        EXPECT_GE(top, 224);
      }
    }
}

TEST(Fp8, RoundTripBoundEveryTilingAndEdgeTiles) {
  // Shapes with partial tiles at both edges, single rows/columns, exact multiples.
  const std::pair<int64_t, int64_t> shapes[] = {{300, 260}, {1, 1},     {129, 1},
                                                {5, 300},   {256, 128}, {130, 257}};
  uint32_t seed = 10;
  for (auto [rows, cols] : shapes) {
    // Wide dynamic range: log-uniform magnitudes over 2^-20..2^20 so tiles hit subnormals.
    std::mt19937 g(seed++);
    std::vector<float> x(size_t(rows * cols));
    for (auto& v : x)
      v = std::ldexp(g() & 1 ? 1.0f : -1.0f, int(g() % 40) - 20) * (1 + (g() % 97) / 97.0f);
    const std::vector<float> y = randn(rows, cols, seed++, 3);
    for (Granularity gr : kAllTilings)
      for (bool pow2 : {false, true}) {
        check_quantized(x, rows, cols, gr, pow2);
        check_quantized(y, rows, cols, gr, pow2);
      }
  }
}

TEST(Fp8, ZeroTilesAndNonFinite) {
  const int64_t rows = 2, cols = 300;
  std::vector<float> x(size_t(rows * cols), 0.0f);
  for (int64_t c = 128; c < 256; ++c) x[size_t(c)] = 1.0f;  // row 0, tile 1
  x[size_t(cols + 5)] = kNaN;                               // row 1, tile 0
  x[size_t(cols + 130)] = kInf;                             // row 1, tile 1
  x[size_t(cols + 131)] = 3.0f;
  x[size_t(cols + 260)] = -2.0f;  // row 1, tile 2
  const Quantized q = quantize(x.data(), rows, cols, Granularity::kRowTiles);
  EXPECT_EQ(q.scales[0], 1.0f);  // an all-zero tile
  EXPECT_EQ(q.value(0, 0), 0.0f);
  EXPECT_FLOAT_EQ(q.value(0, 200), 1.0f);
  EXPECT_TRUE(std::isnan(q.value(1, 5)));    // NaN stays NaN ...
  EXPECT_EQ(q.value(1, 6), 0.0f);            // ... and leaves its tile's other elements alone
  EXPECT_TRUE(std::isnan(q.value(1, 130)));  // inf: the tile's scale is inf, all of it NaN
  EXPECT_TRUE(std::isnan(q.value(1, 131)));
  EXPECT_TRUE(std::isnan(q.value(1, 140)));
  EXPECT_FLOAT_EQ(q.value(1, 260), -2.0f);  // other tiles are unaffected
}

TEST(Fp8, RequantizeToColumnTiles) {
  // The report's Wgrad path: activations cached as 1×128 tiles, re-tiled 128×1.
  const int64_t rows = 200, cols = 150;
  const std::vector<float> x = randn(rows, cols, 3, 2);
  const Quantized a = quantize(x.data(), rows, cols, Granularity::kRowTiles);
  const Quantized b = requantize(a, Granularity::kColTiles);
  EXPECT_EQ(b.granularity, Granularity::kColTiles);
  const std::vector<float> xa = a.dequantize();
  check_quantized(xa, rows, cols, Granularity::kColTiles, false);
  const Quantized direct = quantize(xa.data(), rows, cols, Granularity::kColTiles);
  EXPECT_EQ(b.codes, direct.codes);
  EXPECT_EQ(b.scales, direct.scales);
}

// ---- GEMMs, FP32 promotion ----

// float64 op(A)·op(B) from the dequantised operands (the stored layouts of fp8::gemm).
std::vector<double> ref_gemm(Op opa, const Quantized& a, Op opb, const Quantized& b,
                             std::vector<double>* abs_sum = nullptr) {
  const int64_t M = opa == Op::kN ? a.rows : a.cols, K = opa == Op::kN ? a.cols : a.rows;
  const int64_t N = opb == Op::kN ? b.cols : b.rows;
  std::vector<double> c(size_t(M * N), 0.0);
  if (abs_sum) abs_sum->assign(size_t(M * N), 0.0);
  const std::vector<float> da = a.dequantize(), db = b.dequantize();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, sa = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double va = da[size_t(opa == Op::kN ? m * K + k : k * M + m)];
        const double vb = db[size_t(opb == Op::kN ? k * N + n : n * K + k)];
        s += va * vb;
        sa += std::fabs(va * vb);
      }
      c[size_t(m * N + n)] = s;
      if (abs_sum) (*abs_sum)[size_t(m * N + n)] = sa;
    }
  return c;
}

// Every element within tol·Σ|a·b| of the float64 reference (cancellation-safe), and the
// relative Frobenius error within tol.
void expect_close(const std::vector<float>& got, const std::vector<double>& ref,
                  const std::vector<double>& abs_sum, double tol) {
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i)
    ASSERT_LE(std::fabs(double(got[i]) - ref[i]), tol * abs_sum[i] + 1e-30) << i;
  EXPECT_LE(rel_err(got, ref), tol);
}

TEST(Fp8, ThreePassesWithFp32PromotionMatchFloat64) {
  // Partial tiles along every axis; outlier channels in the activations.
  const int64_t rows = 200, in = 300, out = 130;
  const std::vector<float> x = randn(rows, in, 4, 3), W = randn(out, in, 5),
                           dy = randn(rows, out, 6, 2);
  for (bool pow2 : {false, true}) {
    SCOPED_TRACE(pow2 ? "pow2 scales" : "amax/448 scales");
    Recipe r;
    r.pow2_scales = pow2;
    std::vector<double> abs_sum;
    // Fprop: y = x·Wᵀ, written.
    {
      const Quantized xq = quantize(x.data(), rows, in, Granularity::kRowTiles, pow2);
      const Quantized wq = quantize(W.data(), out, in, Granularity::kBlocks, pow2);
      std::vector<float> y(size_t(rows * out), 7.0f);
      fprop(x.data(), W.data(), rows, in, out, y.data(), r);
      expect_close(y, ref_gemm(Op::kN, xq, Op::kT, wq, &abs_sum), abs_sum, 1e-6);
      // and the recipe's FP8 error against the unquantised f32 product is a few percent at most
      std::vector<float> y32(y.size());
      train::linear_forward<float>(x.data(), W.data(), rows, in, out, y32.data());
      EXPECT_LT(rel_err(y, std::vector<double>(y32.begin(), y32.end())), 0.05);
    }
    // Dgrad: dx += dy·W, adds.
    {
      const Quantized dq = quantize(dy.data(), rows, out, Granularity::kRowTiles, pow2);
      const Quantized wq = quantize(W.data(), out, in, Granularity::kBlocks, pow2);
      std::vector<float> dx(size_t(rows * in), 0.5f);
      dgrad(dy.data(), W.data(), rows, in, out, dx.data(), r);
      std::vector<double> ref = ref_gemm(Op::kN, dq, Op::kN, wq, &abs_sum);
      for (auto& v : ref) v += 0.5;
      for (auto& v : abs_sum) v += 0.5;
      expect_close(dx, ref, abs_sum, 1e-6);
    }
    // Wgrad: dW += dyᵀ·x with both operands in 128×1 tiles along the tokens.
    {
      const Quantized dq = quantize(dy.data(), rows, out, Granularity::kColTiles, pow2);
      const Quantized xq = quantize(x.data(), rows, in, Granularity::kColTiles, pow2);
      std::vector<float> dW(size_t(out * in), -1.0f);
      wgrad(x.data(), dy.data(), rows, in, out, dW.data(), r);
      std::vector<double> ref = ref_gemm(Op::kT, dq, Op::kN, xq, &abs_sum);
      for (auto& v : ref) v -= 1.0;
      for (auto& v : abs_sum) v += 1.0;
      expect_close(dW, ref, abs_sum, 1e-6);
    }
  }
}

TEST(Fp8, GemmEveryLayoutAndTiling) {
  // Every (opa, opb) with every tiling allowed along K, K spanning several partial chunks.
  const int64_t M = 70, N = 90, K = 333;
  uint32_t seed = 20;
  for (Op opa : {Op::kN, Op::kT})
    for (Op opb : {Op::kN, Op::kT}) {
      const std::vector<float> a = randn(opa == Op::kN ? M : K, opa == Op::kN ? K : M, seed++, 2);
      const std::vector<float> b = randn(opb == Op::kN ? K : N, opb == Op::kN ? N : K, seed++);
      const Granularity along_k_a = opa == Op::kN ? Granularity::kRowTiles : Granularity::kColTiles;
      const Granularity along_k_b = opb == Op::kT ? Granularity::kRowTiles : Granularity::kColTiles;
      for (Granularity ga : {Granularity::kTensor, along_k_a, Granularity::kBlocks})
        for (Granularity gb : {Granularity::kTensor, along_k_b, Granularity::kBlocks}) {
          const Quantized qa = quantize(a.data(), opa == Op::kN ? M : K, opa == Op::kN ? K : M, ga);
          const Quantized qb = quantize(b.data(), opb == Op::kN ? K : N, opb == Op::kN ? N : K, gb);
          std::vector<float> c(size_t(M * N));
          gemm(opa, qa, opb, qb, c.data(), false);
          std::vector<double> abs_sum;
          const std::vector<double> ref = ref_gemm(opa, qa, opb, qb, &abs_sum);
          expect_close(c, ref, abs_sum, 1e-6);
        }
    }
}

TEST(Fp8, GemmRejectsScalesVaryingAlongK) {
  const std::vector<float> a = randn(64, 256, 1), b = randn(32, 256, 2);
  const Quantized qa = quantize(a.data(), 64, 256, Granularity::kRowTiles);
  const Quantized qa_bad = quantize(a.data(), 64, 256, Granularity::kColTiles);
  const Quantized qb = quantize(b.data(), 32, 256, Granularity::kBlocks);
  std::vector<float> c(64 * 32);
  EXPECT_THROW(gemm(Op::kN, qa_bad, Op::kT, qb, c.data(), false), Error);
  EXPECT_THROW(gemm(Op::kN, qa, Op::kN, qb, c.data(), false), Error);  // K mismatch
  GemmOptions hop = hopper(256);
  EXPECT_THROW(gemm(Op::kN, qa, Op::kT, qb, c.data(), false, hop), Error);
  hop.promote_every = 0;
  EXPECT_THROW(gemm(Op::kN, qa, Op::kT, qb, c.data(), false, hop), Error);
  hop.promote_every = 64;  // windows inside the scale chunks: fine
  EXPECT_NO_THROW(gemm(Op::kN, qa, Op::kT, qb, c.data(), false, hop));
}

TEST(Fp8, EmptyAndZeroK) {
  std::vector<float> c(6, 5.0f);
  const Quantized a = quantize(nullptr, 2, 0, Granularity::kRowTiles);
  const Quantized b = quantize(nullptr, 3, 0, Granularity::kBlocks);
  gemm(Op::kN, a, Op::kT, b, c.data(), true);
  EXPECT_EQ(c[0], 5.0f);
  gemm(Op::kN, a, Op::kT, b, c.data(), false);
  EXPECT_EQ(c[5], 0.0f);
}

// ---- BF16 baseline ----

TEST(Fp8, Bf16Baseline) {
  const int64_t rows = 33, in = 70, out = 20;
  const std::vector<float> x = randn(rows, in, 8), W = randn(out, in, 9), dy = randn(rows, out, 10);
  std::vector<float> xb(x.size()), wb(W.size()), db(dy.size());
  round_to_bf16(x.data(), rows * in, xb.data());
  round_to_bf16(W.data(), out * in, wb.data());
  round_to_bf16(dy.data(), rows * out, db.data());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(xb[i], bf16_to_f32(f32_to_bf16(x[i])));
  Recipe r;
  r.precision = Precision::kBf16;
  std::vector<float> y(size_t(rows * out)), y_ref(y.size());
  fprop(x.data(), W.data(), rows, in, out, y.data(), r);
  train::linear_forward<float>(xb.data(), wb.data(), rows, in, out, y_ref.data());
  EXPECT_EQ(y, y_ref);
  std::vector<float> dx(x.size(), 1.0f), dW(W.size(), 2.0f), dx_ref = dx, dW_ref = dW;
  linear_backward(x.data(), W.data(), dy.data(), rows, in, out, dx.data(), dW.data(), r);
  train::linear_backward<float>(xb.data(), wb.data(), db.data(), rows, in, out, dx_ref.data(),
                                dW_ref.data());
  EXPECT_EQ(dx, dx_ref);
  EXPECT_EQ(dW, dW_ref);
}

// ---- the Hopper accumulator model ----

// The rule of fp8.h, written per element in double arithmetic with floor/trunc (exact here:
// every quantity is a multiple of 2^-18 below 2^35, within double's 53 bits).
float emulate_dot(const std::vector<double>& va, const std::vector<double>& vb,
                  const std::vector<float>& sa, const std::vector<float>& sb, int64_t window,
                  int64_t group, int p, bool toward_zero) {
  const int64_t K = int64_t(va.size());
  if (window <= 0 || window > K) window = K;
  float acc = 0.0f;
  for (int64_t w0 = 0; w0 < K; w0 += window) {
    double c = 0;
    for (int64_t g0 = w0; g0 < std::min(K, w0 + window); g0 += group) {
      const int64_t g1 = std::min({K, w0 + window, g0 + group});
      int E = std::numeric_limits<int>::min();
      for (int64_t k = g0; k < g1; ++k)
        if (va[size_t(k)] * vb[size_t(k)] != 0)
          E = std::max(E, std::ilogb(va[size_t(k)] * vb[size_t(k)]));
      double sum = 0;
      for (int64_t k = g0; k < g1; ++k) {
        const double prod = va[size_t(k)] * vb[size_t(k)];
        if (prod == 0) continue;
        const double aligned = std::ldexp(prod, p - E);
        sum += std::ldexp(toward_zero ? std::trunc(aligned) : std::floor(aligned), E - p);
      }
      const double t = c + sum;
      c = t == 0 ? 0 : std::ldexp(std::trunc(std::ldexp(t, p - std::ilogb(t))), std::ilogb(t) - p);
    }
    const float s = sa[size_t(w0 / 128)] * sb[size_t(w0 / 128)];
    acc = std::fma(s, float(c), acc);
  }
  return acc;
}

// Compares fp8::gemm in kHopperEmulated mode with emulate_dot on every output element.
void check_emulation_exact(Op opa, const Quantized& a, Op opb, const Quantized& b,
                           const GemmOptions& opt) {
  const int64_t M = opa == Op::kN ? a.rows : a.cols, K = opa == Op::kN ? a.cols : a.rows;
  const int64_t N = opb == Op::kN ? b.cols : b.rows;
  std::vector<float> c(size_t(M * N));
  gemm(opa, a, opb, b, c.data(), false, opt);
  const int64_t chunks = (K + 127) / 128;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> va(static_cast<size_t>(K)), vb(static_cast<size_t>(K));
      std::vector<float> sa(static_cast<size_t>(chunks)), sb(static_cast<size_t>(chunks));
      for (int64_t k = 0; k < K; ++k) {
        const int64_t ar = opa == Op::kN ? m : k, ac = opa == Op::kN ? k : m;
        const int64_t br = opb == Op::kN ? k : n, bc = opb == Op::kN ? n : k;
        va[size_t(k)] = e4m3_to_f32(a.codes[size_t(ar * a.cols + ac)]);
        vb[size_t(k)] = e4m3_to_f32(b.codes[size_t(br * b.cols + bc)]);
        if (k % 128 == 0)
          sa[size_t(k / 128)] = a.scale(ar, ac), sb[size_t(k / 128)] = b.scale(br, bc);
      }
      const float want = emulate_dot(va, vb, sa, sb, opt.promote_every, opt.group,
                                     opt.mantissa_bits, opt.align_toward_zero);
      ASSERT_EQ(std::bit_cast<uint32_t>(c[size_t(m * N + n)]), std::bit_cast<uint32_t>(want))
          << "m " << m << " n " << n << ": " << c[size_t(m * N + n)] << " vs " << want;
    }
}

TEST(Fp8, HopperEmulationMatchesIndependentRule) {
  struct Case {
    int64_t K;
    GemmOptions opt;
    bool per_tensor;
  };
  const Case cases[] = {
      {1000,
       {Accum::kHopperEmulated, 128, 13, 32, false},
       false},                                                   // the recipe, K with partial chunk
      {1000, {Accum::kHopperEmulated, 0, 13, 32, false}, true},  // never promote
      {777, {Accum::kHopperEmulated, 64, 13, 32, false}, false},
      {500, {Accum::kHopperEmulated, 96, 10, 16, false}, true},
      {640, {Accum::kHopperEmulated, 128, 20, 32, false}, false},
      {300, {Accum::kHopperEmulated, 1000, 4, 7, false}, true},
      {1000, {Accum::kHopperEmulated, 128, 13, 32, true}, false},  // magnitudes truncated
      {1000, {Accum::kHopperEmulated, 0, 12, 32, true}, true},
  };
  uint32_t seed = 30;
  for (const Case& cs : cases) {
    SCOPED_TRACE(testing::Message() << "K " << cs.K << " promote " << cs.opt.promote_every << " p "
                                    << cs.opt.mantissa_bits << " group " << cs.opt.group);
    const Granularity ga = cs.per_tensor ? Granularity::kTensor : Granularity::kRowTiles;
    const Granularity gb = cs.per_tensor ? Granularity::kTensor : Granularity::kBlocks;
    // random, outlier channels, positive (no cancellation), and a wide dynamic range
    std::vector<std::vector<float>> as = {randn(9, cs.K, seed++), randn(9, cs.K, seed++, 4),
                                          randn(9, cs.K, seed++, 0, 3.0f)};
    std::mt19937 g(seed++);
    std::vector<float> wide(size_t(9 * cs.K));
    for (auto& v : wide) v = std::ldexp(g() & 1 ? 1.0f : -1.0f, int(g() % 30) - 15);
    as.push_back(wide);
    const std::vector<float> b = randn(11, cs.K, seed++, 2, 0.5f);
    const Quantized qb = quantize(b.data(), 11, cs.K, gb);
    for (const auto& a : as)
      check_emulation_exact(Op::kN, quantize(a.data(), 9, cs.K, ga), Op::kT, qb, cs.opt);
  }
}

TEST(Fp8, HopperEmulationOfThePasses) {
  // fprop / dgrad / wgrad with the recipe's tilings and promotion every 128 are the same
  // emulated GEMMs on their quantised operands (transposed layouts included).
  const int64_t rows = 150, in = 260, out = 140;
  const std::vector<float> x = randn(rows, in, 40, 2), W = randn(out, in, 41),
                           dy = randn(rows, out, 42);
  Recipe r;
  r.gemm.accum = Accum::kHopperEmulated;
  const GemmOptions& o = r.gemm;
  check_emulation_exact(Op::kN, quantize(x.data(), rows, in, Granularity::kRowTiles), Op::kT,
                        quantize(W.data(), out, in, Granularity::kBlocks), o);
  check_emulation_exact(Op::kN, quantize(dy.data(), rows, out, Granularity::kRowTiles), Op::kN,
                        quantize(W.data(), out, in, Granularity::kBlocks), o);
  check_emulation_exact(Op::kT, quantize(dy.data(), rows, out, Granularity::kColTiles), Op::kN,
                        quantize(x.data(), rows, in, Granularity::kColTiles), o);
  // and the pass functions route to them
  std::vector<float> y(size_t(rows * out)), y2(y.size());
  fprop(x.data(), W.data(), rows, in, out, y.data(), r);
  gemm(Op::kN, quantize(x.data(), rows, in, Granularity::kRowTiles), Op::kT,
       quantize(W.data(), out, in, Granularity::kBlocks), y2.data(), false, o);
  EXPECT_EQ(y, y2);
  std::vector<float> dW(size_t(out * in), 1.0f), dW2(dW.size());
  wgrad(x.data(), dy.data(), rows, in, out, dW.data(), r);
  gemm(Op::kT, quantize(dy.data(), rows, out, Granularity::kColTiles), Op::kN,
       quantize(x.data(), rows, in, Granularity::kColTiles), dW2.data(), false, o);
  for (size_t i = 0; i < dW.size(); ++i) ASSERT_EQ(dW[i], 1.0f + dW2[i]);
}

// Relative Frobenius error against float64 of a [M, K]·[N, K]ᵀ product of per-tensor
// quantised operands, by accumulation mode.
double accumulation_error(const std::vector<float>& a, const std::vector<float>& b, int64_t M,
                          int64_t N, int64_t K, const GemmOptions& opt) {
  const Quantized qa = quantize(a.data(), M, K, Granularity::kTensor);
  const Quantized qb = quantize(b.data(), N, K, Granularity::kTensor);
  std::vector<float> c(size_t(M * N));
  gemm(Op::kN, qa, Op::kT, qb, c.data(), false, opt);
  return rel_err(c, ref_gemm(Op::kN, qa, Op::kT, qb));
}

// Per-tensor operands (so both paths multiply the same codes), error against float64 of those
// dequantised operands. Promoting every 128 holds each partial sum to one 128-chunk, so the
// error stays at the accumulator's precision (~2^-13) whatever K is; with the report's floor
// alignment a bias of the truncated products grows with K on zero-mean data (≈ √K), still well
// below the naive path. Never promoting truncates an accumulator that keeps growing: the error
// grows about linearly with K (measured here: ~0.3% at K = 4096, ~1.2% at 16384).
TEST(Fp8, PromotionEvery128BoundsTheAccumulationError) {
  const int64_t M = 8, N = 8;
  struct Data {
    const char* name;
    float mean;
    int outliers;
  };
  for (bool toward_zero : {false, true}) {
    GemmOptions promote = hopper(128), never = hopper(0);
    promote.align_toward_zero = never.align_toward_zero = toward_zero;
    for (Data d : {Data{"zero-mean", 0.0f, 0}, Data{"positive-mean", 1.0f, 0},
                   Data{"outlier channels", 0.5f, 8}}) {
      SCOPED_TRACE(testing::Message() << d.name << (toward_zero ? ", align rz" : ", align floor"));
      double never_4096 = 0;
      for (int64_t K : {4096, 16384}) {
        const std::vector<float> a = randn(M, K, 50 + uint32_t(K), d.outliers, d.mean);
        const std::vector<float> b = randn(N, K, 60 + uint32_t(K), 0, d.mean);
        const double e32 = accumulation_error(a, b, M, N, K, GemmOptions{});
        const double ep = accumulation_error(a, b, M, N, K, promote);
        const double en = accumulation_error(a, b, M, N, K, never);
        std::printf("  align %-5s %-17s K %5lld: fp32 %.2e  promote/128 %.2e  never %.2e\n",
                    toward_zero ? "rz" : "floor", d.name, (long long)K, e32, ep, en);
        EXPECT_LT(e32, 1e-6) << K;
        EXPECT_LT(ep, toward_zero ? 2.5e-4 : 1.5e-3) << K;
        EXPECT_GT(en, 5 * ep) << K;
        if (K == 4096) {
          EXPECT_GT(en, 2e-3);
          never_4096 = en;
        } else {
          EXPECT_GT(en, 2.5 * never_4096);  // 4× the K, ~4× the error
        }
      }
    }
  }
}

}  // namespace
