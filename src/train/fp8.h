// FP8 fine-grained mixed precision, DeepSeek-V3's recipe (TRAINING_SPEC §4), emulated exactly on
// the CPU; plus the BF16 baseline. Every linear layer y = x·Wᵀ (x [rows, in], W [out, in], the
// conventions of train/ops.h) runs its three GEMMs on E4M3 operands:
//
//   pass    GEMM          reduction (K)   operand A              operand B
//   Fprop   y  = x·Wᵀ     in              x: 1×128 tiles         W: 128×128 blocks
//   Dgrad   dx = dy·W     out             dy: 1×128 tiles        W: 128×128 blocks (transposed use)
//   Wgrad   dW = dyᵀ·x    rows (tokens)   dy: 128×1 tiles        x: 128×1 tiles
//
// Every tile/block runs along the GEMM's reduction axis in 128-element chunks aligned at 0, so
// each operand has one scale per (row or column of C, K chunk) and the scales factor out of each
// chunk's sum: C = Σ_chunks s_a·s_b·Σ_{k∈chunk} q_a·q_b. The chunk sums are what the tensor core
// computes on codes; the scales are applied in FP32 when a partial sum is promoted.
//
// Quantisation (quantize): per tile, amax = max |x| (the online max-abs, no history);
// scale = amax / 448 (amax 0 → scale 1; at least FLT_MIN so 1/scale stays finite); code =
// f32_to_e4m3(x / scale) — round to nearest even, saturating at ±448 (CUDA's __NV_SATFINITE, as
// core/dtype.h). With pow2_scales the scale is rounded UP to a power of two (the smallest 2^e
// with amax / 2^e ≤ 448; representable as UE8M0), so x / scale is exact and nothing saturates.
// A dequantised element is e4m3_to_f32(code) · scale. Edge tiles (dims not multiples of 128)
// are partial: their amax covers only the elements they hold. NaN inputs stay NaN (code 0x7F);
// an infinite input makes its tile's scale infinite, so the whole tile dequantises to NaN.
//
// Accumulation (GemmOptions):
//  - Accum::kFp32: each 128-element K chunk's sum of code products is formed in FP32 (every
//    e4m3×e4m3 product is exact in FP32; sgemm on the codes widened to f32, BLAS's summation
//    order), then acc += (s_a·s_b)·chunk in FP32. The fast path, for training: within ~1.1-1.5×
//    of a plain sgemm of the same shape, quantisation included (bench/bench_fp8.cpp).
//  - Accum::kHopperEmulated: a bit-exact model of the Hopper FP8 tensor-core accumulator as
//    DeepSeek-V3's report (§3.5.2) and the FP22 measurements (SageAttention 2; DeepGEMM issue
//    #176: e8m13 on H100) describe it, with these parameters (p = mantissa_bits, default 13):
//      1. K is consumed in groups of `group` (32 = one FP8 WGMMA k-step) products, each exact.
//      2. Within a group, every product is aligned to the group's largest product exponent E
//         (E = ⌊log2 |product|⌋) and truncated to a multiple of 2^(E−p) TOWARD −∞ (the
//         report's "sign-fill right shifting" of two's-complement mantissas, keeping "the
//         highest 14 bits" = 1 + p; align_toward_zero = true truncates magnitudes instead);
//         the truncated products are summed exactly.
//      3. The group sum is added to the tensor-core accumulator c and the exact result is
//         truncated TOWARD ZERO to p explicit mantissa bits (c is an e8m(p) float, FP22 at
//         p = 13; "the accumulation ... into registers also employs 14-bit precision").
//      4. Every `promote_every` elements of K (the window; 128 = the recipe's N_C) c is promoted:
//         acc = fma(s_a·s_b, c, acc) in FP32 (DeepGEMM's final_accum += scale·accum), c = 0.
//         promote_every = 0 or ≥ K never promotes: c runs over all of K (the naive path).
//    Groups restart at each window start (a window's last group may be partial). Scales can
//    only be applied at a promotion, so the scales of both operands must be constant within
//    each window: windows longer than 128 (or never promoting) need per-tensor operands
//    (Granularity::kTensor) — exactly why the recipe promotes every 128. Slow scalar loops
//    (reference and ablation use only). What the model gives (bench_fp8, N(0,1) and N(1,1)
//    operands, relative Frobenius error against float64 of the same codes): never promoting,
//    ~0.3% at K = 4096 and ~1.2% at K = 16384 (the report's ~2% at 4096 would take p ≈ 10);
//    promoting every 128, ~1e-4 for any K (with floor alignment a bias of the truncated products
//    grows ~√K on zero-mean data: 1.6e-4 at K = 512 to 7.6e-4 at 16384; 1e-4 flat toward zero).
//    In both modes an output whose row of op(A) or column of op(B) holds a NaN code is NaN.
//
// Threads: the GEMMs and quantisers split work across the pool (core/threads.h); BLAS runs
// single-threaded inside each task.
#pragma once

#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "train/precision.h"

namespace dsv3::train::fp8 {

inline constexpr int64_t kTile = 128;  // tile/block edge and the K chunk of the scales

// How a matrix [rows, cols] (row-major) is cut into scale tiles.
enum class Granularity : uint8_t {
  kTensor,    // one scale for the whole matrix (the per-tensor baseline)
  kRowTiles,  // 1×128: one scale per row per 128 columns (activations in Fprop/Dgrad)
  kColTiles,  // 128×1: one scale per column per 128 rows (Wgrad's operands, K = the rows)
  kBlocks,    // 128×128 (weights)
};
const char* granularity_name(Granularity g);

// E4M3 codes and their scales. codes is [rows, cols] row-major like the input; scales is
// [scale_rows(), scale_cols()] row-major: kTensor 1×1, kRowTiles rows×⌈cols/128⌉,
// kColTiles ⌈rows/128⌉×cols, kBlocks ⌈rows/128⌉×⌈cols/128⌉.
struct Quantized {
  int64_t rows = 0, cols = 0;
  Granularity granularity = Granularity::kTensor;
  std::vector<f8_t> codes;
  std::vector<float> scales;

  int64_t tile_rows() const;  // the tile's extent: 1, 128 or rows (kTensor)
  int64_t tile_cols() const;
  int64_t scale_rows() const;
  int64_t scale_cols() const;
  // The scale element (r, c) is multiplied by.
  float scale(int64_t r, int64_t c) const {
    return scales[size_t((r / tile_rows()) * scale_cols() + c / tile_cols())];
  }
  // The dequantised element: e4m3_to_f32(code) · scale.
  float value(int64_t r, int64_t c) const {
    return e4m3_to_f32(codes[size_t(r * cols + c)]) * scale(r, c);
  }
  std::vector<float> dequantize() const;  // [rows, cols]
};

// The scale of a tile with max-abs amax (see the top of this file).
float tile_scale(float amax, bool pow2_scales);
// Quantises x [rows, cols] (row-major) with the given tiling.
Quantized quantize(const float* x, int64_t rows, int64_t cols, Granularity g,
                   bool pow2_scales = false);
// Re-tiles an already quantised matrix: quantize(q.dequantize(), g). The report's path for
// activations cached in FP8 as 1×128 tiles and needed as 128×1 tiles by Wgrad.
Quantized requantize(const Quantized& q, Granularity g, bool pow2_scales = false);

enum class Accum : uint8_t { kFp32, kHopperEmulated };

struct GemmOptions {
  Accum accum = Accum::kFp32;
  // kHopperEmulated only (see the top of this file).
  int64_t promote_every = kTile;   // N_C; 0 = never promote
  int mantissa_bits = 13;          // explicit mantissa bits p of the tensor-core accumulator, 1..23
  int64_t group = 32;              // products aligned together (one WGMMA k-step)
  bool align_toward_zero = false;  // step 2 truncates toward zero instead of toward −∞
};

// op(A) is [M, K], op(B) is [K, N] (BLAS convention). kN: the matrix as stored; kT: its
// transpose. A is stored [M, K] (kN) or [K, M] (kT); B is stored [K, N] (kN) or [N, K] (kT).
enum class Op : uint8_t { kN, kT };

// C [M, N] (row-major) = op(A)·op(B), or C += op(A)·op(B) when accumulate. Each operand's
// scales must be constant along K within every aligned 128 chunk: a stored [M, K] / [N, K]
// operand is kTensor, kRowTiles or kBlocks; a stored [K, M] / [K, N] one is kTensor, kColTiles
// or kBlocks. With accumulate the finished product is added to C (one FP32 add per element).
// Throws dsv3::Error on mismatched shapes or tilings. The recipe's three passes (fprop, dgrad
// and wgrad below do exactly this; call gemm directly to reuse quantised operands, e.g. W's
// blocks for Fprop and Dgrad, or activations cached in FP8 and re-tiled with requantize):
//   Fprop: gemm(kN, quantize(x, rows, in, kRowTiles),  kT, quantize(W, out, in, kBlocks), y)
//   Dgrad: gemm(kN, quantize(dy, rows, out, kRowTiles), kN, quantize(W, out, in, kBlocks), dx)
//   Wgrad: gemm(kT, quantize(dy, rows, out, kColTiles), kN, quantize(x, rows, in, kColTiles), dW)
void gemm(Op opa, const Quantized& a, Op opb, const Quantized& b, float* c, bool accumulate,
          const GemmOptions& opt = {});

// ---- the three passes of a linear layer, with ops.h's shapes and conventions ----
using train::Precision;  // kF32 | kBf16 | kFp8 (train/precision.h)

struct Recipe {
  Precision precision = Precision::kFp8;
  bool pow2_scales = false;  // kFp8: power-of-two scales
  GemmOptions gemm;          // kFp8: accumulation
};

// y = x·Wᵀ (writes y [rows, out]).
void fprop(const float* x, const float* W, int64_t rows, int64_t in, int64_t out, float* y,
           const Recipe& r);
// dx += dy·W (dx [rows, in]).
void dgrad(const float* dy, const float* W, int64_t rows, int64_t in, int64_t out, float* dx,
           const Recipe& r);
// dW += dyᵀ·x (dW [out, in]).
void wgrad(const float* x, const float* dy, int64_t rows, int64_t in, int64_t out, float* dW,
           const Recipe& r);
// Drop-in for train::linear_forward / linear_backward<float> (dx, dW may be null; both add).
inline void linear_forward(const float* x, const float* W, int64_t rows, int64_t in, int64_t out,
                           float* y, const Recipe& r) {
  fprop(x, W, rows, in, out, y, r);
}
void linear_backward(const float* x, const float* W, const float* dy, int64_t rows, int64_t in,
                     int64_t out, float* dx, float* dW, const Recipe& r);

// ---- BF16 helpers ----
// out[i] = x[i] rounded to BF16 (round to nearest even, core/dtype.h) and widened back to f32.
// out may equal x.
void round_to_bf16(const float* x, int64_t n, float* out);

}  // namespace dsv3::train::fp8
