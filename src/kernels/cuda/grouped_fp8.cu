// The routed experts' block-scaled FP8 GEMMs in one launch (DeepGEMM's "contiguous grouped"
// layout): every expert's rows, quantised to E4M3 in 1×128 tiles and grouped by expert with
// each group padded to 16 rows (quantize_e4m3_tiles), times that expert's E4M3 weight in
// 128×128 blocks. cuBLASLt 13.1 has no grouped block-scaled GEMM, so the engine otherwise makes
// one call per expert and projection (768 a DeepSeek-V3 layer), host-bound at prefill sizes.
//
// A block computes 64 rows × 128 columns of one expert: 8 warps of 32 × 32, mma.sync m16n8k32
// E4M3 with F32 accumulators, 128-wide K blocks through shared memory by cp.async, kStages
// deep. Each K block's products are summed in their own registers, then added to the output
// accumulators times (row tile scale × weight block scale): the scales are applied per 128 of
// K in F32, as DeepSeek-V3's recipe and DeepGEMM promote, not inside the tensor cores' sum.
#include <algorithm>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/mma.cuh"

namespace dsv3::cuda {

namespace {

constexpr int kBM = 64, kBN = 128, kBK = 128, kThreads = 256;
constexpr int kStride = kBK + 16;  // bytes per shared row: ldmatrix without bank conflicts
// K blocks in flight: kStages - 1 while one is multiplied. At decode batches (2-8 rows an
// expert) a block's products are few and its time is the weights' latency: with two stages
// and one block an SM (136 registers) only one 24 KiB stage an SM was in flight, 1.4 TB/s.
constexpr int kStages = 4;
constexpr size_t kSmem = size_t(kStages * (kBM + kBN) * kStride);  // 108 KiB

// MINB blocks an SM: 2 caps registers at 128 (32 bytes spill), 1 leaves 136.
template <int MINB>
__global__ void __launch_bounds__(kThreads, MINB) grouped_fp8_kernel(const GroupedFp8Args a) {
  extern __shared__ __align__(16) uint8_t smem[];
  // Stage b: rows of x at sa(b), of W at sb(b).
  const auto sa = [&](int b) { return smem + b * (kBM * kStride); };
  const auto sb = [&](int b) { return smem + kStages * kBM * kStride + b * (kBN * kStride); };
  // This block's expert: the last group whose first tile is <= blockIdx.x.
  const int tile = int(blockIdx.x);
  const int e = group_of(a.tile_start, a.groups, tile);
  if (tile >= a.tile_start[a.groups]) return;
  const int64_t p0 = a.padded_offsets[e], plen = a.padded_offsets[e + 1] - p0;
  const int64_t valid = a.offsets[e + 1] - a.offsets[e];     // rows written (the rest is padding)
  const int64_t m0 = int64_t(tile - a.tile_start[e]) * kBM;  // first row in the group
  const int64_t n0 = int64_t(blockIdx.y) * kBN;
  const int64_t kb_count = a.k / kBK;
  const auto* x = static_cast<const uint8_t*>(a.x);
  const auto* w = static_cast<const uint8_t*>(a.w) + (int64_t(e) * a.n + n0) * a.k;
  const float* wscale = a.w_scale + (int64_t(e) * (a.n / 128) + n0 / 128) * a.w_scale_ld;

  const auto load = [&](int64_t kb, int buf) {
    for (int c = int(threadIdx.x); c < kBM * (kBK / 16); c += kThreads) {
      const int r = c / (kBK / 16), off = (c % (kBK / 16)) * 16;
      const bool ok = m0 + r < plen;
      cp16(sa(buf) + r * kStride + off, ok ? x + (p0 + m0 + r) * a.k + kb * kBK + off : x, ok);
    }
    for (int c = int(threadIdx.x); c < kBN * (kBK / 16); c += kThreads) {
      const int r = c / (kBK / 16), off = (c % (kBK / 16)) * 16;
      cp16(sb(buf) + r * kStride + off, w + int64_t(r) * a.k + kb * kBK + off, true);
    }
  };

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int wm = warp / 4, wn = warp % 4;  // this warp: rows wm·32 .., columns wn·32 ..
  const int g = lane / 4, t4 = lane % 4;
  float acc[2][4][4] = {};
  // The row tile scales of this thread's four rows for the K block in flight.
  const auto row_scale = [&](int64_t kb, int mi, int half) {
    const int64_t i = m0 + wm * 32 + mi * 16 + g + 8 * half;  // row within the group
    return i < plen ? a.x_scale[kb_count * p0 + kb * plen + i] : 0.0f;
  };

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
    float part[2][4][4] = {};
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk) {
      uint32_t af[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        ldsm_x4(af[mi],
                sa(buf) + (wm * 32 + mi * 16 + lane % 16) * kStride + kk * 32 + (lane / 16) * 16);
#pragma unroll
      for (int nj = 0; nj < 4; nj += 2) {
        uint32_t bf[4];  // columns nj·8 .. +15, K bytes kk·32 .. +31
        ldsm_x4(bf, sb(buf) + (wn * 32 + nj * 8 + (lane / 16) * 8 + lane % 8) * kStride + kk * 32 +
                        ((lane / 8) % 2) * 16);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          mma_e4m3(part[mi][nj], af[mi], bf[0], bf[1]);
          mma_e4m3(part[mi][nj + 1], af[mi], bf[2], bf[3]);
        }
      }
    }
    const float ws = wscale[kb];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const float s0 = row_scale(kb, mi, 0) * ws, s1 = row_scale(kb, mi, 1) * ws;
#pragma unroll
      for (int nj = 0; nj < 4; ++nj) {
        acc[mi][nj][0] = fmaf(part[mi][nj][0], s0, acc[mi][nj][0]);
        acc[mi][nj][1] = fmaf(part[mi][nj][1], s0, acc[mi][nj][1]);
        acc[mi][nj][2] = fmaf(part[mi][nj][2], s1, acc[mi][nj][2]);
        acc[mi][nj][3] = fmaf(part[mi][nj][3], s1, acc[mi][nj][3]);
      }
    }
  }
  cp_wait_all();
  // Rows in the experts' unpadded order (moe_permute's), padding rows not written.
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t i = m0 + wm * 32 + mi * 16 + g + 8 * half;
      if (i >= valid) continue;
      float* yrow = a.y + (a.offsets[e] + i) * a.ldy + n0 + wn * 32 + 2 * t4;
#pragma unroll
      for (int nj = 0; nj < 4; ++nj)
        *reinterpret_cast<float2*>(yrow + nj * 8) = {acc[mi][nj][2 * half],
                                                     acc[mi][nj][2 * half + 1]};
    }
  }
}

// One thread: E is a few hundred, and this keeps the prefix sums in one fixed order.
__global__ void grouped_fp8_layout_kernel(const int32_t* offsets, int groups,
                                          int32_t* padded_offsets, int32_t* tile_start) {
  if (threadIdx.x != 0) return;
  int32_t p = 0, t = 0;
  padded_offsets[0] = tile_start[0] = 0;
  for (int e = 0; e < groups; ++e) {
    const int32_t rows = offsets[e + 1] - offsets[e], padded = (rows + 15) / 16 * 16;
    p += padded;
    t += (padded + kBM - 1) / kBM;
    padded_offsets[e + 1] = p;
    tile_start[e + 1] = t;
  }
}

int g_blocks_per_sm = 2;  // grouped_fp8_blocks_per_sm

}  // namespace

int grouped_fp8_blocks_per_sm(int blocks) {
  return std::exchange(g_blocks_per_sm, blocks);
}

void grouped_fp8_layout(const int32_t* offsets, int groups, int32_t* padded_offsets,
                        int32_t* tile_start, cudaStream_t s) {
  grouped_fp8_layout_kernel<<<1, 32, 0, s>>>(offsets, groups, padded_offsets, tile_start);
  DSV3_CUDA_CHECK_LAUNCH();
}

int64_t grouped_fp8_tiles(int64_t padded_rows) {
  return (padded_rows + kBM - 1) / kBM;
}

bool grouped_fp8_supported(int64_t n, int64_t k) {
  return n % kBN == 0 && k % kBK == 0 && n > 0 && k > 0;
}

void grouped_fp8(const GroupedFp8Args& a, cudaStream_t s) {
  if (a.total_tiles == 0) return;
  const auto kernel = g_blocks_per_sm == 1 ? grouped_fp8_kernel<1> : grouped_fp8_kernel<2>;
  DSV3_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem)));
  const dim3 grid(unsigned(a.total_tiles), unsigned(a.n / kBN));
  kernel<<<grid, kThreads, kSmem, s>>>(a);
  DSV3_CUDA_CHECK_LAUNCH();
}

}  // namespace dsv3::cuda
