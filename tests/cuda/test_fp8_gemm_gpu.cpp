// The FP8 prefill path (issue 7): the activation quantiser against the recipe's definition
// (train/fp8.h: 1×128 tiles, scale = max(amax / 448, FLT_MIN), saturating E4M3) code for code,
// cuBLASLt's block-scaled FP8 GEMM against float64 over the same dequantised operands (every
// block and tile of its own magnitude, so a scale read from the wrong place is an O(1) error;
// row counts that are not multiples of 16 and K blocks not of 4: both padded, as cuBLASLt
// wants), the experts' grouped quantisation, and the engine's prefill on a random FP8
// model whose dims are multiples of 128 against its exact F32 path.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "gpu_test_util.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/engine.h"
#include "kernels/cuda/kernels.h"
#include "kernels/linear.h"
#include "kernels/ops.h"
#include "model/init.h"

using namespace dsv3;

namespace {

using gpu_test::device_buffer;
using gpu_test::err_vs_std;
using gpu_test::to_device;
using gpu_test::to_host;

// N(0, 1) values with a magnitude 2^U{-3..3} per 128 × 128 block (tile_rows = 1: per 1×128
// tile), and one all-zero tile and one outlier.
std::vector<float> varied(int64_t rows, int64_t cols, int64_t tile_rows, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> e(-3, 3);
  const int64_t tr = (rows + tile_rows - 1) / tile_rows, tc = (cols + 127) / 128;
  std::vector<float> mag(size_t(tr * tc));
  for (float& m : mag) m = std::ldexp(1.0f, e(rng));
  std::vector<float> v(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      v[size_t(r * cols + c)] = nd(rng) * mag[size_t((r / tile_rows) * tc + c / 128)];
  for (int64_t c = 0; c < std::min<int64_t>(cols, 128); ++c) v[size_t(c)] = 0.0f;
  if (rows > 1) v[size_t(cols + 3)] = 1e4f;
  return v;
}

// The recipe's 1×128 tiles, written out from its definition, for x's rows `src` (in order)
// padded to `padded` rows: codes [padded, k] (padding 0), scales [kb][padded] (padding 1).
void quantize_reference(const std::vector<float>& x, int64_t k, const std::vector<int64_t>& src,
                        int64_t padded, std::vector<uint8_t>* q, std::vector<float>* s) {
  const int64_t kb = k / 128;
  q->assign(size_t(padded * k), 0);
  s->assign(size_t(kb * padded), 1.0f);
  for (int64_t r = 0; r < int64_t(src.size()); ++r)
    for (int64_t b = 0; b < kb; ++b) {
      const float* row = x.data() + src[size_t(r)] * k;
      float amax = 0;
      for (int64_t c = b * 128; c < b * 128 + 128; ++c) amax = std::max(amax, std::fabs(row[c]));
      const float scale = amax > 0 ? std::max(amax / kE4M3Max, FLT_MIN) : 1.0f;
      (*s)[size_t(b * padded + r)] = scale;
      for (int64_t c = b * 128; c < b * 128 + 128; ++c)
        (*q)[size_t(r * k + c)] = f32_to_e4m3(row[c] / scale);
    }
}

std::vector<int64_t> iota_rows(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = i;
  return v;
}

int64_t round16(int64_t n) {
  return (n + 15) / 16 * 16;
}

struct Fp8Case {
  int64_t rows, n, k;
};

class Fp8GemmGpu : public ::testing::TestWithParam<Fp8Case> {};

TEST_P(Fp8GemmGpu, QuantiserIsExactAndGemmMatchesFloat64) {
  SKIP_WITHOUT_GPU();
  const auto [rows, n, k] = GetParam();
  const int64_t kb = k / 128, padded = round16(rows);
  const std::vector<float> x = varied(rows, k, 1, 3);
  std::vector<uint8_t> q_ref;
  std::vector<float> s_ref;
  quantize_reference(x, k, iota_rows(rows), padded, &q_ref, &s_ref);
  const auto dx = to_device(x);
  auto dq = device_buffer<uint8_t>(size_t(padded * k));
  auto ds = device_buffer<float>(size_t(kb * padded));
  cuda::QuantizeArgs qa;
  qa.x = dx.get();
  qa.ldx = k;
  qa.rows = rows;
  qa.padded_rows = padded;
  qa.k = k;
  qa.q = dq.get();
  qa.scales = ds.get();
  cuda::quantize_e4m3_tiles(qa, nullptr);
  DSV3_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(to_host(dq.get(), q_ref.size()), q_ref);
  EXPECT_EQ(to_host(ds.get(), s_ref.size()), s_ref);

  const std::vector<float> wv = varied(n, k, 128, 4);
  const Linear w = Linear::quantize_fp8(wv.data(), n, k);
  const auto* wq = static_cast<const uint8_t*>(w.weight.data());
  const std::vector<uint8_t> wcodes(wq, wq + n * k);
  const std::vector<float> wscale(w.scale_inv.ptr<float>(),
                                  w.scale_inv.ptr<float>() + w.scale_inv.numel());
  // cuBLASLt's layout: each row of block scales padded to a multiple of 4.
  const int64_t wkb = (k + 127) / 128, wkb_lt = (wkb + 3) / 4 * 4, nb = (n + 127) / 128;
  std::vector<float> wscale_lt(size_t(nb * wkb_lt), 0.0f);
  for (int64_t r = 0; r < nb; ++r)
    for (int64_t c = 0; c < wkb; ++c)
      wscale_lt[size_t(r * wkb_lt + c)] = wscale[size_t(r * wkb + c)];
  const auto dw = to_device(wcodes);
  const auto dws = to_device(wscale_lt);
  auto dy = device_buffer<float>(size_t(padded * n));
  const size_t ws_bytes = size_t(32) << 20;
  auto work = device_buffer<uint8_t>(ws_bytes);
  cuda::Blas blas;
  ASSERT_TRUE(blas.matmul_fp8_block(padded, n, k, dq.get(), ds.get(), dw.get(), dws.get(), dy.get(),
                                    work.get(), ws_bytes, nullptr))
      << "cuBLASLt has no block-scaled FP8 algorithm for " << padded << "x" << n << "x" << k;
  DSV3_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> y = to_host(dy.get(), size_t(padded * n));
  double num = 0, den = 0, pad_max = 0;
  for (int64_t i = 0; i < padded; ++i)
    for (int64_t j = 0; j < n; ++j) {
      if (i >= rows) {
        pad_max = std::max(pad_max, double(std::fabs(y[size_t(i * n + j)])));
        continue;
      }
      double ref = 0;
      for (int64_t c = 0; c < k; ++c)
        ref += double(e4m3_to_f32(q_ref[size_t(i * k + c)])) *
               s_ref[size_t((c / 128) * padded + i)] *
               double(e4m3_to_f32(wcodes[size_t(j * k + c)])) *
               wscale[size_t((j / 128) * wkb + c / 128)];
      const double d = double(y[size_t(i * n + j)]) - ref;
      num += std::isfinite(d) ? d * d : 1e300;
      den += ref * ref;
    }
  const double err = std::sqrt(num / den);
  std::printf("[ fp8 gemm %lld (%lld) x%lldx%lld ] rel error vs float64 %.2e\n", (long long)rows,
              (long long)padded, (long long)n, (long long)k, err);
  // The tensor cores' limited-precision sums between promotions: 1.3e-4 measured at K = 512.
  EXPECT_LE(err, 1e-3);
  EXPECT_EQ(pad_max, 0.0) << "padding rows must come out zero";
}

// Row counts not multiples of 16 (padded), and 2 or 3 blocks of K (weight scales padded to 4).
INSTANTIATE_TEST_SUITE_P(Shapes, Fp8GemmGpu,
                         ::testing::Values(Fp8Case{37, 320, 512}, Fp8Case{256, 384, 1024},
                                           Fp8Case{17, 2112, 256}, Fp8Case{48, 256, 384}));

// The experts' layout: rows gathered through a permutation, each group padded to 16 rows.
TEST(Fp8QuantiserGpu, GroupsArePaddedToSixteenRows) {
  SKIP_WITHOUT_GPU();
  const int64_t tokens = 13, k = 256, kb = 2;
  const std::vector<float> x = varied(tokens, k, 1, 5);
  // 26 pairs in 4 groups of 5, 0, 19 and 2 rows; pair p reads token perm[p].
  const std::vector<int32_t> offsets = {0, 5, 5, 24, 26}, padded = {0, 16, 16, 48, 64};
  std::vector<int32_t> perm(26);
  for (int p = 0; p < 26; ++p) perm[size_t(p)] = (7 * p + 3) % int(tokens);
  const auto dx = to_device(x);
  const auto dperm = to_device(perm);
  const auto doff = to_device(offsets);
  const auto dpad = to_device(padded);
  auto dq = device_buffer<uint8_t>(size_t(64 * k));
  auto ds = device_buffer<float>(size_t(64 * kb));
  cuda::QuantizeArgs qa;
  qa.x = dx.get();
  qa.ldx = k;
  qa.x_rows = dperm.get();
  qa.padded_rows = 64;
  qa.k = k;
  qa.groups = 4;
  qa.offsets = doff.get();
  qa.padded_offsets = dpad.get();
  qa.q = dq.get();
  qa.scales = ds.get();
  cuda::quantize_e4m3_tiles(qa, nullptr);
  DSV3_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint8_t> q = to_host(dq.get(), size_t(64 * k));
  const std::vector<float> s = to_host(ds.get(), size_t(64 * kb));
  for (int g = 0; g < 4; ++g) {
    std::vector<int64_t> src;
    for (int p = offsets[size_t(g)]; p < offsets[size_t(g) + 1]; ++p)
      src.push_back(perm[size_t(p)]);
    const int64_t len = padded[size_t(g) + 1] - padded[size_t(g)];
    std::vector<uint8_t> q_ref;
    std::vector<float> s_ref;
    quantize_reference(x, k, src, len, &q_ref, &s_ref);
    const int64_t r0 = padded[size_t(g)];
    EXPECT_EQ(std::vector<uint8_t>(q.begin() + r0 * k, q.begin() + (r0 + len) * k), q_ref)
        << "group " << g;
    EXPECT_EQ(std::vector<float>(s.begin() + kb * r0, s.begin() + kb * (r0 + len)), s_ref)
        << "group " << g;
  }
}

// RMS of a - b over the standard deviation of b.
double rms_vs_std(const float* a, const float* b, int64_t n) {
  double mean = 0, var = 0, d2 = 0;
  for (int64_t i = 0; i < n; ++i) mean += b[i];
  mean /= double(n);
  for (int64_t i = 0; i < n; ++i) {
    var += (b[i] - mean) * (b[i] - mean);
    d2 += double(a[i] - b[i]) * double(a[i] - b[i]);
  }
  return std::sqrt(d2 / var);
}

// Five experts' row groups for the grouped kernels: 0, 3, 70, 16 and 130 rows (empty, under
// one 16-row pad, over one 64-row tile, exactly one pad, several tiles of every size; two of
// 128 rows, the second of 2), the rows
// drawn from a permutation; the layout made on the device as the engine makes it
// (grouped_layout), checked against the host's.
struct ExpertGroups {
  std::vector<int32_t> counts = {0, 3, 70, 16, 130};
  std::vector<int32_t> offsets = {0}, padded = {0}, perm;
  gpu_test::DevPtr<int32_t> doff, dpad;
  int groups() const { return int(counts.size()); }
  int64_t rows() const { return offsets.back(); }
  ExpertGroups() {
    for (int32_t c : counts) {
      offsets.push_back(offsets.back() + c);
      padded.push_back(padded.back() + (c + 15) / 16 * 16);
    }
    for (int64_t i = 0; i < rows(); ++i) perm.push_back(int32_t((i * 37) % rows()));
    doff = to_device(offsets);
    std::vector<int32_t> tiles;
    dpad = layout(64, &tiles).first;
  }
  // padded_offsets and tile_start for tiles of tile_rows rows, on the device; the host's
  // tile_start in *tiles. Tiles count padded rows: the same count for the unpadded BF16 rows.
  std::pair<gpu_test::DevPtr<int32_t>, gpu_test::DevPtr<int32_t>> layout(
      int tile_rows, std::vector<int32_t>* tiles) const {
    tiles->assign(1, 0);
    for (int32_t c : counts) {
      tiles->push_back(tiles->back() + int32_t(cuda::grouped_tiles((c + 15) / 16 * 16, tile_rows)));
      EXPECT_EQ(cuda::grouped_tiles(c, tile_rows),
                cuda::grouped_tiles((c + 15) / 16 * 16, tile_rows));
    }
    auto pad = device_buffer<int32_t>(padded.size()), start = device_buffer<int32_t>(tiles->size());
    cuda::grouped_layout(doff.get(), groups(), tile_rows, pad.get(), start.get(), nullptr);
    EXPECT_EQ(to_host(pad, padded.size()), padded);
    EXPECT_EQ(to_host(start, tiles->size()), *tiles);
    return {std::move(pad), std::move(start)};
  }
  // Runs g with tiles of 16, 32, 64 and (where this GPU has the kernel: Hopper) 128 rows, each into
  // fresh outputs (NaN: unwritten rows show); the largest |y - ref| over ref's largest magnitude,
  // for the worst tile size.
  double worst_error(cuda::GroupedArgs g, const std::vector<double>& ref, const char* what) const {
    double worst = 0;
    for (const int tile_rows : {16, 32, 64, 128}) {
      if (!cuda::grouped_tile_ok(g.type, tile_rows)) continue;
      std::vector<int32_t> tiles;
      const auto starts = layout(tile_rows, &tiles);
      auto dy = device_buffer<float>(ref.size());
      g.tile_rows = tile_rows;
      g.tile_start = starts.second.get();
      g.total_tiles = tiles.back() + 3;  // a bound, as the engine passes it
      g.y = dy.get();
      cuda::grouped_gemm(g, nullptr);
      DSV3_CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> y = to_host(dy.get(), ref.size());
      double err = 0, mag = 0;
      for (size_t i = 0; i < ref.size(); ++i) {
        err = std::isnan(y[i]) ? INFINITY : std::max(err, std::fabs(double(y[i]) - ref[i]));
        mag = std::max(mag, std::fabs(ref[i]));
      }
      std::printf("[ grouped %s, %d-row tiles ] max|d|/max|y| = %.2e over %lld rows\n", what,
                  tile_rows, err / mag, static_cast<long long>(rows()));
      worst = std::max(worst, err / mag);
    }
    return worst;
  }
};

// A random FP8 model whose every projection has K a multiple of 128, so every FP8 linear takes
// the FP8 GEMM; two prompts of 24 tokens prefilled in one step on the engine (exact F32 gemv,
// FP8 GEMMs or BF16 GEMMs, every linear over more than 0 rows on cuBLASLt), and on the CPU
// with every FP8 linear's input through E4M3 1×128 tiles (the same numerics, F32 products).
// The grouped FP8 kernel against float64 over the same codes: ExpertGroups' five experts, rows
// quantised from a permutation, N 256 and K 384 (3 scale blocks), every block and tile its own
// magnitude, at every tile size. Each expert's rows land at its unpadded offset.
TEST(GroupedFp8Gpu, ExpertsInOneLaunchMatchFloat64) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 256, k = 384, kb = k / 128;
  const ExpertGroups eg;
  const std::vector<int32_t>&counts = eg.counts, &offsets = eg.offsets, &padded = eg.padded;
  const int groups = eg.groups();
  const int64_t rows = eg.rows(), prows = padded.back();
  const std::vector<float> x = varied(rows, k, 1, 71);
  const auto dx = to_device(x);
  const auto dperm = to_device(eg.perm);
  // Bounds on the padded rows, as the engine passes them (the kernels stop at the device-side
  // ends); the buffers hold the bound.
  const int64_t prows_bound = prows + 48;
  auto dq = device_buffer<uint8_t>(size_t(prows_bound * k));
  auto ds = device_buffer<float>(size_t(prows_bound * kb));
  cuda::QuantizeArgs qa;
  qa.x = dx.get();
  qa.ldx = k;
  qa.x_rows = dperm.get();
  qa.padded_rows = prows_bound;
  qa.k = k;
  qa.groups = groups;
  qa.offsets = eg.doff.get();
  qa.padded_offsets = eg.dpad.get();
  qa.q = dq.get();
  qa.scales = ds.get();
  cuda::quantize_e4m3_tiles(qa, nullptr);
  // The experts' weights stacked, each quantised in 128×128 blocks.
  std::vector<uint8_t> wcodes;
  std::vector<float> wscale;
  for (int e = 0; e < groups; ++e) {
    const std::vector<float> wv = varied(n, k, 128, 80 + uint64_t(e));
    const Linear w = Linear::quantize_fp8(wv.data(), n, k);
    const auto* c = static_cast<const uint8_t*>(w.weight.data());
    wcodes.insert(wcodes.end(), c, c + n * k);
    wscale.insert(wscale.end(), w.scale_inv.ptr<float>(),
                  w.scale_inv.ptr<float>() + w.scale_inv.numel());
  }
  const auto dw = to_device(wcodes);
  const auto dws = to_device(wscale);
  DSV3_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint8_t> q = to_host(dq.get(), size_t(prows * k));
  const std::vector<float> xs = to_host(ds.get(), size_t(prows * kb));
  std::vector<double> ref(size_t(rows * n));
  for (int e = 0; e < groups; ++e) {
    const int64_t p0 = padded[size_t(e)], len = padded[size_t(e) + 1] - p0;
    for (int64_t i = 0; i < counts[size_t(e)]; ++i) {
      for (int64_t c = 0; c < n; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < k; ++j) {
          const double xv = double(e4m3_to_f32(q[size_t((p0 + i) * k + j)])) *
                            xs[size_t(kb * p0 + (j / 128) * len + i)];
          const int64_t wr = e * n + c;
          const double wv = double(e4m3_to_f32(wcodes[size_t(wr * k + j)])) *
                            wscale[size_t((wr / 128) * kb + j / 128)];
          acc += xv * wv;
        }
        ref[size_t((offsets[size_t(e)] + i) * n + c)] = acc;
      }
    }
  }
  cuda::GroupedArgs g;
  g.x = dq.get();
  g.x_scale = ds.get();
  g.offsets = eg.doff.get();
  g.padded_offsets = eg.dpad.get();
  g.groups = groups;
  g.w = dw.get();
  g.w_scale = dws.get();
  g.w_scale_ld = kb;
  g.n = n;
  g.k = k;
  g.ldy = n;
  ASSERT_TRUE(cuda::grouped_supported(cuda::WType::E4M3, n, k));
  EXPECT_EQ(cuda::grouped_tile_ok(cuda::WType::E4M3, 128), cuda::wgmma_device());
  // Within a K block the tensor cores keep a limited-precision sum (cuBLASLt's block-scaled
  // GEMM: 1.3e-4 relative in bench_cuda_fp8_gemm's probe; train/fp8.h models it), then each
  // block is promoted in F32. A wrong row, scale or expert is off by O(1).
  EXPECT_LE(eg.worst_error(g, ref, "fp8"), 2e-3);
}

// The grouped kernel on BF16 experts against float64 over the same BF16 values: ExpertGroups'
// five experts, rows gathered from a permutation and rounded to BF16 by gather_rows (unpadded,
// in moe_permute's order), N 256 and K 192 (three 64-element K blocks: K need not be a
// multiple of 128), at every tile size (the 128-row wgmma tiles on Hopper). Nothing past a
// group's rows is written, and the rows of the next group are not read.
TEST(GroupedGpu, Bf16ExpertsInOneLaunchMatchFloat64) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 256, k = 192;
  const ExpertGroups eg;
  const std::vector<int32_t>&counts = eg.counts, &offsets = eg.offsets, &perm = eg.perm;
  const int groups = eg.groups();
  const int64_t rows = eg.rows();
  const std::vector<float> x = varied(rows, k, 1, 171);
  const auto dx = to_device(x);
  const auto dperm = to_device(perm);
  auto dxb = device_buffer<uint16_t>(size_t(rows * k));
  cuda::gather_rows(dx.get(), k, dperm.get(), rows, k, dxb.get(), nullptr);
  std::vector<uint16_t> wb;
  for (int e = 0; e < groups; ++e) {
    const std::vector<float> wv = varied(n, k, 128, 180 + uint64_t(e));
    for (float v : wv) wb.push_back(f32_to_bf16(v));
  }
  const auto dw = to_device(wb);
  DSV3_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> xb = to_host(dxb.get(), size_t(rows * k));
  for (int64_t r = 0; r < rows; ++r)  // gather_rows: row r is x's row perm[r], rounded
    for (int64_t j = 0; j < k; ++j)
      ASSERT_EQ(xb[size_t(r * k + j)], f32_to_bf16(x[size_t(perm[size_t(r)] * k + j)]));
  std::vector<double> ref(size_t(rows * n));
  for (int e = 0; e < groups; ++e) {
    for (int64_t i = 0; i < counts[size_t(e)]; ++i) {
      const int64_t r = offsets[size_t(e)] + i;
      for (int64_t c = 0; c < n; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < k; ++j)
          acc += double(bf16_to_f32(xb[size_t(r * k + j)])) *
                 double(bf16_to_f32(wb[size_t((e * n + c) * k + j)]));
        ref[size_t(r * n + c)] = acc;
      }
    }
  }
  cuda::GroupedArgs g;
  g.type = cuda::WType::BF16;
  g.x = dxb.get();
  g.offsets = eg.doff.get();
  g.padded_offsets = eg.dpad.get();
  g.groups = groups;
  g.w = dw.get();
  g.n = n;
  g.k = k;
  g.ldy = n;
  ASSERT_TRUE(cuda::grouped_supported(cuda::WType::BF16, n, k));
  EXPECT_FALSE(cuda::grouped_supported(cuda::WType::BF16, n, 96));
  EXPECT_FALSE(cuda::grouped_supported(cuda::WType::F32, n, k));
  EXPECT_EQ(cuda::grouped_tile_ok(cuda::WType::BF16, 128), cuda::wgmma_device());
  // Exact BF16 products summed in F32 (the tensor cores' accumulation): ~1e-6 relative; a
  // wrong row, column or expert is off by O(1).
  EXPECT_LE(eg.worst_error(g, ref, "bf16"), 1e-4);
}

struct Fp8Prefill {
  Tensor exact, fp8, bf16, emulated;
  Tensor grouped;  // fp8 with the experts in one launch (with_grouped only)
  Tensor gemv;     // with the experts on the gemv kernels (with_grouped only)
  Tensor wide;     // the grouped kernel's 128-row wgmma tiles (with_grouped, on Hopper)
  int64_t n = 0;
};

Fp8Prefill fp8_prefill(int layers, int dense_layers, bool zero_attention,
                       const std::string& dtype = "fp8", bool with_grouped = false) {
  ModelConfig c;
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.intermediate_size = 384;
  c.moe_intermediate_size = 128;
  c.num_hidden_layers = layers;
  c.first_k_dense_replace = dense_layers;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.q_lora_rank = 128;
  c.kv_lora_rank = 128;
  c.qk_nope_head_dim = 64;
  c.qk_rope_head_dim = 32;
  c.v_head_dim = 64;
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.n_group = 1;
  c.topk_group = 1;
  c.max_position_embeddings = 128;
  c.num_nextn_predict_layers = 0;
  const std::string dir = (std::filesystem::temp_directory_path() / "dsv3_fp8_gemm_model").string();
  InitOptions io;
  io.dtype = dtype;
  io.std = 0.05;  // layers that matter next to the embedding
  write_random_checkpoint(c, dir, io);
  ModelWeights w = ModelWeights::load(dir);
  std::filesystem::remove_all(dir);  // the tensors stay mapped
  if (zero_attention)  // o_proj = 0: the MoE layer sees the normalised embedding itself
    for (LayerWeights& L : w.layers)
      L.attn.o.weight = Tensor::zeros(L.attn.o.weight.dtype(), L.attn.o.weight.shape());
  const Model model(std::move(w));
  std::vector<int32_t> p1, p2;
  Tensor ids = Tensor::zeros(DType::I32, {2, 24});
  for (int i = 0; i < 24; ++i) {
    p1.push_back(int32_t((37 * i + 5) % c.vocab_size));
    p2.push_back(int32_t((101 * i + 11) % c.vocab_size));
    ids.ptr<int32_t>()[i] = p1.back();
    ids.ptr<int32_t>()[24 + i] = p2.back();
  }
  // experts_gemv: the routed experts on the gemv kernels (grouped's fallback); wide: the grouped
  // kernel's 128-row tiles.
  auto run = [&](bool exact, bool fp8, bool grouped = false, bool experts_gemv = false,
                 bool wide = false) {
    cuda::CudaEngineOptions o;
    o.grouped_experts = grouped;
    o.max_sequences = 2;
    o.max_context = 64;
    o.exact = exact;
    o.fp8_gemm = fp8;
    o.gemv_max_rows = 0;
    // The routed experts on cuBLASLt too (one GEMM each), all on the grouped kernel, or all on
    // the gemv kernels.
    const int64_t all = std::numeric_limits<int64_t>::max();
    o.expert_gemm_rows = o.bf16_expert_gemm_rows = grouped || experts_gemv ? all : 1;
    o.grouped_min_rows = o.bf16_grouped_min_rows = 0;
    o.bf16_grouped_max_rows = all;
    o.bf16_wgmma_min_rows = o.fp8_wgmma_min_rows = wide ? 0 : all;
    o.bf16_cache = false;  // only the GEMMs' numerics differ between the runs
    const cuda::CudaEngine engine(model, o);
    LatentCache a = engine.new_cache(), b = engine.new_cache();
    return engine.step({{&a, p1, true}, {&b, p2, true}});
  };
  Fp8Prefill r;
  r.exact = run(true, false);
  r.fp8 = run(false, true);
  r.bf16 = run(false, false);
  if (with_grouped) {
    r.grouped = run(false, true, true);
    r.gemv = run(false, true, false, true);
    if (cuda::grouped_tile_ok(dtype == "bf16" ? cuda::WType::BF16 : cuda::WType::E4M3, 128))
      r.wide = run(false, true, true, false, true);
  }
  ops::set_fp8_activations(true);
  r.emulated = model.forward(ids);
  ops::set_fp8_activations(false);
  r.n = r.exact.numel();
  EXPECT_EQ(r.emulated.numel(), r.n);
  return r;
}

// Two dense layers with DeepSeek-V3's attention sizes (kv_lora 512, rope 64, nope / v 128),
// BF16 random weights: the sizes the tensor-core attention kernels take.
Model v3_attention_model(const std::string& name) {
  ModelConfig c;
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.intermediate_size = 384;
  c.moe_intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.first_k_dense_replace = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.q_lora_rank = 128;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.n_group = 1;
  c.topk_group = 1;
  c.max_position_embeddings = 256;
  c.num_nextn_predict_layers = 0;
  const std::string dir = (std::filesystem::temp_directory_path() / name).string();
  InitOptions io;
  io.dtype = "bf16";
  io.std = 0.05;
  write_random_checkpoint(c, dir, io);
  Model model(ModelWeights::load(dir));
  std::filesystem::remove_all(dir);
  return model;
}

// The FP8 latent cache against the BF16 one, on a model with DeepSeek-V3's attention sizes
// (kv_lora 512, rope 64, nope / v 128: the tensor-core decode kernel and the flash prefill,
// which reads rows decoded from FP8), and with the CUDA-core decode kernel: the logits of a
// 100-token prefill and 8 decode steps. E4M3 keys and values move them, but by the size of
// their rounding, not by a wrong scale or row. Both layers are dense: with routed experts a
// near-tie in the router flips an expert on that rounding, a jump that says nothing of the cache
// (seen after dsv3 init's new normals: 0.55 at one step of 9, the others 0.10-0.15).
TEST(Fp8CacheGpu, StaysNearTheBf16Cache) {
  SKIP_WITHOUT_GPU();
  const Model model = v3_attention_model("dsv3_fp8_cache_model");
  const ModelConfig& c = model.config();
  std::vector<int32_t> prompt;
  for (int i = 0; i < 100; ++i) prompt.push_back(int32_t((37 * i + 5) % c.vocab_size));
  const auto run = [&](bool fp8, bool tensor_cores) {
    cuda::CudaEngineOptions o;
    o.max_sequences = 1;
    o.max_context = 160;
    o.fp8_cache = fp8;
    o.attention_tensor_cores = tensor_cores;
    const cuda::CudaEngine engine(model, o);
    if (fp8) EXPECT_EQ(engine.memory().cache_bytes_per_token, size_t(2 * 656));
    LatentCache cache = engine.new_cache();
    std::vector<Tensor> out = {engine.step({{&cache, prompt, false}})};
    for (int s = 0; s < 8; ++s)
      out.push_back(engine.step({{&cache, {int32_t((11 * s + 3) % c.vocab_size)}, false}}));
    return out;
  };
  const std::vector<Tensor> bf16 = run(false, true);
  for (const bool tc : {true, false}) {
    const std::vector<Tensor> fp8 = run(true, tc);
    double worst = 0;
    std::string steps;
    for (size_t i = 0; i < bf16.size(); ++i) {
      const double e = err_vs_std(fp8[i].ptr<float>(), bf16[i].ptr<float>(), c.vocab_size);
      worst = std::max(worst, e);
      steps += " " + std::to_string(e).substr(0, 5);
    }
    std::printf("[ fp8 cache, %s decode ] max|d|/std vs the bf16 cache over 9 steps: %.2e (%s)\n",
                tc ? "tensor-core" : "CUDA-core", worst, steps.c_str());
    EXPECT_LE(worst, 0.3);
    EXPECT_GT(worst, 1e-4) << "the FP8 cache was not used";
  }
}

// A 100-token prefill in the absorbed form (decode's kernels) with the absorbed projections on
// the BF16 tensor cores (absorb_tensor_cores) against the CUDA-core absorb and the per-head
// gemv: every position's logits near, by BF16's rounding of q, o_lat and kv_b.
TEST(AbsorbTcGpu, PrefillStaysNearTheCudaCoreProjections) {
  SKIP_WITHOUT_GPU();
  const Model model = v3_attention_model("dsv3_absorb_tc_model");
  const int64_t v = model.config().vocab_size;
  std::vector<int32_t> prompt;
  for (int i = 0; i < 100; ++i) prompt.push_back(int32_t((29 * i + 3) % v));
  const auto run = [&](bool tc) {
    cuda::CudaEngineOptions o;
    o.max_sequences = 1;
    o.max_context = 128;
    o.flash_prefill = false;  // the absorbed form at 100 rows
    o.absorb_tensor_cores = tc;
    const cuda::CudaEngine engine(model, o);
    LatentCache cache = engine.new_cache();
    return engine.step({{&cache, prompt, true}});
  };
  const Tensor cuda_cores = run(false), tensor_cores = run(true);
  ASSERT_EQ(tensor_cores.numel(), cuda_cores.numel());
  double worst = 0;
  for (int64_t r = 0; r < int64_t(prompt.size()); ++r)
    worst = std::max(
        worst, err_vs_std(tensor_cores.ptr<float>() + r * v, cuda_cores.ptr<float>() + r * v, v));
  std::printf("[ absorb tc ] prefill logits max|d|/std vs the CUDA-core projections: %.2e\n",
              worst);
  EXPECT_LE(worst, 0.1);
  EXPECT_GT(worst, 0.0) << "the tensor-core projections were not used";
}

// A dense and a MoE layer. E4M3 inputs keep 3 mantissa bits against BF16's 7, so the FP8 path
// is far from the exact one by design; and since every linear re-rounds its input, the ~1e-4
// differences of the tensor cores' accumulation flip roundings that grow layer by layer, so it
// is not close to its CPU emulation either, element by element. What must hold is the error's
// size: as far from the exact path as the emulation is (a wrong scale or row is several times
// that), and well beyond BF16's (the FP8 path was taken).
TEST(Fp8PrefillGpu, EngineOnFp8TensorCoresErrsAsItsEmulation) {
  SKIP_WITHOUT_GPU();
  const Fp8Prefill r = fp8_prefill(2, 1, false);
  const float *exact = r.exact.ptr<float>(), *emul = r.emulated.ptr<float>();
  const double fp8 = rms_vs_std(r.fp8.ptr<float>(), exact, r.n);
  const double bf16 = rms_vs_std(r.bf16.ptr<float>(), exact, r.n);
  const double em = rms_vs_std(emul, exact, r.n);
  std::printf(
      "[ engine prefill ] rms/std vs exact: fp8 gemm %.2e, CPU E4M3 emulation %.2e, bf16 gemm "
      "%.2e (max|d|/std %.2e, %.2e, %.2e)\n",
      fp8, em, bf16, err_vs_std(r.fp8.ptr<float>(), exact, r.n), err_vs_std(emul, exact, r.n),
      err_vs_std(r.bf16.ptr<float>(), exact, r.n));
  EXPECT_LE(err_vs_std(r.bf16.ptr<float>(), exact, r.n), 5e-2);
  EXPECT_LE(fp8, 1.5 * em);
  EXPECT_GE(fp8, 0.5 * em);
  EXPECT_GT(fp8, 4.0 * bf16) << "the FP8 path was not taken";
}

// One MoE layer with its attention's output zeroed: the experts (and the shared expert) see
// the normalised embedding, identical on both sides, so their quantised inputs are the same
// codes, and the GPU's routed-expert GEMMs (rows grouped per expert, padded to 16) must match
// the emulation up to the accumulation's ~1e-4 and the roundings of the down projections'
// inputs it flips.
TEST(Fp8PrefillGpu, ExpertsOnFp8TensorCoresMatchTheirEmulation) {
  SKIP_WITHOUT_GPU();
  const Fp8Prefill r = fp8_prefill(1, 0, true, "fp8", true);
  const float *exact = r.exact.ptr<float>(), *emul = r.emulated.ptr<float>();
  const double to_emul = err_vs_std(r.fp8.ptr<float>(), emul, r.n);
  const double em = err_vs_std(emul, exact, r.n);
  const double to_emul_rms = rms_vs_std(r.fp8.ptr<float>(), emul, r.n);
  const double em_rms = rms_vs_std(emul, exact, r.n);
  std::printf(
      "[ experts ] fp8 gemm vs emulation: max|d|/std %.2e, rms/std %.2e; emulation vs exact: "
      "%.2e, %.2e\n",
      to_emul, to_emul_rms, em, em_rms);
  // Measured on the H200: 0.20 of the quantisation noise at the worst logit (flipped
  // roundings of the down projections' inputs); a wrong expert, row or scale is >= 1.
  EXPECT_LE(to_emul, 0.4 * em);
  EXPECT_LE(to_emul_rms, 0.3 * em_rms);
  EXPECT_GT(em, 1e-3) << "E4M3 inputs must differ from the exact path";
  // The same with the experts in one grouped launch (grouped_experts).
  const double g_emul = err_vs_std(r.grouped.ptr<float>(), emul, r.n);
  const double g_emul_rms = rms_vs_std(r.grouped.ptr<float>(), emul, r.n);
  std::printf("[ experts ] grouped fp8 vs emulation: max|d|/std %.2e, rms/std %.2e\n", g_emul,
              g_emul_rms);
  EXPECT_LE(g_emul, 0.4 * em);
  EXPECT_LE(g_emul_rms, 0.3 * em_rms);
  // Another kernel sums in another order: equal bits would mean it never ran.
  EXPECT_NE(std::memcmp(r.grouped.data(), r.fp8.data(), r.grouped.nbytes()), 0)
      << "the grouped kernel was not taken";
  if (r.wide.numel() == 0) return;  // no wgmma kernel on this GPU
  const double w_emul = err_vs_std(r.wide.ptr<float>(), emul, r.n);
  const double w_emul_rms = rms_vs_std(r.wide.ptr<float>(), emul, r.n);
  std::printf("[ experts ] 128-row wgmma tiles vs emulation: max|d|/std %.2e, rms/std %.2e\n",
              w_emul, w_emul_rms);
  EXPECT_LE(w_emul, 0.4 * em);
  EXPECT_LE(w_emul_rms, 0.3 * em_rms);
  EXPECT_NE(std::memcmp(r.wide.data(), r.gemv.data(), r.wide.nbytes()), 0)
      << "the grouped kernel was not taken";
}

// The same model in BF16: its routed experts take one BF16 cuBLASLt GEMM each (rows gathered
// per expert), within BF16's tolerance of the exact path like every other BF16 GEMM; and all on
// the grouped kernel, which takes the same BF16 products summed in F32 (on the H200 its logits
// had cuBLASLt's bits), on its 16- to 64-row tiles and, on Hopper, its 128-row wgmma tiles.
// Had the engine not taken it, the experts would have run on the gemv kernels (F32 inputs),
// whose bits the grouped runs must not have.
TEST(Bf16PrefillGpu, ExpertsOnTensorCoresStayNearTheExactPath) {
  SKIP_WITHOUT_GPU();
  const Fp8Prefill r = fp8_prefill(2, 1, false, "bf16", true);
  const double e = err_vs_std(r.bf16.ptr<float>(), r.exact.ptr<float>(), r.n);
  const double g = err_vs_std(r.grouped.ptr<float>(), r.bf16.ptr<float>(), r.n);
  const double gv = err_vs_std(r.gemv.ptr<float>(), r.bf16.ptr<float>(), r.n);
  std::printf(
      "[ bf16 experts ] max|d|/std vs exact %.2e; vs per-expert GEMMs: grouped %.2e, gemv %.2e\n",
      e, g, gv);
  EXPECT_LE(e, 5e-2);
  EXPECT_GT(e, 0.0) << "the BF16 GEMMs were not taken";
  EXPECT_LE(g, 1e-3);
  EXPECT_NE(std::memcmp(r.grouped.data(), r.gemv.data(), r.grouped.nbytes()), 0)
      << "the grouped kernel was not taken";
  if (r.wide.numel() == 0) return;  // no wgmma kernel on this GPU
  const double w = err_vs_std(r.wide.ptr<float>(), r.bf16.ptr<float>(), r.n);
  std::printf("[ bf16 experts ] 128-row wgmma tiles vs per-expert GEMMs: max|d|/std %.2e\n", w);
  EXPECT_LE(w, 1e-3);
  EXPECT_NE(std::memcmp(r.wide.data(), r.gemv.data(), r.wide.nbytes()), 0)
      << "the grouped kernel was not taken";
}

}  // namespace
