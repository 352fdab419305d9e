// Absorbed multi-head latent attention over the latent cache (MODEL_SPEC §3).
//  mla_absorb_q:   qc[t, h] = [q_nope[t, h]·W_UK[h] ; RoPE(q_pe[t, h])]   (W_UK: rows of kv_b)
//  mla_attention:  per query row, its sequence's cache rows [c_kv ; k_pe] 0 .. position are
//                  scored against qc, softmax (online, f32), and c_kv summed with those weights.
//                  Blocks take 8 heads (one warp each) and one split of the keys, so every key
//                  tile read into shared memory serves 8 heads; splits are merged afterwards
//                  (flash-decoding), which keeps the GPU busy when few rows decode long contexts.
// The output projection W_UV·o_lat is a grouped gemv (one group per head) in the engine.
//  mla_attention_tc: the same on the BF16 tensor cores, the heads of a row as the M dimension
//                  (blocks of 64 heads; up to 16 heads, kernels of their own; on wgmma on
//                  Hopper over BF16 and FP8 caches, else mma.sync, whose 16-head kernel takes
//                  BF16 only).
// Prefill runs the non-absorbed form instead (flash.cu).
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace dsv3::cuda {

namespace {

constexpr int kAbsorbRows = 8;  // query rows per block of mla_absorb_q
constexpr int kHeadsPerBlock = 8;
constexpr int kKeyTile = 32;

// The absorbed query's output: F32 or BF16 (one of the two non-null), and q_pe's RoPE.
struct AbsorbOut {
  float* qc;
  uint16_t* qcb;
  QueryRope rope;  // positions null: q_pe is copied as it is
  __device__ void put(int64_t i, float v) const {
    if (qcb)
      qcb[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    else
      qc[i] = v;
  }
};

// q_pe of query rows t0 .. t0 + rows of head h (rotated when asked) to the output's last dr
// columns, by the absorb blocks of the first column range.
__device__ __forceinline__ void put_query_pe(const float* q, int64_t heads, int64_t dn, int64_t dr,
                                             int64_t dc, int64_t h, int64_t t0, int rows,
                                             const AbsorbOut& out) {
  const int64_t dqk = dn + dr, dq = dc + dr, half = dr / 2;
  if (blockIdx.y == 0) {
    for (int64_t i = threadIdx.x; i < rows * half; i += blockDim.x) {
      const int64_t r = i / half, f = i % half;
      const float* src = q + ((t0 + r) * heads + h) * dqk + dn + 2 * f;
      float p[2] = {src[0], src[1]};
      if (out.rope.positions)
        rope_pair(p, float(out.rope.positions[t0 + r]), out.rope.inv_freq[f], out.rope.factor);
      const int64_t at = ((t0 + r) * heads + h) * dq + dc + 2 * f;
      out.put(at, p[0]);
      out.put(at + 1, p[1]);
    }
    if (dr % 2 != 0)  // an odd last element has no pair to rotate with (rope() leaves it too)
      for (int64_t r = threadIdx.x; r < rows; r += blockDim.x)
        out.put(((t0 + r) * heads + h) * dq + dc + dr - 1,
                q[((t0 + r) * heads + h) * dqk + dn + dr - 1]);
  }
}

// The absorb kernels' query rows t0 .. t0 + rows of head h: q_nope into shared memory (qs
// [rows][dn]), q_pe as put_query_pe puts it.
__device__ __forceinline__ void stage_query(const float* q, int64_t heads, int64_t dn, int64_t dr,
                                            int64_t dc, int64_t h, int64_t t0, int rows, float* qs,
                                            const AbsorbOut& out) {
  const int64_t dqk = dn + dr;
  for (int64_t i = threadIdx.x; i < rows * dn; i += blockDim.x) {
    const int64_t r = i / dn, j = i % dn;
    qs[r * dn + j] = q[((t0 + r) * heads + h) * dqk + j];
  }
  put_query_pe(q, heads, dn, dr, dc, h, t0, rows, out);
}

// Block (head, 32 latent columns, up to kAbsorbRows query rows): 32 columns × 8 slices of the
// nope dimension, each thread reading one column of every 8th W_UK row, then the 8 slices summed
// through shared memory. The fallback for rows that 16-byte loads cannot take.
constexpr int kAbsorbSlices = 8;

template <WType T>
__global__ void __launch_bounds__(32 * kAbsorbSlices)
    absorb_q_kernel(const float* q, int64_t n, int64_t heads, int64_t dn, int64_t dr, int64_t dv,
                    const DevWeight w, const AbsorbOut out) {
  pdl_enter();
  extern __shared__ float smem[];
  float* qs = smem;                      // [kAbsorbRows][dn]
  float* red = smem + kAbsorbRows * dn;  // [kAbsorbSlices][kAbsorbRows][32]
  const int64_t h = blockIdx.x, t0 = int64_t(blockIdx.z) * kAbsorbRows;
  const int rows = int(min(int64_t(kAbsorbRows), n - t0));
  const int64_t dc = w.k, dq = dc + dr;
  stage_query(q, heads, dn, dr, dc, h, t0, rows, qs, out);
  __syncthreads();
  const int cg = int(threadIdx.x) % 32, slice = int(threadIdx.x) / 32;
  const int64_t c0 = int64_t(blockIdx.y) * 32 + cg;
  const int64_t row0 = h * (dn + dv);  // W_UK[h] = kv_b rows row0 .. row0 + dn
  const int64_t scols = ceil_div(dc, w.bk);
  constexpr int ES = WTraits<T>::kSize;
  float acc[kAbsorbRows] = {};
  // The scale's column is fixed per thread, its row found by a 32-bit division: 64-bit
  // divisions per element made this kernel instruction-bound (31 us per call at V3 dims).
  const int scale_col = int(c0) / w.bk;
  if (c0 < dc) {
#pragma unroll 4
    for (int64_t i = slice; i < dn; i += kAbsorbSlices) {
      const int64_t wr = row0 + i;
      const char* wrow = static_cast<const char*>(w.w) + wr * dc * ES;
      float wv = load_one<T>(wrow, c0);
      if constexpr (T == WType::E4M3)
        wv *= __ldg(w.scale + int64_t(int(wr) / w.bn) * scols + scale_col);
#pragma unroll
      for (int r = 0; r < kAbsorbRows; ++r)
        if (r < rows) acc[r] = fmaf(qs[r * dn + i], wv, acc[r]);
    }
  }
  constexpr int kCols = 32;
#pragma unroll
  for (int r = 0; r < kAbsorbRows; ++r) red[(slice * kAbsorbRows + r) * kCols + cg] = acc[r];
  __syncthreads();
  for (int o = int(threadIdx.x); o < rows * kCols; o += int(blockDim.x)) {
    const int r = o / kCols, col = o % kCols;
    const int64_t c = int64_t(blockIdx.y) * kCols + col;
    if (c >= dc) continue;
    float sum = 0.0f;
    for (int sl = 0; sl < kAbsorbSlices; ++sl) sum += red[(sl * kAbsorbRows + r) * kCols + col];
    out.put(((t0 + r) * heads + h) * dq + c, sum);
  }
}

// mla_absorb_q over 16-byte-aligned kv_b rows: block (head, 32 chunks of 16 bytes = 512 FP8
// latent columns, up to R query rows); each thread decodes one chunk of every 8th W_UK row,
// U rows' loads in flight at once (at one query row all 16 of V3's: a thread holds 1 · CH
// accumulators), then the 8 slices are summed through shared memory in the same order as the
// kernel above. (That kernel's 4-byte loads ran at 0.4 TB/s: 20.7 us per layer at batch 1, V3
// dims, ncu; this one takes 8.8 us.)
template <WType T, int R>
__global__ void __launch_bounds__(32 * kAbsorbSlices)
    absorb_q_vec_kernel(const float* q, int64_t n, int64_t heads, int64_t dn, int64_t dr,
                        int64_t dv, const DevWeight w, const AbsorbOut out) {
  constexpr int CH = WTraits<T>::kChunk, ES = WTraits<T>::kSize, kCols = 32 * CH;
  constexpr int U = R == 1 ? 16 : 4;
  extern __shared__ float smem[];
  float* qs = smem;            // [R][dn]
  float* red = smem + R * dn;  // [kAbsorbSlices][kCols]
  const int64_t h = blockIdx.x, t0 = int64_t(blockIdx.z) * R;
  const int rows = int(min(int64_t(R), n - t0));
  const int64_t dc = w.k, dq = dc + dr;
  const int lane = int(threadIdx.x) % 32, slice = int(threadIdx.x) / 32;
  const int64_t c0 = int64_t(blockIdx.y) * kCols + lane * CH;
  const int64_t row0 = h * (dn + dv);  // W_UK[h] = kv_b rows row0 .. row0 + dn
  const int64_t scols = ceil_div(dc, w.bk);
  const int scale_col = int(c0) / w.bk;  // a chunk never crosses a block: bk % CH == 0
  const char* base = static_cast<const char*>(w.w) + c0 * ES;
  uint4 raw[U];
  float sc[U];
  const auto fetch = [&](int64_t i0) {  // rows i0, i0 + 8, ... of this thread's columns
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + u * kAbsorbSlices, wr = row0 + i;
      raw[u] = make_uint4(0, 0, 0, 0);
      sc[u] = 1.0f;
      if (i < dn && c0 < dc) {
        raw[u] = __ldg(reinterpret_cast<const uint4*>(base + wr * dc * ES));
        if constexpr (T == WType::E4M3)
          sc[u] = __ldg(w.scale + int64_t(int(wr) / w.bn) * scols + scale_col);
      }
    }
  };
  pdl_trigger();
  fetch(slice);  // the weights need wait neither for the kernels before nor for the barrier below
  pdl_wait();
  stage_query(q, heads, dn, dr, dc, h, t0, rows, qs, out);
  __syncthreads();
  float acc[R][CH];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < CH; ++c) acc[r][c] = 0.0f;
  if (c0 < dc) {
    for (int64_t i0 = slice; i0 < dn; i0 += kAbsorbSlices * U) {
      if (i0 != slice) fetch(i0);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = i0 + u * kAbsorbSlices;
        if (i >= dn) continue;
        float wv[CH];
        decode_chunk<T>(raw[u], wv);
        if constexpr (T == WType::E4M3) {
#pragma unroll
          for (int c = 0; c < CH; ++c) wv[c] *= sc[u];
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (r < rows) {
            const float qv = qs[r * dn + i];
#pragma unroll
            for (int c = 0; c < CH; ++c) acc[r][c] = fmaf(qv, wv[c], acc[r][c]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r >= rows) break;  // uniform over the block
#pragma unroll
    for (int c = 0; c < CH; ++c) red[slice * kCols + lane * CH + c] = acc[r][c];
    __syncthreads();
    for (int col = int(threadIdx.x); col < kCols; col += int(blockDim.x)) {
      const int64_t c = int64_t(blockIdx.y) * kCols + col;
      if (c >= dc) continue;
      float sum = 0.0f;
      for (int sl = 0; sl < kAbsorbSlices; ++sl) sum += red[sl * kCols + col];
      out.put(((t0 + r) * heads + h) * dq + c, sum);
    }
    __syncthreads();  // red is rewritten for the next row
  }
}

constexpr int kFill = 8;

__device__ __forceinline__ float to_f32(float v) {
  return v;
}
__device__ __forceinline__ float to_f32(uint16_t v) {
  return bf16_bits_to_f32(v);
}

// dst[(i / width) · ld + i % width] = src[i] (as F32) for i < count, by the whole block.
template <class S>
__device__ __forceinline__ void fill_shared(const S* __restrict__ src, int count, float* dst,
                                            int width = 1 << 30, int ld = 1 << 30) {
  const int nt = int(blockDim.x);
  for (int i0 = int(threadIdx.x); i0 < count; i0 += kFill * nt) {
    float v[kFill];
#pragma unroll
    for (int u = 0; u < kFill; ++u) {
      const int i = i0 + u * nt;
      v[u] = i < count ? to_f32(__ldg(src + i)) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kFill; ++u) {
      const int i = i0 + u * nt;
      if (i < count) {
        const int r = i / width;
        dst[r * ld + (i - r * width)] = v[u];
      }
    }
  }
}

// nk consecutive FP8 cache rows (CachePool's layout) decoded to F32 into dst (row stride ld).
__device__ __forceinline__ void fill_fp8_rows(const CachePool& pool, const char* rows, int nk,
                                              float* dst, int ld) {
  const int dc = int(pool.dc), D = int(pool.row());
  const int64_t rb = pool.row_bytes(), kpe = pool.fp8_kpe_offset();
  for (int i = int(threadIdx.x); i < nk * D; i += int(blockDim.x)) {
    const int r = i / D, d = i - r * D;
    const char* row = rows + r * rb;
    dst[r * ld + d] =
        d < dc ? e4m3_to_f32(uint8_t(row[d])) * reinterpret_cast<const float*>(row + dc)[d / 128]
               : bf16_bits_to_f32(reinterpret_cast<const uint16_t*>(row + kpe)[d - dc]);
  }
}

// Partial results per (row, head, split): o [dc] (unnormalised), running max m, sum l.
// K: the cache's element type (float or BF16 bits; uint8_t for FP8 rows).
template <class K>
__global__ void __launch_bounds__(kHeadsPerBlock * 32)
    attention_kernel(const float* qc, int64_t heads, CachePool pool, int64_t layer,
                     const int32_t* positions, const int32_t* seqs, int64_t split_len, float scale,
                     float* partial, float* o_lat) {
  pdl_enter();
  extern __shared__ float smem[];
  const int64_t dc = pool.dc, D = pool.row(), ldk = D + 1;
  float* q_s = smem;                       // [kHeadsPerBlock][D]
  float* k_s = q_s + kHeadsPerBlock * D;   // [kKeyTile][D + 1]
  float* o_s = k_s + kKeyTile * ldk;       // [kHeadsPerBlock][dc]
  float* p_s = o_s + kHeadsPerBlock * dc;  // [kHeadsPerBlock][kKeyTile]
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t t = blockIdx.x, h0 = int64_t(blockIdx.y) * kHeadsPerBlock;
  const int64_t split = blockIdx.z, splits = gridDim.z;
  const int64_t h = h0 + warp;
  const bool active = h < heads;
  const int64_t pos = positions[t];
  const int64_t kbeg = split * split_len, kend = min(kbeg + split_len, pos + 1);
  const K* cache = static_cast<const K*>(pool.base);
  const int64_t seq = seqs[t];

  const int Di = int(D), ldki = int(ldk);
  // Shared-memory fills load kFill values per thread before storing any: with one load then
  // one store per iteration, the compiler cannot reorder the global loads past the shared
  // stores and each waits out the full memory latency (ncu: 33 us for a 20-key decode step).
  const int nh = int(min(int64_t(kHeadsPerBlock), heads - h0));
  fill_shared(qc + (t * heads + h0) * D, nh * Di, q_s);
  for (int i = nh * Di + int(threadIdx.x); i < kHeadsPerBlock * Di; i += int(blockDim.x))
    q_s[i] = 0.0f;
  for (int64_t i = threadIdx.x; i < kHeadsPerBlock * dc; i += blockDim.x) o_s[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  __syncthreads();
  for (int64_t j0 = kbeg; j0 < kend; j0 += kKeyTile) {
    const int nk = int(min(int64_t(kKeyTile), kend - j0));
    // A key tile lies in one cache block (block_tokens is a multiple of kKeyTile).
    if constexpr (std::is_same_v<K, uint8_t>)
      fill_fp8_rows(pool, pool.row_ptr(seq, layer, j0), nk, k_s, ldki);
    else
      fill_shared(cache + pool.at(seq, layer, j0), nk * Di, k_s, Di, ldki);
    __syncthreads();
    if (active) {
      float s = -INFINITY;
      if (lane < nk) {
        const float* qh = q_s + warp * D;
        const float* kr = k_s + lane * ldk;
        // Four independent sums: one dependent chain of D = 576 FMAs was latency-bound.
        float d4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int c = 0;
        for (; c + 4 <= Di; c += 4) {
#pragma unroll
          for (int q = 0; q < 4; ++q) d4[q] = fmaf(qh[c + q], kr[c + q], d4[q]);
        }
        for (; c < Di; ++c) d4[0] = fmaf(qh[c], kr[c], d4[0]);
        s = ((d4[0] + d4[1]) + (d4[2] + d4[3])) * scale;
      }
      const float m_new = fmaxf(m, warp_max(s));
      const float p = lane < nk ? expf(s - m_new) : 0.0f;
      const float alpha = expf(m - m_new);
      l = l * alpha + warp_sum(p);
      p_s[warp * kKeyTile + lane] = p;
      __syncwarp();
      float* o = o_s + warp * dc;
      const float* pw = p_s + warp * kKeyTile;
      const int dci = int(dc);
      // Four output columns per lane at once, so four FMA chains run side by side.
      for (int c0 = lane; c0 < dci; c0 += 128) {
        float acc[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[q] = c0 + 32 * q < dci ? o[c0 + 32 * q] * alpha : 0.0f;
        for (int j = 0; j < nk; ++j) {
          const float pj = pw[j];
          const float* kr = k_s + j * ldki + c0;
#pragma unroll
          for (int q = 0; q < 4; ++q)
            if (c0 + 32 * q < dci) acc[q] = fmaf(pj, kr[32 * q], acc[q]);
        }
#pragma unroll
        for (int q = 0; q < 4; ++q)
          if (c0 + 32 * q < dci) o[c0 + 32 * q] = acc[q];
      }
      m = m_new;
    }
    __syncthreads();
  }
  if (!active) return;
  if (o_lat) {  // one split: nothing to merge
    const float inv = 1.0f / l;
    for (int64_t c = lane; c < dc; c += 32)
      o_lat[(t * heads + h) * dc + c] = o_s[warp * dc + c] * inv;
    return;
  }
  float* out = partial + ((t * heads + h) * splits + split) * (dc + 2);
  for (int64_t c = lane; c < dc; c += 32) out[c] = o_s[warp * dc + c];
  if (lane == 0) {
    out[dc] = m;
    out[dc + 1] = l;
  }
}

// A split's running max (log2 units, scale · s · log2 e) as the partials keep it: natural log.
__device__ __forceinline__ float partial_max(float m_log2) {
  return m_log2 == -INFINITY ? -INFINITY : m_log2 * 0.6931471805599453f;
}

// The tensor-core kernels' output for query row t: a thread's rows g and g + 8 of the 16 heads
// from h_first, its accumulator tiles o at columns col0 .. (of dc = DC), as partials in
// attention_kernel's units (max of scale · s in natural log, unnormalised o; m and l by the
// threads with writes_ml, t4 = 0) or, with one split, o_lat itself. Heads past `heads` are not
// written.
template <int DC, int NT>
__device__ __forceinline__ void store_rows(const float (&o)[NT][4], const float (&m)[2],
                                           const float (&l)[2], int64_t t, int64_t h_first,
                                           int64_t heads, int col0, bool writes_ml, float* partial,
                                           float* o_lat, int lane) {
  const int g = lane / 4, t4 = lane % 4;
  const int64_t split = blockIdx.z, splits = gridDim.z;
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int64_t h = h_first + g + 8 * rr;
    if (h >= heads) continue;
    if (o_lat) {
      const float inv = 1.0f / l[rr];
      float* out = o_lat + (t * heads + h) * DC + col0;
#pragma unroll
      for (int i = 0; i < NT; ++i)
        *reinterpret_cast<float2*>(out + i * 8 + 2 * t4) = {o[i][2 * rr] * inv,
                                                            o[i][2 * rr + 1] * inv};
      continue;
    }
    float* out = partial + ((t * heads + h) * splits + split) * (DC + 2);
#pragma unroll
    for (int i = 0; i < NT; ++i)
      *reinterpret_cast<float2*>(out + col0 + i * 8 + 2 * t4) = {o[i][2 * rr], o[i][2 * rr + 1]};
    if (writes_ml && t4 == 0) {
      out[DC] = partial_max(m[rr]);
      out[DC + 1] = l[rr];
    }
  }
}

// The absorbed attention on the BF16 tensor cores (FlashMLA's idea, mma.sync instead of wgmma):
// the heads of a query row all read the same cache rows, so they are the M dimension of
// S = qc · cacheᵀ (K = dc + dr) and of o_lat += P · c_kv (N = dc; c_kv is the first dc columns
// of the same cache tile, read once). A block: one query row, 64 heads, one split of its keys,
// 8 warps as 4 groups of 16 heads × 2 halves. For each tile of 32 keys, each warp scores its 16
// heads against its 16 keys; the scores meet in shared memory, both warps of a group take the
// same softmax of all 32 (identical arithmetic, so identical P), and each adds P · c_kv into its
// half of the dc columns (128 accumulators a thread at dc = 512). Rows past `heads` are zeros,
// never written. Writes the same partials as attention_kernel, for merge_kernel (o_lat itself
// when there is one split). FP8: the cache holds FP8 rows (CachePool::fp8).
constexpr int kTcHeads = 64, kTcKeys = 32, kTcWarps = 8, kTcPad = 8;
// Key tiles in shared memory: one in use while the other loads. Three measured the same (H200,
// 2026-12-02, bench_cuda_mla, at 16 and 128 heads) for 37 KB more shared memory.
constexpr int kTcStages = 2;

template <int DC, int DR, bool FP8>
__global__ void __launch_bounds__(kTcWarps * 32)
    attention_tc_kernel(const uint16_t* qc, int64_t heads, CachePool pool, int64_t layer,
                        const int32_t* positions, const int32_t* seqs, int64_t split_len,
                        float scale_log2, float* partial, float* o_lat) {
  pdl_enter();
  constexpr int DK = DC + DR, SK = DK + kTcPad, SS = kTcKeys + 4, DH = DC / 2;
  static_assert(DK % 16 == 0 && DH % 16 == 0, "head sizes the tensor-core tiles cover");
  extern __shared__ __align__(16) uint16_t tc_smem[];  // (the other kernels declare float)
  uint16_t* sq = tc_smem;                              // [64][SK]
  uint16_t* sk = sq + kTcHeads * SK;                   // [kTcStages][32][SK]
  float* ss = reinterpret_cast<float*>(sk + kTcStages * kTcKeys * SK);  // [64][SS] scores
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t4 = lane % 4, grp = warp / 2, half = warp % 2;
  const int64_t t = blockIdx.x, h0 = int64_t(blockIdx.y) * kTcHeads;
  const int64_t split = blockIdx.z;
  const int64_t pos = positions[t];
  const int64_t kbeg = split * split_len, kend = min(kbeg + split_len, pos + 1);
  const int64_t seq = seqs[t];

  for (int c = int(threadIdx.x); c < kTcHeads * (DK / 8); c += kTcWarps * 32) {
    const int r = c / (DK / 8), d = (c % (DK / 8)) * 8;
    const bool ok = h0 + r < heads;
    cp16(sq + r * SK + d, ok ? qc + (t * heads + h0 + r) * DK + d : qc, ok);
  }
  // FP8 rows (FP8 = pool.fp8): this thread's c_kv chunks of a tile fetched into registers a
  // tile ahead and decoded to BF16 (times their scales) into shared memory once the tile before
  // is done with, so the loads' latency hides behind a tile of matrix work. Decoded as soon as
  // they were fetched, they cost a memory latency every tile (0.68 against 0.41 ms for BF16 at
  // batch 64, V3 dims). k_pe is copied by cp.async as BF16 rows are.
  constexpr int kF8 = FP8 ? kTcKeys * (DC / 16) / (kTcWarps * 32) : 1;
  static_assert(kTcKeys * (DC / 16) % (kTcWarps * 32) == 0, "whole c_kv chunks a thread");
  uint4 f8[kF8];
  float f8_scale[kF8];
  const int64_t rb = pool.row_bytes();
  const auto load = [&](int64_t j0, int buf) {
    uint16_t* dst = sk + buf * kTcKeys * SK;
    // The tile lies in one cache block (block_tokens is a multiple of kTcKeys).
    const char* rows = pool.row_ptr(seq, layer, j0);
    if constexpr (FP8) {
#pragma unroll
      for (int u = 0; u < kF8; ++u) {
        const int c = int(threadIdx.x) + u * kTcWarps * 32;
        const int r = c / (DC / 16), d = (c % (DC / 16)) * 16;
        const bool ok = j0 + r < kend;
        const char* row = rows + r * rb;
        f8[u] = ok ? __ldg(reinterpret_cast<const uint4*>(row + d)) : make_uint4(0, 0, 0, 0);
        f8_scale[u] = ok ? __ldg(reinterpret_cast<const float*>(row + DC) + d / 128) : 0.0f;
      }
      const int64_t kpe = pool.fp8_kpe_offset();
      for (int c = int(threadIdx.x); c < kTcKeys * (DR / 8); c += kTcWarps * 32) {
        const int r = c / (DR / 8), d = (c % (DR / 8)) * 8;
        const bool ok = j0 + r < kend;
        cp16(dst + r * SK + DC + d, ok ? rows + r * rb + kpe + 2 * d : rows, ok);
      }
    } else {
      const uint16_t* keys = reinterpret_cast<const uint16_t*>(rows);
      for (int c = int(threadIdx.x); c < kTcKeys * (DK / 8); c += kTcWarps * 32) {
        const int r = c / (DK / 8), d = (c % (DK / 8)) * 8;
        const bool ok = j0 + r < kend;
        cp16(dst + r * SK + d, ok ? keys + r * DK + d : keys, ok);
      }
    }
  };
  const auto decode_fp8 = [&](int buf) {  // the registers load() filled, into buf
    if constexpr (FP8) {
      uint16_t* dst = sk + buf * kTcKeys * SK;
#pragma unroll
      for (int u = 0; u < kF8; ++u) {
        const int c = int(threadIdx.x) + u * kTcWarps * 32;
        const int r = c / (DC / 16), d = (c % (DC / 16)) * 16;
        float v[16];
        decode_chunk<WType::E4M3>(f8[u], v);
        uint32_t out[8];
#pragma unroll
        for (int q = 0; q < 8; ++q)
          out[q] = pack_bf16(v[2 * q] * f8_scale[u], v[2 * q + 1] * f8_scale[u]);
        *reinterpret_cast<uint4*>(dst + r * SK + d) = make_uint4(out[0], out[1], out[2], out[3]);
        *reinterpret_cast<uint4*>(dst + r * SK + d + 8) =
            make_uint4(out[4], out[5], out[6], out[7]);
      }
    }
  };
  if (kbeg < kend) {
    load(kbeg, 0);
    decode_fp8(0);
  }
  cp_commit();  // (with q)

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[DH / 8][4];
#pragma unroll
  for (int i = 0; i < DH / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  const uint16_t* qrow = sq + (grp * 16 + lane % 16) * SK + (lane / 16) * 8;
  // A group of heads all past `heads` (V2-Lite's 16 fill one group of four) has nothing to
  // compute: its warps only help load.
  const bool live = h0 + grp * 16 < heads;
  for (int64_t j0 = kbeg, it = 0; j0 < kend; j0 += kTcKeys, ++it) {
    const int buf = int(it & 1);
    cp_wait_all();
    __syncthreads();  // tile in; every warp done with the other buffer and with ss
    const bool more = j0 + kTcKeys < kend;
    if (more) load(j0 + kTcKeys, buf ^ 1);
    cp_commit();
    if (!live) {  // loads only; the same two barriers an iteration as the others
      __syncthreads();
      if (more) decode_fp8(buf ^ 1);
      continue;
    }
    const uint16_t* tile = sk + buf * kTcKeys * SK;
    // This warp's 16 heads × its 16 keys (two tiles of 8).
    float sc[2][4] = {};
    const uint16_t* krow =
        tile + (half * 16 + (lane / 16) * 8 + lane % 8) * SK + ((lane / 8) % 2) * 8;
#pragma unroll 4
    for (int kk = 0; kk < DK / 16; ++kk) {
      uint32_t a[4], b[4];
      ldsm_x4(a, qrow + kk * 16);
      ldsm_x4(b, krow + kk * 16);
      mma(sc[0], a, b[0], b[1]);
      mma(sc[1], a, b[2], b[3]);
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int col = half * 16 + nt * 8 + 2 * t4;
      float* r0 = ss + (grp * 16 + g) * SS + col;
      float* r1 = r0 + 8 * SS;
      r0[0] = sc[nt][0] * scale_log2;
      r0[1] = sc[nt][1] * scale_log2;
      r1[0] = sc[nt][2] * scale_log2;
      r1[1] = sc[nt][3] * scale_log2;
    }
    __syncthreads();
    // The group's 16 heads × 32 keys from shared memory in A-fragment order: keys
    // 16kk + 2t (+1, +8, +9) of rows g and g + 8. Keys past the split's end are masked.
    float v[2][2][4];  // [kk][row g / g + 8][4 keys]
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const float* src = ss + (grp * 16 + g + 8 * rr) * SS + kk * 16 + 2 * t4;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = kk * 16 + 2 * t4 + (e & 1) + (e >> 1) * 8;
          const float x = j0 + key < kend ? src[(e & 1) + (e >> 1) * 8] : -INFINITY;
          v[kk][rr][e] = x;
          mx[rr] = fmaxf(mx[rr], x);
        }
      }
    }
    online_softmax_rescale(mx, m, l, o);  // mx: the base to subtract now
    uint32_t p[2][4];
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      float e[2][4];
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          e[rr][q] = exp2f(v[kk][rr][q] - mx[rr]);
          l[rr] += e[rr][q];
        }
      }
      p[kk][0] = pack_bf16(e[0][0], e[0][1]);  // row g, keys 2t, 2t + 1
      p[kk][1] = pack_bf16(e[1][0], e[1][1]);  // row g + 8
      p[kk][2] = pack_bf16(e[0][2], e[0][3]);  // row g, keys 2t + 8, 2t + 9
      p[kk][3] = pack_bf16(e[1][2], e[1][3]);
    }
    // o_lat[:, half] += P · c_kv[:, half]: the tile's first DC columns are the values.
    mma_pv(o, p, tile + half * DH, SK, lane);
    if (more) decode_fp8(buf ^ 1);
  }
  cp_wait_all();
  l[0] = quad_sum(l[0]);
  l[1] = quad_sum(l[1]);
  store_rows<DC>(o, m, l, t, h0 + grp * 16, heads, half * DH, half == 0, partial, o_lat, lane);
}

// The wgmma kernels' cache rows: kv_lora 512 (the values) + rope 64, in 64-column blocks.
constexpr int kWgDc = 512, kWgDk = kWgDc + 64, kWgBlocks = kWgDk / 64;

// Copies for the wgmma kernels, into the 128-byte swizzle they read (64-column blocks of
// [rows][128 B]) by THREADS threads: thread t moves 16-byte chunk t % 8 of every block in rows
// t / 8 + (THREADS / 8) i, so its swizzled offset is the same in each. Rows past the end are
// zeros. First the query rows h0 .. h0 + ROWS of row t (576 columns) ...
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_q_sw128(uint8_t* dst, const uint16_t* qc, int64_t t,
                                             int64_t heads, int64_t h0) {
  constexpr int RS = THREADS / 8;
  const int lch = int(threadIdx.x) % 8, lrow = int(threadIdx.x) / 8;
  const uint32_t lsw = swizzle128(lrow, lch);
#pragma unroll
  for (int i = 0; i < ROWS / RS; ++i) {
    const int64_t h = h0 + lrow + RS * i;
    const bool ok = h < heads;
    const uint16_t* src = qc + (t * heads + h) * kWgDk + lch * 8;
#pragma unroll
    for (int kb = 0; kb < kWgBlocks; ++kb)
      cp16(dst + kb * (ROWS * 128) + i * (RS * 128) + lsw, ok ? src + kb * 64 : qc, ok);
  }
}
// ... then cache rows j0 .. j0 + 64 of (seq, layer) below kend (BF16, 576 columns), as two runs of
// 32 rows: each lies in one cache block (block_tokens is a multiple of 32).
template <int THREADS>
__device__ __forceinline__ void load_keys_sw128(uint8_t* dst, const CachePool& pool, int64_t seq,
                                                int64_t layer, int64_t j0, int64_t kend) {
  constexpr int RS = THREADS / 8;
  static_assert(32 % RS == 0, "whole passes a run");
  const int lch = int(threadIdx.x) % 8, lrow = int(threadIdx.x) / 8;
  const uint32_t lsw = swizzle128(lrow, lch);
  const int64_t rb = pool.row_bytes();
#pragma unroll
  for (int run = 0; run < 2; ++run) {
    const int64_t r0 = j0 + run * 32;
    const char* rows = pool.row_ptr(seq, layer, min(r0, kend - 1));
#pragma unroll
    for (int i = 0; i < 32 / RS; ++i) {
      const int r = i * RS + lrow;  // (r % 8 == lrow % 8)
      const bool ok = r0 + r < kend;
      const char* src = rows + r * rb + lch * 16;
      uint8_t* d = dst + (run * 32 + i * RS) * 128 + lsw;
#pragma unroll
      for (int kb = 0; kb < kWgBlocks; ++kb)
        cp16(d + kb * (64 * 128), ok ? src + kb * 128 : rows, ok);
    }
  }
}

// The FP8 cache's rows at the wgmma kernels' 512 / 64 (CachePool::row_bytes): 512 E4M3 codes,
// four F32 scales (one per 128 columns), 64 BF16 k_pe; 64 of them, as stored, make a raw stage.
constexpr int kWgF8Kpe = kWgDc + 16, kWgF8Row = kWgF8Kpe + 2 * 64;
constexpr int kWgKeys = 64;
constexpr uint32_t kWgStage = kWgBlocks * kWgKeys * 128, kWgF8Stage = kWgKeys * kWgF8Row;
static_assert(kWgF8Row % 16 == 0 && kWgF8Stage % 1024 == 0, "raw stages keep the atoms aligned");

// FP8 cache rows j0 .. j0 + 64 of (seq, layer) below kend, as stored, into dst by THREADS
// threads: two runs of 32 rows, each contiguous in one cache block. Rows past kend are zeros.
template <int THREADS>
__device__ __forceinline__ void load_rows_fp8(uint8_t* dst, const CachePool& pool, int64_t seq,
                                              int64_t layer, int64_t j0, int64_t kend) {
  constexpr int kRowChunks = kWgF8Row / 16;
#pragma unroll
  for (int run = 0; run < 2; ++run) {
    const int64_t r0 = j0 + run * 32;
    const char* rows = pool.row_ptr(seq, layer, min(r0, kend - 1));
    const int64_t valid = (kend - r0) * kRowChunks;  // the run's chunks below kend
    for (int c = int(threadIdx.x); c < 32 * kRowChunks; c += THREADS) {
      const bool ok = c < valid;
      cp16(dst + run * (32 * kWgF8Row) + c * 16, ok ? rows + c * 16 : rows, ok);
    }
  }
}

// A raw stage (src) decoded by THREADS threads into the BF16 tile the wgmma kernels read (dst),
// k_pe as stored, c_kv (e4m3x4_to_bf16) either
//   scaled (!FOLD): times its scale rounded to BF16, the product rounded to BF16 (bf16x2
//     multiplies, no conversion instructions), or
//   as its codes' exact values (FOLD), the scales (four a row, F32) into scales [64][4] for the
//     kernel to apply to its products.
// A thread keeps one row, tid % 64, and steps through its columns: the 8 lanes of a
// shared-memory phase read 8 rows 656 bytes apart (all 32 banks) and write one swizzled column of
// 8 rows (8 distinct chunks), so neither side conflicts.
template <int THREADS, bool FOLD>
__device__ __forceinline__ void decode_fp8_tile(uint8_t* dst, const uint8_t* src, float* scales) {
  static_assert(THREADS % 64 == 0 && 8 % (THREADS / 64) == 0, "a row a thread, whole scales");
  constexpr int kStep = THREADS / 64;  // 16-column chunks between a thread's
  const int r = int(threadIdx.x) % 64, k0 = int(threadIdx.x) / 64;
  const uint8_t* row = src + r * kWgF8Row;
  const float4 scales4 = *reinterpret_cast<const float4*>(row + kWgDc);
  [[maybe_unused]] const uint32_t sc2[4] = {
      pack_bf16(scales4.x, scales4.x), pack_bf16(scales4.y, scales4.y),
      pack_bf16(scales4.z, scales4.z), pack_bf16(scales4.w, scales4.w)};
  if (FOLD && k0 == 0) reinterpret_cast<float4*>(scales)[r] = scales4;
#pragma unroll
  for (int u = 0; u < kWgDc / 16 / kStep; ++u) {
    const int k = k0 + u * kStep;  // columns 16 k .. 16 k + 15, all of scale (u · kStep) / 8
    const uint4 codes = *reinterpret_cast<const uint4*>(row + 16 * k);
    uint32_t b[8];
    e4m3x4_to_bf16(codes.x, b[0], b[1]);
    e4m3x4_to_bf16(codes.y, b[2], b[3]);
    e4m3x4_to_bf16(codes.z, b[4], b[5]);
    e4m3x4_to_bf16(codes.w, b[6], b[7]);
    if constexpr (!FOLD) {
#pragma unroll
      for (int q = 0; q < 8; ++q) b[q] = bf16x2_mul(b[q], sc2[u * kStep / 8]);
    }
    uint8_t* blk = dst + (k / 4) * (kWgKeys * 128);
    *reinterpret_cast<uint4*>(blk + swizzle128(r, 2 * (k % 4))) =
        make_uint4(b[0], b[1], b[2], b[3]);
    *reinterpret_cast<uint4*>(blk + swizzle128(r, 2 * (k % 4) + 1)) =
        make_uint4(b[4], b[5], b[6], b[7]);
  }
#pragma unroll
  for (int u = 0; u < 8 / kStep; ++u) {
    const int ch = k0 + u * kStep;
    *reinterpret_cast<uint4*>(dst + (kWgBlocks - 1) * (kWgKeys * 128) + swizzle128(r, ch)) =
        *reinterpret_cast<const uint4*>(row + kWgF8Kpe + 16 * ch);
  }
}

// The wgmma kernels' key tiles, 64 cache rows each in the swizzled BF16 layout they read, taken
// in order (acquire, then release once the tile's last wgmma has completed in every thread).
//   BF16 cache: STAGES tiles; cp.async fills the others while the block works on one, which
//     refills as soon as it is released.
//   FP8 cache: one tile, then STAGES raw stages of rows as stored; acquire decodes the next raw
//     stage into the tile (decode_fp8_tile; FOLD: the scales into `scales`) and refills that
//     stage at once, so STAGES tiles' rows are in flight while the block works on one.
template <bool FP8, int STAGES, int THREADS, bool FOLD = false>
struct KeyTiles {
  static constexpr uint32_t kBytes = FP8 ? kWgStage + STAGES * kWgF8Stage : STAGES * kWgStage;
  uint8_t* at;  // 1,024-aligned
  const CachePool& pool;
  int64_t seq, layer, kend;
  float* scales = nullptr;  // FOLD: [64][4]

  __device__ __forceinline__ void load(int64_t j0, int stage) const {
    if constexpr (FP8)
      load_rows_fp8<THREADS>(at + kWgStage + stage * kWgF8Stage, pool, seq, layer, j0, kend);
    else
      load_keys_sw128<THREADS>(at + stage * kWgStage, pool, seq, layer, j0, kend);
  }
  // The first tiles' copies, a commit group each (the first also holds what came before).
  __device__ __forceinline__ void start(int64_t kbeg) const {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      if (kbeg + s * kWgKeys < kend) load(kbeg + s * kWgKeys, s);
      cp_commit();
    }
  }
  // Tile `it` (keys j0 ..) ready for wgmma in every thread: its shared-memory address.
  __device__ __forceinline__ uint32_t acquire(int64_t j0, int64_t it) const {
    const int st = int(it % STAGES);
    cp_wait<STAGES - 1>();  // this tile's group (the later ones may still be in flight)
    if constexpr (FP8) {
      __syncthreads();  // the raw rows in; every warp done with the tile before
      decode_fp8_tile<THREADS, FOLD>(at, at + kWgStage + st * kWgF8Stage, scales);
      fence_proxy_async();
      __syncthreads();
      if (j0 + STAGES * kWgKeys < kend) load(j0 + STAGES * kWgKeys, st);
      cp_commit();
      return smem_addr(at);
    } else {
      fence_proxy_async();
      __syncthreads();
      return smem_addr(at + st * kWgStage);
    }
  }
  __device__ __forceinline__ void release(int64_t j0, int64_t it) const {
    if constexpr (!FP8) {
      __syncthreads();  // every warp done with this tile
      if (j0 + STAGES * kWgKeys < kend) load(j0 + STAGES * kWgKeys, int(it % STAGES));
      cp_commit();
    }
  }
};

// The 64-head attention on Hopper's warpgroup MMAs (wgmma, sm_90a), for a BF16 or FP8 cache of
// kv_lora 512 / rope 64 (DeepSeek-V3's 128 heads, two blocks a query row). At 128 heads a cache row
// feeds 128 · 2 · 1,088 FLOPs, so this is compute-bound: attention_tc_kernel's mma.sync tiles
// reach 177 TFLOP/s (H200) where FlashMLA publishes 660 on an H800. Heads are M, as there; a block
// is two warpgroups over 64-key tiles (KeyTiles, the 128-byte swizzle):
//   warpgroup 0: S = Q · Kᵀ (m64n64k16 × 36), the online softmax on S in registers, P into
//                shared memory for the other, and O[:, 0:256] += P · V with P as the register A
//                operand (V, the tile's first 512 columns, transposed by the instruction);
//   warpgroup 1: O[:, 256:512] += P · V from shared memory, once P and the rows' rescale
//                factors are there.
// The same partials (o_lat with one split) as the other kernels. H200, bench_cuda_mla at batch
// 64 over 4K tokens: 0.187 ms, 390 TFLOP/s, against 0.413 (177) on attention_tc_kernel.
// FP8 cache (FP8): one raw stage, whose rows have a tile's matrix work to arrive in, decoded
// scaled (decode_fp8_tile): 0.253 ms against attention_tc_kernel's 0.435 (the decode, 8 chunks a
// thread a tile, is not overlapped with the matrix work).
constexpr int kWdHeads = 64, kWdKeys = kWgKeys, kWdThreads = 256;
constexpr uint32_t kWdQBytes = kWgBlocks * kWdHeads * 128, kWdPBytes = kWdHeads * 128;
template <bool FP8>
using WdTiles = KeyTiles<FP8, FP8 ? 1 : 2, kWdThreads, false>;
template <bool FP8>
constexpr size_t kWdSmem = 1024 + kWdQBytes + WdTiles<FP8>::kBytes + kWdPBytes + kWdHeads * 4;

template <bool FP8>
__global__ void __launch_bounds__(kWdThreads, 1)
    attention_wgmma_kernel(const uint16_t* qc, int64_t heads, CachePool pool, int64_t layer,
                           const int32_t* positions, const int32_t* seqs, int64_t split_len,
                           float scale_log2, float* partial, float* o_lat) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  pdl_enter();
  constexpr int DC = kWgDc, DK = kWgDk;
  extern __shared__ __align__(1024) uint8_t wd_smem[];
  uint8_t* const sbase = atom_aligned(wd_smem);
  const uint32_t base = smem_addr(sbase);
  constexpr uint32_t p_at = kWdQBytes + WdTiles<FP8>::kBytes;
  float* s_row = reinterpret_cast<float*>(sbase + p_at + kWdPBytes);  // [64]: corr, then l
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  // Read through a shuffle so the compiler knows it is the same across each warp: branches on it
  // then leave the wgmma of either warpgroup unserialised.
  const int wg = __shfl_sync(0xffffffffu, warp / 4, 0);
  const int g = lane / 4, t4 = lane % 4;
  const int row_a = (warp % 4) * 16 + g, row_b = row_a + 8;  // this thread's heads in the block
  const int64_t t = blockIdx.x, h0 = int64_t(blockIdx.y) * kWdHeads, split = blockIdx.z;
  const int64_t pos = positions[t];
  const int64_t kbeg = split * split_len, kend = min(kbeg + split_len, pos + 1);
  const int64_t seq = seqs[t];

  load_q_sw128<kWdHeads, kWdThreads>(sbase, qc, t, heads, h0);
  const WdTiles<FP8> tiles{sbase + kWdQBytes, pool, seq, layer, kend};
  tiles.start(kbeg);  // (with q)

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // warpgroup 0's rows
  float o[2][16][4] = {};  // this warpgroup's O columns 256 wg + 128 nb + 8 i + 2 t4 (+1)
  for (int64_t j0 = kbeg, it = 0; j0 < kend; j0 += kWdKeys, ++it) {
    const uint32_t tile = tiles.acquire(j0, it);
    uint32_t p[kWdKeys / 16][4];  // warpgroup 0's P, as A fragments of the four k16 steps
    float corr[2];
    if (wg == 0) {
      float s[kWdKeys / 8][4];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < DK / 16; ++kk) {
        const uint32_t at = (kk / 4) * (kWdKeys * 128) + (kk % 4) * 32;
        wgmma_m64n64k16_ss(s, wgmma_desc(base + at, 16, 1024), wgmma_desc(tile + at, 16, 1024),
                           kk > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      float mx[2] = {m[0], m[1]};
#pragma unroll
      for (int nt = 0; nt < kWdKeys / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t key = j0 + nt * 8 + 2 * t4 + (e & 1);
          s[nt][e] = key < kend ? s[nt][e] * scale_log2 : -INFINITY;
          mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
        }
      online_softmax_max(mx, m, l, corr);  // mx: the base to subtract now
#pragma unroll
      for (int nt = 0; nt < kWdKeys / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nt][e] = exp2f(s[nt][e] - mx[e >> 1]);
          l[e >> 1] += s[nt][e];
        }
#pragma unroll
      for (int kk = 0; kk < kWdKeys / 16; ++kk) {
        p[kk][0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);          // row a, keys 16 kk + 2 t4 (+1)
        p[kk][1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);          // row b
        p[kk][2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);  // row a, keys + 8
        p[kk][3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int row = q & 1 ? row_b : row_a, key = kk * 16 + (q >> 1) * 8 + 2 * t4;
          *reinterpret_cast<uint32_t*>(sbase + p_at + swizzle128(row, key / 8) + (key % 8) * 2) =
              p[kk][q];
        }
      }
      if (t4 == 0) {
        s_row[row_a] = corr[0];
        s_row[row_b] = corr[1];
      }
      fence_proxy_async();
    }
    __syncthreads();  // P and the rescale factors in shared memory
    if (wg == 1) {
      corr[0] = s_row[row_a];
      corr[1] = s_row[row_b];
    }
    rescale_rows(o[0], corr);
    rescale_rows(o[1], corr);
    // V's 128-column block nb of this warpgroup's half, keys 16 kk ..
    const auto v = [&](int kk, int nb) {
      return wgmma_desc(tile + (4 * wg + 2 * nb) * (kWdKeys * 128) + kk * 16 * 128, kWdKeys * 128,
                        1024);
    };
    wgmma_fence();
    if (wg == 0) {
#pragma unroll
      for (int kk = 0; kk < kWdKeys / 16; ++kk)
#pragma unroll
        for (int nb = 0; nb < 2; ++nb) wgmma_m64n128k16_rs_mn(o[nb], p[kk], v(kk, nb));
    } else {
#pragma unroll
      for (int kk = 0; kk < kWdKeys / 16; ++kk)
#pragma unroll
        for (int nb = 0; nb < 2; ++nb)
          wgmma_m64n128k16_ss_mn(o[nb], wgmma_desc(base + p_at + kk * 32, 16, 1024), v(kk, nb));
    }
    wgmma_commit();
    wgmma_wait<0>();
    tiles.release(j0, it);  // (the next acquire's barrier: every warp done with P, the factors)
  }
  cp_wait_all();
  __syncthreads();  // warpgroup 1 done reading the last factors
  if (wg == 0) {
    l[0] = quad_sum(l[0]);
    l[1] = quad_sum(l[1]);
    if (t4 == 0) {
      s_row[row_a] = l[0];
      s_row[row_b] = l[1];
    }
  }
  __syncthreads();
  if (wg == 1) {
    l[0] = s_row[row_a];
    l[1] = s_row[row_b];
  }
  store_rows<DC>(reinterpret_cast<const float(&)[32][4]>(o), m, l, t, h0 + (warp % 4) * 16, heads,
                 wg * 256, wg == 0, partial, o_lat, lane);
#else
  (void)qc, (void)heads, (void)pool, (void)layer, (void)positions, (void)seqs, (void)split_len;
  (void)scale_log2, (void)partial, (void)o_lat;
  __trap();  // mla_attention_tc runs it only where the sm_90a code exists
#endif
}

// The same attention for up to 16 heads over a BF16 cache (V2-Lite, Moonlight, bench-1b), with
// 8 warps on the one group of 16 heads: on attention_tc_kernel's 64-head blocks 3 of the 4
// groups idle (46% of copy at batch 64 over 4K tokens), and that kernel's 8 warps on one group
// over 32-key tiles (a trial) all took the whole tile's softmax, ~700 instructions a warp a tile
// for 34 mma (ncu: 0.38 issued a cycle per scheduler; 51% of copy). Here (55%: 0.132 against
// 0.157 ms, H200) a tile is 64 keys and each warp owns 8 of them: it scores its
// keys against the 16 heads over all of K, the warps' row maxima meet in shared memory (each
// warp then takes the same running max), each warp turns its own scores into P (BF16, into
// shared memory) and its share of the row sums, and then adds P · c_kv over all 64 keys into its
// dc / 8 columns. The same partials (o_lat with one split) as the other kernels. A buffer
// refills once its tile is done, not once the next has arrived: 0.130 against 0.132-0.134 ms
// (56% of copy, one run; on the 64-head kernel at 128 heads the same change cost 4%).
constexpr int kNwKeys = 64, kNwWarps = 8, kNwHeads = 16;
// Its shared memory for cache rows of `row` elements: q, two key tiles, P, the warps' row values.
constexpr size_t narrow_smem_bytes(int64_t row) {
  return size_t((kNwHeads + 2 * kNwKeys) * (row + kTcPad) + kNwHeads * (kNwKeys + 8)) * 2 +
         size_t(kNwWarps * kNwHeads) * 4;
}

template <int DC, int DR>
__global__ void __launch_bounds__(kNwWarps * 32)
    attention_narrow_kernel(const uint16_t* qc, int64_t heads, CachePool pool, int64_t layer,
                            const int32_t* positions, const int32_t* seqs, int64_t split_len,
                            float scale_log2, float* partial, float* o_lat) {
  pdl_enter();
  constexpr int DK = DC + DR, SK = DK + kTcPad, SP = kNwKeys + 8, DH = DC / kNwWarps;
  static_assert(DK % 32 == 0 && DH % 16 == 0, "head sizes the tensor-core tiles cover");
  extern __shared__ __align__(16) uint16_t nw_smem[];
  uint16_t* sq = nw_smem;                                     // [16][SK]
  uint16_t* sk = sq + kNwHeads * SK;                          // [2][64][SK]
  uint16_t* sp = sk + 2 * kNwKeys * SK;                       // [16][SP] P of the tile
  float* red = reinterpret_cast<float*>(sp + kNwHeads * SP);  // [8 warps][16 rows]
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t4 = lane % 4;
  const int64_t t = blockIdx.x, split = blockIdx.z;
  const int64_t pos = positions[t];
  const int64_t kbeg = split * split_len, kend = min(kbeg + split_len, pos + 1);
  const int64_t seq = seqs[t];

  for (int c = int(threadIdx.x); c < kNwHeads * (DK / 8); c += kNwWarps * 32) {
    const int r = c / (DK / 8), d = (c % (DK / 8)) * 8;
    const bool ok = r < heads;
    cp16(sq + r * SK + d, ok ? qc + (t * heads + r) * DK + d : qc, ok);
  }
  const auto load = [&](int64_t j0, int buf) {
    uint16_t* dst = sk + buf * kNwKeys * SK;
    // Two runs of 32 rows: each lies in one cache block (block_tokens is a multiple of 32).
#pragma unroll
    for (int run = 0; run < 2; ++run) {
      const int64_t r0 = j0 + run * 32;
      const uint16_t* keys =
          reinterpret_cast<const uint16_t*>(pool.row_ptr(seq, layer, min(r0, kend - 1)));
      for (int c = int(threadIdx.x); c < 32 * (DK / 8); c += kNwWarps * 32) {
        const int r = c / (DK / 8), d = (c % (DK / 8)) * 8;
        const bool ok = r0 + r < kend;
        cp16(dst + (run * 32 + r) * SK + d, ok ? keys + r * DK + d : keys, ok);
      }
    }
  };
  // Both buffers fill before the first tile is used, and a buffer refills as soon as its tile
  // is done with, so two tiles are in flight while a tile's arrival is awaited.
  if (kbeg < kend) load(kbeg, 0);
  cp_commit();  // (with q)
  if (kbeg + kNwKeys < kend) load(kbeg + kNwKeys, 1);
  cp_commit();

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[DH / 8][4];
#pragma unroll
  for (int i = 0; i < DH / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  const uint16_t* qrow = sq + (lane % 16) * SK + (lane / 16) * 8;
  for (int64_t j0 = kbeg, it = 0; j0 < kend; j0 += kNwKeys, ++it) {
    const int buf = int(it & 1);
    cp_wait<1>();     // this tile's group (the next one's may still be in flight)
    __syncthreads();  // tile in; every warp done with sp and red
    const uint16_t* tile = sk + buf * kNwKeys * SK;
    // S for the 16 heads × this warp's 8 keys; even and odd k-steps in two chains.
    float sc[2][4] = {};
    const uint16_t* krow = tile + (warp * 8 + lane % 8) * SK + (lane / 8) * 8;
#pragma unroll 3
    for (int kk = 0; kk < DK / 16; kk += 2) {
      uint32_t a0[4], a1[4], b[4];
      ldsm_x4(b, krow + kk * 16);  // k-steps kk (b[0], b[1]) and kk + 1 (b[2], b[3])
      ldsm_x4(a0, qrow + kk * 16);
      ldsm_x4(a1, qrow + (kk + 1) * 16);
      mma(sc[0], a0, b[0], b[1]);
      mma(sc[1], a1, b[2], b[3]);
    }
    // Rows g (e = 0, 1) and g + 8 (e = 2, 3), keys 8 · warp + 2 · t4 (+1).
    float s[4], mx[2];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t key = j0 + warp * 8 + 2 * t4 + (e & 1);
      s[e] = key < kend ? (sc[0][e] + sc[1][e]) * scale_log2 : -INFINITY;
    }
    mx[0] = quad_max(fmaxf(s[0], s[1]));
    mx[1] = quad_max(fmaxf(s[2], s[3]));
    if (t4 == 0) {
      red[warp * kNwHeads + g] = mx[0];
      red[warp * kNwHeads + g + 8] = mx[1];
    }
    __syncthreads();
    float corr[2], base[2];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float row_max = m[rr];
#pragma unroll
      for (int w = 0; w < kNwWarps; ++w) row_max = fmaxf(row_max, red[w * kNwHeads + g + 8 * rr]);
      base[rr] = row_max == -INFINITY ? 0.0f : row_max;
      corr[rr] = exp2f(m[rr] - base[rr]);
      m[rr] = row_max;
    }
    float p[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) p[e] = exp2f(s[e] - base[e >> 1]);
    l[0] = l[0] * corr[0] + (p[0] + p[1]);
    l[1] = l[1] * corr[1] + (p[2] + p[3]);
    *reinterpret_cast<uint32_t*>(sp + g * SP + warp * 8 + 2 * t4) = pack_bf16(p[0], p[1]);
    *reinterpret_cast<uint32_t*>(sp + (g + 8) * SP + warp * 8 + 2 * t4) = pack_bf16(p[2], p[3]);
#pragma unroll
    for (int i = 0; i < DH / 8; ++i) {
      o[i][0] *= corr[0];
      o[i][1] *= corr[0];
      o[i][2] *= corr[1];
      o[i][3] *= corr[1];
    }
    __syncthreads();  // P complete
    uint32_t pa[kNwKeys / 16][4];
#pragma unroll
    for (int kk = 0; kk < kNwKeys / 16; ++kk)
      ldsm_x4(pa[kk], sp + (lane % 16) * SP + (lane / 16) * 8 + kk * 16);
    // o_lat[:, warp's columns] += P · c_kv[:, warp's columns].
    mma_pv(o, pa, tile + warp * DH, SK, lane);
    __syncthreads();  // every warp done with this buffer
    if (j0 + 2 * kNwKeys < kend) load(j0 + 2 * kNwKeys, buf);
    cp_commit();
  }
  cp_wait_all();
  // Row sums: this thread's keys, its quad's, then every warp's in order.
  l[0] = quad_sum(l[0]);
  l[1] = quad_sum(l[1]);
  __syncthreads();  // red's last maxima read
  if (t4 == 0) {
    red[warp * kNwHeads + g] = l[0];
    red[warp * kNwHeads + g + 8] = l[1];
  }
  __syncthreads();
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kNwWarps; ++w) sum += red[w * kNwHeads + g + 8 * rr];
    l[rr] = sum;
  }
  store_rows<DC>(o, m, l, t, 0, heads, warp * DH, warp == 0, partial, o_lat, lane);
}

// The 16-head attention on Hopper's warpgroup MMAs (wgmma, sm_90a), for kv_lora 512 / rope 64.
// On attention_narrow_kernel a 64-key tile costs ~1,000 instructions a warp, issued at 0.34 a
// cycle per scheduler with 8 warps an SM (ncu, H200), so the SM waits on its own instructions
// rather than on memory (2.0 TB/s). Here one warpgroup does a tile in 68 instructions of matrix
// work: the keys are the M dimension, so 16 heads fill N = 16 and nothing is padded.
//   Sᵀ = K · Qᵀ      m64n16k16 × 36 (K the tile, Q [16][576], both K-major);
//   Oᵀ += Vᵀ · Pᵀ    m64n16k16 × 32 (V the tile's first 512 columns read transposed, eight
//                    64-row blocks of Oᵀ; Pᵀ [16 heads][64 keys] K-major, through shared memory).
// A thread's accumulators of either hold the same four heads (columns 2t, 2t + 1, 8 + 2t, 9 + 2t),
// so its running max, sum and rescaling are per head, as in the other kernels per row; a head's
// tile max meets the other warps' in shared memory. The same partials (o_lat with one split).
// Shared memory: q, the key tiles (KeyTiles, the 128-byte swizzle wgmma reads), Pᵀ, the maxima.
// H200, bench_cuda_mla at batch 64 over 4K tokens: 0.100 ms, 73% of copy, against 0.130 (56%)
// on attention_narrow_kernel. Fetching the tiles 2-4 ahead into L2 as well (bulk prefetch) was
// slower: 70%, 67%, 59%.
// FP8 cache (FP8): three raw stages, as many bytes in flight as the BF16 cache's two tiles;
// the tile holds the codes' values (decode_fp8_tile's FOLD), and the kernel weights its products
// by the keys' scales. 0.136 ms at batch 64 over 4K (31% of copy) against attention_tc_kernel's
// 0.164: one warp a scheduler issues both the decode and the matrix work.
constexpr int kNgThreads = 128;
static_assert(kNwKeys == kWgKeys, "the wgmma kernels' key tiles");
constexpr uint32_t kNgQBytes = kWgBlocks * kNwHeads * 128;
template <bool FP8>
using NgTiles = KeyTiles<FP8, FP8 ? 3 : 2, kNgThreads, true>;
// Pᵀ: FP8, one for each 128 columns of c_kv, its keys' scales folded in; else one.
template <bool FP8>
constexpr uint32_t kNgPBytes = (FP8 ? kWgDc / 128 : 1) * kNwHeads * 128;
template <bool FP8>
constexpr size_t kNgSmem = 1024 + kNgQBytes + NgTiles<FP8>::kBytes + kNgPBytes<FP8> +
                           4 * kNwHeads * 4 + (FP8 ? kWgKeys * 16 : 0);

template <bool FP8>
__global__ void __launch_bounds__(kNgThreads, 1)
    attention_narrow_wgmma_kernel(const uint16_t* qc, int64_t heads, CachePool pool, int64_t layer,
                                  const int32_t* positions, const int32_t* seqs, int64_t split_len,
                                  float scale_log2, float* partial, float* o_lat) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  pdl_enter();
  constexpr int DC = kWgDc, DK = kWgDk;
  extern __shared__ __align__(1024) uint8_t ng_smem[];
  uint8_t* const sbase = atom_aligned(ng_smem);
  const uint32_t base = smem_addr(sbase);
  constexpr uint32_t p_at = kNgQBytes + NgTiles<FP8>::kBytes;
  float* red = reinterpret_cast<float*>(sbase + p_at + kNgPBytes<FP8>);  // [4 warps][16 heads]
  float* key_scales = red + 4 * kNwHeads;  // FP8: the tile's [64 keys][4] scales
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t4 = lane % 4;
  const int64_t t = blockIdx.x, split = blockIdx.z;
  const int64_t pos = positions[t];
  const int64_t kbeg = split * split_len, kend = min(kbeg + split_len, pos + 1);
  const int64_t seq = seqs[t];

  load_q_sw128<kNwHeads, kNgThreads>(sbase, qc, t, heads, 0);
  const NgTiles<FP8> tiles{sbase + kNgQBytes, pool, seq, layer, kend, key_scales};
  tiles.start(kbeg);  // (with q)

  // Per head i · 8 + 2 t4 + c of this thread: the running max (log2 units) and its keys' sum.
  float m[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}}, l[2][2] = {};
  float o[DC / 64][2][4] = {};  // Oᵀ: dims 64 mb + 16 warp + g (+8), heads as above
  for (int64_t j0 = kbeg, it = 0; j0 < kend; j0 += kNwKeys, ++it) {
    const uint32_t tile = tiles.acquire(j0, it);
    // FP8: the tile holds the codes' values, so Sᵀ of each 128 columns of c_kv is summed apart
    // (sb; k_pe's into s), then weighted by this thread's two keys' scales (ksc: e < 2, e ≥ 2),
    // in F32 where the 64-head kernel's scaled tile rounds each value to BF16.
    float s[2][4];
    [[maybe_unused]] float sb[kWgDc / 128][2][4];
    [[maybe_unused]] float4 ksc[2];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < DK / 16; ++kk) {
      const uint32_t at = (kk / 4) * (kNwKeys * 128) + (kk % 4) * 32;
      const uint64_t a = wgmma_desc(tile + at, 16, 1024),
                     b = wgmma_desc(base + (kk / 4) * (kNwHeads * 128) + (kk % 4) * 32, 16, 1024);
      if (FP8 && kk < kWgDc / 16)
        wgmma_m64n16k16_ss(sb[kk / 8], a, b, kk % 8 > 0);
      else
        wgmma_m64n16k16_ss(s, a, b, kk > (FP8 ? kWgDc / 16 : 0));
    }
    wgmma_commit();
    wgmma_wait<0>();
    if constexpr (FP8) {
      ksc[0] = reinterpret_cast<const float4*>(key_scales)[warp * 16 + g];
      ksc[1] = reinterpret_cast<const float4*>(key_scales)[warp * 16 + g + 8];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float4 k = ksc[e >> 1];
          s[i][e] += sb[0][i][e] * k.x + sb[1][i][e] * k.y + sb[2][i][e] * k.z + sb[3][i][e] * k.w;
        }
    }
    // Keys 16 warp + g (e < 2) and + 8 (e ≥ 2) of the tile; heads 8 i + 2 t4 + (e & 1).
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = j0 + warp * 16 + g + 8 * (e >> 1);
        s[i][e] = key < kend ? s[i][e] * scale_log2 : -INFINITY;
      }
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float x = fmaxf(s[i][c], s[i][c + 2]);
#pragma unroll
        for (int off = 4; off < 32; off *= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
        if (g == 0) red[warp * kNwHeads + i * 8 + 2 * t4 + c] = x;
      }
    }
    __syncthreads();
    float corr[2][2], bas[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int h = i * 8 + 2 * t4 + c;
        float row_max = m[i][c];  // and the four warps' maxima of the tile
#pragma unroll
        for (int w = 0; w < 4; ++w) row_max = fmaxf(row_max, red[w * kNwHeads + h]);
        bas[i][c] = row_max == -INFINITY ? 0.0f : row_max;
        corr[i][c] = exp2f(m[i][c] - bas[i][c]);
        m[i][c] = row_max;
      }
    uint8_t* const sp = sbase + p_at;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = e & 1, key = warp * 16 + g + 8 * (e >> 1), h = i * 8 + 2 * t4 + c;
        const float p = exp2f(s[i][e] - bas[i][c]);
        s[i][e] = p;
        uint8_t* const at = sp + swizzle128(h, key / 8) + (key % 8) * 2;
        if constexpr (FP8) {  // Pᵀ for each 128 columns of V: p times the key's scale there
          const float k[4] = {ksc[e >> 1].x, ksc[e >> 1].y, ksc[e >> 1].z, ksc[e >> 1].w};
#pragma unroll
          for (int b = 0; b < 4; ++b)
            *reinterpret_cast<__nv_bfloat16*>(at + b * (kNwHeads * 128)) =
                __float2bfloat16_rn(p * k[b]);
        } else {
          *reinterpret_cast<__nv_bfloat16*>(at) = __float2bfloat16_rn(p);
        }
      }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int c = 0; c < 2; ++c) l[i][c] = l[i][c] * corr[i][c] + (s[i][c] + s[i][c + 2]);
#pragma unroll
    for (int mb = 0; mb < DC / 64; ++mb)
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mb][i][e] *= corr[i][e & 1];
    fence_proxy_async();
    __syncthreads();  // Pᵀ complete
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kNwKeys / 16; ++kk)
#pragma unroll
      for (int mb = 0; mb < DC / 64; ++mb)
        wgmma_m64n16k16_ss_mn_a(
            o[mb], wgmma_desc(tile + mb * (kNwKeys * 128) + kk * 16 * 128, kNwKeys * 128, 1024),
            wgmma_desc(base + p_at + (FP8 ? mb / 2 * (kNwHeads * 128) : 0) + kk * 32, 16, 1024));
    wgmma_commit();
    wgmma_wait<0>();
    tiles.release(j0, it);  // (the next acquire's barrier: every warp done with Pᵀ, the maxima)
  }
  cp_wait_all();
  __syncthreads();  // every warp done reading the last maxima
  // Row sums: this thread's keys, its column's eight lanes, then the four warps in order.
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      float x = l[i][c];
#pragma unroll
      for (int off = 4; off < 32; off *= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
      if (g == 0) red[warp * kNwHeads + i * 8 + 2 * t4 + c] = x;
    }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int h = i * 8 + 2 * t4 + c;
      l[i][c] = ((red[h] + red[kNwHeads + h]) + red[2 * kNwHeads + h]) + red[3 * kNwHeads + h];
    }
  const int64_t splits = gridDim.z;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int64_t h = i * 8 + 2 * t4 + c;
      if (h >= heads) continue;
      if (o_lat) {
        const float inv = 1.0f / l[i][c];
        float* out = o_lat + (t * heads + h) * DC + warp * 16 + g;
#pragma unroll
        for (int mb = 0; mb < DC / 64; ++mb) {
          out[mb * 64] = o[mb][i][c] * inv;
          out[mb * 64 + 8] = o[mb][i][c + 2] * inv;
        }
        continue;
      }
      float* out = partial + ((t * heads + h) * splits + split) * (DC + 2);
#pragma unroll
      for (int mb = 0; mb < DC / 64; ++mb) {
        out[mb * 64 + warp * 16 + g] = o[mb][i][c];
        out[mb * 64 + warp * 16 + g + 8] = o[mb][i][c + 2];
      }
      if (warp == 0 && g == 0) {
        out[DC] = partial_max(m[i][c]);
        out[DC + 1] = l[i][c];
      }
    }
#else
  (void)qc, (void)heads, (void)pool, (void)layer, (void)positions, (void)seqs, (void)split_len;
  (void)scale_log2, (void)partial, (void)o_lat;
  __trap();  // mla_attention_tc runs it only where the sm_90a code exists
#endif
}

// The splits of row · heads + head (blockIdx.x) merged, columns blockIdx.y · 64 .. + 64:
// o_lat = Σ_s o_s · e^(m_s − m) / Σ_s l_s · e^(m_s − m), m the largest m_s. The weights are taken
// once into shared memory ([splits] floats); each warp sums its share of the splits (s ≡ warp mod
// 8) for two columns a lane, and warp 0 adds the 8 sums in order. At batch 1 over a long context
// there are as many splits as blocks fill the GPU, so the sums must read them in parallel: one
// thread a column, splits in sequence, waited out the memory latency (attention and merge
// 0.187 ms at batch 1 over 16K tokens, V3 dims; 0.069 with this merge and the same splits).
constexpr int kMergeWarps = 8, kMergeCols = 64;

__global__ void __launch_bounds__(kMergeWarps * 32)
    merge_kernel(const float* partial, int64_t splits, int64_t dc, float* o_lat) {
  pdl_enter();
  extern __shared__ float wt[];  // [splits]
  __shared__ float red[kMergeWarps], sums[kMergeWarps][kMergeCols];
  __shared__ float s_max, s_inv;
  const int64_t th = blockIdx.x, ld = dc + 2;
  const float* p = partial + th * splits * ld;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  float mx = -INFINITY;
  for (int64_t s = threadIdx.x; s < splits; s += blockDim.x) mx = fmaxf(mx, p[s * ld + dc]);
  mx = warp_max(mx);
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = red[0];
    for (int w = 1; w < kMergeWarps; ++w) m = fmaxf(m, red[w]);
    s_max = m;
  }
  __syncthreads();
  mx = s_max;
  float l = 0.0f;
  for (int64_t s = threadIdx.x; s < splits; s += blockDim.x) {
    const float w = expf(p[s * ld + dc] - mx);  // an empty split: m = -inf, weight 0
    wt[s] = w;
    l = fmaf(p[s * ld + dc + 1], w, l);
  }
  l = warp_sum(l);
  __syncthreads();  // every warp has read red[] for the max
  if (lane == 0) red[warp] = l;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int w = 0; w < kMergeWarps; ++w) sum += red[w];
    s_inv = 1.0f / sum;
  }
  const int64_t c0 = int64_t(blockIdx.y) * kMergeCols + lane, c1 = c0 + 32;
  float a0 = 0.0f, a1 = 0.0f;
#pragma unroll 4
  for (int64_t s = warp; s < splits; s += kMergeWarps) {
    const float* ps = p + s * ld;
    const float w = wt[s];
    if (c0 < dc) a0 = fmaf(ps[c0], w, a0);
    if (c1 < dc) a1 = fmaf(ps[c1], w, a1);
  }
  sums[warp][lane] = a0;
  sums[warp][lane + 32] = a1;
  __syncthreads();
  if (warp == 0) {
    float o0 = 0.0f, o1 = 0.0f;
    for (int w = 0; w < kMergeWarps; ++w) {
      o0 += sums[w][lane];
      o1 += sums[w][lane + 32];
    }
    if (c0 < dc) o_lat[th * dc + c0] = o0 * s_inv;
    if (c1 < dc) o_lat[th * dc + c1] = o1 * s_inv;
  }
}

void merge_launch(const float* partial, int64_t n, int64_t heads, int64_t splits, int64_t dc,
                  float* o_lat, cudaStream_t s) {
  const dim3 grid(unsigned(n * heads), unsigned(ceil_div(dc, kMergeCols)));
  launch_pdl(merge_kernel, grid, kMergeWarps * 32, size_t(splits) * sizeof(float), s, partial,
             splits, dc, o_lat);
  DSV3_CUDA_CHECK_LAUNCH();
}

// The absorb on the BF16 tensor cores, for chunks over gemv_max_rows (where rows need not get
// their batch-1 bits): block (head, 128 latent columns, 64 query rows), q_nope and W_UK[h]'s
// columns in BF16 in shared memory, 8 warps of 32 rows x 32 columns, m16n8k16 with F32
// accumulators, BF16 out (qcb). q and each weight times its block scale are rounded to BF16
// (the CUDA-core kernels keep both in F32), as DeepSeek's absorb is a BF16 einsum over the
// dequantised wkv_b. The CUDA-core kernel re-read W_UK[h] from L2 for every 4 rows.
constexpr int kAtRows = 64, kAtCols = 128, kAtPad = 8, kAtDn = 128;

// Rows row0 .. row0 + nrows of w, columns c0 .. c0 + kAtCols, times their block scales, into
// dst as BF16 rows of `stride` elements.
template <WType T>
__device__ __forceinline__ void stage_weight_bf16(const DevWeight& w, int64_t row0, int nrows,
                                                  int64_t c0, uint16_t* dst, int stride) {
  constexpr int CH = WTraits<T>::kChunk, ES = WTraits<T>::kSize;
  const int64_t dc = w.k, scols = ceil_div(dc, w.bk);
  for (int c = int(threadIdx.x); c < nrows * (kAtCols / CH); c += int(blockDim.x)) {
    const int i = c / (kAtCols / CH), col = (c % (kAtCols / CH)) * CH;
    const int64_t wr = row0 + i;
    float v[CH];
    decode_chunk<T>(__ldg(reinterpret_cast<const uint4*>(static_cast<const char*>(w.w) +
                                                         (wr * dc + c0 + col) * ES)),
                    v);
    float sc = 1.0f;
    if constexpr (T == WType::E4M3)
      sc = __ldg(w.scale + int64_t(int(wr) / w.bn) * scols + int(c0 + col) / w.bk);
    uint32_t* out = reinterpret_cast<uint32_t*>(dst + i * stride + col);
#pragma unroll
    for (int e = 0; e < CH / 2; ++e) out[e] = pack_bf16(v[2 * e] * sc, v[2 * e + 1] * sc);
  }
}

// A warp's 32 x 32 tile of C fragments (acc[mi][nt]: rows wm · 32 + 16 mi + g (+ 8), columns
// 8 nt + 2 t (+ 1)): store(row, column, v, v_next) for each pair in a row below `rows`.
template <class Store>
__device__ __forceinline__ void store_tile(const float (&acc)[2][4][4], int wm, int lane, int rows,
                                           Store store) {
  const int g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const int r = wm * 32 + mi * 16 + g + 8 * rr;
      if (r >= rows) continue;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
        store(r, nt * 8 + 2 * t4, acc[mi][nt][2 * rr], acc[mi][nt][2 * rr + 1]);
    }
  }
}

// kAtRows rows of `cols` F32 values (src + r · ld; zeros from row `rows` on) into dst as BF16
// rows of `stride` elements.
__device__ __forceinline__ void stage_rows_bf16(const float* src, int64_t ld, int rows, int cols,
                                                uint16_t* dst, int stride) {
  for (int c = int(threadIdx.x); c < kAtRows * (cols / 4); c += int(blockDim.x)) {
    const int r = c / (cols / 4), j = (c % (cols / 4)) * 4;
    float4 f = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (r < rows) f = *reinterpret_cast<const float4*>(src + r * ld + j);
    uint32_t* out = reinterpret_cast<uint32_t*>(dst + r * stride + j);
    out[0] = pack_bf16(f.x, f.y);
    out[1] = pack_bf16(f.z, f.w);
  }
}

template <WType T>
__global__ void __launch_bounds__(256)
    absorb_q_tc_kernel(const float* q, int64_t n, int64_t heads, int64_t dr, int64_t dv,
                       const DevWeight w, const AbsorbOut out) {
  constexpr int SA = kAtDn + kAtPad, SB = kAtCols + kAtPad;
  extern __shared__ __align__(16) uint16_t at_smem[];
  uint16_t* sa = at_smem;            // [kAtRows][SA]: q_nope
  uint16_t* sb = sa + kAtRows * SA;  // [kAtDn][SB]: W_UK[h]'s columns c0 ..
  const int64_t h = blockIdx.x, c0 = int64_t(blockIdx.y) * kAtCols;
  const int64_t t0 = int64_t(blockIdx.z) * kAtRows;
  const int rows = int(min(int64_t(kAtRows), n - t0));
  const int64_t dc = w.k, dq = dc + dr, dqk = kAtDn + dr;
  pdl_trigger();
  // The weights first: no kernel before this one writes them.
  stage_weight_bf16<T>(w, h * (kAtDn + dv), kAtDn, c0, sb, SB);
  pdl_wait();
  stage_rows_bf16(q + (t0 * heads + h) * dqk, heads * dqk, rows, kAtDn, sa, SA);
  put_query_pe(q, heads, kAtDn, dr, dc, h, t0, rows, out);
  __syncthreads();
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int wm = warp / 4, wn = warp % 4;
  float acc[2][4][4] = {};
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
    uint32_t a[kAtDn / 16][4];
    const uint16_t* arow = sa + (wm * 32 + mi * 16 + lane % 16) * SA + (lane / 16) * 8;
#pragma unroll
    for (int kk = 0; kk < kAtDn / 16; ++kk) ldsm_x4(a[kk], arow + kk * 16);
    mma_pv<kAtDn / 16, 4>(acc[mi], a, sb + wn * 32, SB, lane);
  }
  store_tile(acc, wm, lane, rows, [&](int r, int col, float v0, float v1) {
    *reinterpret_cast<uint32_t*>(out.qcb + ((t0 + r) * heads + h) * dq + c0 + wn * 32 + col) =
        pack_bf16(v0, v1);
  });
}

// The other absorbed projection, o[t, h] = W_UV[h] · o_lat[t, h], on the BF16 tensor cores for
// chunks over gemv_max_rows: block (head, 64 rows), all dv = 128 outputs, K = dc in chunks of
// 128 staged in BF16 (o_lat and the weight times its block scale rounded), F32 out. The gemv
// path re-read W_UV[h] for every 16 rows.
template <WType T>
__global__ void __launch_bounds__(256) uv_tc_kernel(const float* o_lat, int64_t n, int64_t heads,
                                                    int64_t dn, const DevWeight w, float* o) {
  constexpr int DV = 128, S = kAtCols + kAtPad;
  extern __shared__ __align__(16) uint16_t at_smem[];
  uint16_t* sa = at_smem;           // [kAtRows][S]: o_lat's K chunk
  uint16_t* sb = sa + kAtRows * S;  // [DV][S]: W_UV[h]'s K chunk, a row per output
  const int64_t h = blockIdx.x, t0 = int64_t(blockIdx.y) * kAtRows;
  const int rows = int(min(int64_t(kAtRows), n - t0));
  const int64_t dc = w.k, row0 = h * (dn + DV) + dn;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int wm = warp / 4, wn = warp % 4;
  float acc[2][4][4] = {};
  pdl_wait();
  for (int64_t kc = 0; kc < dc; kc += kAtCols) {
    __syncthreads();  // every warp done with the last chunk
    stage_weight_bf16<T>(w, row0, DV, kc, sb, S);
    stage_rows_bf16(o_lat + (t0 * heads + h) * dc + kc, heads * dc, rows, kAtCols, sa, S);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kAtCols / 16; ++kk) {
      uint32_t a[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        ldsm_x4(a[mi], sa + (wm * 32 + mi * 16 + lane % 16) * S + kk * 16 + (lane / 16) * 8);
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        uint32_t b[4];  // outputs wn·32 + 16p .. +15, K kk·16 .. +15
        ldsm_x4(b, sb + (wn * 32 + p * 16 + (lane / 16) * 8 + lane % 8) * S + kk * 16 +
                       ((lane / 8) % 2) * 8);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          mma(acc[mi][2 * p], a[mi], b[0], b[1]);
          mma(acc[mi][2 * p + 1], a[mi], b[2], b[3]);
        }
      }
    }
  }
  pdl_trigger();
  store_tile(acc, wm, lane, rows, [&](int r, int col, float v0, float v1) {
    *reinterpret_cast<float2*>(o + ((t0 + r) * heads + h) * DV + wn * 32 + col) = {v0, v1};
  });
}

template <WType T>
void absorb_launch(const float* q, int64_t n, int64_t heads, int64_t dn, int64_t dr, int64_t dv,
                   const DevWeight& w, const AbsorbOut& out, cudaStream_t s) {
  constexpr int CH = WTraits<T>::kChunk;
  if (w.k % CH == 0 && (T != WType::E4M3 || w.bk % CH == 0) &&
      (reinterpret_cast<uintptr_t>(w.w) & 15) == 0) {
    // One row per block at batch 1; 4 otherwise (acc holds R · CH floats per thread).
    const auto launch = [&](auto rows) {
      constexpr int R = decltype(rows)::value;
      const dim3 grid(unsigned(heads), unsigned(ceil_div(w.k, 32 * CH)), unsigned(ceil_div(n, R)));
      const size_t smem = size_t(R * dn + kAbsorbSlices * 32 * CH) * sizeof(float);
      launch_pdl(absorb_q_vec_kernel<T, R>, grid, 32 * kAbsorbSlices, smem, s, q, n, heads, dn, dr,
                 dv, w, out);
    };
    if (n == 1)
      launch(std::integral_constant<int, 1>{});
    else
      launch(std::integral_constant<int, 4>{});
    return;
  }
  const dim3 grid(unsigned(heads), unsigned(ceil_div(w.k, 32)), unsigned(ceil_div(n, kAbsorbRows)));
  const size_t smem = size_t(kAbsorbRows * dn + kAbsorbSlices * kAbsorbRows * 32) * sizeof(float);
  launch_pdl(absorb_q_kernel<T>, grid, 32 * kAbsorbSlices, smem, s, q, n, heads, dn, dr, dv, w,
             out);
}

}  // namespace

namespace {

// What both tensor-core projections take: kv_b FP8 (block width a multiple of 16) or BF16,
// kv_lora a multiple of kAtCols, kv_b and the F32 input 16-byte aligned.
bool absorbed_tc_operands(const DevWeight& kv_b, const float* in) {
  const bool fp8 = kv_b.type == WType::E4M3;
  return (fp8 || kv_b.type == WType::BF16) && kv_b.k % kAtCols == 0 &&
         (!fp8 || kv_b.bk % 16 == 0) && (reinterpret_cast<uintptr_t>(kv_b.w) & 15) == 0 &&
         (reinterpret_cast<uintptr_t>(in) & 15) == 0;
}

// The kernel built for kv_b's type (fp8 or bf16, both of one signature), with `smem` bytes of
// dynamic shared memory allowed.
template <class Kernel>
Kernel absorbed_tc_kernel(const DevWeight& kv_b, Kernel fp8, Kernel bf16, size_t smem) {
  const Kernel kernel = kv_b.type == WType::E4M3 ? fp8 : bf16;
  DSV3_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  return kernel;
}

}  // namespace

bool mla_absorb_q_tc(const float* q, int64_t n, int64_t heads, int64_t dn, int64_t dr, int64_t dv,
                     const DevWeight& kv_b, const QueryRope* rope, uint16_t* qcb, cudaStream_t s) {
  if (!absorbed_tc_operands(kv_b, q) || dn != kAtDn || dr % 4 != 0) return false;
  if (n == 0) return true;
  const AbsorbOut out{nullptr, qcb, rope ? *rope : QueryRope{}};
  const dim3 grid(unsigned(heads), unsigned(kv_b.k / kAtCols), unsigned(ceil_div(n, kAtRows)));
  constexpr size_t smem = size_t(kAtRows * (kAtDn + kAtPad) + kAtDn * (kAtCols + kAtPad)) * 2;
  launch_pdl(absorbed_tc_kernel(kv_b, absorb_q_tc_kernel<WType::E4M3>,
                                absorb_q_tc_kernel<WType::BF16>, smem),
             grid, 256, smem, s, q, n, heads, dr, dv, kv_b, out);
  DSV3_CUDA_CHECK_LAUNCH();
  return true;
}

bool mla_uv_tc(const float* o_lat, int64_t n, int64_t heads, int64_t dn, int64_t dv,
               const DevWeight& kv_b, float* o, cudaStream_t s) {
  if (!absorbed_tc_operands(kv_b, o_lat) || dv != 128 ||
      (kv_b.type == WType::E4M3 && kv_b.bn % 16 != 0))
    return false;
  if (n == 0) return true;
  const dim3 grid(unsigned(heads), unsigned(ceil_div(n, kAtRows)));
  constexpr size_t smem = size_t((kAtRows + 128) * (kAtCols + kAtPad)) * 2;
  launch_pdl(absorbed_tc_kernel(kv_b, uv_tc_kernel<WType::E4M3>, uv_tc_kernel<WType::BF16>, smem),
             grid, 256, smem, s, o_lat, n, heads, dn, kv_b, o);
  DSV3_CUDA_CHECK_LAUNCH();
  return true;
}

void mla_absorb_q(const float* q, int64_t n, int64_t heads, int64_t dn, int64_t dr, int64_t dv,
                  const DevWeight& kv_b, const QueryRope* rope, float* qc, uint16_t* qcb,
                  cudaStream_t s) {
  if (n == 0) return;
  const AbsorbOut out{qc, qcb, rope ? *rope : QueryRope{}};
  switch (kv_b.type) {
    case WType::F32:
      absorb_launch<WType::F32>(q, n, heads, dn, dr, dv, kv_b, out, s);
      break;
    case WType::BF16:
      absorb_launch<WType::BF16>(q, n, heads, dn, dr, dv, kv_b, out, s);
      break;
    case WType::F16:
      absorb_launch<WType::F16>(q, n, heads, dn, dr, dv, kv_b, out, s);
      break;
    case WType::E4M3:
      absorb_launch<WType::E4M3>(q, n, heads, dn, dr, dv, kv_b, out, s);
      break;
  }
  DSV3_CUDA_CHECK_LAUNCH();
}

namespace {

int64_t g_split_blocks = 0;  // set_mla_split_blocks
bool g_tc_narrow = true;     // set_mla_tc_narrow
bool g_mla_wgmma = true;     // set_mla_wgmma

// Blocks of `kernel` (its shared memory allowed first) the whole GPU holds at once: the
// attention's splits aim at one wave of them. Found once per kernel and device (the eager path
// asks at every layer).
template <class Kernel>
int64_t resident_blocks(Kernel kernel, int threads, size_t smem) {
  DSV3_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  if (g_split_blocks > 0) return g_split_blocks;
  int dev = 0;
  DSV3_CUDA_CHECK(cudaGetDevice(&dev));
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, int, size_t>, int64_t> known;
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), dev, threads, smem);
  const std::lock_guard<std::mutex> lock(mu);
  if (const auto it = known.find(key); it != known.end()) return it->second;
  int sms = 0, per_sm = 0;
  DSV3_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  DSV3_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  return known[key] = std::max(1, sms * per_sm);
}

// Key splits of the attention kernels (blocks of heads_per_block heads, key tiles of key_tile):
// as many as fill one wave of `resident` blocks, at least one key tile a split, and no more
// than the scratch holds. A second wave only adds partials to write and merge: each split's
// are heads · (dc + 2) floats, as many bytes as 228 BF16 cache rows at 128 heads.
int64_t mla_splits(int64_t n, int64_t heads, int64_t heads_per_block, int64_t key_tile, int64_t dc,
                   int64_t max_position, int64_t partial_floats, int64_t resident) {
  const int64_t blocks = n * ceil_div(heads, heads_per_block);
  int64_t splits = std::max<int64_t>(1, resident / blocks);
  splits = std::min(splits, ceil_div(max_position + 1, key_tile));
  splits = std::min(splits, partial_floats / (n * heads * (dc + 2)));
  return std::max<int64_t>(1, splits);
}

// Either attention kernel (heads_per_block heads and key tiles of key_tile a block, `threads`
// threads, `smem` bytes) over its splits, then the merge when there is more than one. Both
// kernels take (qc, heads, pool, layer, positions, seqs, split_len, scale, partial, o_lat).
template <class Kernel, class Q>
void attend(Kernel kernel, int64_t heads_per_block, int64_t key_tile, int threads, size_t smem,
            const Q* qc, int64_t n, int64_t heads, const CachePool& pool, int64_t layer,
            const int32_t* positions, const int32_t* seqs, int64_t max_position, float scale,
            float* partial, int64_t partial_floats, float* o_lat, cudaStream_t s) {
  const int64_t splits = mla_splits(n, heads, heads_per_block, key_tile, pool.dc, max_position,
                                    partial_floats, resident_blocks(kernel, threads, smem));
  const int64_t split_len = ceil_div(ceil_div(max_position + 1, splits), key_tile) * key_tile;
  const dim3 grid(unsigned(n), unsigned(ceil_div(heads, heads_per_block)), unsigned(splits));
  launch_pdl(kernel, grid, unsigned(threads), smem, s, qc, heads, pool, layer, positions, seqs,
             split_len, scale, partial, splits == 1 ? o_lat : nullptr);
  DSV3_CUDA_CHECK_LAUNCH();
  if (splits > 1) merge_launch(partial, n, heads, splits, pool.dc, o_lat, s);
}

}  // namespace

void set_mla_split_blocks(int64_t blocks) {
  g_split_blocks = std::max<int64_t>(0, blocks);
}
void set_mla_tc_narrow(bool on) {
  g_tc_narrow = on;
}
void set_mla_wgmma(bool on) {
  g_mla_wgmma = on;
}

void mla_attention(const float* qc, int64_t n, int64_t heads, const CachePool& pool, int64_t layer,
                   const int32_t* positions, const int32_t* seqs, int64_t max_position, float scale,
                   float* partial, int64_t partial_floats, float* o_lat, cudaStream_t s) {
  if (n == 0) return;
  const int64_t dc = pool.dc, D = pool.row();
  const size_t smem = size_t(kHeadsPerBlock * D + kKeyTile * (D + 1) + kHeadsPerBlock * dc +
                             kHeadsPerBlock * kKeyTile) *
                      sizeof(float);
  const auto launch = [&](auto kernel) {
    attend(kernel, kHeadsPerBlock, kKeyTile, kHeadsPerBlock * 32, smem, qc, n, heads, pool, layer,
           positions, seqs, max_position, scale, partial, partial_floats, o_lat, s);
  };
  if (pool.fp8)
    launch(attention_kernel<uint8_t>);
  else if (pool.bf16)
    launch(attention_kernel<uint16_t>);
  else
    launch(attention_kernel<float>);
}

bool mla_attention_tc_supported(const CachePool& pool) {
  return (pool.bf16 || pool.fp8) &&
         ((pool.dc == 512 && pool.dr == 64) || (pool.dc == 256 && pool.dr == 32));
}

void mla_attention_tc(const uint16_t* qc, int64_t n, int64_t heads, const CachePool& pool,
                      int64_t layer, const int32_t* positions, const int32_t* seqs,
                      int64_t max_position, float scale, float* partial, int64_t partial_floats,
                      float* o_lat, cudaStream_t s) {
  if (n == 0) return;
  const int64_t dc = pool.dc, D = pool.row();
  const size_t smem = size_t((kTcHeads + kTcStages * kTcKeys) * (D + kTcPad)) * 2 +  // q, keys
                      size_t(kTcHeads * (kTcKeys + 4)) * 4;                          // scores
  const float scale_log2 = scale * 1.4426950408889634f;
  const auto launch = [&](auto kernel) {
    attend(kernel, kTcHeads, kTcKeys, kTcWarps * 32, smem, qc, n, heads, pool, layer, positions,
           seqs, max_position, scale_log2, partial, partial_floats, o_lat, s);
  };
  // Up to 16 heads: a 16-head kernel, on wgmma where there is sm_90a code for it (BF16 or FP8
  // cache; mma.sync's takes BF16 only). On mma.sync, not where one row reads at most 256
  // keys: there the 64-head kernel's 32-key splits (8 blocks) finish sooner than 4 of 64 (V2-Lite
  // dims, batch 1 at a 64-token prompt: 475.8 / 473.2 tok/s against 471.8 / 469.2; at 16K tokens
  // the 16-head kernel is ahead, 0.023 ms against 0.025 a layer, H200). The wgmma kernels both
  // take 64-key tiles.
  const auto narrow = [&](auto kernel, int threads, size_t smem) {
    attend(kernel, kNwHeads, kNwKeys, threads, smem, qc, n, heads, pool, layer, positions, seqs,
           max_position, scale_log2, partial, partial_floats, o_lat, s);
  };
  const bool wgmma = g_mla_wgmma && wgmma_device() && dc == 512 && pool.dr == 64 &&
                     (pool.bf16 || (pool.fp8 && pool.row_bytes() == kWgF8Row));
  const bool use_narrow = g_tc_narrow && heads <= kNwHeads && (wgmma || pool.bf16) &&
                          (wgmma || n > 1 || max_position + 1 > 256);
  const auto wide_wgmma = [&](auto kernel, size_t smem) {
    attend(kernel, kWdHeads, kWdKeys, kWdThreads, smem, qc, n, heads, pool, layer, positions, seqs,
           max_position, scale_log2, partial, partial_floats, o_lat, s);
  };
  if (dc == 512 && pool.dr == 64) {
    if (use_narrow && wgmma && pool.fp8)
      narrow(attention_narrow_wgmma_kernel<true>, kNgThreads, kNgSmem<true>);
    else if (use_narrow && wgmma)
      narrow(attention_narrow_wgmma_kernel<false>, kNgThreads, kNgSmem<false>);
    else if (use_narrow)
      narrow(attention_narrow_kernel<512, 64>, kNwWarps * 32, narrow_smem_bytes(D));
    else if (wgmma && pool.fp8)
      wide_wgmma(attention_wgmma_kernel<true>, kWdSmem<true>);
    else if (wgmma)
      wide_wgmma(attention_wgmma_kernel<false>, kWdSmem<false>);
    else
      launch(pool.fp8 ? attention_tc_kernel<512, 64, true> : attention_tc_kernel<512, 64, false>);
  } else if (dc == 256 && pool.dr == 32) {
    if (use_narrow)
      narrow(attention_narrow_kernel<256, 32>, kNwWarps * 32, narrow_smem_bytes(D));
    else
      launch(pool.fp8 ? attention_tc_kernel<256, 32, true> : attention_tc_kernel<256, 32, false>);
  } else {
    DSV3_CUDA_CHECK(cudaErrorInvalidValue);  // callers check mla_attention_tc_supported
  }
}

}  // namespace dsv3::cuda
