// Skinny GEMM for decode (kernels.h GemvArgs): one warp per output feature. Each lane streams
// 16-byte chunks of the weight row (decoded in registers), dots them with up to MT input rows
// and the warp sums the lanes. The weight is read from memory once per MT rows, so with few
// rows the kernel runs at the speed of the weight bytes; F32 accumulation, FP8 block scale
// applied per 16-value chunk (a chunk never crosses a 128-wide block).
#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode.cuh"

namespace dsv3::cuda {

namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ float silu(float g) {
  return g / (1.0f + expf(-g));
}

template <WType T, int MT, bool SWIGLU, bool VEC>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const GemvArgs a) {
  constexpr int CH = WTraits<T>::kChunk;
  constexpr int ES = WTraits<T>::kSize;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  int64_t g = blockIdx.y;
  if (a.active) {
    if (g >= a.active[0]) return;
    g = a.active[1 + g];
  }
  const int64_t n = int64_t(blockIdx.x) * kWarps + warp;
  if (n >= a.n) return;
  int64_t r0 = 0, r1 = a.m;
  if (a.offsets) {
    r0 = max(int64_t(a.offsets[g]), int64_t(0));
    r1 = min(int64_t(a.offsets[g + 1]), a.m);
  }
  if (r0 >= r1) return;
  const int64_t K = a.w.k;
  const int64_t wrow = g * a.w_group_rows + a.w_row0 + n;
  const char* w1 = static_cast<const char*>(a.w.w) + wrow * K * ES;
  const char* w2 = SWIGLU ? static_cast<const char*>(a.w2) + wrow * K * ES : nullptr;
  const float* s1 = nullptr;
  const float* s2 = nullptr;
  if constexpr (T == WType::E4M3) {
    const int64_t scols = ceil_div(K, a.w.bk);
    const int64_t srow =
        a.scale_group_rows > 0 ? g * a.scale_group_rows + (a.w_row0 + n) / a.w.bn : wrow / a.w.bn;
    s1 = a.w.scale + srow * scols;
    if (SWIGLU) s2 = a.scale2 + srow * scols;
  }
  for (int64_t p0 = r0; p0 < r1; p0 += MT) {
    const int cnt = int(min(int64_t(MT), r1 - p0));
    const float* xr[MT];
#pragma unroll
    for (int mm = 0; mm < MT; ++mm) {
      const int64_t p = p0 + (mm < cnt ? mm : 0);
      const int64_t row = a.x_rows ? a.x_rows[p] : p;
      xr[mm] = a.x + row * a.ldx + g * a.x_goff;
    }
    float acc[MT], acc2[MT];
#pragma unroll
    for (int mm = 0; mm < MT; ++mm) acc[mm] = acc2[mm] = 0.0f;
    if constexpr (VEC) {
#pragma unroll 2
      for (int64_t k0 = int64_t(lane) * CH; k0 < K; k0 += 32 * CH) {
        float wv[CH], wv2[SWIGLU ? CH : 1];
        load_chunk<T>(w1 + k0 * ES, wv);
        if constexpr (SWIGLU) load_chunk<T>(w2 + k0 * ES, wv2);
        float sc = 1.0f, sc2 = 1.0f;
        if constexpr (T == WType::E4M3) {
          sc = __ldg(s1 + k0 / a.w.bk);
          if constexpr (SWIGLU) sc2 = __ldg(s2 + k0 / a.w.bk);
        }
#pragma unroll
        for (int mm = 0; mm < MT; ++mm) {
          if (mm < cnt) {
            float xv[CH];
#pragma unroll
            for (int c = 0; c < CH; c += 4) {
              const float4 f = __ldg(reinterpret_cast<const float4*>(xr[mm] + k0 + c));
              xv[c] = f.x;
              xv[c + 1] = f.y;
              xv[c + 2] = f.z;
              xv[c + 3] = f.w;
            }
            float d = 0.0f, d2 = 0.0f;
#pragma unroll
            for (int c = 0; c < CH; ++c) {
              d = fmaf(wv[c], xv[c], d);
              if constexpr (SWIGLU) d2 = fmaf(wv2[c], xv[c], d2);
            }
            acc[mm] = fmaf(d, sc, acc[mm]);
            if constexpr (SWIGLU) acc2[mm] = fmaf(d2, sc2, acc2[mm]);
          }
        }
      }
    } else {
      for (int64_t k = lane; k < K; k += 32) {
        float wv = load_one<T>(w1, k), wv2 = 0.0f;
        if constexpr (SWIGLU) wv2 = load_one<T>(w2, k);
        if constexpr (T == WType::E4M3) {
          wv *= __ldg(s1 + k / a.w.bk);
          if constexpr (SWIGLU) wv2 *= __ldg(s2 + k / a.w.bk);
        }
#pragma unroll
        for (int mm = 0; mm < MT; ++mm) {
          if (mm < cnt) {
            const float xv = __ldg(xr[mm] + k);
            acc[mm] = fmaf(wv, xv, acc[mm]);
            if constexpr (SWIGLU) acc2[mm] = fmaf(wv2, xv, acc2[mm]);
          }
        }
      }
    }
#pragma unroll
    for (int mm = 0; mm < MT; ++mm) {
      const float v = warp_sum(acc[mm]);
      const float v2 = SWIGLU ? warp_sum(acc2[mm]) : 0.0f;
      if (lane == 0 && mm < cnt) {
        float* y = a.y + (p0 + mm) * a.ldy + g * a.y_goff + n;
        *y = SWIGLU ? silu(v) * v2 : v;
      }
    }
  }
}

template <WType T, int MT, bool SWIGLU>
void launch_vec(const GemvArgs& a, bool vec, cudaStream_t s) {
  // With an active list at most min(groups, rows) groups have work.
  const int64_t slots = a.active ? std::min<int64_t>(a.groups, a.m) : a.groups;
  const dim3 grid(unsigned(ceil_div(a.n, kWarps)), unsigned(slots));
  if (vec)
    gemv_kernel<T, MT, SWIGLU, true><<<grid, kWarps * 32, 0, s>>>(a);
  else
    gemv_kernel<T, MT, SWIGLU, false><<<grid, kWarps * 32, 0, s>>>(a);
}

template <WType T, int MT>
void launch_mt(const GemvArgs& a, bool vec, cudaStream_t s) {
  if (a.w2)
    launch_vec<T, MT, true>(a, vec, s);
  else
    launch_vec<T, MT, false>(a, vec, s);
}

template <WType T>
void launch_type(const GemvArgs& a, cudaStream_t s) {
  constexpr int CH = WTraits<T>::kChunk;
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  bool vec = a.w.k % CH == 0 && a.ldx % 4 == 0 && a.x_goff % 4 == 0 && aligned(a.x) &&
             aligned(a.w.w) && (!a.w2 || aligned(a.w2));
  if (T == WType::E4M3) vec = vec && a.w.bk % CH == 0;
  // Rows per pass: the weight is re-read (mostly from L2) once per MT rows of a group.
  const int64_t rows = a.offsets ? 4 : a.m;
  if (rows <= 1)
    launch_mt<T, 1>(a, vec, s);
  else if (rows <= 2)
    launch_mt<T, 2>(a, vec, s);
  else if (rows <= 4)
    launch_mt<T, 4>(a, vec, s);
  else
    launch_mt<T, 8>(a, vec, s);
}

}  // namespace

void gemv(const GemvArgs& a, cudaStream_t s) {
  if (a.n == 0 || a.m == 0 || a.groups == 0) return;
  switch (a.w.type) {
    case WType::F32:
      launch_type<WType::F32>(a, s);
      break;
    case WType::BF16:
      launch_type<WType::BF16>(a, s);
      break;
    case WType::F16:
      launch_type<WType::F16>(a, s);
      break;
    case WType::E4M3:
      launch_type<WType::E4M3>(a, s);
      break;
  }
  DSV3_CUDA_CHECK_LAUNCH();
}

}  // namespace dsv3::cuda
