// Block-scaled FP8 GEMMs through cuBLASLt (CUDA 12.9+ on Hopper: weights in 128×128 blocks,
// activations in 1×128 tiles, one F32 scale each: DeepSeek-V3's inference layout), checked and
// timed before the engine uses them (issue 7).
//
// 1. Layout probe. cuBLASLt's documentation of where each scale lives is terse, so the check
//    tries both orders of each scale array — weight blocks [n-block][k-block] (the checkpoint's
//    weight_scale_inv) or [k-block][n-block]; activation tiles [row][k-block] or
//    [k-block][row] — on random data with a distinct random scale per block, and compares
//    y = x·Wᵀ with float64 over the same dequantised operands. Only the right pair of layouts
//    gets a small error; the others are off by O(1).
// 2. Speed at DeepSeek-V3's projection shapes for M tokens: TFLOP/s of the block-scaled FP8
//    GEMM against cuBLASLt BF16 (the engine's prefill path today) in the same run, and the
//    H200's dense FP8 / BF16 peaks for scale.
// 3. The routed experts at DeepSeek-V3's FP8 shapes and DeepSeek-V2-Lite's BF16 ones: our
//    grouped kernel (one launch for all experts) against one cuBLASLt GEMM per expert
//    (block-scaled FP8, or BF16), TFLOP/s and the weights' GB/s, in the same run.
// 4. The decode gemv at batch 1 at DeepSeek-V3's shapes (the routed experts 8 of 256, the BF16
//    lm_head), per kernel and setting: weight GB/s against the copy bandwidth of the same run.
// 5. The decode gemv over 1 to 16 input rows (small decode batches: the F32 tile kernel from 2,
//    the columns "tensor cores" the engine's default kernel at 8 and 16 rows) at
//    DeepSeek-V3's FP8 and DeepSeek-V2-Lite's BF16 dense shapes: weight GB/s against the copy,
//    and the multiply-adds' TFLOP/s (each weight times every row; FP32 on the CUDA cores, and
//    on the tensor cores for the kernel of kernels.h GemvArgs::tensor_cores).
// Usage: bench_cuda_fp8_gemm [--m 4096] [--gemv-only (4 and 5) | --experts-only (3)]
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cuda_bench.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/engine.h"
#include "kernels/cuda/kernels.h"

using namespace dsv3;

#define CUBLAS_OK(call)                                                                \
  do {                                                                                 \
    const cublasStatus_t st_ = (call);                                                 \
    if (st_ != CUBLAS_STATUS_SUCCESS) fail("{}: cuBLASLt status {}", #call, int(st_)); \
  } while (0)

namespace {

int64_t cdiv(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Operands of y [m, n] = x [m, k] · w [n, k]ᵀ, quantised as the recipe does (amax / 448).
struct Operands {
  int64_t m, n, k;
  std::vector<uint8_t> xq, wq;  // E4M3 codes, row-major
  std::vector<float> xs, ws;    // xs [m][kb], ws [nb][kb] (row-major, natural order)
  std::vector<double> ref;      // float64 y over the dequantised operands
};

Operands make(int64_t m, int64_t n, int64_t k, uint64_t seed, bool with_ref) {
  Operands o{m, n, k, {}, {}, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(-3.0f, 3.0f);
  const int64_t kb = cdiv(k, 128), nb = cdiv(n, 128);
  // Each block and tile its own magnitude (2^U(-3,3)), so a scale read from the wrong place
  // shows as an O(1) error.
  std::vector<float> wmag(size_t(nb * kb)), xmag(size_t(m * kb));
  for (auto& v : wmag) v = std::exp2(ud(rng));
  for (auto& v : xmag) v = std::exp2(ud(rng));
  o.wq.resize(size_t(n * k));
  o.ws.assign(size_t(nb * kb), 0.0f);
  std::vector<float> w(size_t(n * k));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c) {
      const float v = nd(rng) * wmag[size_t((r / 128) * kb + c / 128)];
      w[size_t(r * k + c)] = v;
      float& s = o.ws[size_t((r / 128) * kb + c / 128)];
      s = std::max(s, std::fabs(v));
    }
  for (auto& s : o.ws) s = s > 0 ? s / kE4M3Max : 1.0f;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c)
      o.wq[size_t(r * k + c)] =
          f32_to_e4m3(w[size_t(r * k + c)] / o.ws[size_t((r / 128) * kb + c / 128)]);
  o.xq.resize(size_t(m * k));
  o.xs.assign(size_t(m * kb), 0.0f);
  std::vector<float> x(static_cast<size_t>(k));
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = 0; c < k; ++c) x[size_t(c)] = nd(rng) * xmag[size_t(r * kb + c / 128)];
    for (int64_t b = 0; b < kb; ++b) {
      float a = 0;
      for (int64_t c = b * 128; c < std::min(k, b * 128 + 128); ++c)
        a = std::max(a, std::fabs(x[size_t(c)]));
      o.xs[size_t(r * kb + b)] = a > 0 ? a / kE4M3Max : 1.0f;
    }
    for (int64_t c = 0; c < k; ++c)
      o.xq[size_t(r * k + c)] = f32_to_e4m3(x[size_t(c)] / o.xs[size_t(r * kb + c / 128)]);
  }
  if (with_ref) {
    std::vector<double> wd(size_t(n * k)), xd(size_t(m * k));
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c)
        wd[size_t(r * k + c)] =
            double(e4m3_to_f32(o.wq[size_t(r * k + c)])) * o.ws[size_t((r / 128) * kb + c / 128)];
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < k; ++c)
        xd[size_t(r * k + c)] =
            double(e4m3_to_f32(o.xq[size_t(r * k + c)])) * o.xs[size_t(r * kb + c / 128)];
    o.ref.assign(size_t(m * n), 0.0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t c = 0; c < k; ++c) acc += xd[size_t(i * k + c)] * wd[size_t(j * k + c)];
        o.ref[size_t(i * n + j)] = acc;
      }
  }
  return o;
}

// rows x cols row-major -> cols x rows row-major.
std::vector<float> transpose(const std::vector<float>& a, int64_t rows, int64_t cols) {
  std::vector<float> t(a.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[size_t(c * rows + r)] = a[size_t(r * cols + c)];
  return t;
}

template <typename T>
T* upload(const std::vector<T>& v) {
  T* d = nullptr;
  DSV3_CUDA_CHECK(cudaMalloc(&d, std::max<size_t>(v.size(), 1) * sizeof(T)));
  DSV3_CUDA_CHECK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// One block-scaled FP8 GEMM plan. Its own, not Blas::matmul_fp8_block: this probe came first
// (it found the layouts Blas uses) and times BF16 output, the configuration docs/PERFORMANCE.md
// records. Column-major view: yᵀ [n, m] = (W [k, n])ᵀ · xᵀ [k, m]:
// A = weights (BLK128x128), B = activations (VEC128), D F32 or BF16 [n, m] (= y row-major).
struct Fp8Gemm {
  cublasLtHandle_t h = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;
  void* ws = nullptr;
  size_t ws_bytes = size_t(64) << 20;

  Fp8Gemm(cublasLtHandle_t handle, int64_t m, int64_t n, int64_t k, cudaDataType_t out,
          const float* w_scale, const float* x_scale)
      : h(handle) {
    CUBLAS_OK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_OK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_OK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    const cublasLtMatmulMatrixScale_t am = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F,
                                      bm = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    CUBLAS_OK(
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &am, sizeof am));
    CUBLAS_OK(
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &bm, sizeof bm));
    CUBLAS_OK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale,
                                             sizeof w_scale));
    CUBLAS_OK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale,
                                             sizeof x_scale));
    CUBLAS_OK(cublasLtMatrixLayoutCreate(&a, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(n), k));
    CUBLAS_OK(cublasLtMatrixLayoutCreate(&b, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(m), k));
    CUBLAS_OK(cublasLtMatrixLayoutCreate(&d, out, uint64_t(n), uint64_t(m), n));
    cublasLtMatmulPreference_t pref = nullptr;
    CUBLAS_OK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_OK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &ws_bytes, sizeof ws_bytes));
    cublasLtMatmulHeuristicResult_t r{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(h, desc, a, b, d, d, pref, 1, &r, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    ok = st == CUBLAS_STATUS_SUCCESS && found > 0;
    if (ok) algo = r.algo;
    DSV3_CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  }
  ~Fp8Gemm() {
    cublasLtMatmulDescDestroy(desc);
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(d);
    cudaFree(ws);
  }
  void run(const void* w, const void* x, void* y, cudaStream_t s = nullptr) const {
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_OK(
        cublasLtMatmul(h, desc, &alpha, w, a, x, b, &beta, y, d, y, d, &algo, ws, ws_bytes, s));
  }
};

double rel_error(const std::vector<float>& y, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double(y[i]) - ref[i];
    num += std::isfinite(y[i]) ? d * d : 1e300;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

// ---- 4. the decode gemv at batch 1 (one input row) at DeepSeek-V3's shapes ----
// GB/s of weight bytes for each split-K (warps per output) and the engine's choice, then the
// engine's choice with the weights read through L1 (the default reads them past it) and with
// the one-row kernel in blocks of 4 and 8 warps (the default: 2). Dense
// weights rotate over copies of 512 MiB in all, so the 50 MB L2 cannot hold them; the routed
// experts are 256 stacked as the engine stacks them, 8 with one row each per launch (one
// token's), a different 8 each launch.
struct GemvShape {
  const char* name;
  int64_t n, k;
  bool swiglu;
  cuda::WType type = cuda::WType::E4M3;
  int experts = 0;  // > 0: that many stacked, top 8 of them a launch
};

// Seconds per launch of shape s under the current gemv settings.
struct GemvCase {
  GemvShape s;
  int64_t bytes = 0, copies = 0, scales = 0;
  void* w = nullptr;
  float *sw = nullptr, *x = nullptr, *y = nullptr;
  int32_t *offsets = nullptr, *active = nullptr, *rows = nullptr;  // per launch, experts only
  static constexpr int kTop = 8, kMaxRows = 16;

  explicit GemvCase(const GemvShape& shape) : s(shape) {
    const int64_t es = s.type == cuda::WType::E4M3 ? 1 : 2, mats = s.swiglu ? 2 : 1;
    const int64_t one = mats * s.n * s.k * es;  // one dense weight or one expert
    bytes = s.experts ? kTop * one : one;
    copies = s.experts ? s.experts / kTop : std::max<int64_t>(2, cdiv(int64_t(512) << 20, one));
    const int64_t stored = s.experts ? s.experts * one : copies * one;
    DSV3_CUDA_CHECK(cudaMalloc(&w, size_t(stored)));
    DSV3_CUDA_CHECK(cudaMemset(w, 0x30, size_t(stored)));  // E4M3 0.5, BF16 ~0.7
    scales = mats * cdiv(s.n, 128) * cdiv(s.k, 128);
    const int64_t units = s.experts ? s.experts : copies;
    if (s.type == cuda::WType::E4M3)
      sw = upload(std::vector<float>(size_t(scales * units), 1.0f / 64));
    x = upload(std::vector<float>(size_t(s.k * kMaxRows), 0.25f));
    DSV3_CUDA_CHECK(cudaMalloc(&y, size_t(s.n * kMaxRows) * sizeof(float)));
    if (s.experts) {
      // Launch c: experts 8c .. 8c + 7 one row each (rows in expert order, all token 0).
      std::vector<int32_t> off, act, rws(kTop, 0);
      for (int64_t c = 0; c < copies; ++c) {
        for (int e = 0; e <= s.experts; ++e)
          off.push_back(int32_t(std::clamp<int64_t>(e - c * kTop, 0, kTop)));
        act.push_back(kTop);
        for (int t = 0; t < kTop; ++t) act.push_back(int32_t(c * kTop + t));
      }
      offsets = upload(off);
      active = upload(act);
      rows = upload(rws);
    }
  }
  ~GemvCase() {
    for (void* p :
         {w, static_cast<void*>(sw), static_cast<void*>(x), static_cast<void*>(y),
          static_cast<void*>(offsets), static_cast<void*>(active), static_cast<void*>(rows)})
      cudaFree(p);
  }
  // m: input rows of a dense weight (at most kMaxRows); experts take one row each. tc:
  // GemvArgs::tensor_cores.
  double seconds(int64_t m = 1, bool tc = false) const {
    const int64_t es = s.type == cuda::WType::E4M3 ? 1 : 2;
    cuda::GemvArgs g;
    g.w.type = s.type;
    g.w.rows = s.n;
    g.w.k = s.k;
    g.n = s.n;
    g.x = x;
    g.ldx = s.k;
    g.y = y;
    g.ldy = s.n;
    g.m = m;
    g.tensor_cores = tc;
    if (s.experts) {
      g.w_group_rows = s.swiglu ? 2 * s.n : s.n;
      g.scale_group_rows = (s.swiglu ? 2 : 1) * cdiv(s.n, 128);
      g.x_rows = rows;
      g.m = kTop;
      g.groups = s.experts;
    }
    const auto all = [&] {
      for (int64_t c = 0; c < copies; ++c) {
        const int64_t off = s.experts ? 0 : c * bytes;
        g.w.w = static_cast<const char*>(w) + off;
        if (sw) g.w.scale = sw + (s.experts ? 0 : c * scales);
        if (s.swiglu) {
          g.w2 = static_cast<const char*>(g.w.w) + s.n * s.k * es;
          if (sw) g.scale2 = g.w.scale + cdiv(s.n, 128) * cdiv(s.k, 128);
        }
        if (s.experts) {
          g.offsets = offsets + c * (s.experts + 1);
          g.active = active + c * (kTop + 1);
        }
        cuda::gemv(g, nullptr);
      }
    };
    return bench::time_ms(all, 5) * 1e-3 / double(copies);
  }
};

void decode_gemv() {
  const double copy = bench::copy_bandwidth();
  fmt::print("\ngemv, one input row: GB/s of weight bytes (copy {:.0f} GB/s)\n", copy / 1e9);
  const std::vector<GemvShape> shapes = {
      {"q_a|kv_a 2112 x 7168", 2112, 7168, false},
      {"q_b 24576 x 1536", 24576, 1536, false},
      {"o_proj 7168 x 16384", 7168, 16384, false},
      {"down 7168 x 18432", 7168, 18432, false},
      {"gate|up 2 x 18432 x 7168", 18432, 7168, true},
      {"expert down 7168 x 2048", 7168, 2048, false},
      {"8/256 experts down", 7168, 2048, false, cuda::WType::E4M3, 256},
      {"8/256 experts gate|up", 2048, 7168, true, cuda::WType::E4M3, 256},
      {"lm_head bf16 129280 x 7168", 129280, 7168, false, cuda::WType::BF16}};
  const auto pct = [&](const GemvCase& c) {
    const double sec = c.seconds();
    return fmt::format(" {:>6.0f} ({:>2.0f}%)", double(c.bytes) / sec / 1e9,
                       100.0 * double(c.bytes) / sec / copy);
  };
  fmt::print("{:<28} {:>12}", "weight n x k", "auto");
  for (const int ks : {1, 2, 4, 8}) fmt::print(" {:>12}", fmt::format("ks {}", ks));
  fmt::print(" {:>12} {:>12} {:>12}", "auto, via L1", "4-warp blks", "8-warp blks");
  // The one-row kernel's FP8 loads: chunks a batch (1 in auto).
  fmt::print(" {:>12} {:>12}\n", "2 a batch", "4 a batch");
  for (const GemvShape& s : shapes) {
    const GemvCase c(s);
    std::string line = fmt::format("{:<28}", s.name);
    for (const int ks : {0, 1, 2, 4, 8}) {
      cuda::gemv_split_k(ks);
      line += pct(c);
    }
    cuda::gemv_split_k(0);
    const int flags = cuda::gemv_flags(0);
    cuda::gemv_flags(flags & ~2);  // weights through L1 too
    line += pct(c);
    cuda::gemv_flags(flags);
    const int warps = cuda::gemv_rows_block_warps(4);  // the one-row kernel's blocks
    line += pct(c);
    cuda::gemv_rows_block_warps(8);
    line += pct(c);
    cuda::gemv_rows_block_warps(warps);
    for (const int chunks : {2, 4}) {
      const int before = cuda::gemv_rows_batch(chunks);
      line += pct(c);
      cuda::gemv_rows_batch(before);
    }
    fmt::print("{}\n", line);
  }
}

// ---- 5. the decode gemv over 1 to 16 input rows ----
// Weights rotate over copies as in part 4, so each launch reads its weight from memory once.
void decode_gemv_rows() {
  const double copy = bench::copy_bandwidth();
  fmt::print("\ngemv over r input rows: GB/s of weight bytes (% of copy {:.0f} GB/s) | TFLOP/s\n",
             copy / 1e9);
  using cuda::WType;
  const std::vector<GemvShape> shapes = {
      {"V3 q_b fp8 24576 x 1536", 24576, 1536, false},
      {"V3 o_proj fp8 7168 x 16384", 7168, 16384, false},
      {"V3 gate|up fp8 2x18432x7168", 18432, 7168, true},
      {"V3 down fp8 7168 x 18432", 7168, 18432, false},
      {"V2L q bf16 3072 x 2048", 3072, 2048, false, WType::BF16},
      {"V2L kv_a bf16 576 x 2048", 576, 2048, false, WType::BF16},
      {"V2L o_proj bf16 2048 x 2048", 2048, 2048, false, WType::BF16},
      {"V2L shared g|u bf16 2x2816x2048", 2816, 2048, true, WType::BF16},
      {"V2L shared down bf16 2048x2816", 2048, 2816, false, WType::BF16}};
  const std::vector<int64_t> rows = {1, 2, 4, 8, 16};
  const auto cell = [&](const GemvCase& c, int64_t r, bool tc = false) {
    const double sec = c.seconds(r, tc);
    const double flop = 2.0 * double(r) * double(c.s.n) * double(c.s.k) * (c.s.swiglu ? 2 : 1);
    return fmt::format(" {:>5.0f} ({:>2.0f}%) {:>4.1f}", double(c.bytes) / sec / 1e9,
                       100.0 * double(c.bytes) / sec / copy, flop / sec / 1e12);
  };
  fmt::print("{:<32}", "weight n x k");
  for (const int64_t r : rows) fmt::print(" {:>17}", fmt::format("r = {}", r));
  fmt::print(" {:>17} {:>17} {:>17} {:>17}\n", "8, general kernel", "8, passes of 4",
             "8, tensor cores", "16, tensor cores");
  for (const GemvShape& s : shapes) {
    const GemvCase c(s);
    std::string line = fmt::format("{:<32}", s.name);
    for (const int64_t r : rows) line += cell(c, r);
    cuda::gemv_allow_tile(false);
    line += cell(c, 8);
    cuda::gemv_allow_tile(true);
    const int pass = cuda::gemv_tile_pass_rows(4);
    line += cell(c, 8);
    cuda::gemv_tile_pass_rows(pass);
    line += cell(c, 8, true);
    line += cell(c, 16, true);
    fmt::print("{}\n", line);
  }
}

// ---- 3. the routed experts: one grouped launch vs one cuBLASLt GEMM per expert ----
void grouped_experts() {
  cuda::Blas blas;
  // DeepSeek-V3's 256 FP8 experts with R rows each (8 of 256 chosen per token: batch 128 gives
  // R = 4, 256 R = 8, a 1K-token prefill R = 32; the engine takes cuBLASLt from there) and
  // DeepSeek-V2-Lite's 64 BF16 experts (6 of 64: batch 32 gives R = 3, 256 R = 24, a 1K-token
  // prefill R = 96), the engine's two projections (gate|up fused, down). GB/s: the weights'
  // bytes over the time, against the copy (decode batches read every expert's weights once).
  const double copy = bench::copy_bandwidth();
  fmt::print("\ndevice-to-device copy {:.0f} GB/s\n", copy / 1e9);
  // Grouped: TFLOP/s and GB/s (of copy) with tiles of 16, 32 and 64 rows (GroupedArgs::tile_rows)
  // and, on Hopper, the 128-row wgmma tiles; the ratio: the per-expert GEMMs' time over that of
  // the engine's choice (cuda::grouped_tile_rows, or 128 from bf16_wgmma_min_rows /
  // fp8_wgmma_min_rows).
  fmt::print("{:<34} {:>4} {:>22} {:>22} {:>22} {:>22} {:>18} {:>7}\n", "experts x rows, n x k",
             "R", "16-row tiles", "32-row tiles", "64-row tiles", "128 (wgmma)", "per-expert",
             "ratio");
  struct Experts {
    cuda::WType type;
    const char* name;
    int64_t e, n, k;
    std::vector<int64_t> rows;
  };
  const Experts experts[] = {
      {cuda::WType::E4M3, "FP8 gate|up (4096 x 7168)", 256, 4096, 7168, {4, 8, 16, 32, 64, 256}},
      {cuda::WType::E4M3, "FP8 down (7168 x 2048)", 256, 7168, 2048, {4, 8, 16, 32, 64, 256}},
      {cuda::WType::BF16,
       "BF16 gate|up (2816 x 2048)",
       64,
       2816,
       2048,
       {3, 6, 12, 24, 48, 96, 192, 768}},
      {cuda::WType::BF16,
       "BF16 down (2048 x 1408)",
       64,
       2048,
       1408,
       {3, 6, 12, 24, 48, 96, 192, 768}}};
  for (const Experts& s : experts) {
    for (const int64_t R : s.rows) {
      const bool fp8 = s.type == cuda::WType::E4M3;
      // FP8 groups padded to 16 rows (quantize_e4m3_tiles' layout), which the per-expert
      // GEMMs take whole; BF16 rows as they are.
      const int64_t E = s.e, N = s.n, K = s.k, P = E * R, kbk = K / 128, elem = fp8 ? 1 : 2;
      const int64_t Rp = fp8 ? (R + 15) / 16 * 16 : R, Pp = E * Rp;
      void *x = nullptr, *w = nullptr;
      float *sx = nullptr, *sw = nullptr, *y = nullptr;
      DSV3_CUDA_CHECK(cudaMalloc(&x, size_t(Pp * K * elem)));
      DSV3_CUDA_CHECK(cudaMalloc(&w, size_t(E * N * K * elem)));
      // E4M3 1.0 and 0.5; BF16 0x3838 and 0x3030 (about 4.4e-5 and 6.4e-10): finite, no NaN.
      DSV3_CUDA_CHECK(cudaMemset(x, 0x38, size_t(Pp * K * elem)));
      DSV3_CUDA_CHECK(cudaMemset(w, 0x30, size_t(E * N * K * elem)));
      if (fp8) {
        sx = upload(std::vector<float>(size_t(Pp * kbk), 1.0f / 64));
        sw = upload(std::vector<float>(size_t(E * (N / 128) * kbk), 1.0f / 64));
      }
      DSV3_CUDA_CHECK(cudaMalloc(&y, size_t(Pp * N) * sizeof(float)));
      std::vector<int32_t> off(size_t(E + 1)), pad(size_t(E + 1));
      for (int64_t e = 0; e <= E; ++e) {
        off[size_t(e)] = int32_t(e * R);
        pad[size_t(e)] = int32_t(e * Rp);
      }
      int32_t* doff = upload(off);
      int32_t* dpad = upload(pad);
      cuda::GroupedArgs g;
      g.type = s.type;
      g.x = x;
      g.x_scale = sx;
      g.offsets = doff;
      g.padded_offsets = dpad;
      g.groups = int(E);
      g.w = w;
      g.w_scale = sw;
      g.w_scale_ld = fp8 ? kbk : 0;
      g.n = N;
      g.k = K;
      g.y = y;
      g.ldy = N;
      const double flop = 2.0 * double(P) * double(N) * double(K);
      const double bytes = double(E * N * K * elem);
      double t_grouped[4] = {};
      for (int i = 0; i < 4; ++i) {
        const int tile_rows = 16 << i;
        if (!cuda::grouped_tile_ok(s.type, tile_rows)) continue;
        std::vector<int32_t> tiles(size_t(E + 1));
        for (int64_t e = 0; e <= E; ++e)
          tiles[size_t(e)] = int32_t(e * cuda::grouped_tiles(Rp, tile_rows));
        int32_t* dtiles = upload(tiles);
        g.tile_rows = tile_rows;
        g.tile_start = dtiles;
        g.total_tiles = tiles.back();
        t_grouped[i] = bench::time_ms([&] { cuda::grouped_gemm(g, nullptr); }, 5) * 1e-3;
        cudaFree(dtiles);
      }
      void* work = nullptr;
      const size_t work_bytes = size_t(32) << 20;
      DSV3_CUDA_CHECK(cudaMalloc(&work, work_bytes));
      bool ok = true;
      const auto per_expert = [&] {
        for (int64_t e = 0; e < E; ++e) {
          const auto* xe = static_cast<const uint8_t*>(x) + e * Rp * K * elem;
          const auto* we = static_cast<const uint8_t*>(w) + e * N * K * elem;
          ok &= fp8 ? blas.matmul_fp8_block(Rp, N, K, xe, sx + e * Rp * kbk, we,
                                            sw + e * (N / 128) * kbk, y + e * Rp * N, work,
                                            work_bytes, nullptr)
                    : blas.matmul_bf16(R, N, K, xe, we, y + e * R * N, work, work_bytes, nullptr);
        }
      };
      const double t_each = bench::time_ms(per_expert, 5) * 1e-3;
      std::string line = fmt::format("{:<34} {:>4}", fmt::format("{} x {}", E, s.name), R);
      for (const double t : t_grouped)
        line += t > 0 ? fmt::format(" {:>5.0f} TF {:>5.0f} ({:>3.0f}%)", flop / t / 1e12,
                                    bytes / t / 1e9, 100 * bytes / t / copy)
                      : fmt::format(" {:>22}", "-");
      const int tr = cuda::grouped_tile_rows(R);
      const cuda::CudaEngineOptions defaults;
      const bool wide = t_grouped[3] > 0 &&
                        R >= (fp8 ? defaults.fp8_wgmma_min_rows : defaults.bf16_wgmma_min_rows);
      const int chosen = wide ? 3 : tr == 16 ? 0 : tr == 32 ? 1 : 2;
      fmt::print("{} {:>5.0f} TF {:>7.0f} {:>6.2f}x{}\n", line, flop / t_each / 1e12,
                 bytes / t_each / 1e9, t_each / t_grouped[chosen],
                 ok ? "" : " (cuBLASLt: no algorithm)");
      for (void* p : {x, w, static_cast<void*>(sx), static_cast<void*>(sw), static_cast<void*>(y),
                      static_cast<void*>(doff), static_cast<void*>(dpad), work})
        cudaFree(p);
    }
  }
}

int main(int argc, char** argv) {
  int64_t big_m = 4096;
  bool gemv_only = false, experts_only = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--m" && i + 1 < argc) big_m = std::stoll(argv[++i]);
    if (std::string(argv[i]) == "--gemv-only") gemv_only = true;
    if (std::string(argv[i]) == "--experts-only") experts_only = true;
  }
  try {
    if (experts_only) {
      grouped_experts();
      return 0;
    }
    if (gemv_only) {
      decode_gemv();
      decode_gemv_rows();
      return 0;
    }
    cublasLtHandle_t h = nullptr;
    CUBLAS_OK(cublasLtCreate(&h));
    fmt::print("cuBLASLt {}\n", cublasLtGetVersion());

    // ---- 1. layout probe (m, n, k not all equal; a partial n-block) ----
    const int64_t m = 256, n = 320, k = 512, kb = k / 128, nb = cdiv(n, 128);
    const Operands o = make(m, n, k, 7, true);
    uint8_t* dx = upload(o.xq);
    uint8_t* dw = upload(o.wq);
    float* dy = nullptr;
    DSV3_CUDA_CHECK(cudaMalloc(&dy, size_t(m * n) * sizeof(float)));
    const std::vector<float> ws_nk = o.ws, ws_kn = transpose(o.ws, nb, kb);
    const std::vector<float> xs_mk = o.xs, xs_km = transpose(o.xs, m, kb);
    std::string best;
    double best_err = 1e9;
    for (int wl = 0; wl < 2; ++wl)
      for (int xl = 0; xl < 2; ++xl) {
        float* dws = upload(wl == 0 ? ws_nk : ws_kn);
        float* dxs = upload(xl == 0 ? xs_mk : xs_km);
        const std::string name = fmt::format("w scales [{}], x scales [{}]",
                                             wl == 0 ? "n-block][k-block" : "k-block][n-block",
                                             xl == 0 ? "row][k-block" : "k-block][row");
        // F32 output where cuBLASLt offers it, else BF16 (then the bar is BF16 rounding).
        bool f32_out = true;
        auto g = std::make_unique<Fp8Gemm>(h, m, n, k, CUDA_R_32F, dws, dxs);
        if (!g->ok) {
          f32_out = false;
          g = std::make_unique<Fp8Gemm>(h, m, n, k, CUDA_R_16BF, dws, dxs);
        }
        if (!g->ok) {
          fmt::print("probe {}: no algorithm (F32 or BF16 out)\n", name);
        } else {
          DSV3_CUDA_CHECK(cudaMemset(dy, 0xff, size_t(m * n) * sizeof(float)));  // NaN poison
          g->run(dw, dx, dy);
          DSV3_CUDA_CHECK(cudaDeviceSynchronize());
          std::vector<float> y(size_t(m * n));
          if (f32_out) {
            DSV3_CUDA_CHECK(
                cudaMemcpy(y.data(), dy, y.size() * sizeof(float), cudaMemcpyDeviceToHost));
          } else {
            std::vector<uint16_t> yb(y.size());
            DSV3_CUDA_CHECK(
                cudaMemcpy(yb.data(), dy, yb.size() * sizeof(uint16_t), cudaMemcpyDeviceToHost));
            for (size_t i = 0; i < y.size(); ++i) y[i] = bf16_to_f32(yb[i]);
          }
          const double err = rel_error(y, o.ref);
          fmt::print("probe {} ({} out): rel error vs float64 {:.3e}\n", name,
                     f32_out ? "F32" : "BF16", err);
          if (err < best_err) {
            best_err = err;
            best = name;
          }
        }
        cudaFree(dws);
        cudaFree(dxs);
      }
    // FP8 tensor-core products are summed with limited precision before each promotion to F32
    // (TRAINING_SPEC §4; our Hopper model in train/fp8.h gives ~1.6e-4 at K = 512), so even
    // the right layout is not at F32's 1e-7; a wrong one is O(1).
    fmt::print("layout: {} (error {:.2e}: {})\n", best, best_err,
               best_err < 1e-3 ? "matches" : "NO layout matched");

    // ---- 2. speed at DeepSeek-V3 shapes, M tokens ----
    struct Shape {
      const char* name;
      int64_t n, k;
    };
    const Shape shapes[] = {
        {"q_a + kv_a (2112 x 7168)", 2112, 7168},   {"q_b (24576 x 1536)", 24576, 1536},
        {"o_proj (7168 x 16384)", 7168, 16384},     {"dense gate|up (18432 x 7168)", 18432, 7168},
        {"dense down (7168 x 18432)", 7168, 18432}, {"expert gate|up (2048 x 7168)", 2048, 7168}};
    fmt::print("\n{:<30} {:>6} {:>12} {:>12} {:>8}\n", "shape (n x k)", "m", "FP8 TFLOP/s",
               "BF16 TFLOP/s", "ratio");
    cuda::Blas blas;
    for (const Shape& s : shapes) {
      const int64_t M = big_m, N = s.n, K = s.k;
      std::vector<uint8_t> xq(size_t(M * K)), wq(size_t(N * K));
      std::mt19937 rng(11);
      for (auto& v : xq) v = uint8_t(rng() & 0x77);  // finite E4M3 codes of both signs
      for (auto& v : wq) v = uint8_t(rng() & 0xf7);
      std::vector<float> xs(size_t(M * cdiv(K, 128)), 1.0f / 64),
          wsv(size_t(cdiv(N, 128) * cdiv(K, 128)), 1.0f / 64);
      uint8_t* x8 = upload(xq);
      uint8_t* w8 = upload(wq);
      float* sx = upload(xs);
      float* sw = upload(wsv);
      void* y = nullptr;
      DSV3_CUDA_CHECK(cudaMalloc(&y, size_t(M * N) * sizeof(float)));
      const double flop = 2.0 * double(M) * double(N) * double(K);
      double fp8 = 0;
      {
        Fp8Gemm g(h, M, N, K, CUDA_R_16BF, sw, sx);
        if (g.ok) fp8 = flop / (bench::time_ms([&] { g.run(w8, x8, y); }, 20) * 1e-3) / 1e12;
      }
      std::vector<uint16_t> xb(size_t(M * K)), wb(size_t(N * K));
      for (size_t i = 0; i < xb.size(); ++i) xb[i] = f32_to_bf16(e4m3_to_f32(xq[i]));
      for (size_t i = 0; i < wb.size(); ++i) wb[i] = f32_to_bf16(e4m3_to_f32(wq[i]));
      uint16_t* xbd = upload(xb);
      uint16_t* wbd = upload(wb);
      void* work = nullptr;
      const size_t work_bytes = size_t(64) << 20;
      DSV3_CUDA_CHECK(cudaMalloc(&work, work_bytes));
      double bf16 = 0;
      if (blas.matmul_bf16(M, N, K, xbd, wbd, static_cast<float*>(y), work, work_bytes, nullptr))
        bf16 = flop /
               (bench::time_ms(
                    [&] {
                      blas.matmul_bf16(M, N, K, xbd, wbd, static_cast<float*>(y), work, work_bytes,
                                       nullptr);
                    },
                    20) *
                1e-3) /
               1e12;
      fmt::print("{:<30} {:>6} {:>12.0f} {:>12.0f} {:>7.2f}x\n", s.name, M, fp8, bf16,
                 bf16 > 0 ? fp8 / bf16 : 0.0);
      for (void* p :
           {static_cast<void*>(x8), static_cast<void*>(w8), static_cast<void*>(sx),
            static_cast<void*>(sw), y, static_cast<void*>(xbd), static_cast<void*>(wbd), work})
        cudaFree(p);
    }

    grouped_experts();
    decode_gemv();
    decode_gemv_rows();
    cublasLtDestroy(h);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_cuda_fp8_gemm: {}\n", e.what());
    return 1;
  }
  return 0;
}
