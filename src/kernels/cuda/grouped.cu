// The routed experts' GEMMs in one launch (DeepGEMM's "contiguous grouped" layout): every
// expert's rows grouped by expert, times that expert's weight, for E4M3 weights in 128×128
// blocks (block-scaled) and for BF16 weights (V2-Lite, Moonlight and BF16 V3 checkpoints).
// cuBLASLt 13.1 has no grouped GEMM of either kind, so the engine otherwise makes one call per
// expert and projection (768 a DeepSeek-V3 layer, 128 a V2-Lite one), host-bound, and it must
// read the experts' row counts on the host first.
//
// A block computes 16, 32 or 64 rows (GroupedArgs::tile_rows) × 128 columns of one expert (on
// Hopper also 128 rows on wgmma, grouped_wgmma_kernel below): 8 warps on mma.sync with F32
// accumulators, 128-byte K blocks through shared memory by cp.async,
// kStages deep. Both types share the shared-memory layout and the ldmatrix fragments: a 16-row
// A fragment of 32 bytes is m16n8k32's for E4M3 and m16n8k16's for BF16. E4M3: rows quantised
// in 1×128 tiles, each group padded to 16 rows (quantize_e4m3_tiles); each K block's products
// are summed in their own registers, then added to the output accumulators times (row tile
// scale × weight block scale): the scales are applied per 128 of K in F32, as DeepSeek-V3's
// recipe and DeepGEMM promote, not inside the tensor cores' sum. BF16: rows as they are, at
// the unpadded offsets, the tensor cores' products summed straight into the accumulators.
#include <algorithm>
#include <stdexcept>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace dsv3::cuda {

DSV3_HOST_DEVICE int64_t grouped_tiles(int64_t rows, int tile_rows) {
  return (rows + tile_rows - 1) / tile_rows;
}

namespace {

constexpr int kBN = 128, kBK = 128, kThreads = 256;  // kBK in bytes
constexpr int kStride = kBK + 16;  // bytes per shared row: ldmatrix without bank conflicts
// K blocks in flight: kStages - 1 while one is multiplied. At decode batches (2-8 rows an
// expert) a block's products are few and its time is the weights' latency: with two stages
// and one block an SM (136 registers) only one 24 KiB stage an SM was in flight, 1.4 TB/s.
constexpr int kStages = 4;
template <int BM>
constexpr size_t smem_bytes() {
  return size_t(kStages * (BM + kBN) * kStride);  // 108 KiB at 64 rows, 81 KiB at 16
}

// The group (expert) a block's tile belongs to and the rows it covers: rows_per_tile rows from
// m0 on in the group; the group's rows of x from p0, plen of them (E4M3 padded, zeros past
// `valid`; BF16 unpadded, masked by the kernels); `valid` of them written. False for blocks past
// the last tile (the launch's tile count is a bound).
struct GroupTile {
  int e;
  int64_t valid, p0, plen, m0;
};
template <bool kFp8>
__device__ __forceinline__ bool group_tile(const GroupedArgs& a, int tile, int rows_per_tile,
                                           GroupTile& t) {
  t.e = group_of(a.tile_start, a.groups, tile);
  if (tile >= a.tile_start[a.groups]) return false;
  t.valid = a.offsets[t.e + 1] - a.offsets[t.e];
  t.p0 = kFp8 ? a.padded_offsets[t.e] : a.offsets[t.e];
  t.plen = kFp8 ? a.padded_offsets[t.e + 1] - t.p0 : t.valid;
  t.m0 = int64_t(tile - a.tile_start[t.e]) * rows_per_tile;
  return true;
}

// BM rows (16, 32 or 64) × 128 columns of one expert a block: its 8 warps take 32 × 32 each at
// 64 rows, BM × 16 below. Decode batches average a few rows an expert; at 64 rows a tile, 3 of
// every 4 tensor-core products (and FP8's rescaling) were of padding. Two blocks an SM (128
// registers; 32 bytes spill for E4M3 at 64 rows).
template <WType T, int BM>
__global__ void __launch_bounds__(kThreads, 2) grouped_kernel(const GroupedArgs a) {
  constexpr bool kFp8 = T == WType::E4M3;
  constexpr int64_t kElem = kFp8 ? 1 : 2;
  constexpr int kWarpRows = BM < 32 ? BM : 32, kWarpsM = BM / kWarpRows;
  constexpr int kWarpCols = kBN / (8 / kWarpsM);
  constexpr int MI = kWarpRows / 16, NJ = kWarpCols / 8;  // 16 × 8 accumulator tiles a warp
  extern __shared__ __align__(16) uint8_t smem[];
  // Stage b: rows of x at sa(b), of W at sb(b).
  const auto sa = [&](int b) { return smem + b * (BM * kStride); };
  const auto sb = [&](int b) { return smem + kStages * BM * kStride + b * (kBN * kStride); };
  GroupTile gt;
  if (!group_tile<kFp8>(a, int(blockIdx.x), BM, gt)) return;
  const int e = gt.e;
  const int64_t valid = gt.valid, p0 = gt.p0, plen = gt.plen, m0 = gt.m0;
  const int64_t n0 = int64_t(blockIdx.y) * kBN;
  const int64_t row_bytes = a.k * kElem, kb_count = row_bytes / kBK;
  const auto* x = static_cast<const uint8_t*>(a.x);
  const auto* w = static_cast<const uint8_t*>(a.w) + (int64_t(e) * a.n + n0) * row_bytes;

  const auto load = [&](int64_t kb, int buf) {
    for (int c = int(threadIdx.x); c < BM * (kBK / 16); c += kThreads) {
      const int r = c / (kBK / 16), off = (c % (kBK / 16)) * 16;
      const bool ok = m0 + r < plen;
      cp16(sa(buf) + r * kStride + off, ok ? x + (p0 + m0 + r) * row_bytes + kb * kBK + off : x,
           ok);
    }
    for (int c = int(threadIdx.x); c < kBN * (kBK / 16); c += kThreads) {
      const int r = c / (kBK / 16), off = (c % (kBK / 16)) * 16;
      cp16(sb(buf) + r * kStride + off, w + int64_t(r) * row_bytes + kb * kBK + off, true);
    }
  };

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  // This warp: rows r0 .. r0 + kWarpRows, columns c0 .. c0 + kWarpCols of the tile.
  const int r0 = (warp / (8 / kWarpsM)) * kWarpRows, c0 = (warp % (8 / kWarpsM)) * kWarpCols;
  const int g = lane / 4, t4 = lane % 4;
  float acc[MI][NJ][4] = {};

  // One commit group per K block (empty past the end), so waiting for all but the newest
  // kStages - 2 groups means K block kb has landed.
  for (int b = 0; b < kStages - 1; ++b) {
    if (b < kb_count) load(b, b);
    cp_commit();
  }
  for (int64_t kb = 0; kb < kb_count; ++kb) {
    const int buf = int(kb % kStages);
    cp_wait<kStages - 2>();
    __syncthreads();  // this K block in; every warp done with the buffer refilled next
    if (kb + kStages - 1 < kb_count) load(kb + kStages - 1, int((kb + kStages - 1) % kStages));
    cp_commit();
    float part[MI][NJ][4] = {};  // E4M3: this K block's products, scaled below
    float(&sum)[MI][NJ][4] = kFp8 ? part : acc;
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk) {
      uint32_t af[MI][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
        ldsm_x4(af[mi],
                sa(buf) + (r0 + mi * 16 + lane % 16) * kStride + kk * 32 + (lane / 16) * 16);
#pragma unroll
      for (int nj = 0; nj < NJ; nj += 2) {
        uint32_t bf[4];  // columns nj·8 .. +15, K bytes kk·32 .. +31
        ldsm_x4(bf, sb(buf) + (c0 + nj * 8 + (lane / 16) * 8 + lane % 8) * kStride + kk * 32 +
                        ((lane / 8) % 2) * 16);
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
          if constexpr (kFp8) {
            mma_e4m3(sum[mi][nj], af[mi], bf[0], bf[1]);
            mma_e4m3(sum[mi][nj + 1], af[mi], bf[2], bf[3]);
          } else {
            mma(sum[mi][nj], af[mi], bf[0], bf[1]);
            mma(sum[mi][nj + 1], af[mi], bf[2], bf[3]);
          }
        }
      }
    }
    if constexpr (kFp8) {
      // The row tile scales of this thread's four rows, times the weight block's.
      const float ws = a.w_scale[(int64_t(e) * (a.n / 128) + n0 / 128) * a.w_scale_ld + kb];
      const auto row_scale = [&](int mi, int half) {
        const int64_t i = m0 + r0 + mi * 16 + g + 8 * half;  // row within the group
        return i < plen ? a.x_scale[kb_count * p0 + kb * plen + i] * ws : 0.0f;
      };
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const float s0 = row_scale(mi, 0), s1 = row_scale(mi, 1);
#pragma unroll
        for (int nj = 0; nj < NJ; ++nj) {
          acc[mi][nj][0] = fmaf(part[mi][nj][0], s0, acc[mi][nj][0]);
          acc[mi][nj][1] = fmaf(part[mi][nj][1], s0, acc[mi][nj][1]);
          acc[mi][nj][2] = fmaf(part[mi][nj][2], s1, acc[mi][nj][2]);
          acc[mi][nj][3] = fmaf(part[mi][nj][3], s1, acc[mi][nj][3]);
        }
      }
    }
  }
  cp_wait_all();
  // Rows in the experts' unpadded order (moe_permute's), padding rows not written.
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t i = m0 + r0 + mi * 16 + g + 8 * half;
      if (i >= valid) continue;
      float* yrow = a.y + (a.offsets[e] + i) * a.ldy + n0 + c0 + 2 * t4;
#pragma unroll
      for (int nj = 0; nj < NJ; ++nj)
        *reinterpret_cast<float2*>(yrow + nj * 8) = {acc[mi][nj][2 * half],
                                                     acc[mi][nj][2 * half + 1]};
    }
  }
}

// The experts in 128-row tiles on Hopper's warpgroup MMAs: the engine's choice there for BF16
// experts at every size (CudaEngineOptions::bf16_wgmma_min_rows) and for FP8 ones at prefill
// sizes (fp8_wgmma_min_rows). At those sizes one cuBLASLt GEMM an expert fills the GPU no
// better than its own tiles do (V2-Lite at an 8K prompt: 768 × 2816 an expert, 66 tiles of
// 128 × 256 for 132 SMs) and needs the counts on the host; here every expert's tiles are one
// grid. At decode sizes the tiles are mostly padding, but wgmma reads BF16 weights faster than
// the mma.sync tiles above do. A block: 128 rows × 128 columns, two warpgroups of 64 rows, K in
// 128-byte blocks (64 BF16, 128 E4M3) through shared memory in wgmma's 128-byte swizzle
// (cp.async, kWStages deep), 4 m64n128k16 (BF16) or m64n128k32 (E4M3) a block a warpgroup, F32
// accumulators. E4M3 as the mma.sync kernel: each K block's products in registers of their own,
// then added to the accumulators times (row tile scale × weight block scale).
constexpr int kWBM = 128, kWStages = 3;
constexpr uint32_t kWTileBytes = 128 * 128;  // 128 rows of a 128-byte K block, for x and for W
constexpr size_t kWSmem = 1024 + size_t(kWStages) * 2 * kWTileBytes;

template <WType T>
__global__ void __launch_bounds__(kThreads, T == WType::E4M3 ? 1 : 2)
    grouped_wgmma_kernel(const GroupedArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr bool kFp8 = T == WType::E4M3;
  constexpr int64_t kElem = kFp8 ? 1 : 2;
  extern __shared__ __align__(1024) uint8_t wsmem[];
  uint8_t* const sbase = atom_aligned(wsmem);
  const uint32_t base = smem_addr(sbase);  // stage b: x at b · 2 · kWTileBytes, W after
  GroupTile gt;
  if (!group_tile<kFp8>(a, int(blockIdx.x), kWBM, gt)) return;
  const int e = gt.e;
  const int64_t valid = gt.valid, p0 = gt.p0, plen = gt.plen, m0 = gt.m0;
  const int64_t n0 = int64_t(blockIdx.y) * kBN;
  const int64_t row_bytes = a.k * kElem, kb_count = row_bytes / kBK;
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32, wg = warp / 4;
  // Thread t copies 16-byte chunk t % 8 of rows t / 8 + 32 i (its swizzled offset the same in
  // every one of them), zeros past the group's rows.
  const int lch = tid % 8, lrow = tid / 8;
  const uint32_t lsw = swizzle128(uint32_t(lrow), uint32_t(lch));
  const int rows = int(min(int64_t(kWBM), plen - m0)) - lrow;
  const auto* x0 = static_cast<const uint8_t*>(a.x);
  const uint8_t* x = x0 + (p0 + m0 + lrow) * row_bytes + lch * 16;
  const auto* w =
      static_cast<const uint8_t*>(a.w) + (int64_t(e) * a.n + n0 + lrow) * row_bytes + lch * 16;
  const auto load = [&](int64_t kb, int st) {
    uint8_t* dst = sbase + st * 2 * kWTileBytes + lsw;
#pragma unroll
    for (int i = 0; i < kWBM / 32; ++i) {
      const bool ok = 32 * i < rows;
      cp16(dst + i * 32 * 128, ok ? x + 32 * i * row_bytes + kb * kBK : x0, ok);
      cp16(dst + kWTileBytes + i * 32 * 128, w + 32 * i * row_bytes + kb * kBK, true);
    }
  };
  const int g = lane / 4, t4 = lane % 4;
  const int64_t r0 = m0 + wg * 64 + (warp % 4) * 16 + g;  // this thread's rows: r0, r0 + 8
  float acc[16][4] = {};
  float part[16][4];  // E4M3: one K block's products
  float(&sum)[16][4] = kFp8 ? part : acc;
  for (int b = 0; b < kWStages - 1; ++b) {
    if (b < kb_count) load(b, b);
    cp_commit();
  }
  for (int64_t kb = 0; kb < kb_count; ++kb) {
    const int st = int(kb % kWStages);
    cp_wait<kWStages - 2>();
    fence_proxy_async();
    __syncthreads();  // this K block in; every warpgroup done with the stage refilled next
    if (kb + kWStages - 1 < kb_count) load(kb + kWStages - 1, int((kb + kWStages - 1) % kWStages));
    cp_commit();
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {  // 32 bytes of K a step
      const uint64_t da =
          wgmma_desc(base + st * 2 * kWTileBytes + wg * 64 * 128 + kk * 32, 16, 1024);
      const uint64_t db = wgmma_desc(base + st * 2 * kWTileBytes + kWTileBytes + kk * 32, 16, 1024);
      if constexpr (kFp8)
        wgmma_m64n128k32_e4m3_ss(sum, da, db, kk > 0);
      else
        wgmma_m64n128k16_ss(sum, da, db, 1);
    }
    wgmma_commit();
    wgmma_wait<0>();
    if constexpr (kFp8) {
      const float ws = a.w_scale[(int64_t(e) * (a.n / 128) + n0 / 128) * a.w_scale_ld + kb];
      const float s0 = r0 < plen ? a.x_scale[kb_count * p0 + kb * plen + r0] * ws : 0.0f;
      const float s1 = r0 + 8 < plen ? a.x_scale[kb_count * p0 + kb * plen + r0 + 8] * ws : 0.0f;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        acc[j][0] = fmaf(part[j][0], s0, acc[j][0]);
        acc[j][1] = fmaf(part[j][1], s0, acc[j][1]);
        acc[j][2] = fmaf(part[j][2], s1, acc[j][2]);
        acc[j][3] = fmaf(part[j][3], s1, acc[j][3]);
      }
    }
  }
  cp_wait_all();
  // Rows r0 and r0 + 8, columns 8 j + 2 t (wgmma's C layout), in the experts' unpadded order.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t i = r0 + 8 * half;
    if (i >= valid) continue;
    float* yrow = a.y + (a.offsets[e] + i) * a.ldy + n0 + 2 * t4;
#pragma unroll
    for (int j = 0; j < 16; ++j)
      *reinterpret_cast<float2*>(yrow + j * 8) = {acc[j][2 * half], acc[j][2 * half + 1]};
  }
#else
  (void)a;
  __trap();  // grouped_gemm runs it only where the sm_90a code exists
#endif
}

// One thread: E is a few hundred, and this keeps the prefix sums in one fixed order.
__global__ void grouped_layout_kernel(const int32_t* offsets, int groups, int tile_rows,
                                      int32_t* padded_offsets, int32_t* tile_start) {
  int32_t p = 0, t = 0;
  padded_offsets[0] = tile_start[0] = 0;
  for (int e = 0; e < groups; ++e) {
    const int32_t rows = offsets[e + 1] - offsets[e], padded = (rows + 15) / 16 * 16;
    p += padded;
    t += int32_t(grouped_tiles(padded, tile_rows));
    padded_offsets[e + 1] = p;
    tile_start[e + 1] = t;
  }
}

template <WType T, int BM>
void launch(const GroupedArgs& a, cudaStream_t s) {
  constexpr size_t smem = smem_bytes<BM>();
  DSV3_CUDA_CHECK(cudaFuncSetAttribute(grouped_kernel<T, BM>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(unsigned(a.total_tiles), unsigned(a.n / kBN));
  grouped_kernel<T, BM><<<grid, kThreads, smem, s>>>(a);
  DSV3_CUDA_CHECK_LAUNCH();
}

template <WType T>
void launch_wgmma(const GroupedArgs& a, cudaStream_t s) {
  DSV3_CUDA_CHECK(cudaFuncSetAttribute(grouped_wgmma_kernel<T>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(kWSmem)));
  const dim3 grid(unsigned(a.total_tiles), unsigned(a.n / kBN));
  grouped_wgmma_kernel<T><<<grid, kThreads, kWSmem, s>>>(a);
  DSV3_CUDA_CHECK_LAUNCH();
}

template <WType T>
void launch(const GroupedArgs& a, cudaStream_t s) {
  if (a.tile_rows == 16)
    launch<T, 16>(a, s);
  else if (a.tile_rows == 32)
    launch<T, 32>(a, s);
  else
    launch<T, 64>(a, s);
}

bool tile_rows_ok(int tile_rows) {
  return tile_rows == 16 || tile_rows == 32 || tile_rows == 64 || tile_rows == kWBM;
}

}  // namespace

void grouped_layout(const int32_t* offsets, int groups, int tile_rows, int32_t* padded_offsets,
                    int32_t* tile_start, cudaStream_t s) {
  if (!tile_rows_ok(tile_rows))
    throw std::invalid_argument("grouped_layout: tile rows not 16/32/64/128");
  grouped_layout_kernel<<<1, 1, 0, s>>>(offsets, groups, tile_rows, padded_offsets, tile_start);
  DSV3_CUDA_CHECK_LAUNCH();
}

int grouped_tile_rows(int64_t rows) {
  return rows < 16 ? 16 : rows < 48 ? 32 : 64;
}

bool grouped_tile_ok(WType type, int tile_rows) {
  if (tile_rows == kWBM) return (type == WType::BF16 || type == WType::E4M3) && wgmma_device();
  return tile_rows == 16 || tile_rows == 32 || tile_rows == 64;
}

bool grouped_supported(WType type, int64_t n, int64_t k) {
  const int64_t k_elems = type == WType::E4M3 ? kBK : type == WType::BF16 ? kBK / 2 : 0;
  return k_elems > 0 && n % kBN == 0 && k % k_elems == 0 && n > 0 && k > 0;
}

void grouped_gemm(const GroupedArgs& a, cudaStream_t s) {
  if (a.total_tiles == 0) return;
  // The engine asks first: these are a caller's bugs.
  if (!grouped_supported(a.type, a.n, a.k))
    throw std::invalid_argument("grouped_gemm: weight type or shape without a kernel");
  if (!grouped_tile_ok(a.type, a.tile_rows))
    throw std::invalid_argument("grouped_gemm: no kernel for these tile rows and weight type");
  if (a.tile_rows == kWBM && a.type == WType::E4M3)
    launch_wgmma<WType::E4M3>(a, s);
  else if (a.tile_rows == kWBM)
    launch_wgmma<WType::BF16>(a, s);
  else if (a.type == WType::E4M3)
    launch<WType::E4M3>(a, s);
  else
    launch<WType::BF16>(a, s);
}

}  // namespace dsv3::cuda
