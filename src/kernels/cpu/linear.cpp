// y = x·Wᵀ on the CPU, two paths:
//  - few rows (decode): each weight row is read once, converted 128 columns at a time into
//    an L1-resident buffer and dotted with every input row. Decode is bound by the bytes of
//    the weights, so they are read in their stored dtype (2 bytes for BF16, 1 for FP8) and
//    never written back.
//  - many rows (prefill): the weight is converted 64 rows at a time into a per-thread scratch
//    buffer and multiplied with OpenBLAS's sgemm (single-threaded; our pool splits the output
//    columns across cores). An F32 weight is used in place.
#include <cblas.h>
#if defined(__AVX512F__)
#include <immintrin.h>
// GCC 12 reports its own AVX-512 intrinsics' undefined-initialised temporaries as
// maybe-uninitialized (a false positive); silence it for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

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

// Up to this many input rows take the weight-streaming path, in groups of kStreamGroup rows
// (each group re-reads the weight; past this, converting once for sgemm costs less).
constexpr int64_t kMaxStreamRows = 16;
constexpr int64_t kStreamGroup = 8;

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

#if defined(__AVX512F__)
// 16 weights as f32, decoded in registers. FP8 E4M3 goes through f16 (same
// mantissa, wider exponent: exact for every finite code, including subnormals) scaled by 2^-8,
// which the caller folds into the block scale.
inline __m512 load16(DType dt, const void* row, int64_t c) {
  switch (dt) {
    case DType::BF16: {
      const __m256i h = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + c));
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case DType::F8_E4M3: {
      const __m128i b =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(row) + c));
      const __m256i q = _mm256_cvtepu8_epi16(b);
      const __m256i h =
          _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(q, _mm256_set1_epi16(0x80)), 8),
                          _mm256_slli_epi16(_mm256_and_si256(q, _mm256_set1_epi16(0x7f)), 7));
      return _mm512_cvtph_ps(h);
    }
    case DType::F16:
      return _mm512_cvtph_ps(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + c)));
    default:
      return _mm512_loadu_ps(static_cast<const float*>(row) + c);
  }
}

// Whether load16 handles the dtype (E5M2 takes the generic path).
bool vector_dtype(DType dt) {
  return dt == DType::BF16 || dt == DType::F8_E4M3 || dt == DType::F16 || dt == DType::F32;
}
#endif

template <int M>
void stream_rows(const float* x, const Linear& w, int64_t r0, int64_t r1, float* y) {
  const int64_t n = w.out_features(), k = w.in_features();
  const DType dt = w.weight.dtype();
  const size_t row_bytes = size_t(k) * dtype_size(dt);
  const auto* base = static_cast<const char*>(w.weight.data());
  const int64_t chunk = w.quantized() ? w.block_k : 256;
  const float* scales = w.quantized() ? w.scale_inv.ptr<float>() : nullptr;
  const int64_t scale_cols = w.quantized() ? w.scale_inv.dim(1) : 0;
#if defined(__AVX512F__)
  if (vector_dtype(dt) && k % 16 == 0 && chunk % 16 == 0) {
    // E4M3 decodes to value · 2^-8 (see load16).
    const float unit = dt == DType::F8_E4M3 ? 256.0f : 1.0f;
    for (int64_t r = r0; r < r1; ++r) {
      const void* row = base + size_t(r) * row_bytes;
      const float* srow = scales ? scales + (r / w.block_n) * scale_cols : nullptr;
      __m512 acc[M];
      for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
      for (int64_t c0 = 0; c0 < k; c0 += chunk) {
        const int64_t c1 = std::min(k, c0 + chunk);
        __m512 part[M];
        for (int m = 0; m < M; ++m) part[m] = _mm512_setzero_ps();
        for (int64_t c = c0; c < c1; c += 16) {
          const __m512 wv = load16(dt, row, c);
          for (int m = 0; m < M; ++m)
            part[m] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + m * k + c), part[m]);
        }
        const __m512 s = _mm512_set1_ps((srow ? srow[c0 / w.block_k] : 1.0f) * unit);
        for (int m = 0; m < M; ++m) acc[m] = _mm512_fmadd_ps(part[m], s, acc[m]);
      }
      for (int m = 0; m < M; ++m) y[m * n + r] = _mm512_reduce_add_ps(acc[m]);
    }
    return;
  }
#endif
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
  const int64_t n = w.out_features(), k = w.in_features();
  parallel_for(
      n,
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t g = 0; g < rows; g += kStreamGroup) {
          const float* xg = x + g * k;
          float* yg = y + g * n;
          switch (std::min(rows - g, kStreamGroup)) {
            case 1:
              stream_rows<1>(xg, w, r0, r1, yg);
              break;
            case 2:
              stream_rows<2>(xg, w, r0, r1, yg);
              break;
            case 3:
              stream_rows<3>(xg, w, r0, r1, yg);
              break;
            case 4:
              stream_rows<4>(xg, w, r0, r1, yg);
              break;
            case 5:
              stream_rows<5>(xg, w, r0, r1, yg);
              break;
            case 6:
              stream_rows<6>(xg, w, r0, r1, yg);
              break;
            case 7:
              stream_rows<7>(xg, w, r0, r1, yg);
              break;
            default:
              stream_rows<8>(xg, w, r0, r1, yg);
              break;
          }
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
