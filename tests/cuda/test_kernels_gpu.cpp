// Each CUDA kernel against the CPU implementation on random inputs (llama.cpp's
// test-backend-ops idea). Tolerances: max|Δ| / max|ref| ≤ 1e-5 for the F32-accumulating
// kernels (only the summation order differs), exact equality for routing choices.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>

#include "core/dtype.h"
#include "core/error.h"
#include "gpu_test_util.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kernels.h"
#include "kernels/ops.h"
#include "model/moe.h"

using namespace dsv3;

namespace {

using gpu_test::DevPtr;
using gpu_test::randn;
using gpu_test::to_device;
using gpu_test::to_host;

// n floats of NaN (every output must be written).
DevPtr<float> poisoned(size_t n) {
  std::vector<float> v(n, NAN);
  return to_device(v);
}

// The values rounded to BF16 (exactly representable), and their BF16 bit patterns.
std::vector<float> bf16_values(std::vector<float> v) {
  for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}
std::vector<uint16_t> bf16_bits(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = f32_to_bf16(v[i]);
  return b;
}

double rel_err(const std::vector<float>& a, const float* b, size_t n) {
  double mx = 0, ref = 0;
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(a[i])) return INFINITY;
    mx = std::max(mx, double(std::fabs(a[i] - b[i])));
    ref = std::max(ref, double(std::fabs(b[i])));
  }
  return mx / ref;
}

// A Linear of the given dtype with random values, and its device view (kept alive by `keep`).
struct TestLinear {
  Linear cpu;
  cuda::DevWeight dev;
  DevPtr<uint8_t> w;
  DevPtr<float> s;
};

TestLinear make_linear(const std::string& dtype, int64_t out, int64_t in, uint64_t seed) {
  const std::vector<float> v = randn(size_t(out * in), seed, 0.05f);
  TestLinear t;
  if (dtype == "fp8") {
    t.cpu = Linear::quantize_fp8(v.data(), out, in);
  } else {
    const DType dt = dtype == "bf16" ? DType::BF16 : DType::F32;
    Tensor w = Tensor::zeros(dt, {out, in});
    convert_from_f32(dt, v.data(), w.data(), v.size());
    t.cpu = Linear::plain(w);
  }
  t.w = to_device(static_cast<const uint8_t*>(t.cpu.weight.data()), t.cpu.weight.nbytes());
  t.dev.w = t.w.get();
  t.dev.type = dtype == "fp8"    ? cuda::WType::E4M3
               : dtype == "bf16" ? cuda::WType::BF16
                                 : cuda::WType::F32;
  t.dev.rows = out;
  t.dev.k = in;
  if (t.cpu.quantized()) {
    t.s = to_device(t.cpu.scale_inv.ptr<float>(), size_t(t.cpu.scale_inv.numel()));
    t.dev.scale = t.s.get();
  }
  return t;
}

Tensor f32_tensor(const std::vector<float>& v, Shape shape) {
  Tensor t = Tensor::zeros(DType::F32, std::move(shape));
  std::copy(v.begin(), v.end(), t.ptr<float>());
  return t;
}

// y [m, out] = x [m, in] · Wᵀ as one plain gemv launch sees it.
cuda::GemvArgs gemv_args(const TestLinear& w, const float* x, float* y, int64_t out, int64_t in,
                         int64_t m) {
  cuda::GemvArgs g;
  g.w = w.dev;
  g.n = out;
  g.x = x;
  g.ldx = in;
  g.y = y;
  g.ldy = out;
  g.m = m;
  return g;
}

struct GemvCase {
  const char* dtype;
  int64_t out, in, rows;
};

class GemvGpu : public ::testing::TestWithParam<GemvCase> {};

TEST_P(GemvGpu, MatchesCpuLinear) {
  SKIP_WITHOUT_GPU();
  const GemvCase c = GetParam();
  TestLinear w = make_linear(c.dtype, c.out, c.in, 1);
  TestLinear w2 = make_linear(c.dtype, c.out, c.in, 2);
  const std::vector<float> x = randn(size_t(c.rows * c.in), 3);
  Tensor y1 = Tensor::zeros(DType::F32, {c.rows, c.out});
  Tensor y2 = Tensor::zeros(DType::F32, {c.rows, c.out});
  ops::linear(f32_tensor(x, {c.rows, c.in}), w.cpu, y1);
  ops::linear(f32_tensor(x, {c.rows, c.in}), w2.cpu, y2);
  const DevPtr<float> dx = to_device(x);
  DevPtr<float> dy = poisoned(size_t(c.rows * c.out));
  cuda::GemvArgs g = gemv_args(w, dx.get(), dy.get(), c.out, c.in, c.rows);
  cuda::gemv(g, nullptr);
  EXPECT_LE(rel_err(to_host(dy, size_t(c.rows * c.out)), y1.ptr<float>(), size_t(y1.numel())),
            1e-5);
  // Fused SwiGLU: silu(x·Wᵀ) ⊙ (x·W2ᵀ).
  g.w2 = w2.dev.w;
  g.scale2 = w2.dev.scale;
  cuda::gemv(g, nullptr);
  ops::silu_mul(y1, y2, y1);
  EXPECT_LE(rel_err(to_host(dy, size_t(c.rows * c.out)), y1.ptr<float>(), size_t(y1.numel())),
            1e-5);
}

// Vector and scalar paths (K % 16), partial FP8 edge blocks, 1..11 rows; few outputs with long
// rows split K over 2, 4 or 8 warps (with outputs past the end in the last block); one row
// takes the kernel with 4 outputs per warp (2 with SwiGLU).
INSTANTIATE_TEST_SUITE_P(
    Shapes, GemvGpu,
    ::testing::Values(GemvCase{"fp8", 70, 4096, 1}, GemvCase{"bf16", 70, 4096, 1},
                      GemvCase{"fp8", 40, 4096, 3}, GemvCase{"fp8", 130, 2000, 1},
                      GemvCase{"bf16", 37, 1032, 2}, GemvCase{"f32", 21, 1001, 3},
                      GemvCase{"f32", 21, 130, 1}, GemvCase{"fp8", 300, 384, 1},
                      GemvCase{"fp8", 300, 384, 5}, GemvCase{"fp8", 130, 200, 3},
                      GemvCase{"bf16", 257, 512, 1}, GemvCase{"bf16", 96, 36, 11},
                      GemvCase{"f32", 77, 64, 2}, GemvCase{"f32", 50, 33, 9}));

// The tensor-core kernel (kernels.h GemvArgs::tensor_cores) for 2 to 16 rows, FP8 and BF16,
// with SwiGLU: within 1e-4 of the CPU (inputs in two BF16 parts), and not the F32 kernels' bits
// (so it ran). 48 x 2048 splits K over 8 warps; 160 outputs cross an FP8 block of rows; 100 x
// 200 ends in part of a 16-output tile and of a 128-k block, FP8 1040 in part of a scale block
// and FP8 100 x 256 in part of a warp's two 16-output tiles;
// groups = 3 is W_UV's form: a head's rows at an offset into its group, inputs and outputs of
// their own.
TEST(GemvGpu, TensorCoresMatchCpuLinear) {
  SKIP_WITHOUT_GPU();
  struct Case {
    const char* dtype;
    int64_t out, in;
    int groups = 1;
  };
  for (const Case c : {Case{"fp8", 160, 1024}, Case{"bf16", 160, 1024}, Case{"fp8", 48, 2048},
                       Case{"bf16", 2048, 384}, Case{"bf16", 100, 200}, Case{"fp8", 64, 1040},
                       Case{"fp8", 100, 256}, Case{"fp8", 128, 512, 3}, Case{"bf16", 48, 96, 3}}) {
    // Groups: each 2 · out rows, the outputs the second half (w_row0 = out), as kv_b's W_UV.
    const int64_t grows = c.groups > 1 ? 2 * c.out : c.out, row0 = c.groups > 1 ? c.out : 0;
    const int64_t ldx = c.in * c.groups, ldy = c.out * c.groups;
    const TestLinear w = make_linear(c.dtype, grows * c.groups, c.in, 31);
    const TestLinear w2 = make_linear(c.dtype, grows * c.groups, c.in, 32);
    for (const int64_t m : {2, 5, 8, 9, 16}) {
      const std::vector<float> x = randn(size_t(m * ldx), 33 + uint64_t(m));
      const DevPtr<float> dx = to_device(x);
      DevPtr<float> dy = poisoned(size_t(m * ldy));
      cuda::GemvArgs g = gemv_args(w, dx.get(), dy.get(), c.out, c.in, m);
      g.groups = c.groups;
      g.w_group_rows = c.groups > 1 ? grows : 0;
      g.w_row0 = row0;
      g.ldx = ldx;
      g.x_goff = c.groups > 1 ? c.in : 0;
      g.ldy = ldy;
      g.y_goff = c.groups > 1 ? c.out : 0;
      const auto run = [&](bool tc) {
        g.tensor_cores = tc;
        cuda::gemv(g, nullptr);
        return to_host(dy, size_t(m * ldy));
      };
      const std::string what = std::string(c.dtype) + " " + std::to_string(c.out) + " x " +
                               std::to_string(c.in) + " groups " + std::to_string(c.groups) + ", " +
                               std::to_string(m) + " rows ";
      for (const bool swiglu : {false, true}) {
        if (swiglu && c.groups > 1) continue;
        // The CPU's answer, group by group: every weight row, then the group's outputs.
        std::vector<float> want(size_t(m * ldy));
        for (int gi = 0; gi < c.groups; ++gi) {
          std::vector<float> xg(size_t(m * c.in));
          for (int64_t r = 0; r < m; ++r)
            std::copy_n(x.begin() + r * ldx + gi * c.in, c.in, xg.begin() + r * c.in);
          Tensor y1 = Tensor::zeros(DType::F32, {m, grows * c.groups});
          ops::linear(f32_tensor(xg, {m, c.in}), w.cpu, y1);
          if (swiglu) {
            Tensor y2 = Tensor::zeros(DType::F32, {m, grows * c.groups});
            ops::linear(f32_tensor(xg, {m, c.in}), w2.cpu, y2);
            ops::silu_mul(y1, y2, y1);
          }
          for (int64_t r = 0; r < m; ++r)
            std::copy_n(y1.ptr<float>() + r * grows * c.groups + gi * grows + row0, c.out,
                        want.begin() + r * ldy + gi * c.out);
        }
        if (swiglu) {
          g.w2 = w2.dev.w;
          g.scale2 = w2.dev.scale;
        }
        const std::vector<float> tc = run(true), f32 = run(false);
        EXPECT_LE(rel_err(tc, want.data(), want.size()), 1e-4) << what << swiglu;
        EXPECT_NE(std::memcmp(tc.data(), f32.data(), tc.size() * sizeof(float)), 0)
            << what << swiglu;
      }
    }
  }
}

// Batch invariance: each row of a 2- to 16-row launch (the tile kernel, passes of 4 or 8 rows;
// per-head groups at 40 rows too) gets the bits it gets alone (the rows
// kernel), for FP8 with split-K (few outputs, long rows), BF16 and F32, with SwiGLU, and
// per-head groups with strided inputs as W_UV runs; each within 1e-5 of the CPU. FP8 40 x 7168
// splits 8 ways: a tile of 128 KB from 3 rows, one block an SM.
TEST(GemvGpu, BatchRowsGetTheBitsOfARowAlone) {
  SKIP_WITHOUT_GPU();
  struct Case {
    const char* dtype;
    int64_t out, in;
    int groups;
  };
  for (const Case c :
       {Case{"fp8", 300, 2048, 1}, Case{"fp8", 40, 7168, 1}, Case{"bf16", 257, 1032, 1},
        Case{"f32", 21, 1004, 1}, Case{"fp8", 128, 512, 3}}) {
    for (const bool swiglu : {false, true}) {
      if (swiglu && c.groups > 1) continue;
      const int64_t wrows = c.out * c.groups;
      TestLinear w = make_linear(c.dtype, wrows, c.in, 8);
      TestLinear w2 = make_linear(c.dtype, wrows, c.in, 9);
      for (const int64_t m : {2, 3, 4, 5, 8, 16, 40}) {
        if (m > 16 && c.groups == 1) continue;  // over 16 only per-head groups take the kernel
        const int64_t ldx = c.in * c.groups, ldy = c.out * c.groups;
        const std::vector<float> x = randn(size_t(m * ldx), 10 + uint64_t(m));
        const DevPtr<float> dx = to_device(x);
        DevPtr<float> dy = poisoned(size_t(m * ldy));
        cuda::GemvArgs g;
        g.w = w.dev;
        if (swiglu) {
          g.w2 = w2.dev.w;
          g.scale2 = w2.dev.scale;
        }
        g.n = c.out;
        g.groups = c.groups;
        g.w_group_rows = c.groups > 1 ? c.out : 0;
        g.x = dx.get();
        g.ldx = ldx;
        g.x_goff = c.groups > 1 ? c.in : 0;
        g.y = dy.get();
        g.ldy = ldy;
        g.y_goff = c.groups > 1 ? c.out : 0;
        g.m = m;
        cuda::gemv(g, nullptr);
        const std::vector<float> batch = to_host(dy, size_t(m * ldy));
        SCOPED_TRACE(std::string(c.dtype) + " " + std::to_string(c.out) + "x" +
                     std::to_string(c.in) + " groups " + std::to_string(c.groups) +
                     (swiglu ? " swiglu" : "") + " rows " + std::to_string(m));
        {  // passes of 4 rows, two steps a tile: the same bits
          const int pass = cuda::gemv_tile_pass_rows(4);
          DevPtr<float> dy8 = poisoned(size_t(m * ldy));
          cuda::GemvArgs g8 = g;
          g8.y = dy8.get();
          cuda::gemv(g8, nullptr);
          cuda::gemv_tile_pass_rows(pass);
          const std::vector<float> batch8 = to_host(dy8, size_t(m * ldy));
          ASSERT_EQ(std::memcmp(batch8.data(), batch.data(), batch.size() * 4), 0)
              << "passes of 4 rows";
        }
        for (int64_t p = 0; p < m; ++p) {
          cuda::GemvArgs one = g;
          one.x = dx.get() + p * ldx;
          one.m = 1;
          DevPtr<float> d1 = poisoned(size_t(ldy));
          one.y = d1.get();
          cuda::gemv(one, nullptr);
          const std::vector<float> alone = to_host(d1, size_t(ldy));
          ASSERT_EQ(std::memcmp(alone.data(), batch.data() + p * ldy, size_t(ldy) * 4), 0)
              << "row " << p;
          for (int gi = 0; gi < c.groups; ++gi) {
            const std::vector<float> xg(x.begin() + p * ldx + gi * c.in,
                                        x.begin() + p * ldx + (gi + 1) * c.in);
            Tensor y1 = Tensor::zeros(DType::F32, {1, wrows});
            Tensor y2 = Tensor::zeros(DType::F32, {1, wrows});
            ops::linear(f32_tensor(xg, {1, c.in}), w.cpu, y1);
            if (swiglu) {
              ops::linear(f32_tensor(xg, {1, c.in}), w2.cpu, y2);
              ops::silu_mul(y1, y2, y1);
            }
            EXPECT_LE(rel_err(std::vector<float>(alone.begin() + gi * c.out,
                                                 alone.begin() + (gi + 1) * c.out),
                              y1.ptr<float>() + gi * c.out, size_t(c.out)),
                      1e-5)
                << "row " << p << " group " << gi;
          }
        }
      }
    }
  }
}

// The one-row kernel's block size moves outputs between blocks, not their arithmetic: the
// same bits from blocks of 2, 4 or 8 warps, split-K included (300 x 2048: 4 warps an output;
// 40 x 7168 splits 8 ways, so its blocks are 8 warps whatever is asked); likewise its FP8 load
// variants and its first weights loaded after the wait, not before.
TEST(GemvGpu, RowsKernelBlockSizeKeepsTheBits) {
  SKIP_WITHOUT_GPU();
  for (const GemvCase c : {GemvCase{"fp8", 300, 2048, 1}, GemvCase{"fp8", 40, 7168, 1},
                           GemvCase{"bf16", 257, 1032, 1}}) {
    TestLinear w = make_linear(c.dtype, c.out, c.in, 11);
    const std::vector<float> x = randn(size_t(c.in), 12);
    const DevPtr<float> dx = to_device(x);
    DevPtr<float> dy = poisoned(size_t(c.out));
    const cuda::GemvArgs g = gemv_args(w, dx.get(), dy.get(), c.out, c.in, 1);
    std::vector<float> got[3];
    const int warps = cuda::gemv_rows_block_warps(2);
    for (int i = 0; i < 3; ++i) {
      cuda::gemv_rows_block_warps(2 << i);
      cuda::gemv(g, nullptr);
      got[i] = to_host(dy, size_t(c.out));
    }
    cuda::gemv_rows_block_warps(warps);
    Tensor y = Tensor::zeros(DType::F32, {1, c.out});
    ops::linear(f32_tensor(x, {1, c.in}), w.cpu, y);
    SCOPED_TRACE(std::string(c.dtype) + " " + std::to_string(c.out));
    EXPECT_LE(rel_err(got[2], y.ptr<float>(), size_t(c.out)), 1e-5);
    for (int i = 0; i < 2; ++i)
      EXPECT_EQ(std::memcmp(got[i].data(), got[2].data(), got[2].size() * sizeof(float)), 0)
          << (2 << i) << " warps";
    // The same gemv again, into a fresh buffer, under the settings the caller has made.
    const auto again = [&] {
      DevPtr<float> dv = poisoned(size_t(c.out));
      cuda::GemvArgs gv = g;
      gv.y = dv.get();
      cuda::gemv(gv, nullptr);
      return to_host(dv, size_t(c.out));
    };
    // The sweep's FP8 load variants (chunks a batch): the same bits too.
    for (const int chunks : {2, 4}) {
      const int before = cuda::gemv_rows_batch(chunks);
      const std::vector<float> v = again();
      cuda::gemv_rows_batch(before);
      EXPECT_EQ(std::memcmp(v.data(), got[0].data(), got[0].size() * sizeof(float)), 0)
          << chunks << " chunks a batch";
    }
    {  // the first weights loaded after the wait for the kernel before, not before it
      const int flags = cuda::gemv_flags(0);
      cuda::gemv_flags(flags & ~4);
      const std::vector<float> v = again();
      cuda::gemv_flags(flags);
      EXPECT_EQ(std::memcmp(v.data(), got[0].data(), got[0].size() * sizeof(float)), 0)
          << "weights after the wait";
    }
  }
}

// Five stacked FP8 experts of 136 outputs (a partial block) over gathered input rows, grouped
// by `offsets`, against the CPU per expert; the output of the launch.
std::vector<float> check_grouped(int64_t K, const std::vector<int32_t>& offsets,
                                 const std::vector<int32_t>& rows,
                                 const std::vector<int32_t>& active) {
  const int64_t E = 5, N = 136, tokens = 7;
  std::vector<TestLinear> experts;
  for (int64_t e = 0; e < E; ++e) experts.push_back(make_linear("fp8", N, K, 10 + e));
  // Stack as the engine does: weights [E·N, K], scales [E·ceil(N/128), ceil(K/128)].
  std::vector<uint8_t> ws;
  std::vector<float> ss;
  for (auto& t : experts) {
    const auto* p = static_cast<const uint8_t*>(t.cpu.weight.data());
    ws.insert(ws.end(), p, p + t.cpu.weight.nbytes());
    ss.insert(ss.end(), t.cpu.scale_inv.ptr<float>(),
              t.cpu.scale_inv.ptr<float>() + t.cpu.scale_inv.numel());
  }
  const auto dw = to_device(ws);
  const auto ds = to_device(ss);
  const std::vector<float> x = randn(size_t(tokens * K), 4);
  const auto dx = to_device(x);
  const auto doff = to_device(offsets);
  const auto drows = to_device(rows);
  DevPtr<float> dy = poisoned(rows.size() * N);
  cuda::GemvArgs g;
  g.w = experts[0].dev;
  g.w.w = dw.get();
  g.w.scale = ds.get();
  g.w.rows = E * N;
  g.n = N;
  g.w_group_rows = N;
  g.scale_group_rows = 2;
  g.x = dx.get();
  g.ldx = K;
  g.x_rows = drows.get();
  g.y = dy.get();
  g.ldy = N;
  g.m = int64_t(rows.size());
  g.groups = int(E);
  g.offsets = doff.get();
  const auto dact = to_device(active);
  g.active = dact.get();
  cuda::gemv(g, nullptr);
  const std::vector<float> got = to_host(dy, rows.size() * N);
  for (int64_t e = 0; e < E; ++e) {
    for (int32_t p = offsets[size_t(e)]; p < offsets[size_t(e) + 1]; ++p) {
      const std::vector<float> xr(x.begin() + rows[size_t(p)] * K,
                                  x.begin() + (rows[size_t(p)] + 1) * K);
      Tensor y = Tensor::zeros(DType::F32, {1, N});
      ops::linear(f32_tensor(xr, {1, K}), experts[size_t(e)].cpu, y);
      const std::vector<float> gr(got.begin() + p * N, got.begin() + (p + 1) * N);
      EXPECT_LE(rel_err(gr, y.ptr<float>(), size_t(N)), 1e-5) << "expert " << e << " pos " << p;
    }
  }
  return got;
}

class GroupedGemvGpu : public ::testing::TestWithParam<int64_t> {};

// Rows grouped by expert: expert 0 gets none, expert 3 gets five; the active list names the
// four with rows. K = 2048 splits each output over 4 warps (split-K for long rows of few
// outputs).
TEST_P(GroupedGemvGpu, ExpertsWithGatheredRows) {
  SKIP_WITHOUT_GPU();
  check_grouped(GetParam(), {0, 0, 2, 3, 8, 9}, {4, 1, 6, 0, 2, 3, 5, 6, 2}, {4, 1, 2, 3, 4});
}

// About one row per expert (batch-1 decode, small batches) takes the kernel with several
// outputs per warp: expert 1 has two rows, expert 4 none, and the fifth slot of the grid is
// past the active list.
TEST_P(GroupedGemvGpu, ExpertsAtAboutOneRowEach) {
  SKIP_WITHOUT_GPU();
  check_grouped(GetParam(), {0, 1, 3, 4, 5, 5}, {6, 0, 3, 5, 2}, {4, 0, 1, 2, 3});
}

INSTANTIATE_TEST_SUITE_P(K, GroupedGemvGpu, ::testing::Values(int64_t(256), int64_t(2048)));

TEST(BasicGpu, AddRmsnormAndRopeMatchCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 9, heads = 3, width = 48, off = 16, half = 16;
  // 200: the strided kernel; 512, 7168: float4s in registers (V3's kv_a and hidden widths);
  // 9000: over the register kernel's 8192.
  for (const int64_t d : {int64_t(200), int64_t(512), int64_t(7168), int64_t(9000)}) {
    const std::vector<float> x = randn(size_t(n * d), 5), delta = randn(size_t(n * d), 6);
    const std::vector<float> w = randn(size_t(d), 7);
    Tensor xs = f32_tensor(x, {n, d});
    ops::add_inplace(xs, f32_tensor(delta, {n, d}));
    Tensor ref = Tensor::zeros(DType::F32, {n, d});
    ops::rmsnorm(xs, f32_tensor(w, {d}), 1e-6f, ref);
    const auto dx = to_device(x);
    const auto dd = to_device(delta);
    const auto dw = to_device(w);
    DevPtr<float> dout = poisoned(size_t(n * d));
    cuda::add_rmsnorm(dx.get(), d, dd.get(), dw.get(), 1e-6f, n, d, dout.get(), d, nullptr);
    EXPECT_LE(rel_err(to_host(dout, size_t(n * d)), ref.ptr<float>(), size_t(n * d)), 1e-6) << d;
    EXPECT_LE(rel_err(to_host(dx, size_t(n * d)), xs.ptr<float>(), size_t(n * d)), 1e-7) << d;
    // In place, no residual (the q_a norm's call).
    cuda::add_rmsnorm(dx.get(), d, nullptr, dw.get(), 1e-6f, n, d, dx.get(), d, nullptr);
    EXPECT_LE(rel_err(to_host(dx, size_t(n * d)), ref.ptr<float>(), size_t(n * d)), 1e-6) << d;
  }

  // RoPE at large positions (YaRN-like frequencies), against the CPU's f32-angle rotation.
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv[size_t(i)] = std::pow(10000.0f, -float(2 * i) / 32.0f);
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = int32_t(i * 17321 + 3);
  const std::vector<float> q = randn(size_t(n * heads * width), 8);
  Tensor qc = f32_tensor(q, {n, heads, width});
  Tensor pt = Tensor::zeros(DType::I32, {n});
  std::copy(pos.begin(), pos.end(), pt.ptr<int32_t>());
  ops::rope_interleaved(qc, off, inv, 0.9f, pt);
  const auto dq = to_device(q);
  const auto dinv = to_device(inv);
  const auto dpos = to_device(pos);
  cuda::rope(dq.get(), n, heads, width, off, dinv.get(), half, 0.9f, dpos.get(), nullptr);
  EXPECT_LE(rel_err(to_host(dq, q.size()), qc.ptr<float>(), q.size()), 1e-6);
}

struct RouteCase {
  const char* scoring;
  const char* method;
  int64_t e, k, groups, topk_group;
  bool norm;
};

class RouteGpu : public ::testing::TestWithParam<RouteCase> {};

TEST_P(RouteGpu, ChoosesAsTheCpu) {
  SKIP_WITHOUT_GPU();
  const RouteCase rc = GetParam();
  ModelConfig c;
  c.n_routed_experts = rc.e;
  c.num_experts_per_tok = rc.k;
  c.n_group = rc.groups;
  c.topk_group = rc.topk_group;
  c.scoring_func = rc.scoring;
  c.topk_method = rc.method;
  c.norm_topk_prob = rc.norm;
  c.routed_scaling_factor = 2.5;
  const int64_t n = 67;
  const std::vector<float> logits = randn(size_t(n * rc.e), 9, 2.0f);
  const bool sigmoid = c.scoring_func == "sigmoid";
  const std::vector<float> bias = randn(size_t(rc.e), 10, 0.1f);
  const Routing want = route_tokens(c, logits.data(), sigmoid ? bias.data() : nullptr, n);
  cuda::RouteArgs r;
  r.e = rc.e;
  r.k = rc.k;
  const bool grouped = c.topk_method == "noaux_tc" || c.topk_method == "group_limited_greedy";
  r.n_group = grouped ? rc.groups : 1;
  r.topk_group = grouped ? rc.topk_group : 1;
  r.sigmoid = sigmoid;
  r.top2_group_score = c.topk_method == "noaux_tc";
  r.normalise = c.norm_topk_prob && (sigmoid || rc.k > 1);
  r.scale = sigmoid || !r.normalise ? float(c.routed_scaling_factor) : 1.0f;
  const auto dl = to_device(logits);
  const auto db = to_device(bias);
  DevPtr<int32_t> de = to_device(std::vector<int32_t>(size_t(n * rc.k), -1));
  DevPtr<float> dw = poisoned(size_t(n * rc.k));
  cuda::route(dl.get(), sigmoid ? db.get() : nullptr, n, r, de.get(), dw.get(), nullptr);
  EXPECT_EQ(to_host(de, size_t(n * rc.k)), want.expert);
  EXPECT_LE(rel_err(to_host(dw, size_t(n * rc.k)), want.weight.data(), want.weight.size()), 1e-6);
  // Logits full of ties (a quarter-step grid: equal scores, equal group sums) choose as the CPU
  // does: the lower index wins.
  std::vector<float> ties = logits;
  for (float& x : ties) x = std::round(x * 2.0f) / 4.0f;
  const Routing want_ties = route_tokens(c, ties.data(), sigmoid ? bias.data() : nullptr, n);
  const auto dt = to_device(ties);
  DevPtr<int32_t> de_ties = to_device(std::vector<int32_t>(size_t(n * rc.k), -1));
  DevPtr<float> dw_ties = poisoned(size_t(n * rc.k));
  cuda::route(dt.get(), sigmoid ? db.get() : nullptr, n, r, de_ties.get(), dw_ties.get(), nullptr);
  EXPECT_EQ(to_host(de_ties, size_t(n * rc.k)), want_ties.expert);
  EXPECT_LE(
      rel_err(to_host(dw_ties, size_t(n * rc.k)), want_ties.weight.data(), want_ties.weight.size()),
      1e-6);

  // The permutation: every pair lands once, grouped by expert, experts with pairs listed.
  const auto expect_grouped = [&](const std::vector<int32_t>& experts, int64_t tokens,
                                  const DevPtr<int32_t>& off, const DevPtr<int32_t>& rows,
                                  const DevPtr<int32_t>& pos, const DevPtr<int32_t>& active) {
    const int64_t pairs = tokens * rc.k;
    const auto ho = to_host(off, size_t(rc.e + 1));
    const auto hr = to_host(rows, size_t(pairs));
    const auto hp = to_host(pos, size_t(pairs));
    std::vector<int32_t> want_off(size_t(rc.e + 1), 0);  // the counts' exclusive prefix sum
    for (int64_t a = 0; a < pairs; ++a) ++want_off[size_t(experts[size_t(a)]) + 1];
    for (int64_t e = 0; e < rc.e; ++e) want_off[size_t(e) + 1] += want_off[size_t(e)];
    EXPECT_EQ(ho, want_off) << tokens << " tokens";
    const auto ha = to_host(active, size_t(rc.e + 1));
    std::vector<int32_t> want_active;
    for (int64_t e = 0; e < rc.e; ++e)
      if (want_off[size_t(e) + 1] > want_off[size_t(e)]) want_active.push_back(int32_t(e));
    ASSERT_TRUE(ha[0] >= 0 && ha[0] <= rc.e) << tokens << " tokens";
    EXPECT_EQ(std::vector<int32_t>(ha.begin() + 1, ha.begin() + 1 + ha[0]), want_active);
    for (int64_t a = 0; a < pairs; ++a) {
      const int32_t e = experts[size_t(a)], p = hp[size_t(a)];
      ASSERT_TRUE(p >= want_off[size_t(e)] && p < want_off[size_t(e) + 1]) << a;
      EXPECT_EQ(hr[size_t(p)], a / rc.k) << a;
    }
  };
  const auto buffers = [&] {
    return std::array{to_device(std::vector<int32_t>(size_t(rc.e + 1), -1)),
                      to_device(std::vector<int32_t>(size_t(n * rc.k), -1)),
                      to_device(std::vector<int32_t>(size_t(n * rc.k), -1)),
                      to_device(std::vector<int32_t>(size_t(rc.e + 1), -1))};
  };
  {
    auto [off, rows, pos, active] = buffers();
    cuda::moe_permute(de.get(), n * rc.k, rc.k, rc.e, off.get(), rows.get(), pos.get(),
                      active.get(), nullptr);
    expect_grouped(want.expert, n, off, rows, pos, active);
  }
  // route_and_permute: one launch up to 4 tokens (a decode step), else both kernels; the same
  // choices and grouping either way.
  for (const int64_t m : {int64_t(1), int64_t(3), int64_t(4), n}) {
    const Routing w = route_tokens(c, logits.data(), sigmoid ? bias.data() : nullptr, m);
    DevPtr<int32_t> e2 = to_device(std::vector<int32_t>(size_t(n * rc.k), -1));
    DevPtr<float> w2 = poisoned(size_t(n * rc.k));
    auto [off, rows, pos, active] = buffers();
    cuda::route_and_permute(dl.get(), sigmoid ? db.get() : nullptr, m, r, e2.get(), w2.get(),
                            off.get(), rows.get(), pos.get(), active.get(), nullptr);
    EXPECT_EQ(to_host(e2, size_t(m * rc.k)), w.expert) << m << " tokens";
    EXPECT_LE(rel_err(to_host(w2, size_t(m * rc.k)), w.weight.data(), w.weight.size()), 1e-6);
    expect_grouped(w.expert, m, off, rows, pos, active);
  }
}

INSTANTIATE_TEST_SUITE_P(Rules, RouteGpu,
                         ::testing::Values(RouteCase{"sigmoid", "noaux_tc", 256, 8, 8, 4, true},
                                           RouteCase{"sigmoid", "noaux_tc", 16, 4, 4, 2, true},
                                           RouteCase{"sigmoid", "noaux_tc", 6, 3, 1, 1, true},
                                           RouteCase{"softmax", "greedy", 64, 6, 1, 1, false},
                                           RouteCase{"softmax", "group_limited_greedy", 32, 4, 4, 2,
                                                     true}));

// The kernel keeps a token's choices one per lane: more than 32 is a clear error, not garbage.
TEST(BasicGpu, RouteRejectsMoreThan32ExpertsPerToken) {
  SKIP_WITHOUT_GPU();
  cuda::RouteArgs r;
  r.e = 64;
  r.k = 33;
  DevPtr<float> logits = poisoned(64);
  DevPtr<int32_t> experts = to_device(std::vector<int32_t>(33, 0));
  DevPtr<float> weights = poisoned(33);
  EXPECT_THROW(cuda::route(logits.get(), nullptr, 1, r, experts.get(), weights.get(), nullptr),
               Error);
}

class MlaGpu : public ::testing::TestWithParam<const char*> {};

// One latent row [c_kv ; k_pe] in CachePool's FP8 format (row_bytes bytes at out): c_kv in
// E4M3 1×128 tiles, k_pe in BF16. The row becomes the values the cache then holds.
void encode_fp8_row(const cuda::CachePool& pool, float* row, uint8_t* out) {
  const int64_t dc = pool.dc, dr = pool.dr;
  std::fill(out, out + pool.row_bytes(), uint8_t(0));
  for (int64_t t = 0; t < dc / 128; ++t) {
    float amax = 0;
    for (int64_t j = 0; j < 128; ++j) amax = std::max(amax, std::fabs(row[t * 128 + j]));
    const float scale = amax > 0 ? std::max(amax / 448.0f, FLT_MIN) : 1.0f;
    std::memcpy(out + dc + 4 * t, &scale, 4);
    for (int64_t j = 0; j < 128; ++j) {
      const f8_t code = f32_to_e4m3(row[t * 128 + j] / scale);
      out[t * 128 + j] = code;
      row[t * 128 + j] = e4m3_to_f32(code) * scale;
    }
  }
  for (int64_t j = 0; j < dr; ++j) {
    const uint16_t b = f32_to_bf16(row[dc + j]);
    std::memcpy(out + pool.fp8_kpe_offset() + 2 * j, &b, 2);
    row[dc + j] = bf16_to_f32(b);
  }
}

enum class CacheKind { kF32, kBf16, kFp8 };

// A paged latent cache holding `seqs` sequences x `layers` layers x `len` rows of [c_kv ; k_pe]
// (`logical`, laid out [seq][layer][len][dc + dr]) in blocks of `block` rows handed out in a
// shuffled order, so no sequence's blocks are contiguous: the device rows (F32, BF16 or FP8),
// the block tables and the CachePool over them. `logical` becomes the values the cache holds
// (BF16 rounded, FP8 decoded).
struct PagedCache {
  DevPtr<uint8_t> rows;
  DevPtr<int32_t> tables;
  cuda::CachePool pool;
};
PagedCache paged_cache(std::vector<float>& logical, int64_t seqs, int64_t layers, int64_t len,
                       int64_t dc, int64_t dr, CacheKind kind, int64_t block = 64) {
  const int64_t D = dc + dr, mb = (len + block - 1) / block, blocks = seqs * mb + 3;
  std::vector<int32_t> ids(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) ids[size_t(b)] = int32_t(b);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(5));
  const std::vector<int32_t> tables(ids.begin(), ids.begin() + seqs * mb);
  PagedCache c;
  c.pool.layers = layers;
  c.pool.blocks = blocks;
  c.pool.block_tokens = block;
  c.pool.dc = dc;
  c.pool.dr = dr;
  c.pool.bf16 = kind == CacheKind::kBf16;
  c.pool.fp8 = kind == CacheKind::kFp8;
  c.pool.max_blocks = mb;
  const int64_t rb = c.pool.row_bytes();
  std::vector<uint8_t> rows(static_cast<size_t>(layers * blocks * block * rb), 0);
  for (int64_t q = 0; q < seqs; ++q)
    for (int64_t l = 0; l < layers; ++l)
      for (int64_t p = 0; p < len; ++p) {
        const int64_t at = ((l * blocks + tables[size_t(q * mb + p / block)]) * block + p % block);
        float* row = logical.data() + ((q * layers + l) * len + p) * D;
        uint8_t* dst = rows.data() + at * rb;
        if (kind == CacheKind::kFp8) {
          encode_fp8_row(c.pool, row, dst);
        } else if (kind == CacheKind::kBf16) {
          for (int64_t d = 0; d < D; ++d) {
            const uint16_t b = f32_to_bf16(row[d]);
            std::memcpy(dst + 2 * d, &b, 2);
            row[d] = bf16_to_f32(b);
          }
        } else {
          std::memcpy(dst, row, size_t(D) * 4);
        }
      }
  c.tables = to_device(tables);
  c.rows = to_device(rows);
  c.pool.base = c.rows.get();
  c.pool.tables = c.tables.get();
  return c;
}

// latent_to_cache into an FP8 cache writes exactly the encoding of what it writes into an F32
// one (the same normalised, rotated rows): codes, tile scales (an all-zero tile gets 1), k_pe
// in BF16, byte for byte.
TEST(CacheGpu, Fp8RowsAreTheEncodingOfTheF32Rows) {
  SKIP_WITHOUT_GPU();
  const int64_t dc = 256, dr = 32, D = dc + dr, half = dr / 2, len = 64, n = 6;
  std::vector<float> z32(size_t(2 * len * D), 0.0f), z8 = z32;
  const PagedCache c32 = paged_cache(z32, 2, 1, len, dc, dr, CacheKind::kF32);
  const PagedCache c8 = paged_cache(z8, 2, 1, len, dc, dr, CacheKind::kFp8);
  std::vector<float> kv = randn(size_t(n * D), 91, 2.0f);
  std::fill_n(kv.begin() + 2 * D + 128, 128, 0.0f);  // row 2's second tile: all zeros
  const std::vector<float> w = randn(size_t(dc), 92);
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv[size_t(i)] = float(std::pow(10000.0, -double(i) / half));
  const std::vector<int32_t> pos = {0, 5, 63, 1, 2, 40}, seq = {0, 0, 0, 1, 1, 1};
  const auto dkv = to_device(kv), dw = to_device(w), dinv = to_device(inv);
  const auto dpos = to_device(pos), dseq = to_device(seq);
  for (const PagedCache* c : {&c32, &c8})
    cuda::latent_to_cache(dkv.get(), c->pool.row(), n, dw.get(), 1e-6f, dinv.get(), half, 1.0f,
                          dpos.get(), dseq.get(), c->pool, 0, nullptr);
  const int64_t rows = c32.pool.blocks * len, rb32 = c32.pool.row_bytes();
  const int64_t rb8 = c8.pool.row_bytes();
  EXPECT_EQ(rb8, 336);  // 256 codes, 2 scales padded to 16 bytes, 32 BF16, padded to 16
  const std::vector<uint8_t> got32 = to_host(c32.rows, size_t(rows * rb32));
  const std::vector<uint8_t> got8 = to_host(c8.rows, size_t(rows * rb8));
  const std::vector<int32_t> tables = to_host(c32.tables, size_t(2 * c32.pool.max_blocks));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t p = pos[size_t(t)];
    const int64_t r =
        tables[size_t(seq[size_t(t)] * c32.pool.max_blocks + p / len)] * len + p % len;
    std::vector<float> row(static_cast<size_t>(D));
    std::memcpy(row.data(), got32.data() + r * rb32, size_t(D) * 4);
    std::vector<uint8_t> want(static_cast<size_t>(rb8));
    encode_fp8_row(c8.pool, row.data(), want.data());
    EXPECT_EQ(std::memcmp(want.data(), got8.data() + r * rb8, size_t(rb8)), 0) << "row " << t;
  }
  float scale_of_zero_tile = 0;
  const int64_t r2 = tables[size_t(0 * c32.pool.max_blocks + 63 / len)] * len + 63 % len;
  std::memcpy(&scale_of_zero_tile, got8.data() + r2 * rb8 + dc + 4, 4);
  EXPECT_EQ(scale_of_zero_tile, 1.0f);
}

// The absorbed query qc = [q_nope·W_UK ; q_pe] against float64 over the dequantised kv_b: one
// row and five (the 16-byte kernel's 1- and 4-row blocks, a partial block), and a latent width
// that 16-byte loads cannot take (the scalar kernel) for BF16 and FP8; then with q_pe's RoPE and
// the BF16 output fused in.
TEST_P(MlaGpu, AbsorbedQueryMatchesFloat64) {
  SKIP_WITHOUT_GPU();
  const int64_t H = 6, dn = 32, dr = 16, dv = 24;
  for (const int64_t dc : {int64_t(160), int64_t(100)}) {
    for (const int64_t T : {int64_t(1), int64_t(5)}) {
      TestLinear kv_b = make_linear(GetParam(), H * (dn + dv), dc, 21);
      std::vector<float> w(size_t(H * (dn + dv) * dc));
      kv_b.cpu.dequantize_rows(0, H * (dn + dv), w.data());
      const std::vector<float> q = randn(size_t(T * H * (dn + dr)), 22);
      const auto dq = to_device(q);
      DevPtr<float> qc = poisoned(size_t(T * H * (dc + dr)));
      cuda::mla_absorb_q(dq.get(), T, H, dn, dr, dv, kv_b.dev, nullptr, qc.get(), nullptr, nullptr);
      const std::vector<float> got = to_host(qc, size_t(T * H * (dc + dr)));
      double err = 0, scale = 0;
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t h = 0; h < H; ++h) {
          const float* qn = q.data() + (t * H + h) * (dn + dr);
          const float* g = got.data() + (t * H + h) * (dc + dr);
          for (int64_t c = 0; c < dc; ++c) {
            double want = 0;
            for (int64_t i = 0; i < dn; ++i)
              want += double(qn[i]) * w[size_t((h * (dn + dv) + i) * dc + c)];
            err = std::max(err, std::abs(g[c] - want));
            scale = std::max(scale, std::abs(want));
          }
          for (int64_t j = 0; j < dr; ++j) EXPECT_EQ(g[dc + j], qn[dn + j]);  // q_pe copied
        }
      }
      EXPECT_LE(err, 1e-5 * scale) << "dc " << dc << ", " << T << " rows";

      // Fused: q_pe rotated as the CPU's rope_interleaved rotates it (the tolerance of the RoPE
      // test above: cos / sin in double on both, rounded to f32), and the BF16 output the F32
      // one rounded to nearest even by the CPU's conversion.
      std::vector<float> inv(size_t(dr / 2));
      for (int64_t i = 0; i < dr / 2; ++i) inv[size_t(i)] = std::pow(1000.0f, -float(i) / 8);
      std::vector<int32_t> pos(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = int32_t(977 * t + 5);
      const auto dinv = to_device(inv);
      const auto dpos = to_device(pos);
      const cuda::QueryRope rope{dpos.get(), dinv.get(), 0.75f};
      DevPtr<uint16_t> qcb = to_device(std::vector<uint16_t>(size_t(T * H * (dc + dr)), 0xffff));
      cuda::mla_absorb_q(dq.get(), T, H, dn, dr, dv, kv_b.dev, &rope, qc.get(), nullptr, nullptr);
      cuda::mla_absorb_q(dq.get(), T, H, dn, dr, dv, kv_b.dev, &rope, nullptr, qcb.get(), nullptr);
      Tensor roped = f32_tensor(q, {T, H, dn + dr});
      Tensor pt = Tensor::zeros(DType::I32, {T});
      std::copy(pos.begin(), pos.end(), pt.ptr<int32_t>());
      ops::rope_interleaved(roped, dn, inv, 0.75f, pt);
      const std::vector<float> f32 = to_host(qc, size_t(T * H * (dc + dr)));
      const std::vector<uint16_t> b16 = to_host(qcb, size_t(T * H * (dc + dr)));
      std::vector<float> pe(size_t(T * H * dr)), want_pe(pe.size());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) {
          const float* g = f32.data() + (t * H + h) * (dc + dr);
          EXPECT_EQ(std::vector<float>(g, g + dc),
                    std::vector<float>(got.data() + (t * H + h) * (dc + dr),
                                       got.data() + (t * H + h) * (dc + dr) + dc));
          std::copy_n(g + dc, dr, pe.begin() + (t * H + h) * dr);
          std::copy_n(roped.ptr<float>() + (t * H + h) * (dn + dr) + dn, dr,
                      want_pe.begin() + (t * H + h) * dr);
        }
      EXPECT_LE(rel_err(pe, want_pe.data(), pe.size()), 1e-6) << "dc " << dc << ", " << T;
      std::vector<uint16_t> want16(f32.size());
      convert_from_f32(DType::BF16, f32.data(), want16.data(), f32.size());
      EXPECT_EQ(b16, want16) << "dc " << dc << ", " << T << " rows";
    }
  }
}

// Absorbed attention over a long cache (several key splits) vs the CPU's ops::mla_attention, with
// the cache in F32 and in BF16 (the CPU then gets the same BF16-rounded values).
// The absorb on the BF16 tensor cores (mla_absorb_q_tc, chunks over gemv_max_rows): q_nope and
// W_UK rounded to BF16, so near float64 by BF16's rounding (a few 2^-9 of the largest value),
// not to the CUDA-core kernel's 1e-5; q_pe as that kernel puts it, bit for bit. Two column
// blocks, and a partial block of rows. F32 weights have no tensor-core path.
TEST_P(MlaGpu, AbsorbedQueryOnTensorCoresStaysNearFloat64) {
  SKIP_WITHOUT_GPU();
  const int64_t H = 3, dn = 128, dr = 64, dv = 32, dc = 256;
  for (const int64_t T : {int64_t(20), int64_t(70)}) {
    TestLinear kv_b = make_linear(GetParam(), H * (dn + dv), dc, 23);
    std::vector<float> w(size_t(H * (dn + dv) * dc));
    kv_b.cpu.dequantize_rows(0, H * (dn + dv), w.data());
    const std::vector<float> q = randn(size_t(T * H * (dn + dr)), 24);
    const auto dq = to_device(q);
    std::vector<float> inv(size_t(dr / 2));
    for (int64_t i = 0; i < dr / 2; ++i) inv[size_t(i)] = std::pow(1000.0f, -float(i) / 8);
    std::vector<int32_t> pos(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = int32_t(31 * t + 2);
    const auto dinv = to_device(inv);
    const auto dpos = to_device(pos);
    const cuda::QueryRope rope{dpos.get(), dinv.get(), 1.0f};
    const size_t count = size_t(T * H * (dc + dr));
    DevPtr<uint16_t> tc = to_device(std::vector<uint16_t>(count, 0xffff));
    DevPtr<uint16_t> vec = to_device(std::vector<uint16_t>(count, 0xffff));
    const bool ran =
        cuda::mla_absorb_q_tc(dq.get(), T, H, dn, dr, dv, kv_b.dev, &rope, tc.get(), nullptr);
    EXPECT_EQ(ran, std::string(GetParam()) != "f32");
    if (!ran) return;
    cuda::mla_absorb_q(dq.get(), T, H, dn, dr, dv, kv_b.dev, &rope, nullptr, vec.get(), nullptr);
    const std::vector<uint16_t> got = to_host(tc, count), want_pe = to_host(vec, count);
    std::vector<float> gotf(count);
    convert_to_f32(DType::BF16, got.data(), gotf.data(), count);
    double err = 0, scale = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const float* qn = q.data() + (t * H + h) * (dn + dr);
        const int64_t at = (t * H + h) * (dc + dr);
        for (int64_t c = 0; c < dc; ++c) {
          double want = 0;
          for (int64_t i = 0; i < dn; ++i)
            want += double(qn[i]) * w[size_t((h * (dn + dv) + i) * dc + c)];
          err = std::max(err, std::abs(gotf[size_t(at + c)] - want));
          scale = std::max(scale, std::abs(want));
        }
        EXPECT_EQ(std::vector<uint16_t>(got.begin() + at + dc, got.begin() + at + dc + dr),
                  std::vector<uint16_t>(want_pe.begin() + at + dc, want_pe.begin() + at + dc + dr))
            << "q_pe, row " << t << " head " << h;
      }
    std::printf("[ absorb tc %s, %lld rows ] max|d|/max|want| = %.2e\n", GetParam(),
                static_cast<long long>(T), err / scale);
    EXPECT_LE(err, 1e-2 * scale) << T << " rows";
    EXPECT_GT(err, 0.0) << "BF16 inputs should round somewhere";
  }
}

// W_UV out of the latent output on the BF16 tensor cores (mla_uv_tc, chunks over
// gemv_max_rows) against float64, within BF16's rounding of o_lat and the weight.
TEST_P(MlaGpu, LatentOutputOnTensorCoresStaysNearFloat64) {
  SKIP_WITHOUT_GPU();
  const int64_t H = 3, dn = 32, dv = 128, dc = 256;
  for (const int64_t T : {int64_t(20), int64_t(70)}) {
    TestLinear kv_b = make_linear(GetParam(), H * (dn + dv), dc, 25);
    std::vector<float> w(size_t(H * (dn + dv) * dc));
    kv_b.cpu.dequantize_rows(0, H * (dn + dv), w.data());
    const std::vector<float> olat = randn(size_t(T * H * dc), 26);
    const auto dl = to_device(olat);
    DevPtr<float> dout = poisoned(size_t(T * H * dv));
    const bool ran = cuda::mla_uv_tc(dl.get(), T, H, dn, dv, kv_b.dev, dout.get(), nullptr);
    EXPECT_EQ(ran, std::string(GetParam()) != "f32");
    if (!ran) return;
    const std::vector<float> got = to_host(dout, size_t(T * H * dv));
    double err = 0, scale = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t j = 0; j < dv; ++j) {
          double want = 0;
          for (int64_t c = 0; c < dc; ++c)
            want += double(olat[size_t((t * H + h) * dc + c)]) *
                    w[size_t((h * (dn + dv) + dn + j) * dc + c)];
          err = std::max(err, std::abs(got[size_t((t * H + h) * dv + j)] - want));
          scale = std::max(scale, std::abs(want));
        }
    std::printf("[ W_UV tc %s, %lld rows ] max|d|/max|want| = %.2e\n", GetParam(),
                static_cast<long long>(T), err / scale);
    EXPECT_LE(err, 1e-2 * scale) << T << " rows";
    EXPECT_GT(err, 0.0) << "BF16 inputs should round somewhere";
  }
}

TEST_P(MlaGpu, AttentionOverLongCacheMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const CacheKind kind : {CacheKind::kF32, CacheKind::kBf16, CacheKind::kFp8}) {
    // FP8 rows need c_kv in whole 128-wide tiles.
    const int64_t dc = kind == CacheKind::kFp8 ? 256 : 160;
    const int64_t H = 12, dn = 32, dr = 16, dv = 24, L = 1500, T = 3, start = L - T;
    const float scale = 0.13f;
    TestLinear kv_b = make_linear(GetParam(), H * (dn + dv), dc, 11);
    const std::vector<float> q = randn(size_t(T * H * (dn + dr)), 12);
    std::vector<float> rows = randn(size_t(L * (dc + dr)), 13);
    const PagedCache cache = paged_cache(rows, 1, 1, L, dc, dr, kind);
    const cuda::CachePool& pool = cache.pool;
    // The CPU gets the values the cache holds (BF16-rounded, FP8-decoded).
    std::vector<float> ckv(static_cast<size_t>(L * dc)), kpe(static_cast<size_t>(L * dr));
    for (int64_t j = 0; j < L; ++j) {
      std::copy_n(rows.begin() + j * (dc + dr), dc, ckv.begin() + j * dc);
      std::copy_n(rows.begin() + j * (dc + dr) + dc, dr, kpe.begin() + j * dr);
    }
    Tensor want = Tensor::zeros(DType::F32, {T, H, dv});
    ops::mla_attention(f32_tensor(q, {T, H, dn + dr}), f32_tensor(ckv, {L, dc}),
                       f32_tensor(kpe, {L, dr}), start, kv_b.cpu, dn, dv, scale, true, want);
    const std::vector<int32_t> pos = {int32_t(start), int32_t(start + 1), int32_t(start + 2)};
    const std::vector<int32_t> slots = {0, 0, 0};
    const auto dq = to_device(q);
    const auto dpos = to_device(pos);
    const auto dslots = to_device(slots);
    DevPtr<float> qc = poisoned(size_t(T * H * (dc + dr)));
    DevPtr<float> olat = poisoned(size_t(T * H * dc));
    DevPtr<float> o = poisoned(size_t(T * H * dv));
    cuda::mla_absorb_q(dq.get(), T, H, dn, dr, dv, kv_b.dev, nullptr, qc.get(), nullptr, nullptr);
    // Scratch for many key splits (merged), then for one (written straight to o_lat).
    for (const int64_t splits : {int64_t(64), int64_t(1)}) {
      const int64_t partial_floats = splits * T * H * (dc + 2);
      DevPtr<float> partial = poisoned(size_t(partial_floats));
      cuda::mla_attention(qc.get(), T, H, pool, 0, dpos.get(), dslots.get(), start + T - 1, scale,
                          partial.get(), partial_floats, olat.get(), nullptr);
      cuda::GemvArgs g;
      g.w = kv_b.dev;
      g.n = dv;
      g.w_group_rows = dn + dv;
      g.w_row0 = dn;
      g.x = olat.get();
      g.ldx = H * dc;
      g.x_goff = dc;
      g.y = o.get();
      g.ldy = H * dv;
      g.y_goff = dv;
      g.m = T;
      g.groups = int(H);
      cuda::gemv(g, nullptr);
      EXPECT_LE(rel_err(to_host(o, size_t(T * H * dv)), want.ptr<float>(), size_t(want.numel())),
                1e-5)
          << int(kind) << " (0 f32, 1 bf16, 2 fp8) cache, scratch for " << splits << " splits";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Weights, MlaGpu, ::testing::Values("bf16", "fp8", "f32"));

// The non-absorbed prefill attention (flash_prefill) against float64 on the same BF16 values:
// n query rows of 3 heads at positions 37 .. 36 + n (a cached prefix), keys' rope part from a
// cache-like buffer of wider rows, once over all keys and in key chunks of 64 and 192 (the
// state carried between launches), at the three head sizes the models here use. P is rounded
// to BF16 before P·V (as FlashAttention does): ≤ 8e-3 of max|o|. At 192 / 128 on Hopper each
// kernel runs (set_flash_kernel): the wgmma one over 64-key tiles must give the mma.sync
// kernel's bits exactly (the same tiles and sums on other instructions), and over 128-key tiles
// (the default) bits of its own wherever a launch spans more than 64 keys.
class FlashGpu : public ::testing::TestWithParam<std::tuple<int, int, int, int>> {};

TEST_P(FlashGpu, CausalWithPrefixMatchesFloat64) {
  SKIP_WITHOUT_GPU();
  const auto [dn, dr, dv, rows] = GetParam();
  const int64_t H = 3, n = rows, pos0 = 37, keys = pos0 + n, dc = 64, D = dc + dr;
  const int64_t dq = dn + dr, dkv = dn + dv;
  const std::vector<float> q = bf16_values(randn(size_t(n * H * dq), 51));
  const std::vector<float> kv = bf16_values(randn(size_t(keys * H * dkv), 52));
  const std::vector<float> cache = bf16_values(randn(size_t(keys * D), 53));
  const double scale = 1.0 / std::sqrt(double(dq));
  std::vector<double> want(size_t(n * H * dv), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t valid = pos0 + t + 1;
      std::vector<double> s(static_cast<size_t>(valid), 0.0);
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < valid; ++j) {
        double acc = 0;
        for (int64_t d = 0; d < dn; ++d)
          acc += double(q[size_t((t * H + h) * dq + d)]) * kv[size_t((j * H + h) * dkv + d)];
        for (int64_t d = 0; d < dr; ++d)
          acc += double(q[size_t((t * H + h) * dq + dn + d)]) * cache[size_t(j * D + dc + d)];
        s[size_t(j)] = acc * scale;
        mx = std::max(mx, s[size_t(j)]);
      }
      for (double& x : s) sum += x = std::exp(x - mx);
      for (int64_t j = 0; j < valid; ++j)
        for (int64_t d = 0; d < dv; ++d)
          want[size_t((t * H + h) * dv + d)] +=
              s[size_t(j)] / sum * kv[size_t((j * H + h) * dkv + dn + d)];
    }
  }
  double ref = 0;
  for (double w : want) ref = std::max(ref, std::fabs(w));
  const auto dq_ = to_device(bf16_bits(q)), dkv_ = to_device(bf16_bits(kv)),
             dcache = to_device(bf16_bits(cache));
  const std::vector<int> kinds = dn + dr == 192 && dv == 128 && cuda::wgmma_device()
                                     ? std::vector<int>{0, 1, 2}
                                     : std::vector<int>{0};
  for (const int64_t chunk : {keys, int64_t(64), int64_t(192)}) {
    std::vector<float> first;  // kernel 0's output
    for (const int kind : kinds) {
      cuda::set_flash_kernel(kind);
      DevPtr<float> o = poisoned(size_t(n * H * dv));
      DevPtr<float> ml = poisoned(size_t(n * H * 2));
      cuda::FlashArgs f;
      f.q = dq_.get();
      f.ldq = H * dq;
      f.kpe = dcache.get() + dc;
      f.ldkpe = D;
      f.ldkv = H * dkv;
      f.dn = dn;
      f.dr = dr;
      f.dv = dv;
      f.heads = H;
      f.n = n;
      f.pos0 = pos0;
      f.scale_log2 = float(scale * 1.4426950408889634);
      f.o = o.get();
      f.ldo = H * dv;
      f.ml = ml.get();
      ASSERT_TRUE(cuda::flash_prefill_supported(dn, dr, dv));
      for (int64_t kb = 0; kb < keys; kb += chunk) {
        f.kv = dkv_.get() + kb * H * dkv;  // as the engine's buffer: the chunk's keys only
        f.k_begin = kb;
        f.k_end = std::min(keys, kb + chunk);
        f.first = kb == 0;
        f.last = f.k_end == keys;
        cuda::flash_prefill(f, nullptr);
      }
      const std::vector<float> got = to_host(o, size_t(n * H * dv));
      double worst = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        if (std::isnan(got[i])) worst = INFINITY;
        worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
      }
      EXPECT_LE(worst / ref, 8e-3) << "kernel " << kind << ", key chunks of " << chunk;
      std::printf(
          "[ flash %d/%d/%d, %lld rows, kernel %d ] key chunks of %lld: max|d|/max|o| = "
          "%.2e\n",
          dn, dr, dv, static_cast<long long>(n), kind, static_cast<long long>(chunk), worst / ref);
      if (kind == 0) first = got;
      size_t differ = 0;
      for (size_t i = 0; i < got.size(); ++i) differ += got[i] != first[i];
      if (kind == 1) EXPECT_EQ(differ, 0u) << "key chunks of " << chunk;
      if (kind == 2 && chunk > 128) EXPECT_GT(differ, 0u) << "key chunks of " << chunk;
      if (kind > 0) std::printf("  %zu of %zu values differ from kernel 0's\n", differ, got.size());
    }
  }
  cuda::set_flash_kernel(2);
}

INSTANTIATE_TEST_SUITE_P(HeadDims, FlashGpu,
                         ::testing::Values(std::make_tuple(128, 64, 128, 100),
                                           std::make_tuple(128, 64, 128, 300),
                                           std::make_tuple(64, 32, 64, 100),
                                           std::make_tuple(16, 8, 16, 100)));

// The absorbed decode attention on the tensor cores (mla_attention_tc) against float64 on the
// same BF16 values: three query rows of two sequences at positions 299, 40 and 0 (many key
// splits, a partial last tile, a single key), at DeepSeek-V3's 128 heads, V2-Lite's 16, 10
// heads (the rows past them) and bench-1b's 10 heads of kv_lora 256, over BF16 and FP8 caches: on
// the 16-head kernels (wgmma over either cache, mma.sync over BF16) and on the 64-head ones with
// the rows past them idle. P is BF16 before P·c_kv: ≤ 8e-3 of max|o_lat|.
class MlaTcGpu : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(MlaTcGpu, DecodeOverBf16CacheMatchesFloat64) {
  SKIP_WITHOUT_GPU();
  const auto [heads, dc, dr] = GetParam();
  const int64_t H = heads, D = dc + dr, cap = 320, n = 3;
  for (const CacheKind kind : {CacheKind::kBf16, CacheKind::kFp8}) {
    // Two sequences × 2 layers × cap rows in scrambled blocks of 32 rows; the test reads layer 1.
    // The reference takes the values the cache holds (FP8: decoded; the kernel rounds them to
    // BF16 on the way into shared memory, within the tolerance).
    std::vector<float> cache = randn(size_t(2 * 2 * cap * D), 61);
    const PagedCache paged = paged_cache(cache, 2, 2, cap, dc, dr, kind, 32);
    const cuda::CachePool& pool = paged.pool;
    ASSERT_TRUE(cuda::mla_attention_tc_supported(pool));
    const std::vector<float> qc = bf16_values(randn(size_t(n * H * D), 62, 0.2f));
    const std::vector<int32_t> pos = {299, 40, 0}, slot = {1, 0, 1};
    const int64_t layer = 1;
    const double scale = 1.0 / std::sqrt(192.0);
    std::vector<double> want(size_t(n * H * dc), 0.0);
    for (int64_t t = 0; t < n; ++t) {
      const float* rows = cache.data() + (slot[size_t(t)] * 2 + layer) * cap * D;
      for (int64_t h = 0; h < H; ++h) {
        const float* q = qc.data() + (t * H + h) * D;
        std::vector<double> s(static_cast<size_t>(pos[size_t(t)] + 1), 0.0);
        double mx = -INFINITY, sum = 0;
        for (size_t j = 0; j < s.size(); ++j) {
          double acc = 0;
          for (int64_t d = 0; d < D; ++d) acc += double(q[d]) * rows[int64_t(j) * D + d];
          mx = std::max(mx, s[j] = acc * scale);
        }
        for (double& x : s) sum += x = std::exp(x - mx);
        for (size_t j = 0; j < s.size(); ++j)
          for (int64_t c = 0; c < dc; ++c)
            want[size_t((t * H + h) * dc + c)] += s[j] / sum * rows[int64_t(j) * D + c];
      }
    }
    double ref = 0;
    for (double w : want) ref = std::max(ref, std::fabs(w));
    const auto dq = to_device(bf16_bits(qc));
    const auto dpos = to_device(pos), dslot = to_device(slot);
    // Scratch for many key splits (merged), then for one (written straight to o_lat); on the
    // wgmma kernels (512 / 64 on Hopper) and the mma.sync ones; up to 16 heads on a 16-head
    // kernel (mma.sync: BF16 cache only) and on a 64-head one.
    const bool has_wgmma = dc == 512 && dr == 64 && cuda::wgmma_device();
    for (const bool wgmma : {true, false})
      for (const bool narrow : {true, false})
        for (const int64_t splits : {int64_t(64), int64_t(1)}) {
          const bool on_wgmma = wgmma && has_wgmma;
          const bool has_narrow = H <= 16 && (kind == CacheKind::kBf16 || on_wgmma);
          if (!wgmma && !has_wgmma) continue;    // the same kernel as with wgmma
          if (!narrow && !has_narrow) continue;  // the same kernel as with narrow
          const std::string kernel = std::string(narrow && has_narrow ? "16-head" : "64-head") +
                                     (on_wgmma ? " wgmma" : " mma.sync");
          const int64_t partial_floats = splits * n * H * (dc + 2);
          DevPtr<float> partial = poisoned(size_t(partial_floats));
          DevPtr<float> olat = poisoned(size_t(n * H * dc));
          cuda::set_mla_tc_narrow(narrow);
          cuda::set_mla_wgmma(wgmma);
          cuda::mla_attention_tc(dq.get(), n, H, pool, layer, dpos.get(), dslot.get(), 299,
                                 float(scale), partial.get(), partial_floats, olat.get(), nullptr);
          cuda::set_mla_tc_narrow(true);
          cuda::set_mla_wgmma(true);
          const std::vector<float> got = to_host(olat, size_t(n * H * dc));
          double worst = 0;
          for (size_t i = 0; i < got.size(); ++i)
            worst = std::isnan(got[i]) ? INFINITY
                                       : std::max(worst, std::fabs(double(got[i]) - want[i]));
          EXPECT_LE(worst / ref, 8e-3)
              << (kind == CacheKind::kFp8 ? "fp8" : "bf16") << " cache, scratch for " << splits
              << " splits, " << kernel << " kernel";
          std::printf(
              "[ mla tc %d heads, %d/%d, %s cache, %lld splits' scratch, %s kernel ] "
              "max|d|/max|o| = %.2e\n",
              heads, dc, dr, kind == CacheKind::kFp8 ? "fp8" : "bf16",
              static_cast<long long>(splits), kernel.c_str(), worst / ref);
        }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MlaTcGpu,
                         ::testing::Values(std::make_tuple(128, 512, 64),
                                           std::make_tuple(16, 512, 64),
                                           std::make_tuple(10, 512, 64),
                                           std::make_tuple(10, 256, 32)));

}  // namespace
