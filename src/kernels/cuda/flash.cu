// MLA prefill attention in the non-absorbed form (MODEL_SPEC §3; what DeepSeek's own code and
// FlashMLA's peers do for prefill): per head, keys [k_nope ; k_pe] of dn + dr and values of dv
// (k_nope, v decompressed from the latent cache by one GEMM), so a score costs dn + dr
// multiply-adds instead of the absorbed form's dc + dr (192 vs 576 at DeepSeek-V3's sizes) and
// the value sum dv instead of dc. FlashAttention-2's schedule on the BF16 tensor cores
// (mma.sync m16n8k16, F32 accumulation): a block holds 64 query rows of one head, four warps of
// 16 rows; key / value tiles of 64 rows stream through shared memory (cp.async, two stages);
// the softmax is online, P goes to BF16 in registers, and no score is ever written out.
#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/mma.cuh"

namespace dsv3::cuda {

namespace {

constexpr int kRows = 64;  // query rows per block (16 per warp)
constexpr int kKeys = 64;  // keys per tile
constexpr int kThreads = 128;
constexpr int kPad = 8;  // bf16 of padding per shared row: ldmatrix without bank conflicts

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
#pragma unroll
  for (int i = 0; i < DV / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float* ml = a.ml;
  if (!a.first) {  // continue from the previous key chunk's state (unnormalised o)
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const int64_t row = rr ? row_b : row_a;
      if (row >= a.n) continue;
      m[rr] = ml[(row * a.heads + h) * 2];
      l[rr] = t4 == 0 ? ml[(row * a.heads + h) * 2 + 1] : 0.0f;  // the sum is spread over the quad
      const float* src = a.o + row * a.ldo + h * a.dv;
#pragma unroll
      for (int i = 0; i < DV / 8; ++i) {
        const int d = i * 8 + 2 * t4;
        if (d < a.dv) {
          o[i][2 * rr] = src[d];
          o[i][2 * rr + 1] = src[d + 1];
        }
      }
    }
  }

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
    // Scale to the log2 domain, mask (causal, and keys past the chunk), online softmax.
    const bool edge = j0 + kKeys > first_pos + warp * 16 || j0 + kKeys > k_end;
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = s[nt][e] * a.scale_log2;
        if (edge) {
          const int64_t j = j0 + nt * 8 + 2 * t4 + (e & 1);
          const int64_t pos = a.pos0 + (e < 2 ? row_a : row_b);
          if (j > pos || j >= k_end) v = -INFINITY;
        }
        s[nt][e] = v;
        mx[e / 2] = fmaxf(mx[e / 2], v);
      }
    }
    online_softmax_rescale(mx, m, l, o);
    uint32_t p[kKeys / 16][4];  // P as A fragments: key tiles 2kk, 2kk + 1
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
      const float p0 = exp2f(s[nt][0] - mx[0]), p1 = exp2f(s[nt][1] - mx[0]);
      const float p2 = exp2f(s[nt][2] - mx[1]), p3 = exp2f(s[nt][3] - mx[1]);
      l[0] += p0 + p1;
      l[1] += p2 + p3;
      p[nt / 2][(nt % 2) * 2] = pack_bf16(p0, p1);
      p[nt / 2][(nt % 2) * 2 + 1] = pack_bf16(p2, p3);
    }
    mma_pv(o, p, tv, SV, lane);  // O += P · V
  }
  cp_wait_all();

  // The row sums over the quad, then either the normalised output or the state for the next
  // chunk.
  l[0] = quad_sum(l[0]);
  l[1] = quad_sum(l[1]);
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int64_t row = rr ? row_b : row_a;
    if (row >= a.n) continue;
    const float inv = a.last ? 1.0f / l[rr] : 1.0f;
    float* dst = a.o + row * a.ldo + h * a.dv;
#pragma unroll
    for (int i = 0; i < DV / 8; ++i) {
      const int d = i * 8 + 2 * t4;
      if (d < a.dv)
        *reinterpret_cast<float2*>(dst + d) = {o[i][2 * rr] * inv, o[i][2 * rr + 1] * inv};
    }
    if (!a.last && t4 == 0) {
      ml[(row * a.heads + h) * 2] = m[rr];
      ml[(row * a.heads + h) * 2 + 1] = l[rr];
    }
  }
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

int pad16(int x) {
  return (x + 15) / 16 * 16;
}

}  // namespace

bool flash_prefill_supported(int dn, int dr, int dv) {
  if (dn % 8 || dr % 8 || dv % 8 || dn <= 0 || dr < 0 || dv <= 0) return false;
  const int dk = pad16(dn + dr), dvp = pad16(dv);
  return (dk == 32 && dvp == 16) || (dk == 32 && dvp == 32) || (dk == 48 && dvp == 32) ||
         (dk == 96 && dvp == 64) || (dk == 192 && dvp == 128);
}

void flash_prefill(const FlashArgs& a, cudaStream_t s) {
  if (a.n == 0) return;
  const int dk = pad16(a.dn + a.dr), dv = pad16(a.dv);
  if (dk == 192 && dv == 128) return launch<192, 128>(a, s);
  if (dk == 96 && dv == 64) return launch<96, 64>(a, s);
  if (dk == 48 && dv == 32) return launch<48, 32>(a, s);
  if (dk == 32 && dv == 32) return launch<32, 32>(a, s);
  if (dk == 32 && dv == 16) return launch<32, 16>(a, s);
  DSV3_CUDA_CHECK(cudaErrorInvalidValue);  // callers check flash_prefill_supported first
}

}  // namespace dsv3::cuda
