// Row-wise and element-wise kernels: embedding, RMSNorm (+ residual add), RoPE, the latent
// cache write, SwiGLU, conversions, and the MoE routing / permutation / combine.
// Each follows its CPU counterpart's arithmetic (kernels/cpu/basic.cpp, model/moe.cpp).
#include <cfloat>
#include <climits>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode.cuh"
#include "kernels/cuda/launch.cuh"

namespace dsv3::cuda {

namespace {
bool g_pdl = true;
bool g_fused_route = true;  // fused_route_permute
}  // namespace

bool pdl_enabled() {
  return g_pdl;
}

void set_programmatic_launch(bool on) {
  g_pdl = on;
}

namespace {

constexpr int kThreads = 256;

// Sum over the block (all threads must call it); `buf` holds kThreads / 32 doubles.
constexpr int kNormThreads = 1024;

__device__ double block_sum(double v, double* buf) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  __syncthreads();  // buf may still be read from a previous call
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  double t = 0;
  for (int w = 0; w < int(blockDim.x) / 32; ++w) t += buf[w];
  return t;
}

__global__ void embedding_kernel(const int32_t* ids, const void* table, WType type, int64_t h,
                                 float* out) {
  pdl_enter();
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t];
  for (int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; i < h;
       i += int64_t(gridDim.y) * blockDim.x) {
    float v;
    switch (type) {
      case WType::F32:
        v = load_one<WType::F32>(static_cast<const float*>(table) + id * h, i);
        break;
      case WType::BF16:
        v = load_one<WType::BF16>(static_cast<const uint16_t*>(table) + id * h, i);
        break;
      case WType::F16:
        v = load_one<WType::F16>(static_cast<const uint16_t*>(table) + id * h, i);
        break;
      default:
        v = load_one<WType::E4M3>(static_cast<const uint8_t*>(table) + id * h, i);
        break;
    }
    out[t * h + i] = v;
  }
}

__global__ void add_rmsnorm_kernel(float* x, int64_t ldx, const float* delta, const float* w,
                                   float eps, int64_t d, float* out, int64_t ldo) {
  pdl_enter();
  __shared__ double buf[kNormThreads / 32];
  float* xr = x + blockIdx.x * ldx;
  double ss = 0;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    float v = xr[i];
    if (delta) {
      v += delta[blockIdx.x * d + i];
      xr[i] = v;
    }
    ss += double(v) * v;
  }
  ss = block_sum(ss, buf);
  const float inv = float(1.0 / sqrt(ss / double(d) + double(eps)));
  float* o = out + blockIdx.x * ldo;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) o[i] = w[i] * (xr[i] * inv);
}

// The routed experts' combine, moe_combine's and add_rmsnorm_combine's: the token's slots and
// weights go to shared memory first and each thread loads 8 experts' values at once before
// summing them in order: loading a slot, then the value it points to, inside the sum put two
// dependent loads a term in series (17 us a step at batch 1, V3's 8 experts: the step time with
// the kernel enqueued twice, H200).
constexpr int kCombineMaxK = 32;  // route() takes at most 32 experts a token
constexpr int kCombineBatch = 8;

// Token t's slots and weights into s_pos / s_w (the block's threads; then a barrier).
__device__ void combine_stage(const CombineArgs& c, int64_t t, int32_t* s_pos, float* s_w) {
  for (int64_t j = threadIdx.x; j < c.k; j += blockDim.x) {
    s_pos[j] = c.pos[t * c.k + j];
    s_w[j] = c.weight[t * c.k + j];
  }
  __syncthreads();
}

__device__ float fma_v(float w, float e, float v) {
  return fmaf(w, e, v);
}
__device__ float4 fma_v(float w, float4 e, float4 v) {
  return make_float4(fmaf(w, e.x, v.x), fmaf(w, e.y, v.y), fmaf(w, e.z, v.z), fmaf(w, e.w, v.w));
}

// Element i of token t's combine (V: a float, or a float4 of 4 elements; d in V units):
// shared + Σ_j weight_j · expert_out[pos_j], in j's order.
template <class V>
__device__ V combine_at(const CombineArgs& c, const int32_t* s_pos, const float* s_w, int64_t t,
                        int64_t d, int64_t i) {
  const auto* eo = reinterpret_cast<const V*>(c.expert_out);
  V v = c.shared ? reinterpret_cast<const V*>(c.shared)[t * d + i] : V{};
  for (int64_t j0 = 0; j0 < c.k; j0 += kCombineBatch) {
    V e[kCombineBatch];
#pragma unroll
    for (int u = 0; u < kCombineBatch; ++u)
      e[u] = j0 + u < c.k ? eo[int64_t(s_pos[j0 + u]) * d + i] : V{};
#pragma unroll
    for (int u = 0; u < kCombineBatch; ++u)
      if (j0 + u < c.k) v = fma_v(s_w[j0 + u], e[u], v);
  }
  return v;
}

// Rows of up to kNormThreads · 4 · kNormVecs floats in float4s held in registers, so every load
// is in flight before the first is used. (In the strided loop above each store into x kept the
// next loads from being hoisted over it, since x might alias delta: 7.8 us for one V3 row, ncu.)
constexpr int kNormVecs = 2;

// COMBINE: delta is the routed experts' combine, summed here (add_rmsnorm_combine).
template <bool COMBINE>
__global__ void __launch_bounds__(kNormThreads)
    add_rmsnorm_vec_kernel(float* x, int64_t ldx, const float* delta, CombineArgs cmb,
                           const float* w, float eps, int64_t d, float* out, int64_t ldo) {
  pdl_enter();
  __shared__ double buf[kNormThreads / 32];
  const int64_t nv = d / 4;
  auto* xr = reinterpret_cast<float4*>(x + blockIdx.x * ldx);
  const auto* dr = reinterpret_cast<const float4*>(delta ? delta + blockIdx.x * d : nullptr);
  const auto* wr = reinterpret_cast<const float4*>(w);
  float4 v[kNormVecs], g[kNormVecs], e[kNormVecs];
  if constexpr (COMBINE) {
    __shared__ int32_t s_pos[kCombineMaxK];
    __shared__ float s_w[kCombineMaxK];
    combine_stage(cmb, blockIdx.x, s_pos, s_w);
#pragma unroll
    for (int j = 0; j < kNormVecs; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kNormThreads;
      if (i < nv) e[j] = combine_at<float4>(cmb, s_pos, s_w, blockIdx.x, nv, i);
    }
  }
#pragma unroll
  for (int j = 0; j < kNormVecs; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * kNormThreads;
    if (i < nv) {
      v[j] = xr[i];
      g[j] = __ldg(wr + i);
      if (!COMBINE && delta) e[j] = dr[i];
    }
  }
  double ss = 0;
#pragma unroll
  for (int j = 0; j < kNormVecs; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * kNormThreads;
    if (i < nv) {
      if (COMBINE || delta) {
        v[j] = make_float4(v[j].x + e[j].x, v[j].y + e[j].y, v[j].z + e[j].z, v[j].w + e[j].w);
        xr[i] = v[j];
      }
      ss += double(v[j].x) * v[j].x;
      ss += double(v[j].y) * v[j].y;
      ss += double(v[j].z) * v[j].z;
      ss += double(v[j].w) * v[j].w;
    }
  }
  ss = block_sum(ss, buf);
  const float inv = float(1.0 / sqrt(ss / double(d) + double(eps)));
  auto* o = reinterpret_cast<float4*>(out + blockIdx.x * ldo);
#pragma unroll
  for (int j = 0; j < kNormVecs; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * kNormThreads;
    if (i < nv)
      o[i] = make_float4(g[j].x * (v[j].x * inv), g[j].y * (v[j].y * inv), g[j].z * (v[j].z * inv),
                         g[j].w * (v[j].w * inv));
  }
}

__global__ void rope_kernel(float* x, int64_t n, int64_t vecs, int64_t width, int64_t offset,
                            const float* inv_freq, int64_t half, float factor,
                            const int32_t* positions) {
  pdl_enter();
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n * vecs * half) return;
  const int64_t f = i % half, v = i / half;  // v = row · vecs + vector
  const int64_t t = v / vecs;
  rope_pair(x + v * width + offset + 2 * f, float(positions[t]), inv_freq[f], factor);
}

__global__ void latent_to_cache_kernel(const float* kv, int64_t ld, const float* w_norm, float eps,
                                       const float* inv_freq, int64_t half, float factor,
                                       const int32_t* positions, const int32_t* seqs,
                                       CachePool pool, int64_t layer) {
  pdl_enter();
  __shared__ double buf[kThreads / 32];
  const int64_t t = blockIdx.x, dc = pool.dc;
  const float* src = kv + t * ld;
  const int64_t pos = positions[t];
  const int64_t at = pool.fp8 ? 0 : pool.at(seqs[t], layer, pos);
  const auto put = [&](int64_t i, float v) {
    if (pool.bf16)
      static_cast<uint16_t*>(pool.base)[at + i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    else
      static_cast<float*>(pool.base)[at + i] = v;
  };
  double ss = 0;
  for (int64_t i = threadIdx.x; i < dc; i += blockDim.x) ss += double(src[i]) * src[i];
  ss = block_sum(ss, buf);
  const float inv = float(1.0 / sqrt(ss / double(dc) + double(eps)));
  if (pool.fp8) {
    // c_kv to E4M3 in 1×128 tiles (a warp per tile), k_pe to BF16 (CachePool's FP8 row).
    __shared__ float vals[kFp8CacheMaxDc];
    for (int64_t i = threadIdx.x; i < dc; i += blockDim.x) vals[i] = w_norm[i] * (src[i] * inv);
    __syncthreads();
    char* rowp = pool.row_ptr(seqs[t], layer, pos);
    auto* codes = reinterpret_cast<uint8_t*>(rowp);
    auto* scales = reinterpret_cast<float*>(rowp + dc);
    auto* kpe = reinterpret_cast<uint16_t*>(rowp + pool.fp8_kpe_offset());
    const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
    for (int64_t tile = warp; tile < dc / 128; tile += blockDim.x / 32) {
      const float* v = vals + tile * 128;
      float amax = 0.0f;
      for (int j = lane; j < 128; j += 32) amax = fmaxf(amax, fabsf(v[j]));
      for (int o = 16; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      const float scale = amax > 0.0f ? fmaxf(amax / 448.0f, FLT_MIN) : 1.0f;
      for (int j = lane; j < 128; j += 32)
        codes[tile * 128 + j] =
            uint8_t(__nv_cvt_float_to_fp8(v[j] / scale, __NV_SATFINITE, __NV_E4M3));
      if (lane == 0) scales[tile] = scale;
    }
    for (int64_t f = threadIdx.x; f < half; f += blockDim.x) {
      float p[2] = {src[dc + 2 * f], src[dc + 2 * f + 1]};
      rope_pair(p, float(pos), inv_freq[f], factor);
      kpe[2 * f] = __bfloat16_as_ushort(__float2bfloat16_rn(p[0]));
      kpe[2 * f + 1] = __bfloat16_as_ushort(__float2bfloat16_rn(p[1]));
    }
    return;
  }
  for (int64_t i = threadIdx.x; i < dc; i += blockDim.x) put(i, w_norm[i] * (src[i] * inv));
  for (int64_t f = threadIdx.x; f < half; f += blockDim.x) {
    float p[2] = {src[dc + 2 * f], src[dc + 2 * f + 1]};
    rope_pair(p, float(pos), inv_freq[f], factor);
    put(dc + 2 * f, p[0]);
    put(dc + 2 * f + 1, p[1]);
  }
}

__device__ __forceinline__ float silu_times(float g, float u) {
  return g / (1.0f + expf(-g)) * u;
}

__global__ void silu_mul_kernel(const float* gate, const float* up, float* out, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  out[i] = silu_times(gate[i], up[i]);
}

// F32, or BF16 (uint16_t) rounded to nearest even.
__device__ __forceinline__ void store_as(float* p, float v) {
  *p = v;
}
__device__ __forceinline__ void store_as(uint16_t* p, float v) {
  *p = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

template <typename Out>
__global__ void silu_mul_rows_kernel(const float* gate, const float* up, int64_t ld, int64_t width,
                                     Out* out, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t r = i / width, c = i - r * width;
  store_as(out + i, silu_times(gate[r * ld + c], up[r * ld + c]));
}

__global__ void to_bf16_kernel(const float* x, uint16_t* out, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}

// One warp per 1×128 tile of an output row, 4 values per lane.
__global__ void quantize_e4m3_tiles_kernel(const QuantizeArgs a) {
  const int64_t tile = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = int(threadIdx.x % 32);
  const int64_t kb = a.k / 128;
  if (tile >= a.padded_rows * kb) return;  // uniform over the warp
  const int64_t r = tile / kb, b = tile % kb;
  // The output row's group: [s0, s0 + len) in the padded rows, `valid` of them from the input.
  int64_t s0 = 0, len = a.padded_rows, valid = a.rows, first = 0;
  if (a.groups > 0) {
    if (r >= a.padded_offsets[a.groups]) return;  // past the last group (a bound was given)
    const int lo = group_of(a.padded_offsets, a.groups, r);
    s0 = a.padded_offsets[lo];
    len = a.padded_offsets[lo + 1] - s0;
    first = a.offsets[lo];
    valid = a.offsets[lo + 1] - first;
  }
  const int64_t i = r - s0;
  uint8_t* qrow = a.q + r * a.k + b * 128 + 4 * lane;
  float* scale_at = a.scales + kb * s0 + b * len + i;
  if (i >= valid) {  // padding: zero codes, scale 1
    *reinterpret_cast<uint32_t*>(qrow) = 0;
    if (lane == 0) *scale_at = 1.0f;
    return;
  }
  const int64_t p = first + i, src = a.x_rows ? a.x_rows[p] : p;
  const float4 v = *reinterpret_cast<const float4*>(a.x + src * a.ldx + b * 128 + 4 * lane);
  float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
  for (int o = 16; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  // As train/fp8.h's tile_scale: at least FLT_MIN, so 1 / scale stays finite.
  const float scale = amax > 0.0f ? fmaxf(amax / 448.0f, FLT_MIN) : 1.0f;
  // A true division, as the CPU recipe (train/fp8.h) and f32_to_e4m3 do.
  const float f[4] = {v.x / scale, v.y / scale, v.z / scale, v.w / scale};
  uint32_t packed = 0;
  for (int j = 0; j < 4; ++j)
    packed |= uint32_t(__nv_cvt_float_to_fp8(f[j], __NV_SATFINITE, __NV_E4M3)) << (8 * j);
  *reinterpret_cast<uint32_t*>(qrow) = packed;
  if (lane == 0) *scale_at = scale;
}

template <WType T>
__global__ void weight_to_bf16_kernel(const DevWeight w, uint16_t* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= w.rows * w.k) return;
  const int64_t r = i / w.k, c = i % w.k;
  float v = load_one<T>(w.w, i);
  if constexpr (T == WType::E4M3) v *= w.scale[(r / w.bn) * ceil_div(w.k, w.bk) + c / w.bk];
  out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

template <typename Out>
__global__ void gather_rows_kernel(const float* src, int64_t ld_src, const int32_t* rows, int64_t d,
                                   Out* dst) {
  pdl_enter();
  const float* s = src + int64_t(rows[blockIdx.x]) * ld_src;
  for (int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; i < d;
       i += int64_t(gridDim.y) * blockDim.x)
    store_as(dst + blockIdx.x * d + i, s[i]);
}

// Index of the largest of v[0, n) (ties to the lower index; -0 equals +0); NaN marks an element
// taken; INT_MAX if every element is taken. The warp's reduction is two redux instructions (a
// max over order keys, then a min over the indices holding it) in place of 10 dependent
// shuffles: the route kernel calls this 12 times a token at V3 sizes.
__device__ int warp_top1(const float* v, int n) {
  const int lane = int(threadIdx.x) % 32;
  float bv = -INFINITY;
  int bi = INT_MAX;
  for (int i = lane; i < n; i += 32) {
    const float x = v[i];
    if (x > bv || (x == bv && i < bi)) {
      bv = x;
      bi = i;
    }
  }
  const uint32_t key = order_key(bv + 0.0f);
  const uint32_t top = __reduce_max_sync(0xffffffffu, key);
  return int(__reduce_min_sync(0xffffffffu, key == top ? uint32_t(bi) : 0xffffffffu));
}

constexpr int kRouteWarps = 4;

// Token t's choices by one warp; `smem` holds the warp's route_warp_floats.
__device__ void route_token(const float* logits, const float* bias, int64_t t, const RouteArgs& r,
                            float* smem, int32_t* expert, float* weight) {
  const int lane = int(threadIdx.x) % 32;
  const int e = int(r.e), groups = int(r.n_group), per_group = e / groups;
  float* score = smem;
  float* choice = score + e;
  float* gscore = choice + e;
  const float* l = logits + t * e;
  if (r.sigmoid) {
    for (int i = lane; i < e; i += 32) score[i] = 1.0f / (1.0f + expf(-l[i]));
  } else {  // softmax as the CPU: f32 exp, double sum
    float mx = -INFINITY;
    for (int i = lane; i < e; i += 32) mx = fmaxf(mx, l[i]);
    mx = warp_max(mx);
    double sum = 0;
    for (int i = lane; i < e; i += 32) sum += double(score[i] = expf(l[i] - mx));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    for (int i = lane; i < e; i += 32) score[i] = float(double(score[i]) / sum);
  }
  for (int i = lane; i < e; i += 32) choice[i] = score[i] + (bias ? bias[i] : 0.0f);
  __syncwarp();
  if (groups > 1) {
    for (int g = lane; g < groups; g += 32) {
      const float* v = choice + g * per_group;
      float a = -INFINITY, b = -INFINITY;
      for (int i = 0; i < per_group; ++i) {
        if (v[i] > a) {
          b = a;
          a = v[i];
        } else if (v[i] > b) {
          b = v[i];
        }
      }
      gscore[g] = r.top2_group_score ? a + b : a;
    }
    __syncwarp();
    // Keep the topk_group best groups: taken ones become NaN, then NaN means "kept".
    for (int j = 0; j < r.topk_group; ++j) {
      int best = warp_top1(gscore, groups);
      if (best >= groups) best = j;
      __syncwarp();
      if (lane == 0) gscore[best] = NAN;
      __syncwarp();
    }
    for (int i = lane; i < e; i += 32)
      if (!isnan(gscore[i / per_group])) choice[i] = -INFINITY;
    __syncwarp();
  }
  // Lane j keeps the j-th choice (k <= 32, route() checks) in a register: reading the choices
  // back from global memory, one dependent load after another, had cost 1.8 of the kernel's
  // 13.5 us for one row (ncu, V3 dims).
  int mine = 0;
  for (int j = 0; j < r.k; ++j) {
    int best = warp_top1(choice, e);
    if (best >= e) best = j;  // only if every score is NaN: keep the index in range
    __syncwarp();
    if (lane == 0) choice[best] = NAN;
    if (lane == j) mine = best;
    __syncwarp();
  }
  const float wv = lane < r.k ? score[mine] : 0.0f;
  float sum = 0;  // in the CPU's order
  for (int j = 0; j < r.k; ++j) sum += __shfl_sync(0xffffffffu, wv, j);
  if (lane < r.k) {
    expert[t * r.k + lane] = mine;
    weight[t * r.k + lane] = (r.normalise ? wv / (sum + 1e-20f) : wv) * r.scale;
  }
}

// Shared floats route_token's warp takes (its scores, choices and group scores), and a block's.
__host__ __device__ int64_t route_warp_floats(const RouteArgs& r) {
  return 2 * r.e + r.n_group;
}
__host__ __device__ size_t route_smem_floats(const RouteArgs& r) {
  return size_t(kRouteWarps) * size_t(route_warp_floats(r));
}

void check_route(const RouteArgs& r) {
  // One choice per lane: the engine refuses models over 32 at load, with a message.
  if (r.k < 1 || r.k > 32 || r.k > r.e) DSV3_CUDA_CHECK(cudaErrorInvalidValue);
}

__global__ void route_kernel(const float* logits, const float* bias, int64_t n, RouteArgs r,
                             int32_t* expert, float* weight) {
  pdl_enter();
  extern __shared__ float smem[];
  const int warp = int(threadIdx.x) / 32;
  const int64_t t = int64_t(blockIdx.x) * kRouteWarps + warp;
  if (t < n) route_token(logits, bias, t, r, smem + warp * route_warp_floats(r), expert, weight);
}

// The block groups the pairs by expert (moe_permute's outputs); cnt: e + 1 ints of shared
// memory. Any block size of whole warps up to 1024: thread i scans a run of ceil(e / threads)
// consecutive experts. (Thread 0 walking all 256 experts took 7.2 us of a batch-1 step, ncu.)
__device__ void permute_pairs(const int32_t* expert, int64_t pairs, int64_t k, int64_t e,
                              int32_t* cnt, int32_t* offsets, int32_t* rows, int32_t* pos,
                              int32_t* active) {
  for (int64_t i = threadIdx.x; i <= e; i += blockDim.x) cnt[i] = 0;
  __syncthreads();
  // An expert id out of range (a bug upstream) must not corrupt shared memory: clamp it.
  const auto id = [&](int64_t a) { return min(max(expert[a], 0), int32_t(e - 1)); };
  for (int64_t a = threadIdx.x; a < pairs; a += blockDim.x)
    pos[a] = atomicAdd(&cnt[id(a)], 1);  // rank within the expert (any order)
  __syncthreads();
  // One exclusive scan of (experts with pairs, pairs) packed in 64 bits gives each run of
  // experts its first offset and its first slot in `active`.
  const int i = int(threadIdx.x), lane = i % 32, warp = i / 32;
  const int64_t per = (e + blockDim.x - 1) / blockDim.x;
  const int64_t lo = min(e, i * per), hi = min(e, lo + per);
  __shared__ uint64_t warp_total[32];
  uint64_t v = 0;
  for (int64_t x = lo; x < hi; ++x) v += (uint64_t(cnt[x] > 0) << 32) | uint32_t(cnt[x]);
  uint64_t inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t u = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += u;
  }
  if (lane == 31) warp_total[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    uint64_t t = lane < int(blockDim.x) / 32 ? warp_total[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint64_t u = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) t += u;
    }
    warp_total[lane] = t;  // inclusive over warps
  }
  __syncthreads();
  const uint64_t before = (warp > 0 ? warp_total[warp - 1] : 0) + inc - v;
  int32_t run = int32_t(before & 0xffffffffu), slot = int32_t(before >> 32);
  for (int64_t x = lo; x < hi; ++x) {
    const int32_t c = cnt[x];
    cnt[x] = run;
    offsets[x] = run;
    if (c > 0) active[1 + slot++] = int32_t(x);
    run += c;
  }
  if (i == int(blockDim.x) - 1) {  // the last run ends where every pair is counted
    offsets[e] = run;
    active[0] = slot;
  }
  __syncthreads();
  for (int64_t a = threadIdx.x; a < pairs; a += blockDim.x) {
    const int32_t p = cnt[id(a)] + pos[a];
    pos[a] = p;
    rows[p] = int32_t(a / k);
  }
}

__global__ void moe_permute_kernel(const int32_t* expert, int64_t pairs, int64_t k, int64_t e,
                                   int32_t* offsets, int32_t* rows, int32_t* pos, int32_t* active) {
  pdl_enter();
  extern __shared__ int32_t cnt[];  // [e + 1]
  permute_pairs(expert, pairs, k, e, cnt, offsets, rows, pos, active);
}

// route_kernel then moe_permute_kernel in one block, for up to kRouteWarps tokens: a decode
// step's routing is a chain of latency-bound launches, and this is one fewer.
__global__ void route_permute_kernel(const float* logits, const float* bias, int64_t n, RouteArgs r,
                                     int32_t* expert, float* weight, int32_t* offsets,
                                     int32_t* rows, int32_t* pos, int32_t* active) {
  pdl_enter();
  extern __shared__ float smem[];
  const int warp = int(threadIdx.x) / 32;
  if (warp < n)
    route_token(logits, bias, warp, r, smem + warp * route_warp_floats(r), expert, weight);
  __syncthreads();  // the choices, written to global memory, are visible to the block
  permute_pairs(expert, n * r.k, r.k, r.e, reinterpret_cast<int32_t*>(smem + route_smem_floats(r)),
                offsets, rows, pos, active);
}

__global__ void moe_combine_kernel(CombineArgs c, int64_t d, float* y) {
  pdl_enter();
  __shared__ int32_t s_pos[kCombineMaxK];
  __shared__ float s_w[kCombineMaxK];
  const int64_t t = blockIdx.x;
  combine_stage(c, t, s_pos, s_w);
  for (int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; i < d;
       i += int64_t(gridDim.y) * blockDim.x)
    y[t * d + i] = combine_at<float>(c, s_pos, s_w, t, d, i);
}

unsigned blocks_for(int64_t n) {
  return unsigned(ceil_div(n, kThreads));
}

}  // namespace

void embedding(const int32_t* ids, int64_t n, const void* table, WType type, int64_t h, float* out,
               cudaStream_t s) {
  if (n == 0) return;
  launch_pdl(embedding_kernel, dim3(unsigned(n), unsigned(ceil_div(h, kThreads))), kThreads, 0, s,
             ids, table, type, h, out);
  DSV3_CUDA_CHECK_LAUNCH();
}

namespace {
bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}
// Whether rows take add_rmsnorm_vec_kernel.
bool norm_vec_fits(const float* x, int64_t ldx, const float* w, int64_t d, const float* out,
                   int64_t ldo) {
  return d % 4 == 0 && ldx % 4 == 0 && ldo % 4 == 0 && d <= int64_t(kNormThreads) * 4 * kNormVecs &&
         aligned16(x) && aligned16(w) && aligned16(out);
}
}  // namespace

void add_rmsnorm(float* x, int64_t ldx, const float* delta, const float* w, float eps, int64_t n,
                 int64_t d, float* out, int64_t ldo, cudaStream_t s) {
  if (n == 0) return;
  if (norm_vec_fits(x, ldx, w, d, out, ldo) && aligned16(delta))
    launch_pdl(add_rmsnorm_vec_kernel<false>, unsigned(n), kNormThreads, 0, s, x, ldx, delta,
               CombineArgs{}, w, eps, d, out, ldo);
  else
    launch_pdl(add_rmsnorm_kernel, unsigned(n), kNormThreads, 0, s, x, ldx, delta, w, eps, d, out,
               ldo);
  DSV3_CUDA_CHECK_LAUNCH();
}

void rope(float* x, int64_t n, int64_t vecs, int64_t width, int64_t offset, const float* inv_freq,
          int64_t half, float factor, const int32_t* positions, cudaStream_t s) {
  const int64_t total = n * vecs * half;
  if (total == 0) return;
  launch_pdl(rope_kernel, blocks_for(total), kThreads, 0, s, x, n, vecs, width, offset, inv_freq,
             half, factor, positions);
  DSV3_CUDA_CHECK_LAUNCH();
}

void latent_to_cache(const float* kv, int64_t ld, int64_t n, const float* w_norm, float eps,
                     const float* inv_freq, int64_t half, float factor, const int32_t* positions,
                     const int32_t* seqs, const CachePool& pool, int64_t layer, cudaStream_t s) {
  if (n == 0) return;
  launch_pdl(latent_to_cache_kernel, unsigned(n), kThreads, 0, s, kv, ld, w_norm, eps, inv_freq,
             half, factor, positions, seqs, pool, layer);
  DSV3_CUDA_CHECK_LAUNCH();
}

// One row per block, 16 bytes per thread and step (rows of F32 or BF16 values: 4-byte multiples);
// FP8 rows decoded into BF16 ones.
__global__ void gather_cache_rows_kernel(CachePool pool, int64_t layer, int64_t seq,
                                         int64_t k_begin, char* out) {
  if (pool.fp8) {
    const int64_t dc = pool.dc, D = pool.row();
    const char* rowp = pool.row_ptr(seq, layer, k_begin + blockIdx.x);
    const auto* codes = reinterpret_cast<const uint8_t*>(rowp);
    const auto* scales = reinterpret_cast<const float*>(rowp + dc);
    const auto* kpe = reinterpret_cast<const uint16_t*>(rowp + pool.fp8_kpe_offset());
    auto* dst = reinterpret_cast<uint16_t*>(out) + blockIdx.x * D;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
      dst[i] =
          i < dc
              ? __bfloat16_as_ushort(__float2bfloat16_rn(e4m3_to_f32(codes[i]) * scales[i / 128]))
              : kpe[i - dc];
    return;
  }
  const int64_t r = blockIdx.x, bytes = pool.row() * pool.elem_bytes();
  const char* src =
      static_cast<const char*>(pool.base) + pool.at(seq, layer, k_begin + r) * pool.elem_bytes();
  char* dst = out + r * bytes;
  if (bytes % 16 == 0) {
    for (int64_t i = threadIdx.x * 16; i < bytes; i += blockDim.x * 16)
      *reinterpret_cast<uint4*>(dst + i) = *reinterpret_cast<const uint4*>(src + i);
  } else {
    for (int64_t i = threadIdx.x * 4; i < bytes; i += blockDim.x * 4)
      *reinterpret_cast<uint32_t*>(dst + i) = *reinterpret_cast<const uint32_t*>(src + i);
  }
}

void gather_cache_rows(const CachePool& pool, int64_t layer, int64_t seq, int64_t k_begin,
                       int64_t k_end, void* out, cudaStream_t s) {
  if (k_end <= k_begin) return;
  gather_cache_rows_kernel<<<unsigned(k_end - k_begin), 128, 0, s>>>(pool, layer, seq, k_begin,
                                                                     static_cast<char*>(out));
  DSV3_CUDA_CHECK_LAUNCH();
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  silu_mul_kernel<<<blocks_for(n), kThreads, 0, s>>>(gate, up, out, n);
  DSV3_CUDA_CHECK_LAUNCH();
}

template <typename Out>
void silu_mul_rows_to(const float* gate, const float* up, int64_t ld, int64_t rows, int64_t width,
                      Out* out, cudaStream_t s) {
  const int64_t n = rows * width;
  if (n == 0) return;
  silu_mul_rows_kernel<Out><<<blocks_for(n), kThreads, 0, s>>>(gate, up, ld, width, out, n);
  DSV3_CUDA_CHECK_LAUNCH();
}

void silu_mul_rows(const float* gate, const float* up, int64_t ld, int64_t rows, int64_t width,
                   float* out, cudaStream_t s) {
  silu_mul_rows_to(gate, up, ld, rows, width, out, s);
}

void silu_mul_rows(const float* gate, const float* up, int64_t ld, int64_t rows, int64_t width,
                   uint16_t* out, cudaStream_t s) {
  silu_mul_rows_to(gate, up, ld, rows, width, out, s);
}

void to_bf16(const float* x, uint16_t* out, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  to_bf16_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, out, n);
  DSV3_CUDA_CHECK_LAUNCH();
}

void quantize_e4m3_tiles(const QuantizeArgs& a, cudaStream_t s) {
  const int64_t warps = a.padded_rows * (a.k / 128);
  if (warps == 0) return;
  quantize_e4m3_tiles_kernel<<<unsigned(ceil_div(warps * 32, kThreads)), kThreads, 0, s>>>(a);
  DSV3_CUDA_CHECK_LAUNCH();
}

void weight_to_bf16(const DevWeight& w, uint16_t* out, cudaStream_t s) {
  const int64_t total = w.rows * w.k;
  if (total == 0) return;
  switch (w.type) {
    case WType::F32:
      weight_to_bf16_kernel<WType::F32><<<blocks_for(total), kThreads, 0, s>>>(w, out);
      break;
    case WType::BF16:
      weight_to_bf16_kernel<WType::BF16><<<blocks_for(total), kThreads, 0, s>>>(w, out);
      break;
    case WType::F16:
      weight_to_bf16_kernel<WType::F16><<<blocks_for(total), kThreads, 0, s>>>(w, out);
      break;
    case WType::E4M3:
      weight_to_bf16_kernel<WType::E4M3><<<blocks_for(total), kThreads, 0, s>>>(w, out);
      break;
  }
  DSV3_CUDA_CHECK_LAUNCH();
}

template <typename Out>
void gather_rows_to(const float* src, int64_t ld_src, const int32_t* rows, int64_t n, int64_t d,
                    Out* dst, cudaStream_t s) {
  if (n == 0) return;
  launch_pdl(gather_rows_kernel<Out>, dim3(unsigned(n), unsigned(ceil_div(d, kThreads))), kThreads,
             0, s, src, ld_src, rows, d, dst);
  DSV3_CUDA_CHECK_LAUNCH();
}

void gather_rows(const float* src, int64_t ld_src, const int32_t* rows, int64_t n, int64_t d,
                 float* dst, cudaStream_t s) {
  gather_rows_to(src, ld_src, rows, n, d, dst, s);
}

void gather_rows(const float* src, int64_t ld_src, const int32_t* rows, int64_t n, int64_t d,
                 uint16_t* dst, cudaStream_t s) {
  gather_rows_to(src, ld_src, rows, n, d, dst, s);
}

void route(const float* logits, const float* bias, int64_t n, const RouteArgs& r, int32_t* expert,
           float* weight, cudaStream_t s) {
  if (n == 0) return;
  check_route(r);
  launch_pdl(route_kernel, unsigned(ceil_div(n, kRouteWarps)), kRouteWarps * 32,
             route_smem_floats(r) * sizeof(float), s, logits, bias, n, r, expert, weight);
  DSV3_CUDA_CHECK_LAUNCH();
}

void moe_permute(const int32_t* expert, int64_t pairs, int64_t k, int64_t e, int32_t* offsets,
                 int32_t* rows, int32_t* pos, int32_t* active, cudaStream_t s) {
  launch_pdl(moe_permute_kernel, 1, 1024, size_t(e + 1) * sizeof(int32_t), s, expert, pairs, k, e,
             offsets, rows, pos, active);
  DSV3_CUDA_CHECK_LAUNCH();
}

void route_and_permute(const float* logits, const float* bias, int64_t n, const RouteArgs& r,
                       int32_t* expert, float* weight, int32_t* offsets, int32_t* rows,
                       int32_t* pos, int32_t* active, cudaStream_t s) {
  if (n == 0 || n > kRouteWarps || !g_fused_route) {
    route(logits, bias, n, r, expert, weight, s);
    moe_permute(expert, n * r.k, r.k, r.e, offsets, rows, pos, active, s);
    return;
  }
  check_route(r);
  const size_t smem = route_smem_floats(r) * sizeof(float) + size_t(r.e + 1) * sizeof(int32_t);
  launch_pdl(route_permute_kernel, 1, kRouteWarps * 32, smem, s, logits, bias, n, r, expert, weight,
             offsets, rows, pos, active);
  DSV3_CUDA_CHECK_LAUNCH();
}

bool fused_route_permute(bool on) {
  return std::exchange(g_fused_route, on);
}

void moe_combine(const CombineArgs& c, int64_t n, int64_t d, float* y, cudaStream_t s) {
  if (n == 0) return;
  if (c.k > kCombineMaxK) DSV3_CUDA_CHECK(cudaErrorInvalidValue);  // route() refuses them first
  const dim3 grid(unsigned(n), unsigned(ceil_div(d, kThreads)));
  launch_pdl(moe_combine_kernel, grid, kThreads, 0, s, c, d, y);
  DSV3_CUDA_CHECK_LAUNCH();
}

bool add_rmsnorm_combine(float* x, int64_t ldx, const CombineArgs& delta, const float* w, float eps,
                         int64_t n, int64_t d, float* out, int64_t ldo, cudaStream_t s) {
  if (n == 0) return true;
  if (delta.k > kCombineMaxK) DSV3_CUDA_CHECK(cudaErrorInvalidValue);
  if (!norm_vec_fits(x, ldx, w, d, out, ldo) || !aligned16(delta.shared) ||
      !aligned16(delta.expert_out))
    return false;
  launch_pdl(add_rmsnorm_vec_kernel<true>, unsigned(n), kNormThreads, 0, s, x, ldx, nullptr, delta,
             w, eps, d, out, ldo);
  DSV3_CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace dsv3::cuda
