// The one dispatch point for the model's kernels. Each op checks shapes and dtypes, then runs
// on the device its tensors live on (the CPU kernels in kernels/cpu/, the CUDA ones in
// kernels/cuda/). Activations are F32 [rows, features], row-major; weights stay in their
// stored dtype and are converted on the fly.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "kernels/linear.h"

namespace dsv3::ops {

// out[t] = table[ids[t]] as f32. ids: I32 [T]; table [V, H]; out F32 [T, H].
void embedding(const Tensor& ids, const Tensor& table, Tensor& out);

// out = weight ⊙ x / sqrt(mean(x²) + eps) per row (may alias x). x, out F32 [T, D].
void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out);

// y = x·Wᵀ. x F32 [T, in]; y F32 [T, out].
void linear(const Tensor& x, const Linear& w, Tensor& y);
// Process-wide, off by default: FP8 linears with 128×128 blocks (K a multiple of 128) first
// round their inputs through E4M3 in 1×128 tiles, the numerics of DeepSeek-V3's inference on
// FP8 tensor cores (the CUDA engine's fp8_gemm). The tests' emulation of that path.
void set_fp8_activations(bool on);

// x += y (same shape, F32).
void add_inplace(Tensor& x, const Tensor& y);

// out = silu(gate) ⊙ up. gate, up, out F32 [T, D]; out may alias gate.
void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out);

// Rotary embedding on the interleaved layout (MODEL_SPEC §3): in every row of x ([T, n, w]
// viewed as T·n vectors of width w), the slice [offset, offset + 2·inv_freq.size()) has its
// pairs (2i, 2i+1) rotated by angle positions[t]·inv_freq[i], then scaled by `factor`.
// The angle is formed in f32 as HF and DeepSeek do; cos/sin are exact for that angle.
void rope_interleaved(Tensor& x, int64_t offset, const std::vector<float>& inv_freq, float factor,
                      const Tensor& positions);

// Causal attention over one sequence. q, k: F32 [T, H, dqk]; v: F32 [T, H, dv];
// out: F32 [T, H, dv]. Query t attends to keys 0..t; softmax in f32.
void attention_causal(const Tensor& q, const Tensor& k, const Tensor& v, float scale, Tensor& out);

}  // namespace dsv3::ops

namespace dsv3::ops {

// Multi-head latent attention of T new queries over one sequence's latent cache
// (MODEL_SPEC §3). q: F32 [T, H, nope + rope] (rope part rotated) for positions
// start .. start + T - 1; ckv: F32 [L, kv_lora_rank] and kpe: F32 [L, rope], the cache rows
// 0 .. L - 1 with L ≥ start + T (query t sees rows 0 .. start + t). kv_b: the layer's
// kv_b_proj [H·(nope + v), kv_lora_rank]. out: F32 [T, H, v].
// absorbed: fold W_UK into the query and W_UV into the output (cost O(L·kv_lora_rank) per
// head); otherwise expand keys and values per head (the naive form, to check against).
void mla_attention(const Tensor& q, const Tensor& ckv, const Tensor& kpe, int64_t start,
                   const Linear& kv_b, int64_t nope, int64_t v_dim, float scale, bool absorbed,
                   Tensor& out);

}  // namespace dsv3::ops
