// FP8 recipe (TRAINING_SPEC §4): tile quantisation, the scaled GEMM with FP32 promotion, the
// Hopper accumulator model and the BF16 baseline. The rules are written down in fp8.h.
#include "train/fp8.h"

#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/cpu_kernels.h"
#include "train/gemm.h"
#include "train/ops.h"

namespace dsv3::train::fp8 {

const char* granularity_name(Granularity g) {
  switch (g) {
    case Granularity::kTensor:
      return "per-tensor";
    case Granularity::kRowTiles:
      return "1x128";
    case Granularity::kColTiles:
      return "128x1";
    case Granularity::kBlocks:
      return "128x128";
  }
  return "?";
}

// ---- Quantized ----

int64_t Quantized::tile_rows() const {
  switch (granularity) {
    case Granularity::kTensor:
      return std::max<int64_t>(rows, 1);
    case Granularity::kRowTiles:
      return 1;
    default:
      return kTile;
  }
}

int64_t Quantized::tile_cols() const {
  switch (granularity) {
    case Granularity::kTensor:
      return std::max<int64_t>(cols, 1);
    case Granularity::kColTiles:
      return 1;
    default:
      return kTile;
  }
}

int64_t Quantized::scale_rows() const {
  return granularity == Granularity::kTensor ? 1 : (rows + tile_rows() - 1) / tile_rows();
}

int64_t Quantized::scale_cols() const {
  return granularity == Granularity::kTensor ? 1 : (cols + tile_cols() - 1) / tile_cols();
}

std::vector<float> Quantized::dequantize() const {
  std::vector<float> out(size_t(rows * cols));
  const int64_t tr = tile_rows(), tc = tile_cols(), sc = scale_cols();
  parallel_for(
      rows,
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
          const float* srow = scales.data() + (r / tr) * sc;
          const f8_t* q = codes.data() + r * cols;
          float* o = out.data() + r * cols;
          if (tc == 1) {
            for (int64_t c = 0; c < cols; ++c) o[c] = kE4M3ToF32[q[c]] * srow[c];
          } else {
            for (int64_t c0 = 0; c0 < cols; c0 += tc) {
              const float s = srow[c0 / tc];
              for (int64_t c = c0; c < std::min(cols, c0 + tc); ++c) o[c] = kE4M3ToF32[q[c]] * s;
            }
          }
        }
      },
      std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1)));
  return out;
}

// ---- quantisation ----

float tile_scale(float amax, bool pow2_scales) {
  if (std::isnan(amax) || amax == 0.0f) return 1.0f;
  if (std::isinf(amax)) return amax;
  float s = std::max(amax / kE4M3Max, FLT_MIN);
  if (!pow2_scales) return s;
  // The smallest power of two p with amax / p <= 448 (448·p is exact).
  int e;
  const float m = std::frexp(s, &e);  // s = m·2^e, m in [0.5, 1)
  float p = m == 0.5f ? s : std::ldexp(1.0f, e);
  while (amax > kE4M3Max * p) p *= 2.0f;
  while (p > FLT_MIN && amax <= kE4M3Max * (p * 0.5f)) p *= 0.5f;
  return p;
}

namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Quantises rows [r0, r1) of x (one band of scale rows) given their scales.
void quantize_rows(const float* x, int64_t r0, int64_t r1, int64_t cols, int64_t tc,
                   const float* scale_row, f8_t* codes) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * cols;
    f8_t* qr = codes + r * cols;
    if (tc == 1) {
      for (int64_t c = 0; c < cols; ++c) qr[c] = f32_to_e4m3(xr[c] / scale_row[c]);
    } else {
      for (int64_t c0 = 0; c0 < cols; c0 += tc) {
        const float s = scale_row[c0 / tc];
        const int64_t c1 = std::min(cols, c0 + tc);
        for (int64_t c = c0; c < c1; ++c) qr[c] = f32_to_e4m3(xr[c] / s);
      }
    }
  }
}

}  // namespace

Quantized quantize(const float* x, int64_t rows, int64_t cols, Granularity g, bool pow2_scales) {
  DSV3_CHECK(rows >= 0 && cols >= 0, "fp8::quantize: bad shape [{}, {}]", rows, cols);
  Quantized q;
  q.rows = rows;
  q.cols = cols;
  q.granularity = g;
  q.codes.resize(size_t(rows * cols));
  const int64_t tr = q.tile_rows(), tc = q.tile_cols(), sr = q.scale_rows(), sc = q.scale_cols();
  q.scales.assign(size_t(sr * sc), 1.0f);
  if (rows == 0 || cols == 0) return q;
  const int64_t row_grain = std::max<int64_t>(1, 32768 / cols);

  if (g == Granularity::kTensor) {
    std::vector<float> part(size_t(num_threads()) + 1, 0.0f);
    parallel_for(
        rows,
        [&](int64_t r0, int64_t r1, int t) {
          float m = 0;
          for (int64_t i = r0 * cols; i < r1 * cols; ++i) m = std::max(m, std::fabs(x[i]));
          part[size_t(t)] = std::max(part[size_t(t)], m);
        },
        row_grain);
    q.scales[0] = tile_scale(*std::max_element(part.begin(), part.end()), pow2_scales);
    parallel_for(
        rows,
        [&](int64_t r0, int64_t r1, int) {
          quantize_rows(x, r0, r1, cols, cols, q.scales.data(), q.codes.data());
        },
        row_grain);
    return q;
  }

  // One task per band of tr rows (one scale row): its max-abs per tile, scales, codes.
  parallel_for(
      sr,
      [&](int64_t b0, int64_t b1, int) {
        std::vector<float> amax(static_cast<size_t>(sc));
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t r0 = b * tr, r1 = std::min(rows, r0 + tr);
          std::fill(amax.begin(), amax.end(), 0.0f);
          for (int64_t r = r0; r < r1; ++r) {
            const float* xr = x + r * cols;
            if (tc == 1) {
              for (int64_t c = 0; c < cols; ++c)
                amax[size_t(c)] = std::max(amax[size_t(c)], std::fabs(xr[c]));
            } else {
              for (int64_t j = 0; j < sc; ++j) {
                float m = amax[size_t(j)];
                for (int64_t c = j * tc; c < std::min(cols, (j + 1) * tc); ++c)
                  m = std::max(m, std::fabs(xr[c]));
                amax[size_t(j)] = m;
              }
            }
          }
          float* srow = q.scales.data() + b * sc;
          for (int64_t j = 0; j < sc; ++j) srow[j] = tile_scale(amax[size_t(j)], pow2_scales);
          quantize_rows(x, r0, r1, cols, tc, srow, q.codes.data());
        }
      },
      std::max<int64_t>(1, row_grain / tr));
  return q;
}

Quantized requantize(const Quantized& q, Granularity g, bool pow2_scales) {
  const std::vector<float> x = q.dequantize();
  return quantize(x.data(), q.rows, q.cols, g, pow2_scales);
}

// ---- GEMM ----

namespace {

// An operand seen as op(X): `inner` is the extent along K, `outer` along M (or N).
struct OperandView {
  const Quantized* q;
  bool k_along_cols;  // stored [outer, K] (else [K, outer])
  int64_t outer() const { return k_along_cols ? q->rows : q->cols; }
  int64_t inner() const { return k_along_cols ? q->cols : q->rows; }
  int64_t tile_k() const { return k_along_cols ? q->tile_cols() : q->tile_rows(); }
  // The code of op(X)[i, k] (A: i = m) or op(X)ᵀ[i, k] (B: i = n).
  f8_t code(int64_t i, int64_t k) const {
    return k_along_cols ? q->codes[size_t(i * q->cols + k)] : q->codes[size_t(k * q->cols + i)];
  }
  float scale(int64_t i, int64_t k) const { return k_along_cols ? q->scale(i, k) : q->scale(k, i); }
};

void check_k_tiling(const OperandView& v, const char* which) {
  // The tile extent along K must cover whole aligned 128-chunks: 128 or the whole extent.
  const int64_t t = v.tile_k();
  DSV3_CHECK(t == kTile || v.q->granularity == Granularity::kTensor,
             "fp8::gemm: operand {} is quantised in {} tiles, whose scales vary along the "
             "reduction axis; quantise it with tiles that run along K",
             which, granularity_name(v.q->granularity));
}

// Scales per (i, K chunk), laid out [chunks, outer] (contiguous along M or N).
std::vector<float> chunk_scales(const OperandView& v, int64_t chunks) {
  const int64_t n = v.outer();
  std::vector<float> s(size_t(chunks * n));
  for (int64_t kb = 0; kb < chunks; ++kb)
    for (int64_t i = 0; i < n; ++i) s[size_t(kb * n + i)] = v.scale(i, kb * kTile);
  return s;
}

std::vector<float> codes_as_f32(const Quantized& q) {
  std::vector<float> f(q.codes.size());
  parallel_for(
      int64_t(f.size()),
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) f[size_t(i)] = kE4M3ToF32[q.codes[size_t(i)]];
      },
      65536);
  return f;
}

// kFp32: per task a [bm, bn] block of C; per K chunk one sgemm on the codes, then the scaled
// chunk is added into an FP32 block accumulator.
void gemm_fp32_accum(const OperandView& a, const OperandView& b, int64_t M, int64_t N, int64_t K,
                     float* c, bool accumulate) {
  constexpr int64_t bm = 128, bn = 256;
  const int64_t chunks = ceil_div(K, kTile);
  const std::vector<float> sa = chunk_scales(a, chunks), sb = chunk_scales(b, chunks);
  const std::vector<float> fa = codes_as_f32(*a.q), fb = codes_as_f32(*b.q);
  cpu::init_blas();
  const int64_t tm = ceil_div(M, bm), tn = ceil_div(N, bn);
  parallel_for(
      tm * tn,
      [&](int64_t t0, int64_t t1, int) {
        std::vector<float> part(size_t(bm * bn)), acc(size_t(bm * bn));
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t m0 = (t / tn) * bm, n0 = (t % tn) * bn;
          const int64_t mb = std::min(bm, M - m0), nb = std::min(bn, N - n0);
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t kb = 0; kb < chunks; ++kb) {
            const int64_t k0 = kb * kTile, kc = std::min(kTile, K - k0);
            // op(A)[m0:, k0:] and op(B)[k0:, n0:] in place, transposed as stored.
            const float* pa = a.k_along_cols ? fa.data() + m0 * K + k0 : fa.data() + k0 * M + m0;
            const float* pb = b.k_along_cols ? fb.data() + n0 * K + k0 : fb.data() + k0 * N + n0;
            train::gemm<float>(a.k_along_cols ? CblasNoTrans : CblasTrans,
                               b.k_along_cols ? CblasTrans : CblasNoTrans, mb, nb, kc, pa,
                               a.k_along_cols ? K : M, pb, b.k_along_cols ? K : N, 0.0f,
                               part.data(), nb);
            const float* sbk = sb.data() + kb * N + n0;
            for (int64_t i = 0; i < mb; ++i) {
              const float sam = sa[size_t(kb * M + m0 + i)];
              float* ar = acc.data() + i * nb;
              const float* pr = part.data() + i * nb;
              for (int64_t j = 0; j < nb; ++j) ar[j] += (sam * sbk[j]) * pr[j];
            }
          }
          for (int64_t i = 0; i < mb; ++i) {
            float* cr = c + (m0 + i) * N + n0;
            const float* ar = acc.data() + i * nb;
            if (accumulate)
              for (int64_t j = 0; j < nb; ++j) cr[j] += ar[j];
            else
              std::copy(ar, ar + nb, cr);
          }
        }
      },
      1);
}

// E4M3 codes as integers in units of 2^-9 (the subnormal quantum): |value| <= 448·2^9 < 2^18.
// Products are then integers in units of 2^-18 and every sum the accumulator model forms is an
// exact int64 (the model's truncations only drop low bits of these integers).
constexpr int kCodeShift = 9;

// Truncates x toward zero to p + 1 significant bits (p explicit mantissa bits).
int64_t truncate_to_bits(int64_t x, int p) {
  const uint64_t ax = x < 0 ? uint64_t(0) - uint64_t(x) : uint64_t(x);
  const int width = std::bit_width(ax);
  if (width <= p + 1) return x;
  const int sh = width - 1 - p;
  const int64_t t = int64_t((ax >> sh) << sh);
  return x < 0 ? -t : t;
}

void gemm_hopper_emulated(const OperandView& a, const OperandView& b, int64_t M, int64_t N,
                          int64_t K, float* c, bool accumulate, const GemmOptions& opt) {
  DSV3_CHECK(opt.mantissa_bits >= 1 && opt.mantissa_bits <= 23,
             "fp8::gemm: mantissa_bits {} is outside 1..23", opt.mantissa_bits);
  DSV3_CHECK(opt.group >= 1, "fp8::gemm: group must be positive, got {}", opt.group);
  const int64_t window = opt.promote_every <= 0 ? K : std::min(opt.promote_every, K);
  // Scales can only be applied at a promotion: a window must not straddle two scale chunks of
  // an operand with per-128 scales along K.
  for (const OperandView* v : {&a, &b}) {
    if (v->q->granularity == Granularity::kTensor) continue;
    for (int64_t w0 = 0; w0 < K; w0 += window)
      DSV3_CHECK(w0 / kTile == (std::min(K, w0 + window) - 1) / kTile,
                 "fp8::gemm: promote_every = {} spans several 128-element scale chunks of a {}-"
                 "tiled operand (K = {}); promote at least every 128 elements or quantise per "
                 "tensor",
                 opt.promote_every, granularity_name(v->q->granularity), K);
  }
  const int64_t chunks = ceil_div(K, kTile);
  const std::vector<float> sa = chunk_scales(a, chunks), sb = chunk_scales(b, chunks);
  // Codes as integers, contiguous along K: ia [M, K], ib [N, K]; NaN codes flag their row.
  std::vector<int32_t> ia(size_t(M * K)), ib(size_t(N * K));
  std::vector<uint8_t> nan_a(size_t(M), 0), nan_b(size_t(N), 0);
  auto to_int = [](f8_t code, uint8_t* nan) {
    const float v = e4m3_to_f32(code);
    if (std::isnan(v)) {
      *nan = 1;
      return int32_t(0);
    }
    return int32_t(std::ldexp(v, kCodeShift));
  };
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) ia[size_t(m * K + k)] = to_int(a.code(m, k), &nan_a[size_t(m)]);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) ib[size_t(n * K + k)] = to_int(b.code(n, k), &nan_b[size_t(n)]);

  const int p = opt.mantissa_bits;
  parallel_for(
      M,
      [&](int64_t m0, int64_t m1, int) {
        std::vector<int64_t> prod(size_t(std::min(opt.group, window)));
        for (int64_t m = m0; m < m1; ++m) {
          const int32_t* ra = ia.data() + m * K;
          for (int64_t n = 0; n < N; ++n) {
            float out;
            if (nan_a[size_t(m)] || nan_b[size_t(n)]) {
              out = std::numeric_limits<float>::quiet_NaN();
            } else {
              const int32_t* rb = ib.data() + n * K;
              float acc = 0.0f;
              for (int64_t w0 = 0; w0 < K; w0 += window) {
                const int64_t w1 = std::min(K, w0 + window);
                int64_t tc = 0;  // the tensor-core accumulator, e8m(p), in units of 2^-18
                for (int64_t g0 = w0; g0 < w1; g0 += opt.group) {
                  const int64_t g1 = std::min(w1, g0 + opt.group);
                  uint64_t max_abs = 0;
                  for (int64_t k = g0; k < g1; ++k) {
                    const int64_t v = int64_t(ra[k]) * rb[k];
                    prod[size_t(k - g0)] = v;
                    max_abs = std::max(max_abs, uint64_t(v < 0 ? -v : v));
                  }
                  // Align to the largest exponent, keep p bits below it (floor: sign-fill).
                  const int sh = std::bit_width(max_abs) - 1 - p;
                  int64_t sum = 0;
                  if (sh > 0 && opt.align_toward_zero) {
                    for (int64_t j = 0; j < g1 - g0; ++j)
                      sum += prod[size_t(j)] / (int64_t(1) << sh);
                    sum *= int64_t(1) << sh;
                  } else if (sh > 0) {
                    for (int64_t j = 0; j < g1 - g0; ++j) sum += prod[size_t(j)] >> sh;
                    sum *= int64_t(1) << sh;
                  } else {
                    for (int64_t j = 0; j < g1 - g0; ++j) sum += prod[size_t(j)];
                  }
                  tc = truncate_to_bits(tc + sum, p);
                }
                // Promotion: FP32 scale product, one FMA into the FP32 accumulator.
                const int64_t kb = w0 / kTile;
                const float s = sa[size_t(kb * M + m)] * sb[size_t(kb * N + n)];
                acc = std::fma(s, std::ldexp(float(tc), -2 * kCodeShift), acc);
              }
              out = acc;
            }
            float& cm = c[m * N + n];
            cm = accumulate ? cm + out : out;
          }
        }
      },
      1);
}

}  // namespace

void gemm(Op opa, const Quantized& a, Op opb, const Quantized& b, float* c, bool accumulate,
          const GemmOptions& opt) {
  const OperandView va{&a, opa == Op::kN}, vb{&b, opb == Op::kT};
  const int64_t M = va.outer(), K = va.inner(), N = vb.outer();
  DSV3_CHECK(vb.inner() == K,
             "fp8::gemm: op(A) is [{}, {}] but op(B) is [{}, {}]; the reduction extents differ", M,
             K, vb.inner(), N);
  check_k_tiling(va, "A");
  check_k_tiling(vb, "B");
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) std::fill(c, c + M * N, 0.0f);
    return;
  }
  if (opt.accum == Accum::kFp32)
    gemm_fp32_accum(va, vb, M, N, K, c, accumulate);
  else
    gemm_hopper_emulated(va, vb, M, N, K, c, accumulate, opt);
}

// ---- the passes ----

namespace {

std::vector<float> bf16_copy(const float* x, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  round_to_bf16(x, n, out.data());
  return out;
}

}  // namespace

void fprop(const float* x, const float* W, int64_t rows, int64_t in, int64_t out, float* y,
           const Recipe& r) {
  switch (r.precision) {
    case Precision::kF32:
      train::linear_forward<float>(x, W, rows, in, out, y);
      return;
    case Precision::kBf16: {
      const std::vector<float> xb = bf16_copy(x, rows * in), wb = bf16_copy(W, out * in);
      train::linear_forward<float>(xb.data(), wb.data(), rows, in, out, y);
      return;
    }
    case Precision::kFp8:
      gemm(Op::kN, quantize(x, rows, in, Granularity::kRowTiles, r.pow2_scales), Op::kT,
           quantize(W, out, in, Granularity::kBlocks, r.pow2_scales), y, false, r.gemm);
      return;
  }
}

void dgrad(const float* dy, const float* W, int64_t rows, int64_t in, int64_t out, float* dx,
           const Recipe& r) {
  switch (r.precision) {
    case Precision::kF32:
      train::linear_backward<float>(nullptr, W, dy, rows, in, out, dx, nullptr);
      return;
    case Precision::kBf16: {
      const std::vector<float> db = bf16_copy(dy, rows * out), wb = bf16_copy(W, out * in);
      train::linear_backward<float>(nullptr, wb.data(), db.data(), rows, in, out, dx, nullptr);
      return;
    }
    case Precision::kFp8:
      gemm(Op::kN, quantize(dy, rows, out, Granularity::kRowTiles, r.pow2_scales), Op::kN,
           quantize(W, out, in, Granularity::kBlocks, r.pow2_scales), dx, true, r.gemm);
      return;
  }
}

void wgrad(const float* x, const float* dy, int64_t rows, int64_t in, int64_t out, float* dW,
           const Recipe& r) {
  switch (r.precision) {
    case Precision::kF32:
      train::linear_backward<float>(x, nullptr, dy, rows, in, out, nullptr, dW);
      return;
    case Precision::kBf16: {
      const std::vector<float> xb = bf16_copy(x, rows * in), db = bf16_copy(dy, rows * out);
      train::linear_backward<float>(xb.data(), nullptr, db.data(), rows, in, out, nullptr, dW);
      return;
    }
    case Precision::kFp8:
      gemm(Op::kT, quantize(dy, rows, out, Granularity::kColTiles, r.pow2_scales), Op::kN,
           quantize(x, rows, in, Granularity::kColTiles, r.pow2_scales), dW, true, r.gemm);
      return;
  }
}

void linear_backward(const float* x, const float* W, const float* dy, int64_t rows, int64_t in,
                     int64_t out, float* dx, float* dW, const Recipe& r) {
  if (dx) dgrad(dy, W, rows, in, out, dx, r);
  if (dW) wgrad(x, dy, rows, in, out, dW, r);
}

void round_to_bf16(const float* x, int64_t n, float* out) {
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) out[i] = bf16_to_f32(f32_to_bf16(x[i]));
      },
      65536);
}

}  // namespace dsv3::train::fp8
