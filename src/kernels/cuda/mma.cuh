// Warp-level tensor-core building blocks shared by the attention kernels (flash.cu, mla.cu):
// cp.async copies into shared memory, ldmatrix fragment loads, the BF16 mma.sync m16n8k16
// with F32 accumulators. Fragment layouts are PTX's (g = lane / 4, t = lane % 4): A rows g
// and g + 8, columns 2t, 2t + 1 (+ 8); B column g, rows 2t, 2t + 1 (+ 8); C rows g, g + 8,
// columns 2t, 2t + 1.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace dsv3::cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, zero-filled when !valid (src then unread).
__device__ __forceinline__ void cp16(void* dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(bytes));
}
__device__ __forceinline__ void cp_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
__device__ __forceinline__ void cp_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::);
}
// Until at most N of this thread's newest commit groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c += a · b: a 16×32 (row), b 32×8 (col), E4M3 in, F32 accumulators.
__device__ __forceinline__ void mma_e4m3(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a · b: a 16×16 (row), b 16×8 (col), BF16 in, F32 accumulators.
__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// o += P · V for KS steps of 16 keys: P as A fragments p[kk] (keys 16kk ..), V in shared memory
// as rows of `stride` elements, one per key, starting at this warp's first value column (B
// fragments by transposed loads), NT tiles of 8 columns.
template <int KS, int NT>
__device__ __forceinline__ void mma_pv(float (&o)[NT][4], const uint32_t (&p)[KS][4],
                                       const uint16_t* v, int stride, int lane) {
  const uint16_t* row = v + (((lane / 8) % 2) * 8 + lane % 8) * stride + (lane / 16) * 8;
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t b[4];  // keys 16kk .. +15, columns 8nt .. +15
      ldsm_x4_t(b, row + kk * 16 * stride + nt * 8);
      mma(o[nt], p[kk], b[0], b[1]);
      mma(o[nt + 1], p[kk], b[2], b[3]);
    }
  }
}

// 2^x, denormal results flushed to zero (one MUFU.EX2; exp2f adds a fix-up for them).
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Max and sum over the 4 lanes of a quad: the lanes that hold one row of an mma C fragment.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// One online-softmax step (log2 domain) for the two rows g and g + 8 a thread holds: mx
// arrives as this thread's max over m and the new scores, and leaves as the base to subtract
// from them before exp2 (the row's max over the quad, or 0 while a row has no key, so
// exp2(-inf - base) is 0, not NaN). m becomes the row max; l (this thread's part of the sum) is
// rescaled to it, and corr is the factor the rows' accumulators take (rescale_rows).
__device__ __forceinline__ void online_softmax_max(float (&mx)[2], float (&m)[2], float (&l)[2],
                                                   float (&corr)[2]) {
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const float row_max = quad_max(mx[rr]);
    const float base = row_max == -INFINITY ? 0.0f : row_max;
    corr[rr] = exp2f(m[rr] - base);
    m[rr] = row_max;
    mx[rr] = base;
    l[rr] *= corr[rr];
  }
}
template <int N>
__device__ __forceinline__ void rescale_rows(float (&o)[N][4], const float (&corr)[2]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    o[i][0] *= corr[0];
    o[i][1] *= corr[0];
    o[i][2] *= corr[1];
    o[i][3] *= corr[1];
  }
}
// Both, for N accumulator tiles o.
template <int N>
__device__ __forceinline__ void online_softmax_rescale(float (&mx)[2], float (&m)[2], float (&l)[2],
                                                       float (&o)[N][4]) {
  float corr[2];
  online_softmax_max(mx, m, l, corr);
  rescale_rows(o, corr);
}

}  // namespace dsv3::cuda
