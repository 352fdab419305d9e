#include "train/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "kernels/linear.h"
#include "model/init.h"
#include "model/layout.h"
#include "model/rope.h"
#include "train/fp8.h"
#include "train/ops.h"

namespace dsv3::train {

namespace {

using Vec = std::vector<float>;

// Resizes and zeroes: the start of every gradient accumulator (backward ops add).
float* zeroed(Vec& v, int64_t n) {
  v.assign(static_cast<size_t>(n), 0.0f);
  return v.data();
}
float* sized(Vec& v, int64_t n) {
  v.resize(static_cast<size_t>(n));
  return v.data();
}

void add_into(float* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

// Offsets of one layer's parameters in the flat buffers (-1: absent).
struct LayerParams {
  int64_t input_norm = -1, post_norm = -1;
  int64_t q_a = -1, q_a_norm = -1, q_b = -1, q = -1;
  int64_t kv_a = -1, kv_a_norm = -1, kv_b = -1, o = -1;
  bool moe = false;
  int64_t gate = -1, up = -1, down = -1;  // dense MLP, or the shared experts of a MoE layer
  int64_t router = -1, bias = -1;
  std::vector<int64_t> eg, eu, ed;                                     // routed experts
  int64_t enorm = -1, hnorm = -1, eh = -1, head_norm = -1, head = -1;  // MTP layers
  int64_t moe_index = -1;  // row of StepStats::expert_load
};

// What backward needs of one transformer block. The "derived" part (norm outputs and the MLA
// up-projections) is either kept per layer or, with recomputation, rebuilt from the kept part
// in backward (TRAINING_SPEC §5).
struct Derived {
  Vec h1;    // input RMSNorm output [n, H]
  Vec qan;   // q_a RMSNorm output [n, q_lora]
  Vec q;     // queries after RoPE [n, heads, dqk]
  Vec ckvn;  // kv_a RMSNorm output [n, dc]
  Vec k, v;  // keys [n, heads, dqk] (nope from kv_b, rope part shared), values [n, heads, dv]
  Vec h2;    // post-attention RMSNorm output [n, H]
};

struct BlockActs {
  int64_t n = 0, seq_len = 0;
  std::vector<int32_t> positions;  // [n]
  Vec x_in, qa, ckv, kpe_raw, o, x_mid;
  Derived kept;
  // FFN: dense (or shared experts) g/u [n, I]; routed experts below.
  Vec g, u;
  Vec logits;                               // router logits [n, E]
  std::vector<int32_t> experts;             // [n, k]
  Vec weights;                              // [n, k]
  std::vector<std::vector<int64_t>> slots;  // per expert: the (token·k + j) it serves
  std::vector<Vec> eg, eu;                  // per expert [rows, I]
  Vec ye;                                   // expert outputs per slot [n·k, H]
};

struct MtpActs {
  int64_t n = 0, len = 0;
  std::vector<int32_t> ids, src_rows;  // embedded token and previous-depth row of each row
  Vec e, hprev, cat;                   // [n, H], [n, H], [n, 2H]
  BlockActs block;
  Vec x_out;  // block output [n, H]
  Vec dhead;  // d of the head RMSNorm output, from the fused CE + head backward
};

}  // namespace

struct TrainModel::Impl {
  ModelConfig c;
  RopeTable rope;
  GateConfig gate;
  std::vector<LayerParams> layers, mtp;
  int64_t embed = -1, final_norm = -1, lm_head = -1;
  int64_t n_moe = 0;

  // Activations of the current batch.
  int64_t B = 0, T = 0;
  std::vector<int32_t> inputs;
  std::vector<BlockActs> acts;
  Vec x_last, hn, dhn;  // last block output, final-norm output, its gradient
  std::vector<MtpActs> mtp_acts;
  Derived scratch;  // the derived activations when recomputing
  bool recompute = false;
  Precision precision = Precision::kF32;
  double balance_alpha = 0;

  // Scratch for backward.
  Vec attn_out, dh, dq, dk, dv, dkvb, dckv, dkv, dqa, dqan, dtmp, da, dg, du, a, kvb, dmix, kpe;
  Vec dweights, dye, dxe, dlogits;
  // Whole-model buffers (kept across steps: a fresh 30 MB vector per step costs page faults).
  Vec x, logits, en, hn_mtp, normed, dx, dcat, den, dhn_mtp, de, dprev_rows, dnext;
};

namespace {

void build_layer_params(const std::map<std::string, int64_t>& off, const ModelConfig& c, int64_t i,
                        LayerParams& L) {
  const std::string p = fmt::format("model.layers.{}.", i);
  auto at = [&](const std::string& name) {
    auto it = off.find(p + name);
    return it == off.end() ? int64_t(-1) : it->second;
  };
  L.input_norm = at("input_layernorm.weight");
  L.post_norm = at("post_attention_layernorm.weight");
  L.q_a = at("self_attn.q_a_proj.weight");
  L.q_a_norm = at("self_attn.q_a_layernorm.weight");
  L.q_b = at("self_attn.q_b_proj.weight");
  L.q = at("self_attn.q_proj.weight");
  L.kv_a = at("self_attn.kv_a_proj_with_mqa.weight");
  L.kv_a_norm = at("self_attn.kv_a_layernorm.weight");
  L.kv_b = at("self_attn.kv_b_proj.weight");
  L.o = at("self_attn.o_proj.weight");
  L.moe = c.is_moe_layer(i);
  const std::string mlp = L.moe ? "mlp.shared_experts." : "mlp.";
  L.gate = at(mlp + "gate_proj.weight");
  L.up = at(mlp + "up_proj.weight");
  L.down = at(mlp + "down_proj.weight");
  if (L.moe) {
    L.router = at("mlp.gate.weight");
    L.bias = at("mlp.gate.e_score_correction_bias");
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      L.eg.push_back(at(fmt::format("mlp.experts.{}.gate_proj.weight", e)));
      L.eu.push_back(at(fmt::format("mlp.experts.{}.up_proj.weight", e)));
      L.ed.push_back(at(fmt::format("mlp.experts.{}.down_proj.weight", e)));
    }
  }
  L.enorm = at("enorm.weight");
  L.hnorm = at("hnorm.weight");
  L.eh = at("eh_proj.weight");
  L.head_norm = at("shared_head.norm.weight");
  L.head = at("shared_head.head.weight");
}

// The GEMMs of a projection (every *_proj linear; not the router, embedding or heads, which
// stay in FP32 as in the report) at the run's precision (train/fp8.h: BF16 operands, or the
// FP8 recipe: 1×128 activation tiles, 128×128 weight blocks, 128×1 tiles for Wgrad, FP32
// accumulation per 128-element chunk of K).
fp8::Recipe recipe_for(Precision p, bool pow2 = false) {
  fp8::Recipe r;
  r.precision = p;
  r.pow2_scales = pow2;
  return r;
}

void proj_forward(Precision p, const float* x, const float* W, int64_t rows, int64_t in,
                  int64_t out, float* y) {
  if (p == Precision::kF32) return linear_forward(x, W, rows, in, out, y);
  fp8::linear_forward(x, W, rows, in, out, y, recipe_for(p));
}

// With FP8, the layer input backward sees is the one cached for it: in FP8 1×128 tiles (the
// report keeps linear inputs in FP8 between forward and backward), with power-of-two scales
// for the input of the projection after attention (`pow2_cache`).
void proj_backward(Precision p, const float* x, const float* W, const float* dy, int64_t rows,
                   int64_t in, int64_t out, float* dx, float* dW, bool pow2_cache = false) {
  if (p == Precision::kF32) return linear_backward(x, W, dy, rows, in, out, dx, dW);
  if (p == Precision::kFp8 && dW) {
    thread_local std::vector<float> cached;
    cached = fp8::quantize(x, rows, in, fp8::Granularity::kRowTiles, pow2_cache).dequantize();
    return fp8::linear_backward(cached.data(), W, dy, rows, in, out, dx, dW, recipe_for(p));
  }
  fp8::linear_backward(x, W, dy, rows, in, out, dx, dW, recipe_for(p));
}

// The SwiGLU input (gate and up outputs) kept for backward in FP8 1×128 tiles under the FP8
// recipe; the SwiGLU output is recomputed from it in backward.
void cache_swiglu_input(Precision p, std::vector<float>& v, int64_t rows, int64_t cols) {
  if (p != Precision::kFp8 || rows == 0) return;
  v = fp8::quantize(v.data(), rows, cols, fp8::Granularity::kRowTiles).dequantize();
}

// The forward/backward of one transformer block (attention + FFN with residuals), over
// `n` rows made of packed sequences of `seq_len` tokens.
class Block {
 public:
  Block(TrainModel::Impl& m, const LayerParams& L, float* W, float* G)
      : m_(m), c_(m.c), L_(L), W_(W), G_(G) {}

  const float* w(int64_t off) const { return off < 0 ? nullptr : W_ + off; }
  float* g(int64_t off) const { return (off < 0 || !G_) ? nullptr : G_ + off; }

  // x [n, H] in place: the block's input on entry, its output on return.
  void forward(BlockActs& a, float* x) {
    const int64_t n = a.n, H = c_.hidden_size;
    std::memcpy(sized(a.x_in, n * H), x, size_t(n * H) * 4);
    Derived& d = derived(a);
    // Attention input projections: kept outputs qa, ckv, kpe_raw.
    const int64_t dc = c_.kv_lora_rank, dr = c_.qk_rope_head_dim;
    rmsnorm_forward(x, w(L_.input_norm), n, H, eps(), sized(d.h1, n * H));
    if (c_.has_q_lora())
      proj_forward(m_.precision, d.h1.data(), w(L_.q_a), n, H, c_.q_lora_rank,
                   sized(a.qa, n * c_.q_lora_rank));
    Vec& kv = m_.kvb;  // [n, dc + dr], split below
    proj_forward(m_.precision, d.h1.data(), w(L_.kv_a), n, H, dc + dr, sized(kv, n * (dc + dr)));
    sized(a.ckv, n * dc);
    sized(a.kpe_raw, n * dr);
    for (int64_t t = 0; t < n; ++t) {
      std::memcpy(a.ckv.data() + t * dc, kv.data() + t * (dc + dr), size_t(dc) * 4);
      std::memcpy(a.kpe_raw.data() + t * dr, kv.data() + t * (dc + dr) + dc, size_t(dr) * 4);
    }
    derive_attention(a, d);
    attend(a, d);
    proj_forward(m_.precision, a.o.data(), w(L_.o), n, heads() * dv(), H,
                 sized(m_.attn_out, n * H));
    sized(a.x_mid, n * H);
    for (int64_t i = 0; i < n * H; ++i) a.x_mid[size_t(i)] = x[i] + m_.attn_out[size_t(i)];
    rmsnorm_forward(a.x_mid.data(), w(L_.post_norm), n, H, eps(), sized(d.h2, n * H));
    // FFN into x = x_mid + ffn(h2).
    std::memcpy(x, a.x_mid.data(), size_t(n * H) * 4);
    if (L_.moe)
      moe_forward(a, d.h2.data(), x);
    else
      mlp_forward(d.h2.data(), n, c_.intermediate_size, L_.gate, L_.up, L_.down, a.g, a.u, x);
  }

  // dx [n, H]: d of the block output on entry, d of its input on return. The parameter
  // gradients are added into G.
  void backward(BlockActs& a, float* dx) {
    const int64_t n = a.n, H = c_.hidden_size;
    Derived& d = derived(a);
    if (m_.recompute) {
      rmsnorm_forward(a.x_in.data(), w(L_.input_norm), n, H, eps(), sized(d.h1, n * H));
      derive_attention(a, d);
      rmsnorm_forward(a.x_mid.data(), w(L_.post_norm), n, H, eps(), sized(d.h2, n * H));
    }
    // FFN: dh2 from dx (= d of the block output), then through the post-attention norm.
    float* dh2 = zeroed(m_.dh, n * H);
    if (L_.moe)
      moe_backward(a, d.h2.data(), dx, dh2);
    else
      mlp_backward(d.h2.data(), n, c_.intermediate_size, L_.gate, L_.up, L_.down, a.g, a.u, dx,
                   dh2);
    rmsnorm_backward(a.x_mid.data(), w(L_.post_norm), dh2, n, H, eps(), dx, g(L_.post_norm));
    // Attention: dx is now d x_mid.
    attention_backward_block(a, d, dx);
  }

 private:
  float eps() const { return float(c_.rms_norm_eps); }
  int64_t heads() const { return c_.num_attention_heads; }
  int64_t dn() const { return c_.qk_nope_head_dim; }
  int64_t dr() const { return c_.qk_rope_head_dim; }
  int64_t dqk() const { return c_.qk_head_dim(); }
  int64_t dv() const { return c_.v_head_dim; }
  Derived& derived(BlockActs& a) { return m_.recompute ? m_.scratch : a.kept; }

  // From the kept qa/h1, ckv, kpe_raw: q (with RoPE), ckvn, k, v.
  void derive_attention(BlockActs& a, Derived& d) {
    const int64_t n = a.n, H = c_.hidden_size, dc = c_.kv_lora_rank;
    const int64_t nh = heads();
    float* q = sized(d.q, n * nh * dqk());
    if (c_.has_q_lora()) {
      const int64_t r = c_.q_lora_rank;
      rmsnorm_forward(a.qa.data(), w(L_.q_a_norm), n, r, eps(), sized(d.qan, n * r));
      proj_forward(m_.precision, d.qan.data(), w(L_.q_b), n, r, nh * dqk(), q);
    } else {
      proj_forward(m_.precision, d.h1.data(), w(L_.q), n, H, nh * dqk(), q);
    }
    rope_forward(q, n, nh, dqk(), dn(), m_.rope.inv_freq, m_.rope.factor, a.positions.data());
    rmsnorm_forward(a.ckv.data(), w(L_.kv_a_norm), n, dc, eps(), sized(d.ckvn, n * dc));
    Vec& kvb = m_.kvb;
    proj_forward(m_.precision, d.ckvn.data(), w(L_.kv_b), n, dc, nh * (dn() + dv()),
                 sized(kvb, n * nh * (dn() + dv())));
    // The rotated shared key, written into every head's rope slice.
    Vec& kpe = m_.kpe;
    kpe = a.kpe_raw;
    rope_forward(kpe.data(), n, 1, dr(), 0, m_.rope.inv_freq, m_.rope.factor, a.positions.data());
    sized(d.k, n * nh * dqk());
    sized(d.v, n * nh * dv());
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t h = 0; h < nh; ++h) {
        const float* src = kvb.data() + (t * nh + h) * (dn() + dv());
        float* kd = d.k.data() + (t * nh + h) * dqk();
        std::memcpy(kd, src, size_t(dn()) * 4);
        std::memcpy(kd + dn(), kpe.data() + t * dr(), size_t(dr()) * 4);
        std::memcpy(d.v.data() + (t * nh + h) * dv(), src + dn(), size_t(dv()) * 4);
      }
    }
  }

  void attend(BlockActs& a, Derived& d) {
    const int64_t n = a.n, nh = heads(), T = a.seq_len;
    float* o = sized(a.o, n * nh * dv());
    const float scale = float(c_.softmax_scale());
    for (int64_t s = 0; s < n; s += T)
      attention_forward(d.q.data() + s * nh * dqk(), d.k.data() + s * nh * dqk(),
                        d.v.data() + s * nh * dv(), T, nh, dqk(), dv(), scale, o + s * nh * dv());
  }

  void attention_backward_block(BlockActs& a, Derived& d, float* dx) {
    const int64_t n = a.n, H = c_.hidden_size, nh = heads(), T = a.seq_len;
    const int64_t dc = c_.kv_lora_rank;
    float* dout = zeroed(m_.dtmp, n * nh * dv());
    proj_backward(m_.precision, a.o.data(), w(L_.o), dx, n, nh * dv(), H, dout, g(L_.o),
                  /*pow2_cache=*/true);
    float* dq = zeroed(m_.dq, n * nh * dqk());
    float* dk = zeroed(m_.dk, n * nh * dqk());
    float* dvv = zeroed(m_.dv, n * nh * dv());
    const float scale = float(c_.softmax_scale());
    for (int64_t s = 0; s < n; s += T)
      attention_backward(d.q.data() + s * nh * dqk(), d.k.data() + s * nh * dqk(),
                         d.v.data() + s * nh * dv(), dout + s * nh * dv(), T, nh, dqk(), dv(),
                         scale, dq + s * nh * dqk(), dk + s * nh * dqk(), dvv + s * nh * dv());
    // Split dk/dv into d kv_b output and d of the shared rope key (summed over heads).
    float* dkvb = sized(m_.dkvb, n * nh * (dn() + dv()));
    float* dkv = zeroed(m_.dkv, n * (dc + dr()));  // [d ckv | d kpe_raw] per row
    for (int64_t t = 0; t < n; ++t) {
      float* dkpe = dkv + t * (dc + dr()) + dc;
      for (int64_t h = 0; h < nh; ++h) {
        const float* kd = dk + (t * nh + h) * dqk();
        float* dst = dkvb + (t * nh + h) * (dn() + dv());
        std::memcpy(dst, kd, size_t(dn()) * 4);
        std::memcpy(dst + dn(), dvv + (t * nh + h) * dv(), size_t(dv()) * 4);
        for (int64_t i = 0; i < dr(); ++i) dkpe[i] += kd[dn() + i];
      }
    }
    rope_backward(dkv, n, 1, dc + dr(), dc, m_.rope.inv_freq, m_.rope.factor, a.positions.data());
    rope_backward(dq, n, nh, dqk(), dn(), m_.rope.inv_freq, m_.rope.factor, a.positions.data());
    // kv_b and the kv_a norm; d ckv goes into the first dc columns of dkv.
    float* dckvn = zeroed(m_.dckv, n * dc);
    proj_backward(m_.precision, d.ckvn.data(), w(L_.kv_b), dkvb, n, dc, nh * (dn() + dv()), dckvn,
                  g(L_.kv_b));
    float* dckv = zeroed(m_.dqa, n * dc);
    rmsnorm_backward(a.ckv.data(), w(L_.kv_a_norm), dckvn, n, dc, eps(), dckv, g(L_.kv_a_norm));
    for (int64_t t = 0; t < n; ++t) add_into(dkv + t * (dc + dr()), dckv + t * dc, dc);
    // Queries, kv_a, then the input norm into dx.
    float* dh1 = zeroed(m_.dh, n * H);
    if (c_.has_q_lora()) {
      const int64_t r = c_.q_lora_rank;
      float* dqan = zeroed(m_.dqan, n * r);
      proj_backward(m_.precision, d.qan.data(), w(L_.q_b), dq, n, r, nh * dqk(), dqan, g(L_.q_b));
      float* dqa = zeroed(m_.dqa, n * r);
      rmsnorm_backward(a.qa.data(), w(L_.q_a_norm), dqan, n, r, eps(), dqa, g(L_.q_a_norm));
      proj_backward(m_.precision, d.h1.data(), w(L_.q_a), dqa, n, H, r, dh1, g(L_.q_a));
    } else {
      proj_backward(m_.precision, d.h1.data(), w(L_.q), dq, n, H, nh * dqk(), dh1, g(L_.q));
    }
    proj_backward(m_.precision, d.h1.data(), w(L_.kv_a), dkv, n, H, dc + dr(), dh1, g(L_.kv_a));
    rmsnorm_backward(a.x_in.data(), w(L_.input_norm), dh1, n, H, eps(), dx, g(L_.input_norm));
  }

  // y += down(silu(x·gateᵀ) ⊙ x·upᵀ), keeping g and u.
  void mlp_forward(const float* x, int64_t n, int64_t inter, int64_t gate, int64_t up, int64_t down,
                   Vec& gv, Vec& uv, float* y) {
    const int64_t H = c_.hidden_size;
    proj_forward(m_.precision, x, w(gate), n, H, inter, sized(gv, n * inter));
    proj_forward(m_.precision, x, w(up), n, H, inter, sized(uv, n * inter));
    float* a = sized(m_.a, n * inter);
    swiglu_forward(gv.data(), uv.data(), n * inter, a);
    cache_swiglu_input(m_.precision, gv, n, inter);
    cache_swiglu_input(m_.precision, uv, n, inter);
    float* out = sized(m_.dmix, n * H);
    proj_forward(m_.precision, a, w(down), n, inter, H, out);
    add_into(y, out, n * H);
  }

  // dx += d of mlp_forward's input given dy; SwiGLU is recomputed from g and u.
  void mlp_backward(const float* x, int64_t n, int64_t inter, int64_t gate, int64_t up,
                    int64_t down, const Vec& gv, const Vec& uv, const float* dy, float* dx) {
    const int64_t H = c_.hidden_size;
    float* a = sized(m_.a, n * inter);
    swiglu_forward(gv.data(), uv.data(), n * inter, a);
    float* da = zeroed(m_.da, n * inter);
    proj_backward(m_.precision, a, w(down), dy, n, inter, H, da, g(down));
    float* dg = zeroed(m_.dg, n * inter);
    float* du = zeroed(m_.du, n * inter);
    swiglu_backward(gv.data(), uv.data(), da, n * inter, dg, du);
    proj_backward(m_.precision, x, w(gate), dg, n, H, inter, dx, g(gate));
    proj_backward(m_.precision, x, w(up), du, n, H, inter, dx, g(up));
  }

  void moe_forward(BlockActs& a, const float* h2, float* y) {
    const int64_t n = a.n, H = c_.hidden_size, E = c_.n_routed_experts;
    const int64_t k = m_.gate.k, I = c_.moe_intermediate_size;
    if (L_.gate >= 0)
      mlp_forward(h2, n, c_.n_shared_experts * I, L_.gate, L_.up, L_.down, a.g, a.u, y);
    linear_forward(h2, w(L_.router), n, H, E, sized(a.logits, n * E));
    a.experts.resize(size_t(n * k));
    moe_gate_forward(m_.gate, a.logits.data(), w(L_.bias), n, a.experts.data(),
                     sized(a.weights, n * k));
    a.slots.assign(size_t(E), {});
    for (int64_t s = 0; s < n * k; ++s) a.slots[size_t(a.experts[size_t(s)])].push_back(s);
    a.eg.resize(size_t(E));
    a.eu.resize(size_t(E));
    sized(a.ye, n * k * H);
    Vec& xe = m_.dtmp;
    for (int64_t e = 0; e < E; ++e) {
      const auto& slots = a.slots[size_t(e)];
      const int64_t r = int64_t(slots.size());
      if (r == 0) continue;
      gather(h2, slots, k, H, sized(xe, r * H));
      proj_forward(m_.precision, xe.data(), w(L_.eg[size_t(e)]), r, H, I,
                   sized(a.eg[size_t(e)], r * I));
      proj_forward(m_.precision, xe.data(), w(L_.eu[size_t(e)]), r, H, I,
                   sized(a.eu[size_t(e)], r * I));
      float* act = sized(m_.a, r * I);
      swiglu_forward(a.eg[size_t(e)].data(), a.eu[size_t(e)].data(), r * I, act);
      cache_swiglu_input(m_.precision, a.eg[size_t(e)], r, I);
      cache_swiglu_input(m_.precision, a.eu[size_t(e)], r, I);
      float* out = sized(m_.dmix, r * H);
      proj_forward(m_.precision, act, w(L_.ed[size_t(e)]), r, I, H, out);
      for (int64_t i = 0; i < r; ++i)
        std::memcpy(a.ye.data() + slots[size_t(i)] * H, out + i * H, size_t(H) * 4);
    }
    // Combine in slot order (deterministic, independent of the expert loop).
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const float wt = a.weights[size_t(t * k + j)];
        const float* src = a.ye.data() + (t * k + j) * H;
        for (int64_t i = 0; i < H; ++i) y[t * H + i] += wt * src[i];
      }
  }

  static void gather(const float* x, const std::vector<int64_t>& slots, int64_t k, int64_t H,
                     float* out) {
    for (size_t i = 0; i < slots.size(); ++i)
      std::memcpy(out + int64_t(i) * H, x + (slots[i] / k) * H, size_t(H) * 4);
  }

  void moe_backward(BlockActs& a, const float* h2, const float* dy, float* dh2) {
    const int64_t n = a.n, H = c_.hidden_size, E = c_.n_routed_experts;
    const int64_t k = m_.gate.k, I = c_.moe_intermediate_size;
    if (L_.gate >= 0)
      mlp_backward(h2, n, c_.n_shared_experts * I, L_.gate, L_.up, L_.down, a.g, a.u, dy, dh2);
    // d gating weight of slot (t, j) = dy[t] · ye[t, j].
    Vec& dweights = m_.dweights;
    sized(dweights, n * k);
    for (int64_t s = 0; s < n * k; ++s) {
      const float* y = a.ye.data() + s * H;
      const float* d = dy + (s / k) * H;
      double acc = 0;
      for (int64_t i = 0; i < H; ++i) acc += double(d[i]) * double(y[i]);
      dweights[size_t(s)] = float(acc);
    }
    Vec& xe = m_.dtmp;
    Vec& dye = m_.dye;
    Vec& dxe = m_.dxe;
    for (int64_t e = 0; e < E; ++e) {
      const auto& slots = a.slots[size_t(e)];
      const int64_t r = int64_t(slots.size());
      if (r == 0) continue;
      gather(h2, slots, k, H, sized(xe, r * H));
      sized(dye, r * H);
      for (int64_t i = 0; i < r; ++i) {
        const int64_t s = slots[size_t(i)];
        const float wt = a.weights[size_t(s)];
        const float* d = dy + (s / k) * H;
        for (int64_t j = 0; j < H; ++j) dye[size_t(i * H + j)] = wt * d[j];
      }
      float* act = sized(m_.a, r * I);
      swiglu_forward(a.eg[size_t(e)].data(), a.eu[size_t(e)].data(), r * I, act);
      float* da = zeroed(m_.da, r * I);
      proj_backward(m_.precision, act, w(L_.ed[size_t(e)]), dye.data(), r, I, H, da,
                    g(L_.ed[size_t(e)]));
      float* dg = zeroed(m_.dg, r * I);
      float* du = zeroed(m_.du, r * I);
      swiglu_backward(a.eg[size_t(e)].data(), a.eu[size_t(e)].data(), da, r * I, dg, du);
      zeroed(dxe, r * H);
      proj_backward(m_.precision, xe.data(), w(L_.eg[size_t(e)]), dg, r, H, I, dxe.data(),
                    g(L_.eg[size_t(e)]));
      proj_backward(m_.precision, xe.data(), w(L_.eu[size_t(e)]), du, r, H, I, dxe.data(),
                    g(L_.eu[size_t(e)]));
      for (int64_t i = 0; i < r; ++i)
        add_into(dh2 + (slots[size_t(i)] / k) * H, dxe.data() + i * H, H);
    }
    // Router: the gate's gradient plus the balance loss's, then the router linear.
    Vec& dlogits = m_.dlogits;
    zeroed(dlogits, n * E);
    moe_gate_backward(m_.gate, a.logits.data(), a.experts.data(), dweights.data(), n,
                      dlogits.data());
    if (m_.balance_alpha > 0) {
      const int64_t T = a.seq_len;
      const float alpha = float(m_.balance_alpha / double(n / T));
      for (int64_t s = 0; s < n; s += T)
        balance_loss(a.logits.data() + s * E, a.experts.data() + s * k, T, E, k, alpha,
                     dlogits.data() + s * E);
    }
    linear_backward(h2, w(L_.router), dlogits.data(), n, H, E, dh2, g(L_.router));
  }

  TrainModel::Impl& m_;
  const ModelConfig& c_;
  const LayerParams& L_;
  float* W_;
  float* G_;
};

}  // namespace

TrainModel::TrainModel(const ModelConfig& config) : config_(config), impl_(new Impl) {
  config_.validate("model config");
  config_.quant = QuantConfig{};  // training keeps FP32 master weights
  Impl& m = *impl_;
  m.c = config_;
  m.rope = RopeTable::build(config_);
  if (config_.n_routed_experts > 0) m.gate = GateConfig::from(config_);
  std::map<std::string, int64_t> off;
  int64_t total = 0;
  for (const TensorSpec& s : checkpoint_layout(config_)) {
    ParamInfo p;
    p.name = s.name;
    p.shape = s.shape;
    p.offset = total;
    p.size = shape_numel(s.shape);
    p.trainable = s.role != TensorRole::kBias;
    p.decay = s.role == TensorRole::kProjection || s.role == TensorRole::kEmbedding ||
              s.role == TensorRole::kRouter;
    off[p.name] = total;
    total += p.size;
    params_.push_back(std::move(p));
  }
  values_.assign(size_t(total), 0.0f);
  grads_.assign(size_t(total), 0.0f);
  m.embed = off.at("model.embed_tokens.weight");
  m.final_norm = off.at("model.norm.weight");
  m.lm_head = off.at("lm_head.weight");
  for (int64_t i = 0; i < config_.num_hidden_layers + config_.num_nextn_predict_layers; ++i) {
    LayerParams L;
    build_layer_params(off, config_, i, L);
    if (L.moe) L.moe_index = m.n_moe++;
    (i < config_.num_hidden_layers ? m.layers : m.mtp).push_back(std::move(L));
  }
}

TrainModel::~TrainModel() = default;
TrainModel::TrainModel(TrainModel&&) noexcept = default;
TrainModel& TrainModel::operator=(TrainModel&&) noexcept = default;

const ParamInfo& TrainModel::param(const std::string& name) const {
  for (const ParamInfo& p : params_)
    if (p.name == name) return p;
  fail("the model has no parameter {}", name);
}

void TrainModel::set_recompute(bool on) {
  impl_->recompute = on;
}

void TrainModel::set_precision(Precision p) {
  impl_->precision = p;
}

void TrainModel::zero_grads() {
  std::fill(grads_.begin(), grads_.end(), 0.0f);
}

void TrainModel::init_random(uint64_t seed, double std) {
  const std::vector<TensorSpec> layout = checkpoint_layout(config_);  // params_ order
  for (size_t i = 0; i < layout.size(); ++i)
    random_tensor_values(layout[i], seed, std, values_.data() + params_[i].offset);
}

void TrainModel::load(const std::string& dir) {
  const ModelConfig other = ModelConfig::load(dir);
  const TensorStore store = TensorStore::open(dir);
  for (const ParamInfo& p : params_) {
    const Tensor t = store.get(p.name, p.shape);
    float* dst = values_.data() + p.offset;
    if (store.has(p.name + "_scale_inv")) {
      const Linear lin{t, store.get(p.name + "_scale_inv"), other.quant.block_n,
                       other.quant.block_k};
      lin.dequantize_rows(0, p.shape[0], dst);
    } else {
      const Tensor f = t.to(DType::F32);
      std::memcpy(dst, f.data(), size_t(p.size) * 4);
    }
  }
}

TrainModel TrainModel::from_checkpoint(const std::string& dir) {
  TrainModel m(ModelConfig::load(dir));
  m.load(dir);
  return m;
}

void TrainModel::save(const std::string& dir, const std::string& dtype) const {
  DSV3_CHECK(dtype == "f32" || dtype == "bf16", "unknown checkpoint dtype '{}': use f32 or bf16",
             dtype);
  ModelConfig c = config_;
  c.torch_dtype = dtype == "f32" ? "float32" : "bfloat16";
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  for (const ParamInfo& p : params_) {
    // The router bias stays F32 in every DeepSeek checkpoint.
    const DType dt = (dtype == "f32" || !p.trainable) ? DType::F32 : DType::BF16;
    Tensor t = Tensor::zeros(dt, p.shape);
    convert_from_f32(dt, values_.data() + p.offset, t.data(), size_t(p.size));
    writer.add(p.name, t);
  }
  std::filesystem::create_directories(dir);
  writer.write((std::filesystem::path(dir) / "model.safetensors").string());
  write_file_atomic((std::filesystem::path(dir) / "config.json").string(),
                    c.to_json().dump(2) + "\n");
}

std::vector<ParamRef> TrainModel::optimizer_params() {
  std::vector<ParamRef> out;
  for (const ParamInfo& p : params_)
    if (p.trainable)
      out.push_back({p.name, values_.data() + p.offset, grads_.data() + p.offset, p.size, p.decay});
  return out;
}

void TrainModel::update_bias(const std::vector<std::vector<int64_t>>& load, double gamma) {
  const Impl& m = *impl_;
  if (gamma == 0) return;
  auto update = [&](const LayerParams& L) {
    if (L.moe_index < 0 || L.bias < 0) return;
    const auto& cnt = load.at(size_t(L.moe_index));
    double mean = 0;
    for (int64_t v : cnt) mean += double(v);
    mean /= double(cnt.size());
    float* b = values_.data() + L.bias;
    for (size_t e = 0; e < cnt.size(); ++e) {
      if (double(cnt[e]) > mean) b[e] -= float(gamma);
      if (double(cnt[e]) < mean) b[e] += float(gamma);
    }
  };
  for (const LayerParams& L : m.layers) update(L);
  for (const LayerParams& L : m.mtp) update(L);
}

MemoryReport TrainModel::memory_report(int64_t B, int64_t T, Precision p, bool bf16_moments) const {
  const ModelConfig& c = config_;
  const Impl& m = *impl_;
  MemoryReport r;
  int64_t trainable = 0;
  for (const ParamInfo& pi : params_) trainable += pi.trainable ? pi.size : 0;
  r.weights = 4 * num_values();
  r.grads = 4 * num_values();
  r.moments = 2 * (bf16_moments ? 2 : 4) * trainable;
  const double lin = p == Precision::kF32 ? 4 : p == Precision::kBf16 ? 2 : 1 + 4.0 / 128;
  const double hi = p == Precision::kF32 ? 4 : 2;
  const int64_t H = c.hidden_size, nh = c.num_attention_heads;
  auto block = [&](const LayerParams& L, double tokens) {
    // Linear inputs: normed input, q_a output (normed), c_kv (normed), attention output,
    // post-attention normed input, SwiGLU inputs (gate and up outputs).
    double linear = double(H + c.q_lora_rank + c.kv_lora_rank + nh * c.v_head_dim + H);
    double other = double(2 * H + nh * (2 * c.qk_head_dim() + c.v_head_dim));  // residuals, qkv
    double router = 0;
    if (L.moe) {
      const int64_t k = c.num_experts_per_tok;
      linear += double(2 * k * c.moe_intermediate_size +
                       2 * c.n_shared_experts * c.moe_intermediate_size);
      other += double(k * H);  // expert outputs for the gate's gradient
      router = double(c.n_routed_experts + 2 * k) * 4;
    } else {
      linear += double(2 * c.intermediate_size);
    }
    return tokens * (linear * lin + other * hi + router);
  };
  double acts = 0;
  for (const LayerParams& L : m.layers) acts += block(L, double(B * T));
  for (size_t k = 0; k < m.mtp.size(); ++k)
    acts += block(m.mtp[k], double(B * (T - int64_t(k) - 1))) +
            double(B * (T - int64_t(k) - 1)) * double(2 * H) * lin;  // eh_proj input
  acts += double(B * T) * double(2 * H) * hi;                        // final norm in/out
  r.activations = int64_t(acts);
  return r;
}

double TrainModel::forward_flops(int64_t B, int64_t T) const {
  // 2 FLOPs per multiply-add: every matrix a token passes through (a routed expert counts
  // k/E of the time; the embedding is a lookup), plus causal attention (on average (T+1)/2
  // keys per query, q·k and p·v) in every block; MTP rows are T - k per sequence.
  const ModelConfig& c = config_;
  double main = 0, mtp = 0;
  for (const TensorSpec& s : checkpoint_layout(c)) {
    if (s.role == TensorRole::kNorm || s.role == TensorRole::kBias ||
        s.name == "model.embed_tokens.weight")
      continue;
    double n = double(shape_numel(s.shape));
    if (s.expert >= 0) n *= double(c.num_experts_per_tok) / double(c.n_routed_experts);
    (s.mtp ? mtp : main) += n;
  }
  const double D = double(c.num_nextn_predict_layers);
  auto attn = [&](double len) {
    return double(c.num_attention_heads) * double(c.qk_head_dim() + c.v_head_dim) * (len + 1) / 2.0;
  };
  double flops = double(B * T) * (main + attn(double(T)) * double(c.num_hidden_layers));
  for (int64_t k = 1; k <= c.num_nextn_predict_layers; ++k)
    flops += double(B * (T - k)) * (mtp / D + attn(double(T - k)));
  return 2.0 * flops;
}

StepStats TrainModel::forward_backward(const int32_t* inputs, const int32_t* targets, int64_t B,
                                       int64_t T, const LossOptions& opt, bool backward) {
  Impl& m = *impl_;
  const ModelConfig& c = config_;
  DSV3_CHECK(B > 0 && T > 0, "empty batch [{}, {}]", B, T);
  DSV3_CHECK(T <= c.max_position_embeddings,
             "sequence length {} exceeds max_position_embeddings {}", T, c.max_position_embeddings);
  const int64_t N = B * T, H = c.hidden_size, V = c.vocab_size;
  const int64_t D = c.num_nextn_predict_layers;
  m.B = B;
  m.T = T;
  m.balance_alpha = opt.balance_alpha;
  float* W = values_.data();
  float* G = backward ? grads_.data() : nullptr;
  StepStats st;
  st.expert_load.assign(size_t(m.n_moe), std::vector<int64_t>(size_t(c.n_routed_experts), 0));
  auto record = [&](const LayerParams& L, const BlockActs& a) {
    if (L.moe_index < 0) return;
    for (int32_t e : a.experts) ++st.expert_load[size_t(L.moe_index)][size_t(e)];
    if (opt.balance_alpha > 0) {
      double sum = 0;
      for (int64_t s = 0; s < a.n; s += a.seq_len)
        sum += balance_loss(a.logits.data() + s * c.n_routed_experts,
                            a.experts.data() + s * m.gate.k, a.seq_len, c.n_routed_experts,
                            m.gate.k, float(opt.balance_alpha), static_cast<float*>(nullptr));
      st.loss_balance += sum / double(a.n / a.seq_len);
    }
  };

  // ---- main model forward ----
  m.inputs.assign(inputs, inputs + N);
  m.acts.resize(m.layers.size());
  Vec& x = m.x;
  sized(x, N * H);
  embedding_forward(inputs, N, W + m.embed, V, H, x.data());
  for (size_t l = 0; l < m.layers.size(); ++l) {
    BlockActs& a = m.acts[l];
    a.n = N;
    a.seq_len = T;
    a.positions.resize(size_t(N));
    for (int64_t i = 0; i < N; ++i) a.positions[size_t(i)] = int32_t(i % T);
    Block(m, m.layers[l], W, G).forward(a, x.data());
    record(m.layers[l], a);
  }
  m.x_last = x;
  rmsnorm_forward(x.data(), W + m.final_norm, N, H, float(c.rms_norm_eps), sized(m.hn, N * H));
  // Head + CE, fused with the head's backward so one logits buffer serves every head.
  Vec& logits = m.logits;
  auto head = [&](const float* normed, int64_t n, int64_t head_off, const int32_t* tgt, float scale,
                  Vec& dnormed, int64_t* counted) {
    linear_forward(normed, W + head_off, n, H, V, sized(logits, n * V));
    const double loss = cross_entropy(logits.data(), tgt, n, V, G ? logits.data() : nullptr, scale);
    if (counted) {
      *counted = 0;
      for (int64_t i = 0; i < n; ++i) *counted += tgt[i] >= 0;
    }
    if (G) {
      zeroed(dnormed, n * H);
      linear_backward(normed, W + head_off, logits.data(), n, H, V, dnormed.data(), G + head_off);
    }
    return loss;
  };
  st.loss_main = head(m.hn.data(), N, m.lm_head, targets, 1.0f, m.dhn, &st.tokens);

  // ---- MTP forward: depth k row (b, i) joins the previous depth's row i with the embedding
  // of input token i + k and predicts target i + k. ----
  m.mtp_acts.resize(size_t(D));
  std::vector<int32_t> tgt;
  for (int64_t k = 1; k <= D; ++k) {
    MtpActs& ma = m.mtp_acts[size_t(k - 1)];
    const LayerParams& L = m.mtp[size_t(k - 1)];
    const int64_t len = T - k, n = B * len;
    DSV3_CHECK(len > 0, "MTP depth {} needs sequences longer than {} tokens", k, k);
    const int64_t prev_len = len + 1;
    const float* prev = k == 1 ? m.hn.data() : m.mtp_acts[size_t(k - 2)].x_out.data();
    ma.n = n;
    ma.len = len;
    ma.ids.resize(size_t(n));
    ma.src_rows.resize(size_t(n));
    tgt.resize(size_t(n));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < len; ++i) {
        ma.ids[size_t(b * len + i)] = inputs[b * T + i + k];
        tgt[size_t(b * len + i)] = targets[b * T + i + k];
        ma.src_rows[size_t(b * len + i)] = int32_t(b * prev_len + i);
      }
    const float eps = float(c.rms_norm_eps);
    embedding_forward(ma.ids.data(), n, W + m.embed, V, H, sized(ma.e, n * H));
    sized(ma.hprev, n * H);
    for (int64_t r = 0; r < n; ++r)
      std::memcpy(ma.hprev.data() + r * H, prev + int64_t(ma.src_rows[size_t(r)]) * H,
                  size_t(H) * 4);
    Vec& en = m.en;
    Vec& hn = m.hn_mtp;
    sized(en, n * H);
    sized(hn, n * H);
    rmsnorm_forward(ma.e.data(), W + L.enorm, n, H, eps, en.data());
    rmsnorm_forward(ma.hprev.data(), W + L.hnorm, n, H, eps, hn.data());
    sized(ma.cat, n * 2 * H);
    for (int64_t r = 0; r < n; ++r) {  // embedding half first (MODEL_SPEC §6)
      std::memcpy(ma.cat.data() + r * 2 * H, en.data() + r * H, size_t(H) * 4);
      std::memcpy(ma.cat.data() + r * 2 * H + H, hn.data() + r * H, size_t(H) * 4);
    }
    sized(ma.x_out, n * H);
    proj_forward(m.precision, ma.cat.data(), W + L.eh, n, 2 * H, H, ma.x_out.data());
    BlockActs& a = ma.block;
    a.n = n;
    a.seq_len = len;
    a.positions.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) a.positions[size_t(i)] = int32_t(i % len);
    Block(m, L, W, G).forward(a, ma.x_out.data());
    record(L, a);
    Vec& normed = m.normed;
    sized(normed, n * H);
    rmsnorm_forward(ma.x_out.data(), W + L.head_norm, n, H, eps, normed.data());
    const double lk = head(normed.data(), n, L.head, tgt.data(), float(opt.mtp_lambda / double(D)),
                           ma.dhead, nullptr);
    st.loss_mtp += lk / double(D);
  }
  st.loss = st.loss_main + opt.mtp_lambda * st.loss_mtp + st.loss_balance;
  if (!backward) return st;

  // ---- backward: MTP depths (deepest first), then the main model ----
  Vec& dnext = m.dnext;  // d of the current depth's output rows coming from the next depth
  for (int64_t k = D; k >= 1; --k) {
    MtpActs& ma = m.mtp_acts[size_t(k - 1)];
    const LayerParams& L = m.mtp[size_t(k - 1)];
    const int64_t n = ma.n;
    const float eps = float(c.rms_norm_eps);
    Vec& dx = m.dx;
    zeroed(dx, n * H);
    rmsnorm_backward(ma.x_out.data(), W + L.head_norm, ma.dhead.data(), n, H, eps, dx.data(),
                     G + L.head_norm);
    if (k < D) add_into(dx.data(), dnext.data(), n * H);
    Block(m, L, W, G).backward(ma.block, dx.data());
    Vec& dcat = m.dcat;
    zeroed(dcat, n * 2 * H);
    proj_backward(m.precision, ma.cat.data(), W + L.eh, dx.data(), n, 2 * H, H, dcat.data(),
                  G + L.eh);
    Vec& den = m.den;
    Vec& dhn = m.dhn_mtp;
    sized(den, n * H);
    sized(dhn, n * H);
    for (int64_t r = 0; r < n; ++r) {
      std::memcpy(den.data() + r * H, dcat.data() + r * 2 * H, size_t(H) * 4);
      std::memcpy(dhn.data() + r * H, dcat.data() + r * 2 * H + H, size_t(H) * 4);
    }
    Vec& de = m.de;
    Vec& dprev_rows = m.dprev_rows;
    zeroed(de, n * H);
    zeroed(dprev_rows, n * H);
    rmsnorm_backward(ma.e.data(), W + L.enorm, den.data(), n, H, eps, de.data(), G + L.enorm);
    rmsnorm_backward(ma.hprev.data(), W + L.hnorm, dhn.data(), n, H, eps, dprev_rows.data(),
                     G + L.hnorm);
    embedding_backward(ma.ids.data(), n, de.data(), V, H, G + m.embed);
    // Scatter into the previous depth's rows.
    float* dprev;
    if (k == 1) {
      dprev = m.dhn.data();
    } else {
      dnext.assign(size_t(m.mtp_acts[size_t(k - 2)].n * H), 0.0f);
      dprev = dnext.data();
    }
    for (int64_t r = 0; r < n; ++r)
      add_into(dprev + int64_t(ma.src_rows[size_t(r)]) * H, dprev_rows.data() + r * H, H);
  }
  Vec& dx = m.dx;
  zeroed(dx, N * H);
  rmsnorm_backward(m.x_last.data(), W + m.final_norm, m.dhn.data(), N, H, float(c.rms_norm_eps),
                   dx.data(), G + m.final_norm);
  for (size_t l = m.layers.size(); l-- > 0;)
    Block(m, m.layers[l], W, G).backward(m.acts[l], dx.data());
  embedding_backward(inputs, N, dx.data(), V, H, G + m.embed);
  return st;
}

}  // namespace dsv3::train
