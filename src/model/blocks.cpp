#include "model/blocks.h"

#include <cstring>

#include "kernels/ops.h"
#include "model/moe.h"

namespace dsv3 {

namespace {

// Copies columns [c0, c0 + n) of each row of src [R, C] into dst [R, n].
void copy_cols(const Tensor& src, int64_t c0, int64_t n, Tensor& dst) {
  const int64_t rows = src.dim(0), cols = src.dim(1);
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst.ptr<float>() + r * n, src.ptr<float>() + r * cols + c0, size_t(n) * 4);
}

}  // namespace

Tensor f32_matrix(int64_t rows, int64_t cols) {
  return Tensor::zeros(DType::F32, {rows, cols});
}

MlaProjection mla_project(const ModelConfig& c, const RopeTable& rope, const AttentionWeights& a,
                          const Tensor& h, const Tensor& positions) {
  const int64_t n = h.dim(0), heads = c.num_attention_heads;
  const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dc = c.kv_lora_rank;
  const float eps = float(c.rms_norm_eps);
  MlaProjection p;
  p.q = f32_matrix(n, heads * c.qk_head_dim());
  if (c.has_q_lora()) {
    Tensor qa = f32_matrix(n, c.q_lora_rank);
    ops::linear(h, a.q_a, qa);
    ops::rmsnorm(qa, a.q_a_norm, eps, qa);
    ops::linear(qa, a.q_b, p.q);
  } else {
    ops::linear(h, a.q, p.q);
  }
  p.q = p.q.reshape({n, heads, c.qk_head_dim()});
  ops::rope_interleaved(p.q, dn, rope.inv_freq, rope.factor, positions);

  Tensor kv = f32_matrix(n, dc + dr);
  ops::linear(h, a.kv_a, kv);
  p.ckv = f32_matrix(n, dc);
  p.kpe = f32_matrix(n, dr);
  copy_cols(kv, 0, dc, p.ckv);
  copy_cols(kv, dc, dr, p.kpe);
  ops::rmsnorm(p.ckv, a.kv_a_norm, eps, p.ckv);
  Tensor k3 = p.kpe.reshape({n, 1, dr});
  ops::rope_interleaved(k3, 0, rope.inv_freq, rope.factor, positions);
  return p;
}

Tensor mlp_forward(const MlpWeights& m, const Tensor& h) {
  const int64_t n = h.dim(0), inter = m.gate.out_features();
  Tensor g = f32_matrix(n, inter), u = f32_matrix(n, inter);
  Tensor out = f32_matrix(n, m.down.out_features());
  ops::linear(h, m.gate, g);
  ops::linear(h, m.up, u);
  ops::silu_mul(g, u, g);
  ops::linear(g, m.down, out);
  return out;
}

Tensor moe_forward(const ModelConfig& c, const MoeWeights& m, const Tensor& h) {
  const int64_t n = h.dim(0), hid = c.hidden_size, e = c.n_routed_experts;
  Tensor logits = f32_matrix(n, e);
  ops::linear(h, Linear::plain(m.gate), logits);
  const Routing r = route_tokens(c, logits.ptr<float>(), m.bias ? m.bias.ptr<float>() : nullptr, n);

  // Group the (token, weight) pairs by expert, then run each expert on its tokens.
  std::vector<std::vector<std::pair<int64_t, float>>> assigned(static_cast<size_t>(e));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < r.k; ++j)
      assigned[size_t(r.expert[size_t(t * r.k + j)])].push_back({t, r.weight[size_t(t * r.k + j)]});

  Tensor y = m.has_shared ? mlp_forward(m.shared, h) : f32_matrix(n, hid);
  for (int64_t x = 0; x < e; ++x) {
    const auto& rows = assigned[size_t(x)];
    if (rows.empty()) continue;
    Tensor xin = f32_matrix(int64_t(rows.size()), hid);
    for (size_t i = 0; i < rows.size(); ++i)
      std::memcpy(xin.ptr<float>() + i * hid, h.ptr<float>() + rows[i].first * hid,
                  size_t(hid) * 4);
    const Tensor xo = mlp_forward(m.experts[size_t(x)], xin);
    for (size_t i = 0; i < rows.size(); ++i) {
      float* dst = y.ptr<float>() + rows[i].first * hid;
      const float* src = xo.ptr<float>() + i * hid;
      for (int64_t d = 0; d < hid; ++d) dst[d] += rows[i].second * src[d];
    }
  }
  return y;
}

Tensor mtp_input(const ModelConfig& c, const Tensor& embed, const MtpWeights& m,
                 const Tensor& next_ids, Tensor& hprev) {
  const int64_t n = next_ids.numel(), hid = c.hidden_size;
  const float eps = float(c.rms_norm_eps);
  Tensor emb = f32_matrix(n, hid);
  ops::embedding(next_ids, embed, emb);
  ops::rmsnorm(emb, m.enorm, eps, emb);
  ops::rmsnorm(hprev, m.hnorm, eps, hprev);
  Tensor cat = f32_matrix(n, 2 * hid);  // [embedding ; hidden]
  for (int64_t r = 0; r < n; ++r) {
    std::memcpy(cat.ptr<float>() + r * 2 * hid, emb.ptr<float>() + r * hid, size_t(hid) * 4);
    std::memcpy(cat.ptr<float>() + r * 2 * hid + hid, hprev.ptr<float>() + r * hid,
                size_t(hid) * 4);
  }
  Tensor x = f32_matrix(n, hid);
  ops::linear(cat, m.eh_proj, x);
  return x;
}

Tensor mtp_logits(const ModelConfig& c, const MtpWeights& m, const Tensor& x) {
  Tensor normed = f32_matrix(x.dim(0), c.hidden_size);
  ops::rmsnorm(x, m.head_norm, float(c.rms_norm_eps), normed);
  Tensor out = f32_matrix(x.dim(0), c.vocab_size);
  ops::linear(normed, Linear::plain(m.head), out);
  return out;
}

Tensor ffn_forward(const ModelConfig& c, const LayerWeights& L, const Tensor& h) {
  return L.is_moe ? moe_forward(c, L.moe, h) : mlp_forward(L.mlp, h);
}

}  // namespace dsv3
