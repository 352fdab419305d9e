// Hopper's warpgroup tensor-core instructions (wgmma.mma_async, sm_90a only) for the kernels that
// use them (flash.cu, grouped.cu, mla.cu). A warpgroup is 4 consecutive warps; one wgmma multiplies
// a 64-row A (in shared memory or in registers) by an N-column B in shared memory into F32
// accumulators spread over its 128 threads as mma.sync's C fragments are over a warp: warp w of the
// group holds rows 16w + g and 16w + g + 8 (g = lane / 4), and accumulator tile i (8 columns) is
// d[i][0..3] at columns 8i + 2t, 8i + 2t + 1 (t = lane % 4). The A register fragment of m64nNk16 is
// mma.sync's m16n8k16 A fragment of the warp's 16 rows, so scores converted to BF16 in
// registers are the next product's A as they stand.
//
// Shared-memory operands are described by 64-bit descriptors; every one here uses the 128-byte
// swizzle: rows of 128 bytes, 8 of them a 1,024-byte atom (1,024-aligned), the 16-byte chunk c
// of row r stored at chunk c ^ (r % 8) (swizzle128 below, which the loads into shared memory
// apply). K-major (K contiguous, the usual case): 128 bytes of K a row (64 BF16, 128 E4M3); a
// k16 (BF16) or k32 (E4M3) step is 32 bytes further into the row; `sbo` steps 8 rows. MN-major (an
// operand transposed, imm-trans-a / -b): rows run along M or N, one row a k; `sbo` steps 8 k rows,
// `lbo` the next 64 M or N columns.
#pragma once

#include <cstdint>

namespace dsv3::cuda {

// The byte offset of 16-byte chunk `chunk` (0..7) of row `row` inside a 128-byte-swizzled tile.
__host__ __device__ constexpr uint32_t swizzle128(uint32_t row, uint32_t chunk) {
  return row * 128 + ((chunk ^ (row % 8)) * 16);
}

// The first 1,024-byte boundary at or after p in shared memory, where the swizzle atoms of a
// dynamic shared-memory buffer start (its size allows 1,024 bytes of slack for this).
__device__ __forceinline__ uint8_t* atom_aligned(uint8_t* p) {
  const auto at = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return p + ((1024 - (at & 1023)) & 1023);
}

__device__ __forceinline__ uint64_t wgmma_desc(uint32_t smem_byte_addr, uint32_t lbo,
                                               uint32_t sbo) {
  return uint64_t((smem_byte_addr & 0x3FFFF) >> 4) | uint64_t((lbo >> 4) & 0x3FFF) << 16 |
         uint64_t((sbo >> 4) & 0x3FFF) << 32 | uint64_t(1) << 62;  // 1: 128-byte swizzle
}

// Before the first wgmma of a batch that reads registers (accumulators, A) written by ordinary
// instructions.
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Until at most N of this warpgroup's committed groups are still running.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Makes this thread's ordinary writes to shared memory (cp.async's included) visible to the
// async proxy that wgmma reads shared memory through; before the barrier that publishes them.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The accumulators as asm operands, and their placeholders %0 .. %31 / %63.
#define DSV3_ACC4(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define DSV3_ACC32(d)                                                                  \
  DSV3_ACC4(d, 0), DSV3_ACC4(d, 1), DSV3_ACC4(d, 2), DSV3_ACC4(d, 3), DSV3_ACC4(d, 4), \
      DSV3_ACC4(d, 5), DSV3_ACC4(d, 6), DSV3_ACC4(d, 7)
#define DSV3_ACC64(d)                                                                  \
  DSV3_ACC32(d), DSV3_ACC4(d, 8), DSV3_ACC4(d, 9), DSV3_ACC4(d, 10), DSV3_ACC4(d, 11), \
      DSV3_ACC4(d, 12), DSV3_ACC4(d, 13), DSV3_ACC4(d, 14), DSV3_ACC4(d, 15)
#define DSV3_D32                                                                                \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define DSV3_D64                                                                       \
  DSV3_D32                                                                             \
  ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d (+)= A · B, m64n64k16, BF16 in, F32 out; A and B K-major in shared memory (descriptors);
// `accumulate` 0 overwrites d.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], uint64_t a, uint64_t b,
                                                   int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " DSV3_D32
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : DSV3_ACC32(d)
      : "l"(a), "l"(b), "r"(accumulate));
}

// d (+)= A · B, m64n16k16, BF16 in, F32 out; A and B K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n16k16_ss(float (&d)[2][4], uint64_t a, uint64_t b,
                                                   int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
      : DSV3_ACC4(d, 0), DSV3_ACC4(d, 1)
      : "l"(a), "l"(b), "r"(accumulate));
}

// d += A · B, m64n16k16, BF16 in, F32 out; A MN-major in shared memory (imm-trans-a: its rows
// run along M, one row a k), B K-major.
__device__ __forceinline__ void wgmma_m64n16k16_ss_mn_a(float (&d)[2][4], uint64_t a, uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, 1, 1, 1, 1, 0;\n"
      : DSV3_ACC4(d, 0), DSV3_ACC4(d, 1)
      : "l"(a), "l"(b));
}

// The same at m64n128k16.
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[16][4], uint64_t a, uint64_t b,
                                                    int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " DSV3_D64
      ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : DSV3_ACC64(d)
      : "l"(a), "l"(b), "r"(accumulate));
}

// d (+)= A · B, m64n128k32, E4M3 in (K-major both: FP8 has no transposed forms), F32 out.
__device__ __forceinline__ void wgmma_m64n128k32_e4m3_ss(float (&d)[16][4], uint64_t a, uint64_t b,
                                                         int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " DSV3_D64 ", %64, %65, p, 1, 1;\n}\n"
      : DSV3_ACC64(d)
      : "l"(a), "l"(b), "r"(accumulate));
}

// d += A · B, m64n128k16, BF16 in, F32 out; A in registers (a 16×16 mma.sync A fragment of each
// warp's rows), B MN-major in shared memory (imm-trans-b).
__device__ __forceinline__ void wgmma_m64n128k16_rs_mn(float (&d)[16][4], const uint32_t (&a)[4],
                                                       uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " DSV3_D64
      ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : DSV3_ACC64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// The same with A from shared memory too (K-major).
__device__ __forceinline__ void wgmma_m64n128k16_ss_mn(float (&d)[16][4], uint64_t a, uint64_t b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " DSV3_D64
               ", %64, %65, 1, 1, 1, 0, 1;\n"
               : DSV3_ACC64(d)
               : "l"(a), "l"(b));
}

#undef DSV3_D64
#undef DSV3_D32
#undef DSV3_ACC64
#undef DSV3_ACC32
#undef DSV3_ACC4

}  // namespace dsv3::cuda
