// A linear layer's weight as a checkpoint stores it (MODEL_SPEC §7): W [out, in] in any float
// dtype, used as y = x·Wᵀ. FP8 (E4M3) weights carry `scale_inv` [ceil(out/bn), ceil(in/bk)]
// (F32) and dequantise as W[r, c] = q[r, c] · scale_inv[r / bn, c / bk]; edge blocks may be
// partial. Kernels convert on the fly: no f32 copy of the weight is ever kept.
#pragma once

#include "core/tensor.h"

namespace dsv3 {

struct Linear {
  Tensor weight;
  Tensor scale_inv;  // defined only for FP8 weights
  int64_t block_n = 128, block_k = 128;

  // A weight with no block scales (embedding, router, output head) used as a linear.
  static Linear plain(Tensor w) { return Linear{std::move(w), Tensor(), 128, 128}; }

  int64_t out_features() const { return weight.dim(0); }
  int64_t in_features() const { return weight.dim(1); }
  bool quantized() const { return scale_inv.defined(); }
  // Dequantises rows [r0, r1) into dst ([r1 - r0, in] f32, row-major). CPU only.
  void dequantize_rows(int64_t r0, int64_t r1, float* dst) const;

  // Quantises w [out, in] (f32) to E4M3 with one scale per bn×bk block: scale = amax / 448
  // (1 for an all-zero block), q = e4m3(w / scale), scale_inv = scale.
  static Linear quantize_fp8(const float* w, int64_t out, int64_t in, int64_t bn = 128,
                             int64_t bk = 128);
};

}  // namespace dsv3
