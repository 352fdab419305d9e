#include "model/weights.h"

#include <fmt/format.h>

#include "core/error.h"

namespace dsv3 {

namespace {

class Loader {
 public:
  Loader(const ModelConfig& c, const TensorStore& s) : c_(c), s_(s) {}

  Tensor tensor(const std::string& name, const Shape& shape) const {
    Tensor t = s_.get(name, shape);
    DSV3_CHECK(dtype_is_float(t.dtype()), "tensor {} in {} has dtype {}, expected a float type",
               name, s_.file_of(name), dtype_name(t.dtype()));
    return t;
  }

  Tensor f32(const std::string& name, const Shape& shape) const {
    Tensor t = tensor(name, shape);
    DSV3_CHECK(t.dtype() == DType::F32, "tensor {} in {} must be F32, got {}", name,
               s_.file_of(name), dtype_name(t.dtype()));
    return t;
  }

  // A projection weight "<prefix>.weight" [out, in], FP8 with "<prefix>.weight_scale_inv".
  Linear linear(const std::string& prefix, int64_t out, int64_t in) const {
    Linear l;
    const std::string wname = prefix + ".weight";
    l.weight = s_.get(wname, {out, in});
    const DType dt = l.weight.dtype();
    const std::string sname = prefix + ".weight_scale_inv";
    if (dt == DType::F8_E4M3 || dt == DType::F8_E5M2) {
      l.block_n = c_.quant.block_n;
      l.block_k = c_.quant.block_k;
      DSV3_CHECK(s_.has(sname), "FP8 tensor {} in {} has no block scales {}", wname,
                 s_.file_of(wname), sname);
      l.scale_inv =
          f32(sname, {(out + l.block_n - 1) / l.block_n, (in + l.block_k - 1) / l.block_k});
    } else {
      DSV3_CHECK(dtype_is_float(dt), "tensor {} in {} has dtype {}, expected a float type", wname,
                 s_.file_of(wname), dtype_name(dt));
    }
    return l;
  }

  MlpWeights mlp(const std::string& prefix, int64_t inter) const {
    const int64_t h = c_.hidden_size;
    return {linear(prefix + ".gate_proj", inter, h), linear(prefix + ".up_proj", inter, h),
            linear(prefix + ".down_proj", h, inter)};
  }

  LayerWeights layer(int64_t i) const {
    const std::string p = fmt::format("model.layers.{}.", i);
    const int64_t h = c_.hidden_size, heads = c_.num_attention_heads;
    LayerWeights L;
    L.input_norm = tensor(p + "input_layernorm.weight", {h});
    L.post_attention_norm = tensor(p + "post_attention_layernorm.weight", {h});
    AttentionWeights& a = L.attn;
    const std::string ap = p + "self_attn.";
    if (c_.has_q_lora()) {
      a.q_a = linear(ap + "q_a_proj", c_.q_lora_rank, h);
      a.q_a_norm = tensor(ap + "q_a_layernorm.weight", {c_.q_lora_rank});
      a.q_b = linear(ap + "q_b_proj", heads * c_.qk_head_dim(), c_.q_lora_rank);
    } else {
      a.q = linear(ap + "q_proj", heads * c_.qk_head_dim(), h);
    }
    a.kv_a = linear(ap + "kv_a_proj_with_mqa", c_.kv_lora_rank + c_.qk_rope_head_dim, h);
    a.kv_a_norm = tensor(ap + "kv_a_layernorm.weight", {c_.kv_lora_rank});
    a.kv_b =
        linear(ap + "kv_b_proj", heads * (c_.qk_nope_head_dim + c_.v_head_dim), c_.kv_lora_rank);
    a.o = linear(ap + "o_proj", h, heads * c_.v_head_dim);

    L.is_moe = c_.is_moe_layer(i);
    if (!L.is_moe) {
      L.mlp = mlp(p + "mlp", c_.intermediate_size);
      return L;
    }
    MoeWeights& m = L.moe;
    const int64_t e = c_.n_routed_experts;
    m.gate = tensor(p + "mlp.gate.weight", {e, h});
    if (c_.topk_method == "noaux_tc") m.bias = f32(p + "mlp.gate.e_score_correction_bias", {e});
    m.experts.reserve(size_t(e));
    for (int64_t x = 0; x < e; ++x)
      m.experts.push_back(mlp(fmt::format("{}mlp.experts.{}", p, x), c_.moe_intermediate_size));
    m.has_shared = c_.n_shared_experts > 0;
    if (m.has_shared)
      m.shared = mlp(p + "mlp.shared_experts", c_.n_shared_experts * c_.moe_intermediate_size);
    return L;
  }

  LayerWeights mtp_layer(int64_t i) const {
    LayerWeights L = layer(i);
    const std::string p = fmt::format("model.layers.{}.", i);
    const int64_t h = c_.hidden_size;
    L.mtp.enorm = tensor(p + "enorm.weight", {h});
    L.mtp.hnorm = tensor(p + "hnorm.weight", {h});
    L.mtp.eh_proj = linear(p + "eh_proj", h, 2 * h);
    L.mtp.head_norm = tensor(p + "shared_head.norm.weight", {h});
    L.mtp.head = tensor(p + "shared_head.head.weight", {c_.vocab_size, h});
    return L;
  }

 private:
  const ModelConfig& c_;
  const TensorStore& s_;
};

}  // namespace

ModelWeights ModelWeights::load(const std::string& dir) {
  ModelConfig c = ModelConfig::load(dir);
  return load(c, TensorStore::open(dir));
}

ModelWeights ModelWeights::load(const ModelConfig& config, TensorStore store) {
  ModelWeights w;
  w.config = config;
  w.store = std::move(store);
  const Loader ld(w.config, w.store);
  const int64_t v = config.vocab_size, h = config.hidden_size;
  w.embed = ld.tensor("model.embed_tokens.weight", {v, h});
  w.final_norm = ld.tensor("model.norm.weight", {h});
  w.lm_head = config.tie_word_embeddings && !w.store.has("lm_head.weight")
                  ? w.embed
                  : ld.tensor("lm_head.weight", {v, h});
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) w.layers.push_back(ld.layer(i));
  for (int64_t k = 0; k < config.num_nextn_predict_layers; ++k)
    w.mtp.push_back(ld.mtp_layer(config.num_hidden_layers + k));
  return w;
}

}  // namespace dsv3
