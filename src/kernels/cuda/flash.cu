// MLA prefill attention in the non-absorbed form (MODEL_SPEC §3; what DeepSeek's own code and
// FlashMLA's peers do for prefill): per head, keys [k_nope ; k_pe] of dn + dr and values of dv
// (k_nope, v decompressed from the latent cache by one GEMM), so a score costs dn + dr
// multiply-adds instead of the absorbed form's dc + dr (192 vs 576 at DeepSeek-V3's sizes) and
// the value sum dv instead of dc. Two kernels, both FlashAttention-2's schedule with F32
// accumulation: the softmax is online, P goes to BF16 in registers, and no score is ever
// written out. On Hopper, heads of 192 / 128 (DeepSeek-V3's and V2-Lite's) take the warpgroup
// MMAs (wgmma: 128 query rows and 128-key tiles a block); every other size, and other GPUs, the
// mma.sync m16n8k16 one (64 query rows of one head in four warps of 16 rows, 64-key tiles).
// Both stream key / value tiles through shared memory (cp.async, two stages).
#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace dsv3::cuda {

namespace {

constexpr int kRows = 64;  // query rows per block (16 per warp)
constexpr int kKeys = 64;  // keys per tile
constexpr int kThreads = 128;
constexpr int kPad = 8;  // bf16 of padding per shared row: ldmatrix without bank conflicts

// The row state of a thread's two rows (row_a, row_b = row_a + 8; mma C-fragment rows): from
// the previous key chunk's launch, unless this one is the first.
template <int NT>
__device__ __forceinline__ void load_state(const FlashArgs& a, int64_t h, int64_t row_a,
                                           int64_t row_b, int t4, float (&m)[2], float (&l)[2],
                                           float (&o)[NT][4]) {
#pragma unroll
  for (int i = 0; i < NT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  if (a.first) return;
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int64_t row = rr ? row_b : row_a;
    if (row >= a.n) continue;
    m[rr] = a.ml[(row * a.heads + h) * 2];
    l[rr] = t4 == 0 ? a.ml[(row * a.heads + h) * 2 + 1] : 0.0f;  // the sum is spread over the quad
    const float* src = a.o + row * a.ldo + h * a.dv;
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      const int d = i * 8 + 2 * t4;
      if (d < a.dv) {
        o[i][2 * rr] = src[d];
        o[i][2 * rr + 1] = src[d + 1];
      }
    }
  }
}

// The row sums over the quad, then either the normalised output or the state for the next
// chunk.
template <int NT>
__device__ __forceinline__ void store_state(const FlashArgs& a, int64_t h, int64_t row_a,
                                            int64_t row_b, int t4, const float (&m)[2],
                                            float (&l)[2], const float (&o)[NT][4]) {
  l[0] = quad_sum(l[0]);
  l[1] = quad_sum(l[1]);
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int64_t row = rr ? row_b : row_a;
    if (row >= a.n) continue;
    const float inv = a.last ? 1.0f / l[rr] : 1.0f;
    float* dst = a.o + row * a.ldo + h * a.dv;
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      const int d = i * 8 + 2 * t4;
      if (d < a.dv)
        *reinterpret_cast<float2*>(dst + d) = {o[i][2 * rr] * inv, o[i][2 * rr + 1] * inv};
    }
    if (!a.last && t4 == 0) {
      a.ml[(row * a.heads + h) * 2] = m[rr];
      a.ml[(row * a.heads + h) * 2 + 1] = l[rr];
    }
  }
}

// One key tile's scores (a thread's share of 16 rows × 8·NT keys in C fragments, keys j0 ..)
// into probabilities in place: where `edge`, masked causally (row r at position pos0 + r) and
// at k_end; the running max moved (log2 domain; corr: the factor for the rows' outputs); each
// exp2(score · scale_log2 - max), added to l. Every instruction here runs for every score of a
// prefill, so the mask compares tile-local 32-bit columns with one limit a row, the scale goes
// into the exponent's FMA, and exp2 flushes denormals (a probability under 2^-126 of the max's).
template <int NT, bool EDGE>
__device__ __forceinline__ void softmax_tile(const FlashArgs& a, float (&s)[NT][4], int64_t j0,
                                             int64_t k_end, int64_t row_a, int64_t row_b, int t4,
                                             float (&m)[2], float (&l)[2], float (&corr)[2]) {
  if (EDGE) {
    // The last column each row may see, relative to this thread's first (2 t4); -1: none.
    const int64_t last = k_end - 1 - j0;
    const int lim[2] = {int(max(int64_t(-1), min(a.pos0 + row_a - j0, last))) - 2 * t4,
                        int(max(int64_t(-1), min(a.pos0 + row_b - j0, last))) - 2 * t4};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (nt * 8 + (e & 1) > lim[e / 2]) s[nt][e] = -INFINITY;
  }
  float raw[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    raw[0] = fmaxf(raw[0], fmaxf(s[nt][0], s[nt][1]));
    raw[1] = fmaxf(raw[1], fmaxf(s[nt][2], s[nt][3]));
  }
  float mx[2] = {fmaxf(m[0], raw[0] * a.scale_log2), fmaxf(m[1], raw[1] * a.scale_log2)};
  online_softmax_max(mx, m, l, corr);
  const float nb[2] = {-mx[0], -mx[1]};
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] = exp2_ftz(fmaf(s[nt][e], a.scale_log2, nb[e / 2]));
    l[0] += s[nt][0] + s[nt][1];
    l[1] += s[nt][2] + s[nt][3];
  }
}

// The same with `edge` known only at run time: two copies, so tiles without a mask (most of a
// prefill's) run no compare at all.
template <int NT>
__device__ __forceinline__ void softmax_tile(const FlashArgs& a, float (&s)[NT][4], int64_t j0,
                                             int64_t k_end, bool edge, int64_t row_a, int64_t row_b,
                                             int t4, float (&m)[2], float (&l)[2],
                                             float (&corr)[2]) {
  if (edge)
    softmax_tile<NT, true>(a, s, j0, k_end, row_a, row_b, t4, m, l, corr);
  else
    softmax_tile<NT, false>(a, s, j0, k_end, row_a, row_b, t4, m, l, corr);
}

// P (C fragments of 8-key tiles) as BF16 A fragments of 16-key steps: step kk from tiles 2kk,
// 2kk + 1.
template <int NT>
__device__ __forceinline__ void pack_p(const float (&s)[NT][4], uint32_t (&p)[NT / 2][4]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    p[nt / 2][(nt % 2) * 2] = pack_bf16(s[nt][0], s[nt][1]);
    p[nt / 2][(nt % 2) * 2 + 1] = pack_bf16(s[nt][2], s[nt][3]);
  }
}

// DK, DV: the qk and v head dims rounded up to 16 (the padding is zeros in shared memory).
template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) flash_prefill_kernel(const FlashArgs a) {
  constexpr int SK = DK + kPad, SV = DV + kPad;  // shared row strides (elements)
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* sq = smem;                 // [kRows][SK]
  uint16_t* sk = sq + kRows * SK;      // [2][kKeys][SK]
  uint16_t* sv = sk + 2 * kKeys * SK;  // [2][kKeys][SV]
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t4 = lane % 4;
  // Blocks with the most keys (last query rows) first: they finish last otherwise.
  const int64_t q0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kRows;
  const int64_t h = blockIdx.y;
  const int dq = a.dn + a.dr;
  const int64_t first_pos = a.pos0 + q0;
  const int64_t last_pos = a.pos0 + min(q0 + kRows, a.n) - 1;  // keys 0 .. last_pos
  const int64_t k_end = min(a.k_end, last_pos + 1);
  const auto* q = static_cast<const uint16_t*>(a.q);
  const auto* kv = static_cast<const uint16_t*>(a.kv);
  const auto* kpe = static_cast<const uint16_t*>(a.kpe);

  // Q tile: rows past n are zeros (computed, never written).
  for (int c = int(threadIdx.x); c < kRows * (DK / 8); c += kThreads) {
    const int r = c / (DK / 8), d = (c % (DK / 8)) * 8;
    const bool ok = q0 + r < a.n && d < dq;
    cp16(sq + r * SK + d, ok ? q + (q0 + r) * a.ldq + h * dq + d : q, ok);
  }
  const auto load_kv = [&](int64_t j0, int buf) {
    uint16_t* dk = sk + buf * kKeys * SK;
    uint16_t* dv = sv + buf * kKeys * SV;
    for (int c = int(threadIdx.x); c < kKeys * (DK / 8); c += kThreads) {
      const int r = c / (DK / 8), d = (c % (DK / 8)) * 8;
      const int64_t j = j0 + r;
      const bool key = j < k_end;
      const uint16_t* src = d < a.dn ? kv + (j - a.k_begin) * a.ldkv + h * (a.dn + a.dv) + d
                                     : kpe + j * a.ldkpe + (d - a.dn);
      cp16(dk + r * SK + d, key && d < dq ? src : kv, key && d < dq);
    }
    for (int c = int(threadIdx.x); c < kKeys * (DV / 8); c += kThreads) {
      const int r = c / (DV / 8), d = (c % (DV / 8)) * 8;
      const int64_t j = j0 + r;
      const bool ok = j < k_end && d < a.dv;
      cp16(dv + r * SV + d, ok ? kv + (j - a.k_begin) * a.ldkv + h * (a.dn + a.dv) + a.dn + d : kv,
           ok);
    }
  };

  // Row state of the two rows this thread holds (g and g + 8 of the warp's 16): running max
  // (log2 domain), this thread's part of the sum, the output accumulators.
  const int64_t row_a = q0 + warp * 16 + g, row_b = row_a + 8;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[DV / 8][4];
  load_state(a, h, row_a, row_b, t4, m, l, o);

  const int64_t j_first = a.k_begin;
  if (j_first < k_end) load_kv(j_first, 0);
  cp_commit();
  uint32_t qf[DK / 16][4];  // this warp's Q rows as A fragments, loaded once
  for (int64_t j0 = j_first, it = 0; j0 < k_end; j0 += kKeys, ++it) {
    const int buf = int(it & 1);
    cp_wait_all();
    __syncthreads();
    if (it == 0) {
#pragma unroll
      for (int kk = 0; kk < DK / 16; ++kk)
        ldsm_x4(qf[kk], sq + (warp * 16 + (lane % 16)) * SK + kk * 16 + (lane / 16) * 8);
    }
    if (j0 + kKeys < k_end) load_kv(j0 + kKeys, buf ^ 1);  // the other buffer: all warps left it
    cp_commit();
    const uint16_t* tk = sk + buf * kKeys * SK;
    const uint16_t* tv = sv + buf * kKeys * SV;

    // S = Q · Kᵀ for 16 rows × 64 keys: 8 tiles of 8 keys.
    float s[kKeys / 8][4];
#pragma unroll
    for (int i = 0; i < kKeys / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DK / 16; ++kk) {
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; nt += 2) {
        uint32_t b[4];  // keys nt·8 .. +15, dims kk·16 .. +15
        ldsm_x4(b,
                tk + (nt * 8 + (lane / 16) * 8 + lane % 8) * SK + kk * 16 + ((lane / 8) % 2) * 8);
        mma(s[nt], qf[kk], b[0], b[1]);
        mma(s[nt + 1], qf[kk], b[2], b[3]);
      }
    }
    const bool edge = j0 + kKeys > first_pos + warp * 16 || j0 + kKeys > k_end;
    float corr[2];
    softmax_tile(a, s, j0, k_end, edge, row_a, row_b, t4, m, l, corr);
    rescale_rows(o, corr);
    uint32_t p[kKeys / 16][4];
    pack_p(s, p);
    mma_pv(o, p, tv, SV, lane);  // O += P · V
  }
  cp_wait_all();

  store_state(a, h, row_a, row_b, t4, m, l, o);
}

// The same attention on Hopper's warpgroup MMAs (wgmma, sm_90a), for qk heads of 192 and v
// heads of 128 (DeepSeek-V3's and V2-Lite's). A block holds 128 query rows of one head, two
// warpgroups of 64; key and value tiles of KEYS keys stream through shared memory in the
// 128-byte swizzle wgmma reads (cp.async by all threads, two stages each). Per tile, each
// warpgroup: S = Q · Kᵀ (12 k16 steps, Q and K straight from shared memory), the online
// softmax on S in registers, then O += P · V with P as the register A operand (V transposed by
// the instruction). The engine's tiles are 128 keys; at 64 the kernel computes what the
// mma.sync one does, bit for bit (the same tiles, the same sums), which its test checks.
constexpr int kWRows = 128, kWThreads = 256, kWDk = 192, kWDv = 128;
constexpr uint32_t kWQBytes = kWDk / 64 * kWRows * 128;  // [3][128 rows][128 B]
template <int KEYS>
constexpr uint32_t kWKBytes = kWDk / 64 * KEYS * 128;  // [3][KEYS][128 B]
template <int KEYS>
constexpr uint32_t kWVBytes = kWDv / 64 * KEYS * 128;  // [2][KEYS][128 B]
template <int KEYS>
constexpr size_t kWSmem = 1024 + kWQBytes + 2 * size_t(kWKBytes<KEYS> + kWVBytes<KEYS>);

template <int KEYS>
__global__ void __launch_bounds__(kWThreads, 1) flash_wgmma_kernel(const FlashArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int NT = KEYS / 8;  // S's accumulator tiles
  constexpr uint32_t KB = kWKBytes<KEYS>, VB = kWVBytes<KEYS>;
  extern __shared__ __align__(1024) uint8_t wsmem[];
  // Swizzle atoms must sit on 1,024-byte boundaries (kWSmem allows the slack).
  uint8_t* const sbase = atom_aligned(wsmem);
  const uint32_t base = smem_addr(sbase);
  const uint32_t k_at = kWQBytes, v_at = kWQBytes + 2 * KB;  // stage 0's K and V
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32, wg = warp / 4;
  const int g = lane / 4, t4 = lane % 4;
  const int64_t q0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kWRows;  // most keys first
  const int64_t h = blockIdx.y;
  const int64_t first_pos = a.pos0 + q0;
  const int64_t last_pos = a.pos0 + min(q0 + kWRows, a.n) - 1;
  const int64_t k_end = min(a.k_end, last_pos + 1);
  const auto* q = static_cast<const uint16_t*>(a.q);
  const auto* kv = static_cast<const uint16_t*>(a.kv);
  const auto* kpe = static_cast<const uint16_t*>(a.kpe);
  const int64_t ldh = a.dn + a.dv;  // kv's columns a head

  // Copies into shared memory: thread t moves 16-byte chunk t % 8 of 64-element column block
  // after block, in rows t / 8 + 32 i, so its swizzled offset is the same in every row it
  // copies (32 % 8 == 0) and its source steps by 32 rows. Rows past n or k_end are zeros.
  const int lch = tid % 8, lrow = tid / 8;
  const uint32_t lsw = swizzle128(lrow, lch);
  {
    const uint16_t* src = q + (q0 + lrow) * a.ldq + h * kWDk + lch * 8;
    const int rows = int(min(int64_t(kWRows), a.n - q0)) - lrow;
#pragma unroll
    for (int i = 0; i < kWRows / 32; ++i, src += 32 * a.ldq)
#pragma unroll
      for (int kb = 0; kb < kWDk / 64; ++kb)
        cp16(sbase + kb * (kWRows * 128) + i * (32 * 128) + lsw, 32 * i < rows ? src + kb * 64 : q,
             32 * i < rows);
  }
  // Keys j0 .. j0 + KEYS into stage st: K rows [k_nope ; k_pe], V rows.
  const auto load_k = [&](int64_t j0, int st) {
    const uint16_t* kvr = kv + (j0 + lrow - a.k_begin) * a.ldkv + h * ldh + lch * 8;
    const uint16_t* per = kpe + (j0 + lrow) * a.ldkpe;
    const int rows = int(min(int64_t(KEYS), k_end - j0)) - lrow;
#pragma unroll
    for (int i = 0; i < KEYS / 32; ++i, kvr += 32 * a.ldkv, per += 32 * a.ldkpe)
#pragma unroll
      for (int kb = 0; kb < kWDk / 64; ++kb) {
        const int col = kb * 64 + lch * 8;
        cp16(sbase + k_at + st * KB + kb * (KEYS * 128) + i * (32 * 128) + lsw,
             32 * i >= rows ? kv
             : col < a.dn   ? kvr + kb * 64
                            : per + (col - a.dn),
             32 * i < rows);
      }
  };
  const auto load_v = [&](int64_t j0, int st) {
    const uint16_t* kvr = kv + (j0 + lrow - a.k_begin) * a.ldkv + h * ldh + a.dn + lch * 8;
    const int rows = int(min(int64_t(KEYS), k_end - j0)) - lrow;
#pragma unroll
    for (int i = 0; i < KEYS / 32; ++i, kvr += 32 * a.ldkv)
#pragma unroll
      for (int db = 0; db < kWDv / 64; ++db)
        cp16(sbase + v_at + st * VB + db * (KEYS * 128) + i * (32 * 128) + lsw,
             32 * i < rows ? kvr + db * 64 : kv, 32 * i < rows);
  };
  // S = Q · Kᵀ of this warpgroup's 64 rows and the keys in stage st.
  const auto issue_qk = [&](float(&s)[NT][4], int st) {
#pragma unroll
    for (int kk = 0; kk < kWDk / 16; ++kk) {
      const uint32_t koff = (kk % 4) * 32;  // k16 steps inside a 64-wide row
      const uint64_t da =
          wgmma_desc(base + (kk / 4) * (kWRows * 128) + wg * (64 * 128) + koff, 16, 1024);
      const uint64_t db =
          wgmma_desc(base + k_at + st * KB + (kk / 4) * (KEYS * 128) + koff, 16, 1024);
      if constexpr (KEYS == 64)
        wgmma_m64n64k16_ss(s, da, db, kk > 0);
      else
        wgmma_m64n128k16_ss(s, da, db, kk > 0);
    }
  };
  // O += P · V over the keys in stage st (V's rows are keys: MN-major for the instruction).
  const auto issue_pv = [&](float(&o)[16][4], const uint32_t(&p)[NT / 2][4], int st) {
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; ++kk)
      wgmma_m64n128k16_rs_mn(o, p[kk],
                             wgmma_desc(base + v_at + st * VB + kk * 16 * 128, KEYS * 128, 1024));
  };

  const int64_t row_a = q0 + warp * 16 + g, row_b = row_a + 8;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[16][4];
  load_state(a, h, row_a, row_b, t4, m, l, o);
  float s[NT][4] = {};
  uint32_t p[NT / 2][4];
  float corr[2];
  const auto edge = [&](int64_t j0) {
    return j0 + KEYS > first_pos + warp * 16 || j0 + KEYS > k_end;
  };
  // Until every thread's copies so far have landed and are visible to wgmma.
  const auto landed = [] {
    cp_wait_all();
    fence_proxy_async();
    __syncthreads();
  };

  if (a.k_begin < k_end) {
    load_k(a.k_begin, 0);
    load_v(a.k_begin, 0);
  }
  cp_commit();
  int st = 0;  // the stage tile j0 is in
  for (int64_t j0 = a.k_begin; j0 < k_end; j0 += KEYS, st ^= 1) {
    landed();  // and every warpgroup is done with the other stage
    if (j0 + KEYS < k_end) {
      load_k(j0 + KEYS, st ^ 1);
      load_v(j0 + KEYS, st ^ 1);
    }
    cp_commit();
    wgmma_fence();
    issue_qk(s, st);
    wgmma_commit();
    wgmma_wait<0>();
    softmax_tile(a, s, j0, k_end, edge(j0), row_a, row_b, t4, m, l, corr);
    rescale_rows(o, corr);
    pack_p(s, p);
    wgmma_fence();
    issue_pv(o, p, st);
    wgmma_commit();
    wgmma_wait<0>();
  }
  cp_wait_all();
  store_state(a, h, row_a, row_b, t4, m, l, o);
#else
  (void)a;
  __trap();  // flash_prefill runs it only where the sm_90a code exists
#endif
}

template <int DK, int DV>
void launch(const FlashArgs& a, cudaStream_t s) {
  constexpr size_t smem =
      size_t(kRows * (DK + kPad) + 2 * kKeys * (DK + kPad) + 2 * kKeys * (DV + kPad)) * 2;
  // Per device, so on every launch (a host-side call, once per prefill chunk and head block).
  DSV3_CUDA_CHECK(cudaFuncSetAttribute(flash_prefill_kernel<DK, DV>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(unsigned((a.n + kRows - 1) / kRows), unsigned(a.heads));
  flash_prefill_kernel<DK, DV><<<grid, kThreads, smem, s>>>(a);
  DSV3_CUDA_CHECK_LAUNCH();
}

template <int KEYS>
void launch_wgmma(const FlashArgs& a, cudaStream_t s) {
  const auto kernel = flash_wgmma_kernel<KEYS>;
  DSV3_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kWSmem<KEYS>)));
  const dim3 grid(unsigned((a.n + kWRows - 1) / kWRows), unsigned(a.heads));
  kernel<<<grid, kWThreads, kWSmem<KEYS>, s>>>(a);
  DSV3_CUDA_CHECK_LAUNCH();
}

int g_flash_kernel = 2;  // set_flash_kernel

int pad16(int x) {
  return (x + 15) / 16 * 16;
}

}  // namespace

void set_flash_kernel(int kind) {
  g_flash_kernel = kind;
}

bool flash_prefill_supported(int dn, int dr, int dv) {
  if (dn % 8 || dr % 8 || dv % 8 || dn <= 0 || dr < 0 || dv <= 0) return false;
  const int dk = pad16(dn + dr), dvp = pad16(dv);
  return (dk == 32 && dvp == 16) || (dk == 32 && dvp == 32) || (dk == 48 && dvp == 32) ||
         (dk == 96 && dvp == 64) || (dk == 192 && dvp == 128);
}

void flash_prefill(const FlashArgs& a, cudaStream_t s) {
  if (a.n == 0) return;
  if (a.dn + a.dr == kWDk && a.dv == kWDv && g_flash_kernel > 0 && wgmma_device())
    return g_flash_kernel == 1 ? launch_wgmma<64>(a, s) : launch_wgmma<128>(a, s);
  const int dk = pad16(a.dn + a.dr), dv = pad16(a.dv);
  if (dk == 192 && dv == 128) return launch<192, 128>(a, s);
  if (dk == 96 && dv == 64) return launch<96, 64>(a, s);
  if (dk == 48 && dv == 32) return launch<48, 32>(a, s);
  if (dk == 32 && dv == 32) return launch<32, 32>(a, s);
  if (dk == 32 && dv == 16) return launch<32, 16>(a, s);
  DSV3_CUDA_CHECK(cudaErrorInvalidValue);  // callers check flash_prefill_supported first
}

}  // namespace dsv3::cuda
