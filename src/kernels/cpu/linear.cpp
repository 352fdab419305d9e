// y = x·Wᵀ on the CPU, two paths:
//  - few rows (decode): each weight row is read once, converted 128 columns at a time into
//    an L1-resident buffer and dotted with every input row. Decode is bound by the bytes of
//    the weights, so they are read in their stored dtype (2 bytes for BF16, 1 for FP8) and
//    never written back.
//  - many rows (prefill): the weight is converted 64 rows at a time into a per-thread scratch
//    buffer and multiplied with OpenBLAS's sgemm (single-threaded; our pool splits the output
//    columns across cores). An F32 weight is used in place.
#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <mutex>
#include <vector>

#include "core/threads.h"
#include "kernels/cpu/cpu_kernels.h"

namespace dsv3::cpu {

void init_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

namespace {

// Rows of W converted per block: a multiple of the FP8 block height keeps the scale lookups
// simple, and 64 rows of a 7168-wide weight (1.8 MB) stay within a core's cache share.
constexpr int64_t kRowBlock = 64;

// Up to this many input rows take the weight-streaming path.
constexpr int64_t kMaxStreamRows = 4;

float dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Columns [c0, c0 + n) of one weight row as exact f32 values (FP8 without its block scale).
// The FP8 decodings place the code's exponent and mantissa bits in an f32 and rescale by the
// bias difference (2^120 for E4M3, 2^112 for E5M2); subnormal codes land on f32 subnormals,
// which the multiply makes exact again. NaN codes do not occur in weights.
void load_chunk(DType dt, const void* row, int64_t c0, int64_t n, float* buf) {
  switch (dt) {
    case DType::F32:
      std::memcpy(buf, static_cast<const float*>(row) + c0, size_t(n) * 4);
      return;
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(row) + c0;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) buf[i] = std::bit_cast<float>(uint32_t(p[i]) << 16);
      return;
    }
    case DType::F8_E4M3: {
      const uint8_t* p = static_cast<const uint8_t*>(row) + c0;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t q = p[i];
        buf[i] = std::bit_cast<float>(((q & 0x80u) << 24) | ((q & 0x7fu) << 20)) * 0x1p120f;
      }
      return;
    }
    case DType::F8_E5M2: {
      const uint8_t* p = static_cast<const uint8_t*>(row) + c0;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t q = p[i];
        buf[i] = std::bit_cast<float>(((q & 0x80u) << 24) | ((q & 0x7fu) << 21)) * 0x1p112f;
      }
      return;
    }
    default:
      convert_to_f32(dt, static_cast<const char*>(row) + size_t(c0) * dtype_size(dt), buf,
                     size_t(n));
  }
}

template <int M>
void stream_rows(const float* x, const Linear& w, int64_t r0, int64_t r1, float* y) {
  const int64_t n = w.out_features(), k = w.in_features();
  const DType dt = w.weight.dtype();
  const size_t row_bytes = size_t(k) * dtype_size(dt);
  const auto* base = static_cast<const char*>(w.weight.data());
  const int64_t chunk = w.quantized() ? w.block_k : 256;
  const float* scales = w.quantized() ? w.scale_inv.ptr<float>() : nullptr;
  const int64_t scale_cols = w.quantized() ? w.scale_inv.dim(1) : 0;
  alignas(64) float buf[512];
  for (int64_t r = r0; r < r1; ++r) {
    const void* row = base + size_t(r) * row_bytes;
    float acc[M] = {};
    for (int64_t c0 = 0; c0 < k; c0 += chunk) {
      const int64_t len = std::min(chunk, k - c0);
      load_chunk(dt, row, c0, len, buf);
      const float s = scales ? scales[(r / w.block_n) * scale_cols + c0 / w.block_k] : 1.0f;
      for (int m = 0; m < M; ++m) acc[m] += s * dot(buf, x + m * k + c0, len);
    }
    for (int m = 0; m < M; ++m) y[m * n + r] = acc[m];
  }
}

void linear_stream(const float* x, int64_t rows, const Linear& w, float* y) {
  const int64_t n = w.out_features();
  parallel_for(
      n,
      [&](int64_t r0, int64_t r1, int) {
        switch (rows) {
          case 1:
            return stream_rows<1>(x, w, r0, r1, y);
          case 2:
            return stream_rows<2>(x, w, r0, r1, y);
          case 3:
            return stream_rows<3>(x, w, r0, r1, y);
          default:
            return stream_rows<4>(x, w, r0, r1, y);
        }
      },
      16);
}

}  // namespace

void linear(const float* x, int64_t rows, const Linear& w, float* y) {
  if (rows <= kMaxStreamRows && (!w.quantized() || w.block_k <= 512)) {
    linear_stream(x, rows, w, y);
    return;
  }
  init_blas();
  const int64_t n = w.out_features(), k = w.in_features();
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
  const bool direct = w.weight.dtype() == DType::F32 && !w.quantized();
  parallel_for(blocks, [&](int64_t b0, int64_t b1, int) {
    thread_local std::vector<float> scratch;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRowBlock, r1 = std::min(n, r0 + kRowBlock);
      const float* wb;
      if (direct) {
        wb = w.weight.ptr<float>() + r0 * k;
      } else {
        scratch.resize(size_t((r1 - r0) * k));
        w.dequantize_rows(r0, r1, scratch.data());
        wb = scratch.data();
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(r1 - r0), int(k), 1.0f, x,
                  int(k), wb, int(k), 0.0f, y + r0, int(n));
    }
  });
}

}  // namespace dsv3::cpu
