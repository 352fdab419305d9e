#include "infer/engine.h"

#include <cstring>

#include "core/error.h"
#include "kernels/ops.h"
#include "model/blocks.h"

namespace dsv3 {

namespace {

// Rows [r0, r0 + n) of a [R, C] or [R, A, B] tensor as a view.
Tensor rows(const Tensor& t, int64_t r0, int64_t n) {
  return t.slice_rows(r0, r0 + n);
}

}  // namespace

Engine::Engine(const Model& model, EngineOptions opt)
    : model_(model), opt_(opt), rope_(RopeTable::build(model.config())) {}

LatentCache Engine::new_cache(int64_t capacity) const {
  const ModelConfig& c = config();
  return LatentCache(c, c.num_hidden_layers, capacity > 0 ? capacity : c.max_position_embeddings);
}

LatentCache Engine::new_mtp_cache(int64_t capacity) const {
  const ModelConfig& c = config();
  DSV3_CHECK(!model_.weights().mtp.empty(),
             "this model has no MTP layer (num_nextn_predict_layers 0)");
  return LatentCache(c, 1, capacity > 0 ? capacity : c.max_position_embeddings);
}

void Engine::block(const LayerWeights& L, int64_t cache_layer, Tensor& x,
                   const std::vector<LatentCache*>& caches, const std::vector<int64_t>& counts,
                   const Tensor& positions) const {
  const ModelConfig& c = config();
  const float eps = float(c.rms_norm_eps);
  const int64_t n = x.dim(0), heads = c.num_attention_heads, dv = c.v_head_dim;
  Tensor h = f32_matrix(n, c.hidden_size);
  ops::rmsnorm(x, L.input_norm, eps, h);
  const MlaProjection p = mla_project(c, rope_, L.attn, h, positions);
  Tensor o = Tensor::zeros(DType::F32, {n, heads, dv});
  int64_t r0 = 0;
  for (size_t i = 0; i < caches.size(); ++i) {
    LatentCache& cache = *caches[i];
    const int64_t k = counts[i], start = cache.size();
    cache.write(cache_layer, rows(p.ckv, r0, k).ptr<float>(), rows(p.kpe, r0, k).ptr<float>(), k);
    Tensor oi = rows(o, r0, k);
    ops::mla_attention(rows(p.q, r0, k), cache.ckv(cache_layer, start + k),
                       cache.kpe(cache_layer, start + k), start, L.attn.kv_b, c.qk_nope_head_dim,
                       dv, float(c.softmax_scale()), opt_.absorbed, oi);
    r0 += k;
  }
  Tensor attn = f32_matrix(n, c.hidden_size);
  ops::linear(o.reshape({n, heads * dv}), L.attn.o, attn);
  ops::add_inplace(x, attn);
  ops::rmsnorm(x, L.post_attention_norm, eps, h);
  ops::add_inplace(x, ffn_forward(c, L, h));
}

Tensor Engine::step(const std::vector<Input>& inputs, Tensor* hidden) const {
  const ModelConfig& c = config();
  std::vector<LatentCache*> caches;
  std::vector<int64_t> counts;
  int64_t n = 0, out_rows = 0;
  for (const Input& in : inputs) {
    DSV3_CHECK(in.cache && !in.tokens.empty(), "engine step: an input has no tokens");
    caches.push_back(in.cache);
    counts.push_back(int64_t(in.tokens.size()));
    n += int64_t(in.tokens.size());
    out_rows += in.all_logits ? int64_t(in.tokens.size()) : 1;
  }
  Tensor ids = Tensor::zeros(DType::I32, {n}), positions = Tensor::zeros(DType::I32, {n});
  int64_t r = 0;
  for (const Input& in : inputs) {
    for (size_t j = 0; j < in.tokens.size(); ++j, ++r) {
      ids.ptr<int32_t>()[r] = in.tokens[j];
      positions.ptr<int32_t>()[r] = int32_t(in.cache->size() + int64_t(j));
    }
  }
  Tensor x = f32_matrix(n, c.hidden_size);
  ops::embedding(ids, model_.weights().embed, x);
  const auto& layers = model_.weights().layers;
  for (size_t l = 0; l < layers.size(); ++l)
    block(layers[l], int64_t(l), x, caches, counts, positions);
  // With their ids, the rows' full blocks become prefixes other sequences can share.
  for (size_t i = 0; i < caches.size(); ++i) caches[i]->commit(inputs[i].tokens);
  ops::rmsnorm(x, model_.weights().final_norm, float(c.rms_norm_eps), x);
  if (hidden) *hidden = x;

  // The head only on the rows whose logits are wanted: a prompt's last token, or all of them.
  Tensor sel = f32_matrix(out_rows, c.hidden_size);
  int64_t src = 0, dst = 0;
  for (const Input& in : inputs) {
    const int64_t k = int64_t(in.tokens.size()), take = in.all_logits ? k : 1;
    std::memcpy(sel.ptr<float>() + dst * c.hidden_size,
                x.ptr<float>() + (src + k - take) * c.hidden_size,
                size_t(take * c.hidden_size) * 4);
    src += k;
    dst += take;
  }
  Tensor logits = f32_matrix(out_rows, c.vocab_size);
  ops::linear(sel, Linear::plain(model_.weights().lm_head), logits);
  return logits;
}

Tensor Engine::mtp_step(const std::vector<MtpInput>& inputs) const {
  const ModelConfig& c = config();
  DSV3_CHECK(!model_.weights().mtp.empty(), "this model has no MTP layer");
  const LayerWeights& L = model_.weights().mtp[0];
  const int64_t hid = c.hidden_size;
  std::vector<LatentCache*> caches;
  std::vector<int64_t> counts;
  int64_t n = 0;
  for (const MtpInput& in : inputs) {
    DSV3_CHECK(in.hidden.ndim() == 2 && in.hidden.dim(0) == int64_t(in.tokens.size()) &&
                   in.hidden.dim(1) == hid,
               "MTP step: hidden {} does not match {} tokens", shape_str(in.hidden.shape()),
               in.tokens.size());
    caches.push_back(in.cache);
    counts.push_back(int64_t(in.tokens.size()));
    n += int64_t(in.tokens.size());
  }
  Tensor ids = Tensor::zeros(DType::I32, {n}), positions = Tensor::zeros(DType::I32, {n});
  Tensor hprev = f32_matrix(n, hid);
  int64_t r = 0;
  for (const MtpInput& in : inputs) {
    std::memcpy(hprev.ptr<float>() + r * hid, in.hidden.ptr<float>(),
                size_t(in.hidden.numel()) * 4);
    for (size_t j = 0; j < in.tokens.size(); ++j, ++r) {
      ids.ptr<int32_t>()[r] = in.tokens[j];
      positions.ptr<int32_t>()[r] = int32_t(in.cache->size() + int64_t(j));
    }
  }
  Tensor x = mtp_input(c, model_.weights().embed, L.mtp, ids, hprev);
  block(L, 0, x, caches, counts, positions);
  for (size_t i = 0; i < caches.size(); ++i) caches[i]->commit(counts[i]);

  Tensor last = f32_matrix(int64_t(inputs.size()), hid);
  int64_t end = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    end += counts[i];
    std::memcpy(last.ptr<float>() + int64_t(i) * hid, x.ptr<float>() + (end - 1) * hid,
                size_t(hid) * 4);
  }
  return mtp_logits(c, L.mtp, last);
}

}  // namespace dsv3
