#include "model/model.h"

#include <cstring>

#include "core/error.h"
#include "kernels/ops.h"
#include "model/blocks.h"

namespace dsv3 {

namespace {}  // namespace

Model::Model(ModelWeights weights) : w_(std::move(weights)), rope_(RopeTable::build(w_.config)) {}

Tensor Model::attention(const AttentionWeights& a, const Tensor& h, const Tensor& positions,
                        int64_t seq_len) const {
  const ModelConfig& c = w_.config;
  const int64_t n = h.dim(0), heads = c.num_attention_heads;
  const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  const int64_t dqk = dn + dr;
  const MlaProjection p = mla_project(c, rope_, a, h, positions);

  // Naive (non-absorbed) form: expand the latent into per-head keys and values.
  Tensor kvb = f32_matrix(n, heads * (dn + dv));
  ops::linear(p.ckv, a.kv_b, kvb);
  Tensor k = Tensor::zeros(DType::F32, {n, heads, dqk});
  Tensor v = Tensor::zeros(DType::F32, {n, heads, dv});
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t hd = 0; hd < heads; ++hd) {
      const float* src = kvb.ptr<float>() + (t * heads + hd) * (dn + dv);
      float* kd = k.ptr<float>() + (t * heads + hd) * dqk;
      std::memcpy(kd, src, size_t(dn) * 4);
      std::memcpy(kd + dn, p.kpe.ptr<float>() + t * dr, size_t(dr) * 4);
      std::memcpy(v.ptr<float>() + (t * heads + hd) * dv, src + dn, size_t(dv) * 4);
    }
  }
  Tensor o = Tensor::zeros(DType::F32, {n, heads, dv});
  const float scale = float(c.softmax_scale());
  for (int64_t s0 = 0; s0 < n; s0 += seq_len) {
    Tensor os = o.slice_rows(s0, s0 + seq_len);
    ops::attention_causal(p.q.slice_rows(s0, s0 + seq_len), k.slice_rows(s0, s0 + seq_len),
                          v.slice_rows(s0, s0 + seq_len), scale, os);
  }
  Tensor out = f32_matrix(n, c.hidden_size);
  ops::linear(o.reshape({n, heads * dv}), a.o, out);
  return out;
}

void Model::block(const LayerWeights& L, Tensor& x, const Tensor& positions,
                  int64_t seq_len) const {
  const float eps = float(w_.config.rms_norm_eps);
  Tensor h = f32_matrix(x.dim(0), x.dim(1));
  ops::rmsnorm(x, L.input_norm, eps, h);
  ops::add_inplace(x, attention(L.attn, h, positions, seq_len));
  ops::rmsnorm(x, L.post_attention_norm, eps, h);
  ops::add_inplace(x, ffn_forward(w_.config, L, h));
}

Tensor Model::logits(const Tensor& normed, const Tensor& head) const {
  Tensor out = f32_matrix(normed.dim(0), w_.config.vocab_size);
  ops::linear(normed, Linear::plain(head), out);
  return out;
}

Tensor Model::forward(const Tensor& ids, Tensor* hidden) const {
  const ModelConfig& c = w_.config;
  DSV3_CHECK(ids.dtype() == DType::I32 && ids.ndim() == 2,
             "input_ids must be I32 [B, T], got {} {}", dtype_name(ids.dtype()),
             shape_str(ids.shape()));
  const int64_t b = ids.dim(0), t = ids.dim(1), n = b * t;
  DSV3_CHECK(t > 0 && b > 0, "input_ids is empty ({})", shape_str(ids.shape()));
  DSV3_CHECK(t <= c.max_position_embeddings,
             "sequence length {} exceeds the model's context (max_position_embeddings {})", t,
             c.max_position_embeddings);
  Tensor positions = Tensor::zeros(DType::I32, {n});
  for (int64_t i = 0; i < n; ++i) positions.ptr<int32_t>()[i] = int32_t(i % t);

  Tensor x = f32_matrix(n, c.hidden_size);
  ops::embedding(ids.reshape({n}), w_.embed, x);
  for (const LayerWeights& L : w_.layers) block(L, x, positions, t);
  ops::rmsnorm(x, w_.final_norm, float(c.rms_norm_eps), x);
  if (hidden) *hidden = x.reshape({b, t, c.hidden_size});
  return logits(x, w_.lm_head).reshape({b, t, c.vocab_size});
}

Tensor Model::forward_mtp(const Tensor& ids, const Tensor& hidden, int depth) const {
  const ModelConfig& c = w_.config;
  DSV3_CHECK(depth >= 1 && depth <= int(w_.mtp.size()),
             "MTP depth {} requested but the model has {} MTP layers", depth, w_.mtp.size());
  const int64_t b = ids.dim(0), t = ids.dim(1), hid = c.hidden_size;
  DSV3_CHECK(hidden.ndim() == 3 && hidden.dim(0) == b && hidden.dim(1) == t && hidden.dim(2) == hid,
             "MTP: hidden {} does not match input_ids {}", shape_str(hidden.shape()),
             shape_str(ids.shape()));
  DSV3_CHECK(t > depth, "MTP depth {} needs sequences longer than {} tokens", depth, depth);
  Tensor prev = hidden;  // [b, len, H] of the previous depth
  Tensor out;
  for (int k = 1; k <= depth; ++k) {
    const LayerWeights& L = w_.mtp[size_t(k - 1)];
    const int64_t len = t - k, n = b * len;
    // Row (s, i) combines the previous depth's state at i with the embedding of token i + k.
    Tensor next_ids = Tensor::zeros(DType::I32, {n}), positions = Tensor::zeros(DType::I32, {n});
    Tensor hprev = f32_matrix(n, hid);
    for (int64_t s = 0; s < b; ++s) {
      for (int64_t i = 0; i < len; ++i) {
        next_ids.ptr<int32_t>()[s * len + i] = ids.ptr<int32_t>()[s * t + i + k];
        positions.ptr<int32_t>()[s * len + i] = int32_t(i);
        std::memcpy(hprev.ptr<float>() + (s * len + i) * hid,
                    prev.ptr<float>() + (s * prev.dim(1) + i) * hid, size_t(hid) * 4);
      }
    }
    Tensor x = mtp_input(c, w_.embed, L.mtp, next_ids, hprev);
    block(L, x, positions, len);
    prev = x.reshape({b, len, hid});
    if (k == depth) out = mtp_logits(c, L.mtp, x).reshape({b, len, c.vocab_size});
  }
  return out;
}

}  // namespace dsv3
