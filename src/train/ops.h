// Training ops on the CPU: an explicit forward and backward for every DeepSeek-V3 op
// (llm.c style, no autograd). Plain functions on raw row-major pointers, templated on the
// element type T and instantiated for float (training, f32 master weights) and double (the
// finite-difference gradient checks in tests/test_backward.cpp).
//
// Conventions, the same for every op:
//  - Backward functions ADD into every gradient output (activations and parameters alike):
//    the caller zeroes gradient buffers once, and an activation used twice (a residual, the
//    layer input feeding q and kv projections) just receives both contributions. The one
//    exception is cross_entropy, the head of the chain, which writes its d logits (so they may
//    overwrite the logits buffer).
//  - A null gradient pointer means "not needed" and skips that work.
//  - Backward recomputes what is cheap (rsqrt of RMSNorm, sigmoid of gate logits, attention
//    probabilities) from the forward inputs instead of requiring cached intermediates.
#pragma once

#include <cstdint>
#include <vector>

#include "io/config.h"

namespace dsv3::train {

// ---- embedding: out[t] = table[ids[t]] (table [vocab, dim]) ----
template <typename T>
void embedding_forward(const int32_t* ids, int64_t n, const T* table, int64_t vocab, int64_t dim,
                       T* out);
// dtable[ids[t]] += dout[t] (a scatter-add: repeated ids accumulate).
template <typename T>
void embedding_backward(const int32_t* ids, int64_t n, const T* dout, int64_t vocab, int64_t dim,
                        T* dtable);

// ---- RMSNorm: y = w ⊙ x / sqrt(mean(x²) + eps), rows of width dim ----
template <typename T>
void rmsnorm_forward(const T* x, const T* w, int64_t rows, int64_t dim, T eps, T* y);
// dx += ..., dw += Σ_rows dy ⊙ x̂ (either may be null).
template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* dy, int64_t rows, int64_t dim, T eps, T* dx,
                      T* dw);

// ---- linear: y = x·Wᵀ, x [rows, in], W [out, in] (the checkpoint layout), y [rows, out] ----
template <typename T>
void linear_forward(const T* x, const T* W, int64_t rows, int64_t in, int64_t out, T* y);
// dx += dy·W, dW += dyᵀ·x (either may be null). BLAS (s/dgemm), split across the thread pool.
template <typename T>
void linear_backward(const T* x, const T* W, const T* dy, int64_t rows, int64_t in, int64_t out,
                     T* dx, T* dW);

// ---- SwiGLU: out = silu(g) ⊙ u, n elements ----
template <typename T>
void swiglu_forward(const T* g, const T* u, int64_t n, T* out);
template <typename T>
void swiglu_backward(const T* g, const T* u, const T* dout, int64_t n, T* dg, T* du);

// ---- interleaved RoPE (MODEL_SPEC §3), in place ----
// x is [rows, vecs_per_row, width]; in each vector the slice [offset, offset + 2·half) has its
// pairs (2i, 2i+1) rotated by positions[row]·inv_freq[i] and scaled by `factor` (half =
// inv_freq.size()). The angle is formed in f32 exactly as the inference kernel does, so both
// instantiations rotate by the same angle. Entries outside the slice are untouched.
template <typename T>
void rope_forward(T* x, int64_t rows, int64_t vecs_per_row, int64_t width, int64_t offset,
                  const std::vector<float>& inv_freq, float factor, const int32_t* positions);
// The map is linear, so its gradient is its transpose: rotate dx (in place) by the negative
// angle, times factor. Entries outside the slice pass through unchanged (identity).
template <typename T>
void rope_backward(T* dx, int64_t rows, int64_t vecs_per_row, int64_t width, int64_t offset,
                   const std::vector<float>& inv_freq, float factor, const int32_t* positions);

// ---- causal multi-head attention over one sequence ----
// q, k [T, H, dqk], v [T, H, dv], out [T, H, dv]; query t sees keys 0..t;
// out = softmax(q·kᵀ·scale)·v.
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, int64_t T_, int64_t H, int64_t dqk,
                       int64_t dv, T scale, T* out);
// dq, dk, dv += ... (each may be null). The probabilities are recomputed from q and k (one
// extra q·kᵀ per query row, no [H, T, T] tensor kept from forward), and the softmax-backward
// term Σ_j P·dP is formed from dout·v, so the forward output is not needed either.
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* dout, int64_t T_, int64_t H,
                        int64_t dqk, int64_t dv, T scale, T* dq, T* dk, T* dv_);

// ---- DeepSeekMoE gate (sigmoid scores, noaux_tc group-limited selection, MODEL_SPEC §5) ----
struct GateConfig {
  int64_t n_experts = 0, k = 0;  // n_routed_experts, num_experts_per_tok
  int64_t n_group = 1, topk_group = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  // Throws unless the config routes with sigmoid scores (V3); the V2 softmax gate is
  // inference-only here.
  static GateConfig from(const ModelConfig& c);
};

// logits [tokens, E] (router outputs), bias [E] (e_score_correction_bias, selection only, may
// be null). Writes experts [tokens, k] (descending by biased score, ties to the lower index,
// as route_tokens) and weights [tokens, k] = scale·s_k / (Σ_selected s + 1e-20) with
// s = sigmoid(logits) (normalised only if norm_topk_prob).
template <typename T>
void moe_gate_forward(const GateConfig& c, const T* logits, const T* bias, int64_t tokens,
                      int32_t* experts, T* weights);
// dlogits [tokens, E] += d weights [tokens, k] through the normalisation over the selected
// experts and the sigmoid. The bias and the discrete selection carry no gradient, so
// unselected experts get nothing from this op.
template <typename T>
void moe_gate_backward(const GateConfig& c, const T* logits, const int32_t* experts,
                       const T* dweights, int64_t tokens, T* dlogits);

// ---- complementary sequence-wise balance loss (TRAINING_SPEC §2), one sequence ----
// L = alpha Σ_i f_i P_i, f_i = E/(k·T)·#{t : i ∈ experts[t]} (a constant: the selection has no
// gradient), P_i = mean_t s'_{i,t}, s' = s / Σ_j s_j over ALL experts, s = sigmoid(logits).
// Returns L; if dlogits is non-null, adds dL/dlogits. For a batch, call once per sequence
// (pass alpha / n_sequences to average).
template <typename T>
T balance_loss(const T* logits, const int32_t* experts, int64_t tokens, int64_t n_experts,
               int64_t k, T alpha, T* dlogits);

// ---- cross-entropy over the vocabulary, fused forward + backward ----
// logits [N, V], targets [N] (a target < 0 is ignored; ≥ V throws). Returns the mean of
// −log softmax(logits)[target] over the counted rows (0 if none). If dlogits is non-null it is
// WRITTEN (not accumulated; it may alias logits): grad_scale · (softmax − onehot) / count for
// counted rows, 0 for ignored ones. grad_scale weights this loss in a sum (e.g. λ for MTP).
template <typename T>
T cross_entropy(const T* logits, const int32_t* targets, int64_t N, int64_t V, T* dlogits,
                T grad_scale = T(1));

}  // namespace dsv3::train
