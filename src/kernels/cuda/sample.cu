// Token sampling on the GPU: infer::Sampler's steps 3-7 (temperature, top-k, top-p, min-p, the
// draw) for one row of logits per block, so a decode step copies back token ids instead of
// [rows, V] logits. The kept sets follow the Sampler's rules exactly (top-k keeps ties with the
// k-th value; top-p keeps the smallest most-likely prefix, ties at the boundary by ascending
// id; min-p in float64); the masses are sums of the Sampler's own exp_nonpos(logit - max)
// (core/exp_nonpos.h), in 2^-46 fixed point (integer atomics: every run adds the same bits, so
// a seed gives the same tokens run after run), where the Sampler sums in float64. The two agree
// unless a top-p boundary or the draw lands within those sums' rounding of a CDF step: at most
// V · 2^-46 of the largest weight from fixed point, plus a last-bit difference in a weight
// where nvcc and the host compiler contract the polynomial's FMAs differently.
// tests/cuda/test_sample_gpu.cpp checks every draw farther than 1e-6 of the mass from a step,
// token for token.
//
// A row is swept a few times from global memory (L2 for one row: V = 129,280 floats = 505 KiB):
// a scan (max, non-finite check), 4 radix passes of 8 bits for top-k's k-th value and 4 for
// top-p's boundary (each a histogram over the still-possible keys), and the draw.
#include <cuda_runtime.h>

#include <cstdint>

#include "core/exp_nonpos.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.cuh"

namespace dsv3::cuda {

namespace {

constexpr int kThreads = 1024, kWarps = kThreads / 32;
constexpr double kFixed = 70368744177664.0;  // 2^46: a weight ≤ 1 in fixed point
constexpr uint32_t kTieAll = 0xffffffffu;

__device__ __forceinline__ uint64_t fixed_weight(float w) {
  return uint64_t(double(w) * kFixed);
}

// order_key's inverse (order_key: decode.cuh).
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Every thread gets op over all NT threads' v, combined in a fixed order (deterministic).
template <int NT = kThreads, class T, class Op>
__device__ T block_reduce(T v, Op op, T* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // smem may still be read by the previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = smem[0];
  for (int i = 1; i < NT / 32; ++i) v = op(v, smem[i]);
  return v;
}

// Exclusive prefix sum of v over threads in thread order; *total gets the sum of all.
__device__ uint64_t block_exclusive_scan(uint64_t v, uint64_t* smem, uint64_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint64_t inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t u = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += u;
  }
  __syncthreads();
  if (lane == 31) smem[warp] = inc;
  __syncthreads();
  uint64_t before = 0, all = 0;
  for (int i = 0; i < kWarps; ++i) {
    if (i < warp) before += smem[i];
    all += smem[i];
  }
  *total = all;
  return before + inc - v;
}

// A row's logits after the temperature, divided as the Sampler divides them (x / T, IEEE).
struct Row {
  const float* x;
  int64_t v;
  bool scaled;
  float t;
  __device__ float at(int64_t i) const { return scaled ? x[i] / t : x[i]; }
};

// What survives so far: finite, key ≥ k_min (top-k), then top-p's boundary (keys above p_key,
// or equal with id ≤ p_tie), then min-p.
struct Kept {
  uint32_t k_min = 0, p_key = 0, p_tie = kTieAll;
  bool top_p = false, min_p = false;
  double log_min_p = 0, min_p_v = 0;
  float mx = 0;
  __device__ bool operator()(float v, uint32_t key, int64_t i) const {
    if (!(v > -INFINITY) || key < k_min) return false;
    if (top_p && (key < p_key || (key == p_key && uint32_t(i) > p_tie))) return false;
    if (min_p) {
      const double d = double(v) - double(mx);
      if (!(d >= log_min_p - 1e-9 && exp(d) >= min_p_v)) return false;
    }
    return true;
  }
};

// Radix select, 8 bits a pass from the top: the key where the running total of `weight` over
// candidates in descending key order first reaches `target`; *before gets the total of the
// candidates with greater keys. hist: [kWarps][256] (one histogram per warp: fewer collisions).
template <class Cand, class Weight>
__device__ uint32_t radix_select(const Row& r, Cand cand, Weight weight, double target,
                                 uint64_t* hist, uint64_t* before) {
  __shared__ uint32_t s_digit;
  __shared__ uint64_t s_before;
  uint32_t prefix = 0;
  uint64_t acc = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < kWarps * 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    uint64_t* h = hist + (threadIdx.x >> 5) * 256;
    const uint32_t hi_mask = shift == 24 ? 0u : ~0u << (shift + 8);
    for (int64_t i = threadIdx.x; i < r.v; i += kThreads) {
      const float v = r.at(i);
      const uint32_t key = order_key(v);
      if ((key & hi_mask) != prefix || !cand(v, key, i)) continue;
      atomicAdd(reinterpret_cast<unsigned long long*>(&h[(key >> shift) & 255u]),
                static_cast<unsigned long long>(weight(v)));
    }
    __syncthreads();
    if (threadIdx.x < 256) {
      uint64_t s = 0;
      for (int w = 0; w < kWarps; ++w) s += hist[w * 256 + threadIdx.x];
      hist[threadIdx.x] = s;  // warp 0's row now holds the sums (each thread its own bin)
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int d = 255;
      for (; d > 0; --d) {
        if (double(acc + hist[d]) >= target) break;
        acc += hist[d];
      }
      s_digit = uint32_t(d);
      s_before = acc;
    }
    __syncthreads();
    prefix |= s_digit << shift;
    acc = s_before;
    __syncthreads();
  }
  *before = acc;
  return prefix;
}

constexpr int kBadShift = 40;  // a scan's counts: bad in bits kBadShift and up, finite below

// The first sweep over ids [lo, hi) of row x by this block (NT threads): the max and the
// lowest id holding it, as one key ((max, lowest id), -0 tying +0 as on the CPU), and NaN / +inf
// and the finite count as one sum; float4 loads (unrolled, so several are in flight) where the
// row allows. lo is a multiple of 4. Two scalar sweeps had taken 36 us for one V3 row in one
// block (ncu); this sweep, 12.4.
template <int NT>
__device__ void scan_row(const float* x, int64_t lo, int64_t hi, uint64_t* best_out,
                         uint64_t* counts_out, uint64_t* s_u) {
  float mx = -INFINITY;
  int arg = INT32_MAX, bad = 0, finite = 0;
  const auto see = [&](float a, int64_t i) {
    if (a > mx) {  // ids ascend per thread: the first of equal maxima stays
      mx = a;
      arg = int(i);
    }
    bad |= !(a < INFINITY);
    finite += a > -INFINITY;
  };
  int64_t tail = lo;
  if ((reinterpret_cast<uintptr_t>(x) & 15) == 0) {
    const auto* x4 = reinterpret_cast<const float4*>(x);
    tail = lo + (hi - lo) / 4 * 4;
#pragma unroll 4
    for (int64_t j = lo / 4 + threadIdx.x; j < tail / 4; j += NT) {
      const float4 f = __ldg(x4 + j);
      see(f.x, 4 * j);
      see(f.y, 4 * j + 1);
      see(f.z, 4 * j + 2);
      see(f.w, 4 * j + 3);
    }
  }
  for (int64_t i = tail + threadIdx.x; i < hi; i += NT) see(x[i], i);
  *best_out = block_reduce<NT>((uint64_t(order_key(mx + 0.0f)) << 32) | uint32_t(~arg),
                               [](uint64_t a, uint64_t b) { return a > b ? a : b; }, s_u);
  *counts_out = block_reduce<NT>((uint64_t(bad) << kBadShift) + uint64_t(finite),
                                 [](uint64_t a, uint64_t b) { return a + b; }, s_u);
}

constexpr int kScanThreads = 256;

// sample_tokens' split first sweep: block (row, part) scans its part of the row.
__global__ void __launch_bounds__(kScanThreads)
    scan_kernel(const float* logits, int64_t v, int64_t ld, uint64_t* scan) {
  pdl_enter();
  __shared__ uint64_t s_u[kScanThreads / 32];
  const int64_t per = (v + kSampleScanBlocks - 1) / kSampleScanBlocks / 4 * 4 + 4;
  const int64_t lo = min(v, blockIdx.y * per), hi = min(v, lo + per);
  uint64_t best, counts;
  scan_row<kScanThreads>(logits + blockIdx.x * ld, lo, hi, &best, &counts, s_u);
  if (threadIdx.x == 0) {
    uint64_t* out = scan + (blockIdx.x * kSampleScanBlocks + blockIdx.y) * 2;
    out[0] = best;
    out[1] = counts;
  }
}

__global__ void __launch_bounds__(kThreads)
    sample_kernel(const float* logits, int64_t v, int64_t ld, const SampleParams* params,
                  const uint64_t* scan, int32_t* tokens) {
  pdl_enter();
  extern __shared__ uint64_t hist[];  // [kWarps][256]
  __shared__ int s_i[kWarps];
  __shared__ uint64_t s_u[kWarps];
  __shared__ uint32_t s_tie;
  const SampleParams p = params[blockIdx.x];
  const float* x = logits + blockIdx.x * ld;

  uint64_t best, counts;
  if (scan) {  // the parts' results, combined in part order
    const uint64_t* in = scan + blockIdx.x * kSampleScanBlocks * 2;
    const bool mine = threadIdx.x < kSampleScanBlocks;
    best = block_reduce<kThreads>(
        mine ? in[2 * threadIdx.x] : uint64_t(0),
        [](uint64_t a, uint64_t b) { return a > b ? a : b; }, s_u);
    counts = block_reduce<kThreads>(
        mine ? in[2 * threadIdx.x + 1] : uint64_t(0), [](uint64_t a, uint64_t b) { return a + b; },
        s_u);
  } else {
    scan_row<kThreads>(x, 0, v, &best, &counts, s_u);
  }
  const bool any_bad = (counts >> kBadShift) != 0;
  const int finite = int(counts & ((uint64_t(1) << kBadShift) - 1));
  if (any_bad || finite == 0) {
    if (threadIdx.x == 0) tokens[blockIdx.x] = any_bad ? kSampleNonFinite : kSampleAllMasked;
    return;
  }
  float mx = key_value(uint32_t(best >> 32));
  if (p.temperature == 0.0f) {  // greedy: the lowest id holding the max
    if (threadIdx.x == 0) tokens[blockIdx.x] = int(~uint32_t(best));
    return;
  }
  const Row r{x, v, p.temperature != 1.0f, p.temperature};
  if (p.temperature != 1.0f) {
    mx /= p.temperature;  // division by a positive number keeps the max the max
    if (!(mx < INFINITY)) {
      if (threadIdx.x == 0) tokens[blockIdx.x] = kSampleOverflow;
      return;
    }
  }
  Kept kept;
  kept.mx = mx;
  const auto weight = [mx](float a) { return fixed_weight(exp_nonpos(a - mx)); };
  uint64_t before = 0;
  if (p.top_k > 0 && p.top_k < finite) {
    const Kept none = kept;
    kept.k_min = radix_select(
        r, none, [](float) { return uint64_t(1); }, double(p.top_k), hist, &before);
  }
  if (p.top_p < 1.0f) {
    // Total mass of the candidates, then the boundary key and how many of its ties stay.
    uint64_t z = 0;
    for (int64_t i = threadIdx.x; i < v; i += kThreads) {
      const float a = r.at(i);
      if (kept(a, order_key(a), i)) z += weight(a);
    }
    z = block_reduce(
        z, [](uint64_t a, uint64_t b) { return a + b; }, s_u);
    const double target = double(p.top_p) * double(z);
    const uint32_t key = radix_select(r, kept, weight, target, hist, &before);
    int ties = 0;
    for (int64_t i = threadIdx.x; i < v; i += kThreads) {
      const float a = r.at(i);
      ties += order_key(a) == key && kept(a, key, i);
    }
    ties = block_reduce(
        ties, [](int a, int b) { return a + b; }, s_i);
    const uint64_t w_tie = weight(key_value(key));
    int keep = 0;  // ties taken in ascending id order while the mass before them is < target
    for (uint64_t cum = before; keep < ties && double(cum) < target; cum += w_tie) ++keep;
    if (threadIdx.x == 0) s_tie = kTieAll;
    if (keep < ties) {
      // The id of the keep-th tie: each thread counts the ties in its run of ids.
      const int64_t per = (v + kThreads - 1) / kThreads, lo = threadIdx.x * per;
      const int64_t hi = lo + per < v ? lo + per : v;
      uint64_t mine = 0;
      for (int64_t i = lo; i < hi; ++i) {
        const float a = r.at(i);
        mine += order_key(a) == key && kept(a, key, i);
      }
      uint64_t all = 0;
      const uint64_t start = block_exclusive_scan(mine, s_u, &all);
      if (start < uint64_t(keep) && uint64_t(keep) <= start + mine) {
        uint64_t seen = start;
        for (int64_t i = lo; i < hi; ++i) {
          const float a = r.at(i);
          if (order_key(a) == key && kept(a, key, i) && ++seen == uint64_t(keep)) {
            s_tie = uint32_t(i);
            break;
          }
        }
      }
    }
    __syncthreads();
    kept.top_p = true;
    kept.p_key = key;
    kept.p_tie = s_tie;
  }
  if (p.min_p > 0.0f) {
    kept.min_p = true;
    kept.min_p_v = double(p.min_p);
    kept.log_min_p = log(double(p.min_p));
  }

  // The draw: the first kept id (ascending) whose inclusive mass exceeds u · total.
  const int64_t per = (v + kThreads - 1) / kThreads, lo = threadIdx.x * per;
  const int64_t hi = lo + per < v ? lo + per : v;
  uint64_t mine = 0;
  int last = -1;
  for (int64_t i = lo; i < hi; ++i) {
    const float a = r.at(i);
    if (!kept(a, order_key(a), i)) continue;
    const uint64_t w = weight(a);
    mine += w;
    if (w > 0) last = int(i);
  }
  uint64_t total = 0;
  const uint64_t start = block_exclusive_scan(mine, s_u, &total);
  const double target = p.u * double(total);
  int pick = INT32_MAX;
  if (double(start) <= target && double(start + mine) > target) {
    uint64_t cum = start;
    for (int64_t i = lo; i < hi; ++i) {
      const float a = r.at(i);
      if (!kept(a, order_key(a), i)) continue;
      cum += weight(a);
      if (double(cum) > target) {
        pick = int(i);
        break;
      }
    }
  }
  pick = block_reduce(
      pick, [](int a, int b) { return min(a, b); }, s_i);
  last = block_reduce(
      last, [](int a, int b) { return max(a, b); }, s_i);
  // Rounding can put the target at the very end: the last kept token, as the Sampler does.
  if (threadIdx.x == 0) tokens[blockIdx.x] = pick != INT32_MAX ? pick : last;
}

}  // namespace

void sample_tokens(const float* logits, int64_t rows, int64_t v, int64_t ld,
                   const SampleParams* params, int32_t* tokens, uint64_t* scan, cudaStream_t s) {
  if (rows == 0) return;
  if (scan) {
    launch_pdl(scan_kernel, dim3(unsigned(rows), unsigned(kSampleScanBlocks)), kScanThreads, 0, s,
               logits, v, ld, scan);
    DSV3_CUDA_CHECK_LAUNCH();
  }
  constexpr size_t smem = sizeof(uint64_t) * kWarps * 256;  // 64 KiB of histograms
  // Per launch, as the other kernels over 48 KiB: the attribute belongs to the current device.
  DSV3_CUDA_CHECK(
      cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  launch_pdl(sample_kernel, unsigned(rows), kThreads, smem, s, logits, v, ld, params,
             static_cast<const uint64_t*>(scan), tokens);
  DSV3_CUDA_CHECK_LAUNCH();
}

}  // namespace dsv3::cuda
