// Skinny GEMM for decode (kernels.h GemvArgs): `ks` warps per output feature (split-K within a
// block: warp j of an output takes the 16-byte chunks j, j + ks, ... of each lane's stride, and
// the block sums the ks partial dots in a fixed order, so results do not depend on timing).
// Each lane streams 16-byte chunks of the weight row (decoded in registers), kUnroll of them in
// flight before the first is used, dots them with up to MT input rows and the warp sums the
// lanes. The weight is read from memory once per MT rows, so with few rows the kernel runs at
// the speed of the weight bytes; F32 accumulation, FP8 block scale applied per 16-value chunk
// (a chunk never crosses a 128-wide block). Small matrices (few outputs, long rows: kv_a, the
// router, q_a) would leave most SMs idle with one warp per output; `ks` > 1 fills them.
#include <algorithm>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mma.cuh"

namespace dsv3::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kUnroll = 4;

__device__ __forceinline__ float silu(float g) {
  return g / (1.0f + expf(-g));
}

// acc[mm] += sc · (w · x[mm]) over one decoded chunk at column k0 (and the same for w2).
template <int CH, int MT, bool SWIGLU>
__device__ __forceinline__ void dot_chunk(const float* wv, const float* wv2, float sc, float sc2,
                                          const float* const* xr, int k0, int cnt, float* acc,
                                          float* acc2) {
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

// Output n of group g: its weight rows (w2: SwiGLU's second weight, else null) and, for FP8,
// its block-scale rows.
struct RowPtrs {
  const char *w1, *w2;
  const float *s1, *s2;
};
template <WType T, bool SWIGLU>
__device__ __forceinline__ RowPtrs row_ptrs(const GemvArgs& a, int64_t g, int64_t n) {
  constexpr int64_t ES = WTraits<T>::kSize;
  const int64_t wrow = g * a.w_group_rows + a.w_row0 + n;
  RowPtrs p{static_cast<const char*>(a.w.w) + wrow * a.w.k * ES,
            SWIGLU ? static_cast<const char*>(a.w2) + wrow * a.w.k * ES : nullptr, nullptr,
            nullptr};
  if constexpr (T == WType::E4M3) {
    const int64_t scols = ceil_div(a.w.k, a.w.bk);
    const int64_t srow =
        a.scale_group_rows > 0 ? g * a.scale_group_rows + (a.w_row0 + n) / a.w.bn : wrow / a.w.bn;
    p.s1 = a.w.scale + srow * scols;
    if (SWIGLU) p.s2 = a.scale2 + srow * scols;
  }
  return p;
}

// Launched early (launch.cuh), a gemv waits for the kernel before it and lets the next launch
// once its weights are all read: at once (kTriggerEarly) was slower at batch 1 on the H200,
// as was fetching the first weights of each row into L2 before the wait (V3 dims: 723 tok/s
// against 745). Weights are read past L1 (L1::no_allocate), so the streamed bytes do not evict
// the input row every warp of the SM reads again (64 KB at o_proj's K = 16384): o_proj 2,853
// -> 3,090 GB/s, batch-1 decode 720 -> 745 tok/s. kWeightsEarly: the one-row kernel loads its
// first batch of weights into registers before the wait (with the sampler's split sweep:
// 780.1 / 779.2 / 779.1 tok/s at batch 1 against 772.3 / 775.9 / 769.5 without either, H200,
// alternating in one call; o_proj's step-time cost 37 -> 33 us). gemv_flags (benchmarks) turns
// each on/off.
constexpr int kTriggerEarly = 1, kWeightsPastL1 = 2, kWeightsEarly = 4;
int g_gemv_flags = kWeightsPastL1 | kWeightsEarly;

__device__ __forceinline__ uint4 load_weight(const char* p, int flags) {
  if (!(flags & kWeightsPastL1)) return __ldg(reinterpret_cast<const uint4*>(p));
  uint4 v;  // volatile: the compiler must not sink the early loads past pdl_wait()
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// The block's group (blockIdx.y, or that slot of the active list) and its input rows [r0, r1);
// false when it has none (the same for every thread of the block).
__device__ __forceinline__ bool block_rows(const GemvArgs& a, int64_t& g, int64_t& r0,
                                           int64_t& r1) {
  g = blockIdx.y;
  if (a.active) {
    if (g >= a.active[0]) return false;
    g = a.active[1 + g];
  }
  r0 = 0;
  r1 = a.m;
  if (a.offsets) {
    r0 = max(int64_t(a.offsets[g]), int64_t(0));
    r1 = min(int64_t(a.offsets[g + 1]), a.m);
  }
  return r0 < r1;
}

template <WType T, int MT, bool SWIGLU, bool VEC>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const GemvArgs a, const int ks, const int bk_shift, const int flags) {
  constexpr int CH = WTraits<T>::kChunk;
  constexpr int ES = WTraits<T>::kSize;
  __shared__ float red[2][MT][kWarps];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int sub = warp % ks;  // this warp's share of K
  const int64_t n = int64_t(blockIdx.x) * (kWarps / ks) + warp / ks;
  if (flags & kTriggerEarly) pdl_trigger();
  pdl_wait();
  int64_t g, r0, r1;
  if (!block_rows(a, g, r0, r1)) return;  // uniform over the block
  // With ks > 1 every warp must reach the block's barriers, so a warp past the last output
  // computes nothing but does not leave.
  const bool valid = n < a.n;
  if (!valid && ks == 1) return;
  const int64_t K = valid ? a.w.k : 0;
  const RowPtrs rp = row_ptrs<T, SWIGLU>(a, g, valid ? n : 0);
  const char *w1 = rp.w1, *w2 = rp.w2;
  const float *s1 = rp.s1, *s2 = rp.s2;
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
      // Column indices fit 32 bits (K < 2^31) and the FP8 scale column is a shift when the
      // block width is a power of two (always 128 in DeepSeek's checkpoints): a 64-bit
      // division per 16-byte chunk made the FP8 kernels instruction-bound (ncu, V3 dims).
      const int step = ks * 32 * CH;
      const int Ki = int(K);
      // kUnroll chunks per lane in flight, the last batch predicated: a row of K = 1536 FP8
      // (q_b) is 3 chunks per lane, which a serial remainder loop would fetch one at a time.
      // Fewer chunks per batch when many rows share it: registers (occupancy) at batch 8+.
      constexpr int kU = MT >= 4 ? 2 : kUnroll;
      for (int k0 = (sub * 32 + lane) * CH; k0 < Ki; k0 += kU * step) {
        uint4 raw[kU], raw2[SWIGLU ? kU : 1];
        float sc[kU], sc2[kU];
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int k = k0 + u * step;
          raw[u] = make_uint4(0, 0, 0, 0);
          if constexpr (SWIGLU) raw2[u] = make_uint4(0, 0, 0, 0);
          sc[u] = sc2[u] = 1.0f;
          if (k < Ki) {
            raw[u] = load_weight(w1 + k * ES, flags);
            if constexpr (SWIGLU) raw2[u] = load_weight(w2 + k * ES, flags);
            if constexpr (T == WType::E4M3) {
              const int sk = bk_shift >= 0 ? k >> bk_shift : k / a.w.bk;
              sc[u] = __ldg(s1 + sk);
              if constexpr (SWIGLU) sc2[u] = __ldg(s2 + sk);
            }
          }
        }
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int k = k0 + u * step;
          if (k < Ki) {
            float wv[CH], wv2[SWIGLU ? CH : 1];
            decode_chunk<T>(raw[u], wv);
            if constexpr (SWIGLU) decode_chunk<T>(raw2[u], wv2);
            dot_chunk<CH, MT, SWIGLU>(wv, wv2, sc[u], sc2[u], xr, k, cnt, acc, acc2);
          }
        }
      }
    } else {
      for (int64_t k = int64_t(sub) * 32 + lane; k < K; k += int64_t(ks) * 32) {
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
    if (p0 + MT >= r1) pdl_trigger();  // this block's weights all read (a no-op if early)
#pragma unroll
    for (int mm = 0; mm < MT; ++mm) {
      acc[mm] = warp_sum(acc[mm]);
      if constexpr (SWIGLU) acc2[mm] = warp_sum(acc2[mm]);
    }
    if (ks > 1) {
      if (lane == 0) {
#pragma unroll
        for (int mm = 0; mm < MT; ++mm) {
          red[0][mm][warp] = acc[mm];
          red[1][mm][warp] = acc2[mm];
        }
      }
      __syncthreads();
      if (sub == 0) {
#pragma unroll
        for (int mm = 0; mm < MT; ++mm) {
          float v = 0.0f, v2 = 0.0f;
          for (int j = 0; j < ks; ++j) {
            v += red[0][mm][warp + j];
            v2 += red[1][mm][warp + j];
          }
          acc[mm] = v;
          acc2[mm] = v2;
        }
      }
      __syncthreads();  // red is reused by the next pass over rows
    }
    if (valid && sub == 0 && lane == 0) {
#pragma unroll
      for (int mm = 0; mm < MT; ++mm) {
        if (mm < cnt) {
          float* y = a.y + (p0 + mm) * a.ldy + g * a.y_goff + n;
          *y = SWIGLU ? silu(acc[mm]) * acc2[mm] : acc[mm];
        }
      }
    }
  }
}

// One batch of the NR-output kernels' weight loads, all issued before any is used: chunks k0 +
// u · step (u < U) of rows min(r, last) of rp (and of its SwiGLU pair), with their FP8 block
// scales; zeros and scale 1 past Ki.
template <WType T, int NR, bool SWIGLU, int U>
__device__ __forceinline__ void load_batch(uint4 (&raw)[U][NR], uint4 (&raw2)[U][SWIGLU ? NR : 1],
                                           float (&sc)[U], float (&sc2)[U], const RowPtrs& rp,
                                           int64_t row_bytes, int last, int k0, int step, int Ki,
                                           int bk_shift, int bk, int flags) {
  constexpr int ES = WTraits<T>::kSize;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int k = k0 + u * step;
    sc[u] = sc2[u] = 1.0f;
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      raw[u][r] = make_uint4(0, 0, 0, 0);
      if constexpr (SWIGLU) raw2[u][r] = make_uint4(0, 0, 0, 0);
      if (k < Ki) {
        const int64_t off = min(r, last) * row_bytes + int64_t(k) * ES;
        raw[u][r] = load_weight(rp.w1 + off, flags);
        if constexpr (SWIGLU) raw2[u][r] = load_weight(rp.w2 + off, flags);
      }
    }
    if constexpr (T == WType::E4M3) {
      if (k < Ki) {
        const int sk = bk_shift >= 0 ? k >> bk_shift : k / bk;
        sc[u] = __ldg(rp.s1 + sk);
        if constexpr (SWIGLU) sc2[u] = __ldg(rp.s2 + sk);
      }
    }
  }
}

// One input row per pass (decode at batch 1; experts with one row each): every warp computes
// NR consecutive outputs, so each chunk of x it loads serves NR weight rows. With one output
// per warp, a 16-byte FP8 chunk needs 64 bytes of x; at V3's K = 16384 (o_proj) x does not stay
// in L1 and the L2 traffic for x, 4x the weight bytes, held the kernel at ~1.1 TB/s (ncu).
// FP8: the NR rows share one scale row (launch_rows checks that NR divides the block height and
// the row offsets), so a chunk takes one scale load for all of them; with per-row scales and
// row pointers the kernel needed 120 registers, 2 blocks an SM; now 80 (3 blocks, no spills).
// U: chunks per lane and row in one batch, U · NR (· 2) loads in flight. The engine runs FP8 at
// U = 1 (V3 x 4 layers batch-1 decode 778.9 tok/s against 761.4 / 768.7 at 2, H200, one call;
// the gemv sweep had every FP8 shape 1-6% faster) and the others at 2; 4 is for the sweep.
// (Issuing the next batch's loads before this one is used, at twice the registers, ran at
// 47-53% of copy where U = 2 ran at 75% for o_proj and down.)
template <int U>
constexpr int kRowsMinBlocks = U > 2 ? 1 : 3;

template <WType T, int NR, bool SWIGLU, int U = 2>
__global__ void __launch_bounds__(kWarps * 32, (kRowsMinBlocks<U>))
    gemv_rows_kernel(const GemvArgs a, const int ks, const int bk_shift, const int flags) {
  constexpr int CH = WTraits<T>::kChunk;
  constexpr int ES = WTraits<T>::kSize;
  __shared__ float red[2][NR][kWarps];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int sub = warp % ks, warps = int(blockDim.x) / 32;  // ks divides warps (≤ kWarps)
  const int64_t n0 = (int64_t(blockIdx.x) * (warps / ks) + warp / ks) * NR;
  if (flags & kTriggerEarly) pdl_trigger();
  const bool any = n0 < a.n;
  const int Ki = any ? int(a.w.k) : 0;
  const int64_t nb = min(n0, a.n - 1), row_bytes = a.w.k * ES;
  // Rows past the end read the last row (in bounds) and are never written.
  const int last = int(min(int64_t(NR - 1), a.n - 1 - nb));
  const int step = ks * 32 * CH, k_first = (sub * 32 + lane) * CH;
  uint4 raw[U][NR], raw2[U][SWIGLU ? NR : 1];
  float sc[U], sc2[U];
  // kWeightsEarly: the first batch of weights is loaded before the wait when the block's group
  // needs no device data (no active list or offsets), so its latency passes while the kernel
  // before finishes.
  const bool early = (flags & kWeightsEarly) && !a.active && !a.offsets;
  if (early)
    load_batch<T, NR, SWIGLU, U>(raw, raw2, sc, sc2, row_ptrs<T, SWIGLU>(a, blockIdx.y, nb),
                                 row_bytes, last, k_first, step, Ki, bk_shift, a.w.bk, flags);
  pdl_wait();
  int64_t g, r0, r1;
  if (!block_rows(a, g, r0, r1)) return;  // uniform over the block
  if (!any && ks == 1) return;            // with ks > 1 every warp must reach the barriers
  const RowPtrs rp = row_ptrs<T, SWIGLU>(a, g, nb);  // the scale row serves all NR rows
  for (int64_t p = r0; p < r1; ++p) {
    const int64_t row = a.x_rows ? a.x_rows[p] : p;
    const float* xr = a.x + row * a.ldx + g * a.x_goff;
    float acc[NR], acc2[NR];
#pragma unroll
    for (int r = 0; r < NR; ++r) acc[r] = acc2[r] = 0.0f;
    for (int k0 = k_first; k0 < Ki; k0 += U * step) {
      if (!(early && p == r0 && k0 == k_first))
        load_batch<T, NR, SWIGLU, U>(raw, raw2, sc, sc2, rp, row_bytes, last, k0, step, Ki,
                                     bk_shift, a.w.bk, flags);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int k = k0 + u * step;
        if (k < Ki) {
          float xv[CH];
#pragma unroll
          for (int c = 0; c < CH; c += 4) {
            const float4 f = __ldg(reinterpret_cast<const float4*>(xr + k + c));
            xv[c] = f.x;
            xv[c + 1] = f.y;
            xv[c + 2] = f.z;
            xv[c + 3] = f.w;
          }
#pragma unroll
          for (int r = 0; r < NR; ++r) {
            float wv[CH];
            decode_chunk<T>(raw[u][r], wv);
            float d = 0.0f;
#pragma unroll
            for (int c = 0; c < CH; ++c) d = fmaf(wv[c], xv[c], d);
            acc[r] = fmaf(d, sc[u], acc[r]);
            if constexpr (SWIGLU) {
              decode_chunk<T>(raw2[u][r], wv);
              float d2 = 0.0f;
#pragma unroll
              for (int c = 0; c < CH; ++c) d2 = fmaf(wv[c], xv[c], d2);
              acc2[r] = fmaf(d2, sc2[u], acc2[r]);
            }
          }
        }
      }
    }
    if (p + 1 >= r1) pdl_trigger();  // this block's weights all read (a no-op if early)
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      acc[r] = warp_sum(acc[r]);
      if constexpr (SWIGLU) acc2[r] = warp_sum(acc2[r]);
    }
    if (ks > 1) {
      if (lane == 0) {
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          red[0][r][warp] = acc[r];
          red[1][r][warp] = acc2[r];
        }
      }
      __syncthreads();
      if (sub == 0) {
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          float v = 0.0f, v2 = 0.0f;
          for (int j = 0; j < ks; ++j) {
            v += red[0][r][warp + j];
            v2 += red[1][r][warp + j];
          }
          acc[r] = v;
          acc2[r] = v2;
        }
      }
      __syncthreads();  // red is reused by the next row
    }
    if (any && sub == 0 && lane == 0) {
      float* y = a.y + p * a.ldy + g * a.y_goff;
#pragma unroll
      for (int r = 0; r < NR; ++r)
        if (n0 + r < a.n) y[n0 + r] = SWIGLU ? silu(acc[r]) * acc2[r] : acc[r];
    }
  }
}

// Batches of 2 to gemv_max_rows (decode at small batch) that the tensor-core kernel does not
// take (GemvArgs::tensor_cores off: --batch-invariant; F32 weights; the routed experts' rows
// gathered by expert): the rows kernel's warps, each NR
// outputs, over MT input rows at once. The block stages the rows' inputs in shared memory a tile
// of U steps at a time (a step: the 16-byte chunks of all ks · 32 lanes), so each weight chunk
// is read once for the MT rows and each input once for the block's outputs (the general
// kernel, one output per warp, read 32x the weight bytes of input at 8 rows). A lane takes its
// chunks in the rows kernel's order and sums as it does, with the same split (split_k is the
// same call), so every row's result is the bits it gets alone at batch 1: a request decodes the
// same batched or not.
// Steps (the chunks of all ks · 32 lanes) per tile of the tile kernel: 2, so U · NR (· 2)
// weight loads are in flight per lane, up to 4 rows a pass; 1 at 8, whose accumulators take
// the registers the second step's loads had. Passes of 8 (the default) over 4: V3 x 4 layers
// FP8 decode b=8 1,524 vs 1,461 tok/s, b=256 18,484 vs 17,479 (H200, one call).
template <int MT>
constexpr int kTileSteps = MT > 4 ? 1 : 2;

template <WType T, int NR, bool SWIGLU, int MT>
__global__ void __launch_bounds__(kWarps * 32, 2)
    gemv_tile_kernel(const GemvArgs a, const int ks, const int bk_shift, const int flags) {
  constexpr int CH = WTraits<T>::kChunk;
  constexpr int ES = WTraits<T>::kSize;
  constexpr int U = kTileSteps<MT>;
  // [MT][kc]: the input rows' tile. Each segment of a step's 32 lanes' chunks (32 · CH floats)
  // is stored transposed: a lane's CH / 4 float4s 32 apart, so a warp reads 32 consecutive
  // float4s (in k order a lane's chunk began CH · 4 bytes after the last lane's: 4-way bank
  // conflicts on every FP8 read, 2-way on BF16).
  extern __shared__ float4 xs4[];
  constexpr int Q = CH / 4, SEG = 32 * Q;  // float4s per chunk, per segment
  __shared__ float red[2][MT][NR][kWarps];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int sub = warp % ks;
  const int64_t n0 = (int64_t(blockIdx.x) * (kWarps / ks) + warp / ks) * NR;
  if (flags & kTriggerEarly) pdl_trigger();
  pdl_wait();
  int64_t g, r0, r1;
  if (!block_rows(a, g, r0, r1)) return;  // uniform over the block
  // Every warp reaches every barrier; one past the last output loads and writes nothing.
  const bool any = n0 < a.n;
  const int K = int(a.w.k), Ki = any ? K : 0;
  const int64_t nb = min(n0, a.n - 1), row_bytes = a.w.k * ES;
  const int last = int(min(int64_t(NR - 1), a.n - 1 - nb));
  const RowPtrs rp = row_ptrs<T, SWIGLU>(a, g, nb);
  const int step = ks * 32 * CH, kc = U * step;
  for (int64_t p0 = r0; p0 < r1; p0 += MT) {
    const int cnt = int(min(int64_t(MT), r1 - p0));
    float acc[MT][NR], acc2[MT][NR];
#pragma unroll
    for (int mm = 0; mm < MT; ++mm)
#pragma unroll
      for (int r = 0; r < NR; ++r) acc[mm][r] = acc2[mm][r] = 0.0f;
    for (int kt = 0; kt < K; kt += kc) {
      // This tile's weights first: their loads are in flight while the inputs are staged.
      uint4 raw[U][NR], raw2[U][SWIGLU ? NR : 1];
      float sc[U], sc2[U];
      load_batch<T, NR, SWIGLU, U>(raw, raw2, sc, sc2, rp, row_bytes, last,
                                   kt + (sub * 32 + lane) * CH, step, Ki, bk_shift, a.w.bk, flags);
      const int quads = min(kc, K - kt) / 4;  // K % CH == 0 on this path
      __syncthreads();                        // the previous tile's inputs are all read
      // In shared-memory order (conflict-free stores), gathering from k order.
      const int kc4 = kc / 4;
      for (int i = int(threadIdx.x); i < cnt * kc4; i += int(blockDim.x)) {
        const int mm = i / kc4, p = i - mm * kc4, pl = p % SEG;
        const int f = (p - pl) + (pl % 32) * Q + pl / 32;  // float4 f in k order
        if (f >= quads) continue;
        const int64_t row = a.x_rows ? a.x_rows[p0 + mm] : p0 + mm;
        xs4[mm * kc4 + p] =
            __ldg(reinterpret_cast<const float4*>(a.x + row * a.ldx + g * a.x_goff + kt) + f);
      }
      __syncthreads();
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int kl = (sub * 32 + lane) * CH + u * step;  // within the tile
        if (kt + kl < Ki) {
          // The chunk's dot products four values at a time, each still summed over c in order
          // from 0 (the rows kernel's d), without all NR decoded chunks held in registers.
          float d[MT][NR], d2[MT][SWIGLU ? NR : 1];
#pragma unroll
          for (int mm = 0; mm < MT; ++mm)
#pragma unroll
            for (int r = 0; r < NR; ++r) {
              d[mm][r] = 0.0f;
              if constexpr (SWIGLU) d2[mm][r] = 0.0f;
            }
#pragma unroll
          for (int q = 0; q < CH / 4; ++q) {
            float w4[NR][4], v4[SWIGLU ? NR : 1][4];
#pragma unroll
            for (int r = 0; r < NR; ++r) {
              decode_quad<T>(raw[u][r], q, w4[r]);
              if constexpr (SWIGLU) decode_quad<T>(raw2[u][r], q, v4[r]);
            }
#pragma unroll
            for (int mm = 0; mm < MT; ++mm) {
              if (mm < cnt) {
                const float4 f = xs4[mm * (kc / 4) + (u * ks + sub) * SEG + q * 32 + lane];
                const float xv[4] = {f.x, f.y, f.z, f.w};
#pragma unroll
                for (int r = 0; r < NR; ++r)
#pragma unroll
                  for (int c = 0; c < 4; ++c) {
                    d[mm][r] = fmaf(w4[r][c], xv[c], d[mm][r]);
                    if constexpr (SWIGLU) d2[mm][r] = fmaf(v4[r][c], xv[c], d2[mm][r]);
                  }
              }
            }
          }
#pragma unroll
          for (int mm = 0; mm < MT; ++mm)
#pragma unroll
            for (int r = 0; r < NR; ++r) {
              acc[mm][r] = fmaf(d[mm][r], sc[u], acc[mm][r]);
              if constexpr (SWIGLU) acc2[mm][r] = fmaf(d2[mm][r], sc2[u], acc2[mm][r]);
            }
        }
      }
    }
    if (p0 + MT >= r1) pdl_trigger();  // this block's weights all read (a no-op if early)
#pragma unroll
    for (int mm = 0; mm < MT; ++mm)
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        acc[mm][r] = warp_sum(acc[mm][r]);
        if constexpr (SWIGLU) acc2[mm][r] = warp_sum(acc2[mm][r]);
      }
    if (ks > 1) {
      if (lane == 0) {
#pragma unroll
        for (int mm = 0; mm < MT; ++mm)
#pragma unroll
          for (int r = 0; r < NR; ++r) {
            red[0][mm][r][warp] = acc[mm][r];
            red[1][mm][r][warp] = acc2[mm][r];
          }
      }
      __syncthreads();
      if (sub == 0) {
#pragma unroll
        for (int mm = 0; mm < MT; ++mm)
#pragma unroll
          for (int r = 0; r < NR; ++r) {
            float v = 0.0f, v2 = 0.0f;
            for (int j = 0; j < ks; ++j) {
              v += red[0][mm][r][warp + j];
              v2 += red[1][mm][r][warp + j];
            }
            acc[mm][r] = v;
            acc2[mm][r] = v2;
          }
      }
      __syncthreads();  // red is reused by the next pass
    }
    if (any && sub == 0 && lane == 0) {
#pragma unroll
      for (int mm = 0; mm < MT; ++mm) {
        if (mm < cnt) {
          float* y = a.y + (p0 + mm) * a.ldy + g * a.y_goff;
#pragma unroll
          for (int r = 0; r < NR; ++r)
            if (n0 + r < a.n) y[n0 + r] = SWIGLU ? silu(acc[mm][r]) * acc2[mm][r] : acc[mm][r];
        }
      }
    }
  }
}

// Tensor cores for 2 to 16 input rows (GemvArgs::tensor_cores). The tile kernel's FP32
// multiply-adds grow with the rows: at 8 rows it streams weights at 4-19% of copy (~11 TFLOP/s
// at V3's FP8 shapes, bench_cuda_fp8_gemm part 5, H200). Here each warp takes 16 outputs as the
// M of BF16 mma.sync m16n8k16 and the rows as N (NT tiles of 8), its share of K in 128-wide
// blocks. A lane loads 16 bytes of each of its two weight rows (g, g + 8) at k = 4 lanes'
// chunks apart, straight into A fragments: the mma's K order is permuted (logical k 2t, 2t + 1,
// 2t + 8, 2t + 9 of a step are the lane's next four k), the same for B, so the dot product is
// unchanged. The inputs are split in two BF16 parts, x = hi + lo (an mma each), which keeps ~16
// of F32's 24 bits; FP8 weights become BF16 exactly, their block scale applied per 128-k block.
// Chunks past K (K a multiple of the chunk, not of 128) and outputs past n (the last read
// again, never written) are zeros. One group a blockIdx.y: W_UV's heads, inputs and outputs of
// their own. OT: tiles of 16 outputs a warp (launch_mma). Not the bits of the F32 kernels: a
// row batched no longer decodes as alone. At 8 rows 44-68% of copy at V3's FP8 shapes and
// 36-50% at V2-Lite's BF16 ones (14% at kv_a's 576 outputs), 28-40% at 16 (part 5, 002fd9f).
template <WType T, bool SWIGLU, int NT, int OT>
__global__ void __launch_bounds__(kWarps * 32, 2)
    gemv_mma_kernel(const GemvArgs a, const int ks, const int flags) {
  constexpr int CH = WTraits<T>::kChunk, ES = WTraits<T>::kSize;
  constexpr int KW = 4 * CH;     // k a window: the chunks of the 4 lanes of a row
  constexpr int WB = 128 / KW;   // windows a 128-k block
  constexpr int STEPS = CH / 4;  // mma k-steps a window
  // A tiles a warp: SwiGLU's two weights over the same 16 outputs, else OT tiles of 16 outputs
  // each, which share every input fragment.
  constexpr int NA = SWIGLU ? 2 : OT, OUTS = SWIGLU ? 16 : 16 * OT;
  __shared__ float red[kWarps][NA][NT * 4][32];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4, sub = warp % ks;
  const int64_t grp = blockIdx.y;
  const int64_t n0 = (int64_t(blockIdx.x) * (kWarps / ks) + warp / ks) * OUTS;
  const bool valid = n0 < a.n;
  const int64_t K = a.w.k, nkb = valid ? ceil_div(K, int64_t(128)) : 0, row_bytes = K * ES;
  const int64_t kb0 = sub * nkb / ks, kb1 = (sub + 1) * nkb / ks;
  const int64_t last = a.n - 1, wr = grp * a.w_group_rows + a.w_row0;
  // Not row_ptrs() (64-bit divisions by the block sizes, four calls a warp): with it V3 dims x
  // 4 layers ran b=8 at 3,229 tok/s and b=16 at 3,775, against 3,312 / 3,312 and 4,084 / 4,081
  // without (H200, c10d5ea against the tree after it, one call each).
  const char* wrow[NA][2];  // tile i's rows g and g + 8 (the last output past n)
  const float* srow[NA] = {};
  const int64_t scols = ceil_div(K, int64_t(128));
#pragma unroll
  for (int i = 0; i < NA; ++i) {
    const int64_t t0 = SWIGLU ? n0 : n0 + 16 * i;  // the tile's first output
    const char* base = static_cast<const char*>(SWIGLU && i == 1 ? a.w2 : a.w.w);
    wrow[i][0] = base + (wr + min(t0 + g, last)) * row_bytes;
    wrow[i][1] = base + (wr + min(t0 + g + 8, last)) * row_bytes;
    if constexpr (T == WType::E4M3) {  // a tile's 16 rows share a scale row (launch_mma)
      const float* scale = SWIGLU && i == 1 ? a.scale2 : a.w.scale;
      srow[i] = scale + (wr + min(t0, last)) / a.w.bn * scols;
    }
  }
  // Block kb's weights: zeros past K or past this warp's last block.
  const auto load_block = [&](uint4(&w)[NA][WB][2], int64_t kb) {
#pragma unroll
    for (int u = 0; u < WB; ++u) {
      const int64_t k = kb * 128 + u * KW + t * CH;
      const bool in = kb < kb1 && k < K;
#pragma unroll
      for (int i = 0; i < NA; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          w[i][u][h] = in ? load_weight(wrow[i][h] + k * ES, flags) : make_uint4(0, 0, 0, 0);
    }
  };
  pdl_wait();
  uint4 w[NA][WB][2];
  load_block(w, kb0);
  const float* xr[NT];
  bool xok[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    xok[nt] = nt * 8 + g < a.m;
    xr[nt] = a.x + grp * a.x_goff + (xok[nt] ? nt * 8 + g : 0) * a.ldx;
  }
  float c[NA][NT][4] = {};
  // c += block kb's products (its weights in w), times its scale.
  const auto use_block = [&](int64_t kb) {
    float blk[NA][NT][4] = {};  // this block's sums, before its scale
#pragma unroll
    for (int u = 0; u < WB; ++u) {
      const int64_t k0 = kb * 128 + u * KW + t * CH;
#pragma unroll
      for (int j = 0; j < STEPS; ++j) {
        const int64_t k = k0 + 4 * j;
        uint32_t bh[NT][2], bl[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const float4 f = xok[nt] && k0 < K ? __ldg(reinterpret_cast<const float4*>(xr[nt] + k))
                                             : make_float4(0, 0, 0, 0);
          // hi: x rounded to BF16; lo: what it left, rounded again.
          bh[nt][0] = pack_bf16(f.x, f.y);
          bh[nt][1] = pack_bf16(f.z, f.w);
          bl[nt][0] = pack_bf16(f.x - __uint_as_float(bh[nt][0] << 16),
                                f.y - __uint_as_float(bh[nt][0] & 0xffff0000u));
          bl[nt][1] = pack_bf16(f.z - __uint_as_float(bh[nt][1] << 16),
                                f.w - __uint_as_float(bh[nt][1] & 0xffff0000u));
        }
#pragma unroll
        for (int i = 0; i < NA; ++i) {
          uint32_t af[4];
          const uint4 w0 = w[i][u][0], w8 = w[i][u][1];
          if constexpr (T == WType::BF16) {
            const uint32_t q0[4] = {w0.x, w0.y, w0.z, w0.w};
            const uint32_t q8[4] = {w8.x, w8.y, w8.z, w8.w};
            af[0] = q0[2 * j];
            af[1] = q8[2 * j];
            af[2] = q0[2 * j + 1];
            af[3] = q8[2 * j + 1];
          } else {
            float f0[4], f8[4];  // E4M3 values are BF16 values: exact
            decode_quad<T>(w0, j, f0);
            decode_quad<T>(w8, j, f8);
            af[0] = pack_bf16(f0[0], f0[1]);
            af[1] = pack_bf16(f8[0], f8[1]);
            af[2] = pack_bf16(f0[2], f0[3]);
            af[3] = pack_bf16(f8[2], f8[3]);
          }
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            mma(blk[i][nt], af, bh[nt][0], bh[nt][1]);
            mma(blk[i][nt], af, bl[nt][0], bl[nt][1]);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < NA; ++i) {
      const float sc = T == WType::E4M3 ? __ldg(srow[i] + kb) : 1.0f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) c[i][nt][e] = fmaf(blk[i][nt][e], sc, c[i][nt][e]);
    }
  };
  // Each block's weights are loaded once the block before is used. Loading them while it was
  // used (a trial, into a second set of registers) was slower at 2 and 16 rows (V3 dims x 4 layers
  // FP8 b=2 1,071 / 1,070 tok/s against 1,126 / 1,123, b=16 4,000 / 3,987 against 4,098 / 4,123;
  // H200, alternating in one call).
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    use_block(kb);
    if (kb + 1 < kb1) load_block(w, kb + 1);
  }
  pdl_trigger();  // this warp's weights all read
  if (ks > 1) {   // the ks warps of an output tile summed in order
#pragma unroll
    for (int i = 0; i < NA; ++i)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) red[warp][i][nt * 4 + e][lane] = c[i][nt][e];
    __syncthreads();
    if (sub == 0) {
#pragma unroll
      for (int i = 0; i < NA; ++i)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float v = 0.0f;
            for (int j = 0; j < ks; ++j) v += red[warp + j][i][nt * 4 + e][lane];
            c[i][nt][e] = v;
          }
    }
  }
  // C fragment of A tile i: outputs g (e 0, 1) and g + 8 (e 2, 3) of its 16, rows 2t and
  // 2t + 1 of row tile nt.
  if (!valid || sub != 0) return;
  float* y = a.y + grp * a.y_goff;
#pragma unroll
  for (int i = 0; i < (SWIGLU ? 1 : NA); ++i)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = nt * 8 + 2 * t + (e & 1), out = n0 + 16 * i + g + (e >= 2 ? 8 : 0);
        if (row < a.m && out < a.n) {
          const float v = SWIGLU ? silu(c[0][nt][e]) * c[NA - 1][nt][e] : c[i][nt][e];
          y[row * a.ldy + out] = v;
        }
      }
}

int sm_count() {
  static const int count = [] {
    int dev = 0, c = 0;
    DSV3_CUDA_CHECK(cudaGetDevice(&dev));
    DSV3_CUDA_CHECK(cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, dev));
    return std::max(c, 1);
  }();
  return count;
}

// Shared memory one block may opt in to (227 KB on Hopper).
size_t block_smem_optin() {
  static const size_t bytes = [] {
    int dev = 0, b = 0;
    DSV3_CUDA_CHECK(cudaGetDevice(&dev));
    DSV3_CUDA_CHECK(cudaDeviceGetAttribute(&b, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return size_t(b);
  }();
  return bytes;
}

int g_split_k = 0;           // gemv_split_k: 0 = split_k()'s own choice
int g_rows_block_warps = 2;  // gemv_rows_block_warps
bool g_tile = true;          // gemv_allow_tile
int g_tile_pass = 8;         // gemv_tile_pass_rows
int g_rows_chunks = 1;       // gemv_rows_batch
bool g_rows_per_warp = true;

// Whether p suits the kernels' 16-byte loads.
bool aligned(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

template <WType T, bool SWIGLU, int NT, int OT>
void launch_mma_grid(dim3 grid, const GemvArgs& a, int ks, cudaStream_t s) {
  launch_pdl(gemv_mma_kernel<T, SWIGLU, NT, OT>, grid, kWarps * 32, 0, s, a, ks, g_gemv_flags);
}

// Whether an FP8 weight's outputs come in groups of NR rows that share a scale row.
bool rows_share_scales(const GemvArgs& a, int nr) {
  return a.w.bn % nr == 0 && a.w_row0 % nr == 0 && a.w_group_rows % nr == 0;
}

// gemv_mma_kernel for what it takes (GemvArgs::tensor_cores, 2 to 16 rows without row lists,
// FP8 in 128-wide blocks whose rows a tile of 16 outputs shares), where the 16-byte loads
// suit the operands (launch_type's `vec`); false: nothing launched.
template <WType T>
bool launch_mma(const GemvArgs& a, cudaStream_t s) {
  if constexpr (T != WType::BF16 && T != WType::E4M3) {
    return false;
  } else {
    if (!a.tensor_cores || a.m < 2 || a.m > 16 || a.offsets || a.active || a.x_rows) return false;
    if (T == WType::E4M3 && (a.w.bk != 128 || a.scale_group_rows != 0 || !rows_share_scales(a, 16)))
      return false;
    // FP8 without SwiGLU (whose two weights already share the inputs): two tiles of 16 outputs
    // a warp. At 8 rows (part 5) o_proj 2,559 GB/s against 1,926, down 2,570 against 1,922,
    // q_b 1,703 against 1,414; V3 dims x 4 layers b=8 3,315 / 3,314 tok/s against 3,118 /
    // 3,157 (with BF16's lm_head on two tiles as well). BF16 stays at one: V2-Lite b=8 1,163
    // against 1,200, its o_proj 1,303 GB/s against 1,423 (two tiles spill registers there).
    constexpr int kOt = T == WType::E4M3 ? 2 : 1;
    const int64_t outs = a.w2 ? 16 : 16 * kOt;  // a warp's
    // Split K while fewer than 16 warps an SM would run and each warp keeps a 128-k block.
    const int64_t tiles = ceil_div(a.n, outs), blocks = ceil_div(a.w.k, int64_t(128));
    const int64_t want = 16 * int64_t(sm_count());
    int ks = 1;
    while (ks < kWarps && tiles * a.groups * ks < want && blocks >= 2 * ks) ks *= 2;
    const dim3 grid(unsigned(ceil_div(tiles, kWarps / ks)), unsigned(a.groups));
    if (a.w2)
      a.m > 8 ? launch_mma_grid<T, true, 2, 1>(grid, a, ks, s)
              : launch_mma_grid<T, true, 1, 1>(grid, a, ks, s);
    else
      a.m > 8 ? launch_mma_grid<T, false, 2, kOt>(grid, a, ks, s)
              : launch_mma_grid<T, false, 1, kOt>(grid, a, ks, s);
    return true;
  }
}

// Warps per output: double while fewer than warps_per_sm warps per SM would run and each warp
// still gets at least one 16-byte chunk per lane. The general kernel wants 48 (3/4 of what an
// H100 SM holds). The one-row kernel, whose warps each stream NR rows, wants 12: at V3's FP8
// shapes (bench_cuda_fp8_gemm part 4, H200) no split beat none once 12 warps per SM ran
// (o_proj 3,115 GB/s unsplit vs 2,848 at the 4-way split 48 asked for; q_b 2,436 vs 2,001),
// and q_a|kv_a's 4 warps per SM did best split 4 ways (1,590 vs 1,186 unsplit, 1,305 at 8).
int split_k(const GemvArgs& a, int64_t slots, int chunk, int rows_per_warp, int warps_per_sm) {
  const int64_t want = int64_t(warps_per_sm) * sm_count();
  const int64_t warps = ceil_div(a.n, rows_per_warp) * slots;
  if (g_split_k > 0) return std::min(g_split_k, kWarps);
  int ks = 1;
  while (ks < kWarps && warps * ks < want && a.w.k >= int64_t(2 * ks) * 32 * chunk) ks *= 2;
  return ks;
}

int shift_of(int bk) {
  for (int sh = 0; sh < 31; ++sh)
    if (bk == (1 << sh)) return sh;
  return -1;
}

// SwiGLU already streams two weights per output: 2 outputs per warp, else 4.
template <bool SWIGLU>
constexpr int kRowsPerWarp = SWIGLU ? 2 : 4;

// Groups with inputs of their own and every row (W_UV: a head's latent output times its
// 128 x 512 slice of kv_b), which take the tile kernel at any batch (after the tensor-core
// kernel, up to 16 rows with GemvArgs::tensor_cores): cuBLASLt has no grouped
// GEMM for them (the engine runs them on mla_uv_tc over gemv_max_rows rows unless asked not
// to), and the general kernel re-reads 32x the weight bytes of input per pass of 8 rows.
bool per_group_inputs(const GemvArgs& a) {
  return a.groups > 1 && !a.offsets && !a.active && a.x_goff > 0;
}

template <WType T, bool SWIGLU>
void launch_rows(const GemvArgs& a, cudaStream_t s) {
  constexpr int NR = kRowsPerWarp<SWIGLU>;
  const int64_t slots = a.active ? std::min<int64_t>(a.groups, a.m) : a.groups;
  const int ks = split_k(a, slots, WTraits<T>::kChunk, NR, 12);
  // Blocks of fewer warps spread a grid of under a wave more evenly over the SMs (224 blocks of
  // 8 warps for o_proj put 16 warps on 92 SMs and 8 on 40). Blocks of 2 (the default): V3 x 4
  // layers FP8 batch-1 decode 766 / 772 tok/s vs 742 / 743 with 8 and 764 with 1 (H200, one
  // call, alternating).
  const int warps = std::max(ks, std::clamp(g_rows_block_warps, 1, kWarps));
  const dim3 grid(unsigned(ceil_div(a.n, int64_t(warps / ks) * NR)), unsigned(slots));
  const auto launch = [&](auto kernel) {
    launch_pdl(kernel, grid, warps * 32, 0, s, a, ks, shift_of(a.w.bk), g_gemv_flags);
  };
  if constexpr (T == WType::E4M3) {  // the sweep's variants
    if (g_rows_chunks == 1)
      launch(gemv_rows_kernel<T, NR, SWIGLU, 1>);
    else if (g_rows_chunks == 4)
      launch(gemv_rows_kernel<T, NR, SWIGLU, 4>);
    else
      launch(gemv_rows_kernel<T, NR, SWIGLU>);
    return;
  }
  launch(gemv_rows_kernel<T, NR, SWIGLU>);
}
// False (nothing launched) when the tile of inputs would not fit in a block's shared memory:
// never on Hopper (at most 128 KB: FP8 split 8 ways), but then the general kernel takes it.
// Where that splits as the rows kernel does (without SwiGLU and with n a multiple of 4, always)
// it sums each chunk in the same order, so the bits are the same (main's tree ran FP8 40 x 7168
// there under a 96 KB cap and passed the batch test); with SwiGLU they can differ.
template <WType T, bool SWIGLU, int MT>
bool launch_tile(const GemvArgs& a, cudaStream_t s) {
  constexpr int NR = kRowsPerWarp<SWIGLU>;
  const int64_t slots = a.active ? std::min<int64_t>(a.groups, a.m) : a.groups;
  const int ks = split_k(a, slots, WTraits<T>::kChunk, NR, 12);  // launch_rows' split
  const size_t smem = size_t(MT) * kTileSteps<MT> * ks * 32 * WTraits<T>::kChunk * sizeof(float);
  // Up to all a block may have (one block an SM then; a 96 KB cap sent FP8 40 x 7168, split 8
  // ways, to the general kernel from 3 rows).
  const size_t red = sizeof(float) * 2 * MT * NR * kWarps;  // the kernel's static array
  if (smem + red > block_smem_optin()) return false;
  const auto kernel = gemv_tile_kernel<T, NR, SWIGLU, MT>;
  if (smem > 48 * 1024)
    DSV3_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(unsigned(ceil_div(a.n, int64_t(kWarps / ks) * NR)), unsigned(slots));
  launch_pdl(kernel, grid, kWarps * 32, smem, s, a, ks, shift_of(a.w.bk), g_gemv_flags);
  return true;
}

template <WType T, int MT, bool SWIGLU>
void launch_vec(const GemvArgs& a, bool vec, cudaStream_t s) {
  // With an active list at most min(groups, rows) groups have work.
  const int64_t slots = a.active ? std::min<int64_t>(a.groups, a.m) : a.groups;
  const int ks = split_k(a, slots, vec ? WTraits<T>::kChunk : 1, 1, 48);
  const dim3 grid(unsigned(ceil_div(a.n, kWarps / ks)), unsigned(slots));
  const int bk_shift = shift_of(a.w.bk);
  if (vec)
    launch_pdl(gemv_kernel<T, MT, SWIGLU, true>, grid, kWarps * 32, 0, s, a, ks, bk_shift,
               g_gemv_flags);
  else
    launch_pdl(gemv_kernel<T, MT, SWIGLU, false>, grid, kWarps * 32, 0, s, a, ks, bk_shift,
               g_gemv_flags);
}

template <WType T, int MT>
bool launch_tile_sw(const GemvArgs& a, cudaStream_t s) {
  return a.w2 ? launch_tile<T, true, MT>(a, s) : launch_tile<T, false, MT>(a, s);
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
  bool vec = a.w.k % CH == 0 && a.ldx % 4 == 0 && a.x_goff % 4 == 0 && aligned(a.x) &&
             aligned(a.w.w) && (!a.w2 || aligned(a.w2));
  if (T == WType::E4M3) vec = vec && a.w.bk % CH == 0;
  // Rows per pass: the weight is re-read (mostly from L2) once per MT rows of a group. Grouped
  // rows (experts) are sized by their mean per launched group: at batch 1 each expert has one
  // row, and MT = 4 would cost registers (occupancy) for nothing.
  const int64_t slots = a.active ? std::min<int64_t>(a.groups, a.m) : a.groups;
  const int64_t rows = a.offsets ? ceil_div(a.m, std::max<int64_t>(slots, 1)) : a.m;
  const bool rows_ok =
      T != WType::E4M3 || rows_share_scales(a, a.w2 ? kRowsPerWarp<true> : kRowsPerWarp<false>);
  const bool heads = per_group_inputs(a);
  if (vec && launch_mma<T>(a, s)) return;
  if (rows <= 1 && vec && rows_ok && g_rows_per_warp) {
    if (a.w2)
      launch_rows<T, true>(a, s);
    else
      launch_rows<T, false>(a, s);
  } else if ((rows <= 16 || heads) && vec && rows_ok && g_rows_per_warp && g_tile &&
             (rows <= 2                       ? launch_tile_sw<T, 2>(a, s)
              : rows <= 4 || g_tile_pass <= 4 ? launch_tile_sw<T, 4>(a, s)
                                              : launch_tile_sw<T, 8>(a, s))) {
    return;
  } else if (rows <= 1)
    launch_mt<T, 1>(a, vec, s);
  else if (rows <= 2)
    launch_mt<T, 2>(a, vec, s);
  else if (rows <= 4)
    launch_mt<T, 4>(a, vec, s);
  else
    launch_mt<T, 8>(a, vec, s);
}

}  // namespace

void gemv_split_k(int ks) {
  g_split_k = ks;
}

int gemv_rows_block_warps(int warps) {
  return std::exchange(g_rows_block_warps, warps);
}

void gemv_allow_tile(bool on) {
  g_tile = on;
}

int gemv_rows_batch(int chunks) {
  return std::exchange(g_rows_chunks, chunks);
}

int gemv_tile_pass_rows(int rows) {
  return std::exchange(g_tile_pass, rows);
}

int gemv_flags(int flags) {
  return std::exchange(g_gemv_flags, flags);
}

void gemv_allow_rows_per_warp(bool on) {
  g_rows_per_warp = on;
}

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
