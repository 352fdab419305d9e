#include "kernels/cuda/engine.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kernels.h"
#include "model/rope.h"

namespace dsv3::cuda {

namespace {

// Bump allocator over the engine's one device allocation. Without a base it only counts, so
// the same layout code sizes the allocation (and plan_memory) before anything is allocated.
class Arena {
 public:
  explicit Arena(char* base = nullptr, size_t size = 0) : base_(base), size_(size) {}
  bool real() const { return base_ != nullptr; }
  size_t used() const { return used_; }
  template <class T = void>
  T* alloc(size_t bytes) {
    const size_t off = (used_ + 255) & ~size_t(255);
    used_ = off + bytes;
    if (!real()) return reinterpret_cast<T*>(off + 256);  // never dereferenced
    DSV3_ASSERT(used_ <= size_);
    return reinterpret_cast<T*>(base_ + off);
  }
  template <class T>
  T* alloc_n(int64_t n) {
    return alloc<T>(size_t(std::max<int64_t>(n, 1)) * sizeof(T));
  }
  void* upload(const void* src, size_t bytes) {
    void* dst = alloc(bytes);
    if (real()) DSV3_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return dst;
  }

 private:
  char* base_;
  size_t size_, used_ = 0;
};

WType wtype_of(DType t, const std::string& what) {
  switch (t) {
    case DType::F32:
      return WType::F32;
    case DType::BF16:
      return WType::BF16;
    case DType::F16:
      return WType::F16;
    case DType::F8_E4M3:
      return WType::E4M3;
    default:
      fail("CUDA engine: {} has dtype {}, which the CUDA kernels do not read", what, dtype_name(t));
  }
}

const float* upload_f32(Arena& a, const Tensor& t) {
  if (!t.defined()) return nullptr;
  const std::vector<float> v = a.real() ? t.to_f32_vector() : std::vector<float>();
  float* dst = a.alloc_n<float>(t.numel());
  if (a.real()) DSV3_CUDA_CHECK(cudaMemcpy(dst, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  return dst;
}

int64_t round_up(int64_t a, int64_t b) {
  return (a + b - 1) / b * b;
}

// FP8 block scales [rows, kb] (the parts one after another) to the device, and for cuBLASLt a
// copy with each row padded to round_up(kb, 4) (zeros) unless kb already is a multiple of 4.
void upload_scales(Arena& a, const std::vector<const Tensor*>& parts, DevWeight& w) {
  const int64_t kb = parts[0]->dim(1), kb_lt = round_up(kb, 4);
  int64_t rows = 0;
  for (const Tensor* t : parts) rows += t->dim(0);
  std::vector<float> all;
  if (a.real()) {
    for (const Tensor* t : parts) {
      const std::vector<float> v = t->to_f32_vector();
      all.insert(all.end(), v.begin(), v.end());
    }
  }
  float* s = a.alloc_n<float>(rows * kb);
  if (a.real()) DSV3_CUDA_CHECK(cudaMemcpy(s, all.data(), all.size() * 4, cudaMemcpyHostToDevice));
  w.scale = w.scale_lt = s;
  if (kb_lt == kb) return;
  float* lt = a.alloc_n<float>(rows * kb_lt);
  if (a.real()) {
    std::vector<float> padded(size_t(rows * kb_lt), 0.0f);
    for (int64_t r = 0; r < rows; ++r)
      std::copy(all.begin() + r * kb, all.begin() + (r + 1) * kb, padded.begin() + r * kb_lt);
    DSV3_CUDA_CHECK(cudaMemcpy(lt, padded.data(), padded.size() * 4, cudaMemcpyHostToDevice));
  }
  w.scale_lt = lt;
}

DevWeight upload_linear(Arena& a, const Linear& l, const std::string& what) {
  DevWeight w;
  w.type = wtype_of(l.weight.dtype(), what);
  DSV3_CHECK(l.quantized() == (w.type == WType::E4M3),
             "CUDA engine: {} is {} {} block scales, which the CUDA kernels do not read", what,
             dtype_name(l.weight.dtype()), l.quantized() ? "with" : "without");
  w.rows = l.out_features();
  w.k = l.in_features();
  w.bn = int(l.block_n);
  w.bk = int(l.block_k);
  w.w = a.upload(l.weight.data(), l.weight.nbytes());
  if (l.quantized()) {
    DSV3_CHECK(l.scale_inv.ndim() == 2, "CUDA engine: {} has block scales of shape {}", what,
               shape_str(l.scale_inv.shape()));
    upload_scales(a, {&l.scale_inv}, w);
  }
  return w;
}

// Weights stacked by rows: [Σ rows, k], their scales likewise; the parts share dtype, k and
// block sizes. pad_blocks: every FP8 part but the last is padded with zero rows to whole bn-row
// blocks, so that row r of the whole has scale row r / bn (the scales need no padding: a partial
// block already has its row). Otherwise (the stacked experts, indexed per expert) no padding.
DevWeight upload_rows(Arena& a, const std::vector<const Linear*>& ls, const std::string& what,
                      bool pad_blocks) {
  const Linear& l0 = *ls[0];
  DevWeight w;
  w.type = wtype_of(l0.weight.dtype(), what);
  w.k = l0.in_features();
  w.bn = int(l0.block_n);
  w.bk = int(l0.block_k);
  std::vector<int64_t> rows;  // each part's rows as stored
  for (size_t e = 0; e < ls.size(); ++e) {
    const Linear& l = *ls[e];
    DSV3_CHECK(l.weight.dtype() == l0.weight.dtype() && l.in_features() == w.k &&
                   l.quantized() == l0.quantized() && l.block_n == l0.block_n &&
                   l.block_k == l0.block_k,
               "CUDA engine: the parts of {} differ in dtype, width or block scales", what);
    const bool pad = pad_blocks && l.quantized() && e + 1 < ls.size();
    rows.push_back(pad ? round_up(l.out_features(), l.block_n) : l.out_features());
    w.rows += rows.back();
  }
  const int64_t row_bytes = int64_t(l0.weight.nbytes()) / l0.out_features();
  char* dst = a.alloc<char>(size_t(w.rows * row_bytes));
  w.w = dst;
  for (size_t e = 0; e < ls.size(); ++e) {
    const size_t bytes = ls[e]->weight.nbytes(), stored = size_t(rows[e] * row_bytes);
    if (a.real()) {
      DSV3_CUDA_CHECK(cudaMemcpy(dst, ls[e]->weight.data(), bytes, cudaMemcpyHostToDevice));
      if (stored > bytes) DSV3_CUDA_CHECK(cudaMemset(dst + bytes, 0, stored - bytes));
    }
    dst += stored;
  }
  if (l0.quantized()) {
    DSV3_CHECK(w.type == WType::E4M3, "CUDA engine: {} has block scales but is {}", what,
               dtype_name(l0.weight.dtype()));
    std::vector<const Tensor*> scales;
    for (const Linear* l : ls) {
      DSV3_CHECK(l->scale_inv.ndim() == 2 && l->scale_inv.dim(1) == l0.scale_inv.dim(1),
                 "CUDA engine: the parts of {} differ in their block scales' shape", what);
      scales.push_back(&l->scale_inv);
    }
    upload_scales(a, scales, w);
  } else {
    DSV3_CHECK(w.type != WType::E4M3, "CUDA engine: {} is FP8 without block scales", what);
  }
  return w;
}

// The experts' weights one after another: [E · rows, k], scales [E · ceil(rows / bn), ...].
DevWeight upload_stacked(Arena& a, const std::vector<const Linear*>& ls, const std::string& what) {
  for (const Linear* l : ls)
    DSV3_CHECK(l->weight.shape() == ls[0]->weight.shape(),
               "CUDA engine: the experts of {} differ in shape", what);
  return upload_rows(a, ls, what, false);
}

struct DevMlp {
  DevWeight gate, up, down;
};

struct DevLayer {
  const float *in_norm = nullptr, *post_norm = nullptr;
  // qkv_a: with a q LoRA, q_a_proj's rows then kv_a_proj_with_mqa's (one gemv reads the hidden
  // row once for both), else kv_a_proj_with_mqa alone. Its output's c_kv starts at latent_col
  // (q_a's rows, padded to whole FP8 blocks).
  DevWeight qkv_a, q_b, q, kv_b, o;
  int64_t latent_col = 0;
  const float *q_a_norm = nullptr, *kv_a_norm = nullptr;
  bool moe = false;
  DevMlp mlp;
  DevWeight router;
  const float* router_f32 = nullptr;  // the router in F32 for its GEMM (not the exact engine)
  const float* bias = nullptr;
  // Stacked experts: per expert its gate rows then its up rows (one GEMM gives both), and down.
  DevWeight gate_up_s, down_s;
  bool has_shared = false;
  DevMlp shared;
  // MTP layers only.
  const float *enorm = nullptr, *hnorm = nullptr, *head_norm = nullptr;
  DevWeight eh_proj, head;
};

DevMlp upload_mlp(Arena& a, const MlpWeights& m, const std::string& what) {
  return {upload_linear(a, m.gate, what + ".gate_proj"), upload_linear(a, m.up, what + ".up_proj"),
          upload_linear(a, m.down, what + ".down_proj")};
}

DevLayer upload_layer(Arena& a, const ModelConfig& c, const CudaEngineOptions& opt,
                      const LayerWeights& L, const std::string& name) {
  DevLayer d;
  d.in_norm = upload_f32(a, L.input_norm);
  d.post_norm = upload_f32(a, L.post_attention_norm);
  const AttentionWeights& at = L.attn;
  if (c.has_q_lora()) {
    d.qkv_a = upload_rows(a, {&at.q_a, &at.kv_a}, name + ".self_attn.{q_a_proj,kv_a_proj_with_mqa}",
                          true);
    d.latent_col = d.qkv_a.rows - at.kv_a.out_features();
    d.q_a_norm = upload_f32(a, at.q_a_norm);
    d.q_b = upload_linear(a, at.q_b, name + ".self_attn.q_b_proj");
  } else {
    d.q = upload_linear(a, at.q, name + ".self_attn.q_proj");
    d.qkv_a = upload_linear(a, at.kv_a, name + ".self_attn.kv_a_proj_with_mqa");
  }
  d.kv_a_norm = upload_f32(a, at.kv_a_norm);
  d.kv_b = upload_linear(a, at.kv_b, name + ".self_attn.kv_b_proj");
  d.o = upload_linear(a, at.o, name + ".self_attn.o_proj");
  d.moe = L.is_moe;
  if (!L.is_moe) {
    d.mlp = upload_mlp(a, L.mlp, name + ".mlp");
  } else {
    d.router = upload_linear(a, Linear::plain(L.moe.gate), name + ".mlp.gate");
    if (!opt.exact) d.router_f32 = upload_f32(a, L.moe.gate);
    d.bias = upload_f32(a, L.moe.bias);
    std::vector<const Linear*> gu, dn;
    for (const MlpWeights& e : L.moe.experts) {
      gu.push_back(&e.gate);
      gu.push_back(&e.up);
      dn.push_back(&e.down);
    }
    d.gate_up_s = upload_stacked(a, gu, name + ".mlp.experts.*.{gate,up}_proj");
    d.down_s = upload_stacked(a, dn, name + ".mlp.experts.*.down_proj");
    d.has_shared = L.moe.has_shared;
    if (d.has_shared) d.shared = upload_mlp(a, L.moe.shared, name + ".mlp.shared_experts");
  }
  if (L.mtp.enorm.defined()) {
    d.enorm = upload_f32(a, L.mtp.enorm);
    d.hnorm = upload_f32(a, L.mtp.hnorm);
    d.head_norm = upload_f32(a, L.mtp.head_norm);
    d.eh_proj = upload_linear(a, L.mtp.eh_proj, name + ".eh_proj");
    d.head = upload_linear(a, Linear::plain(L.mtp.head), name + ".shared_head.head");
  }
  return d;
}

// Activations of one forward chunk of up to T tokens.
struct Work {
  int64_t T = 0, logit_rows = 0, partial_floats = 0;
  int32_t* ints = nullptr;  // ids | positions | sequence (table row) | selected rows, T each
  // Block tables of the chunk's sequences, [T][max_blocks] (CachePool::tables).
  int32_t* tables = nullptr;
  float *x = nullptr, *h = nullptr, *delta = nullptr, *xn = nullptr, *qa = nullptr, *q = nullptr;
  float *kv = nullptr, *qc = nullptr, *olat = nullptr, *o = nullptr, *partial = nullptr;
  float *act = nullptr, *act2 = nullptr, *shared_out = nullptr;
  float *router = nullptr, *eweights = nullptr, *eact = nullptr, *eout = nullptr;
  int32_t *experts = nullptr, *offsets = nullptr, *perm_rows = nullptr, *perm_pos = nullptr;
  int32_t* active = nullptr;
  float *sel = nullptr, *logits = nullptr, *cat = nullptr, *hprev = nullptr;
  // Rows sampled on the GPU: their parameters and tokens, logit_rows each.
  SampleParams* sample = nullptr;
  int32_t* tokens = nullptr;
  uint64_t* sample_scan = nullptr;  // sample_tokens' split sweep: [logit_rows][blocks][2]
  uint16_t *xb = nullptr, *wb = nullptr;
  int64_t wb_elems = 0;
  // FP8 GEMMs: activations quantised in 1×128 tiles (rows padded per group), their scales, the
  // experts' up outputs and padded group offsets.
  uint8_t* xq = nullptr;
  float *xs = nullptr, *eact2 = nullptr;
  int32_t *padded_offsets = nullptr, *tile_start = nullptr;  // [E + 1] each
  // Attention on the tensor cores (BF16 or FP8 cache): the queries in BF16 (qcb: absorbed, or
  // non-absorbed for flash_prefill); for flash_prefill also kv_b's output of up to kv_keys keys
  // of one sequence (BF16 [keys, heads, dn + dv]) and the row state between key chunks.
  // kvlat: the cached latents of those keys gathered from their blocks (BF16 [keys, dc + dr]).
  uint16_t *qcb = nullptr, *kvb = nullptr, *kvlat = nullptr;
  int64_t kv_keys = 0;
  float* flash_ml = nullptr;
  void* blas_ws = nullptr;
  size_t blas_ws_bytes = 0;
};

struct DevModel {
  WType embed_type = WType::BF16;
  const void* embed = nullptr;
  const float* final_norm = nullptr;
  DevWeight lm_head;
  std::vector<DevLayer> layers, mtp;
  const float* inv_freq = nullptr;
  CachePool pool, mtp_pool;
  Work work;
  MemoryPlan plan;
};

int64_t max_k_of(const std::vector<DevWeight>& ws) {
  int64_t k = 0;
  for (const DevWeight& w : ws) k = std::max(k, w.k);
  return k;
}

DevModel layout(const ModelWeights& mw, const CudaEngineOptions& opt, Arena& a) {
  const ModelConfig& c = mw.config;
  DSV3_CHECK(opt.max_sequences > 0 && opt.max_context > 0 && opt.max_step_tokens > 0,
             "CUDA engine: max_sequences, max_context and max_step_tokens must be positive");
  DSV3_CHECK(c.n_routed_experts == 0 || c.num_experts_per_tok <= 32,
             "CUDA engine: {} experts per token; the routing kernel takes up to 32",
             c.num_experts_per_tok);
  DevModel m;
  m.embed_type = wtype_of(mw.embed.dtype(), "model.embed_tokens.weight");
  DSV3_CHECK(m.embed_type != WType::E4M3, "CUDA engine: an FP8 embedding is not supported");
  m.embed = a.upload(mw.embed.data(), mw.embed.nbytes());
  m.final_norm = upload_f32(a, mw.final_norm);
  m.lm_head = upload_linear(a, Linear::plain(mw.lm_head), "lm_head.weight");
  for (size_t l = 0; l < mw.layers.size(); ++l)
    m.layers.push_back(upload_layer(a, c, opt, mw.layers[l], "model.layers." + std::to_string(l)));
  for (size_t l = 0; l < mw.mtp.size(); ++l)
    m.mtp.push_back(
        upload_layer(a, c, opt, mw.mtp[l], "model.layers." + std::to_string(mw.layers.size() + l)));
  const RopeTable rope = RopeTable::build(c);
  float* inv = a.alloc_n<float>(int64_t(rope.inv_freq.size()));
  if (a.real())
    DSV3_CUDA_CHECK(
        cudaMemcpy(inv, rope.inv_freq.data(), rope.inv_freq.size() * 4, cudaMemcpyHostToDevice));
  m.inv_freq = inv;
  m.plan.weights = a.used();

  // Latent caches: blocks of block_tokens rows, [layers][blocks][block_tokens][kv_lora + rope],
  // F32, BF16 or FP8 rows (CachePool); the MTP module's in a pool of as many one-layer blocks.
  const size_t before_cache = a.used();
  const int64_t dc = c.kv_lora_rank, dr = c.qk_rope_head_dim;
  const bool fp8_cache = opt.fp8_cache && !opt.exact;
  DSV3_CHECK(!fp8_cache || (dc % 128 == 0 && dc <= kFp8CacheMaxDc),
             "CUDA engine: an FP8 latent cache needs kv_lora_rank a multiple of 128 up to {} (this "
             "model's is {}): use the BF16 cache",
             kFp8CacheMaxDc, dc);
  const bool bf16_cache = !fp8_cache && opt.bf16_cache && !opt.exact;
  const int64_t B = opt.block_tokens;
  DSV3_CHECK(B > 0 && B % 32 == 0,
             "CUDA engine: cache blocks of {} tokens; block_tokens must be a multiple of 32", B);
  const int64_t max_blocks = (opt.max_context + B - 1) / B;
  const int64_t blocks = opt.cache_blocks > 0 ? opt.cache_blocks : opt.max_sequences * max_blocks;
  m.pool = {nullptr, c.num_hidden_layers, blocks,  B,          dc,
            dr,      bf16_cache,          nullptr, max_blocks, fp8_cache};
  const int64_t row_bytes = m.pool.row_bytes();
  m.pool.base = a.alloc(size_t(c.num_hidden_layers * blocks * B * row_bytes));
  if (!m.mtp.empty()) {
    m.mtp_pool = {nullptr, 1, blocks, B, dc, dr, bf16_cache, nullptr, max_blocks, fp8_cache};
    m.mtp_pool.base = a.alloc(size_t(blocks * B * row_bytes));
  }
  m.plan.caches = a.used() - before_cache;
  m.plan.cache_bytes_per_token = size_t(c.num_hidden_layers * row_bytes);

  // Activations for T tokens.
  const size_t before_work = a.used();
  Work& w = m.work;
  // A multiple of 16 rows: FP8 GEMMs run on rows padded so (Blas::matmul_fp8_block).
  const int64_t T = round_up(opt.max_step_tokens, 16), H = c.hidden_size;
  const int64_t heads = c.num_attention_heads;
  const int64_t dn = c.qk_nope_head_dim, dv = c.v_head_dim, V = c.vocab_size;
  const int64_t k = std::max<int64_t>(c.num_experts_per_tok, 1), E = c.n_routed_experts;
  const int64_t inter = std::max(
      {c.intermediate_size, c.moe_intermediate_size * c.n_shared_experts, c.moe_intermediate_size});
  w.T = T;
  w.tables = a.alloc_n<int32_t>(T * max_blocks);
  m.pool.tables = m.mtp_pool.tables = w.tables;
  w.ints = a.alloc_n<int32_t>(4 * T);
  w.x = a.alloc_n<float>(T * H);
  w.h = a.alloc_n<float>(T * H);
  w.delta = a.alloc_n<float>(T * H);
  w.xn = a.alloc_n<float>(T * H);
  w.qa = a.alloc_n<float>(T * std::max<int64_t>(c.q_lora_rank, 1));
  w.q = a.alloc_n<float>(T * heads * (dn + dr));
  int64_t kv_cols = dc + dr;  // k.kv holds qkv_a's output
  for (const auto* ls : {&m.layers, &m.mtp})
    for (const DevLayer& L : *ls) kv_cols = std::max(kv_cols, L.qkv_a.rows);
  w.kv = a.alloc_n<float>(T * kv_cols);
  w.qc = a.alloc_n<float>(T * heads * (dc + dr));
  w.olat = a.alloc_n<float>(T * heads * dc);
  w.o = a.alloc_n<float>(T * heads * dv);
  w.partial_floats = std::max<int64_t>(T, 32) * heads * (dc + 2);
  w.partial = a.alloc_n<float>(w.partial_floats);
  w.act = a.alloc_n<float>(T * inter);
  w.act2 = a.alloc_n<float>(T * inter);
  w.shared_out = a.alloc_n<float>(T * H);
  if (E > 0) {
    w.router = a.alloc_n<float>(T * E);
    w.experts = a.alloc_n<int32_t>(T * k);
    w.eweights = a.alloc_n<float>(T * k);
    w.offsets = a.alloc_n<int32_t>(E + 1);
    w.active = a.alloc_n<int32_t>(E + 1);
    w.perm_rows = a.alloc_n<int32_t>(T * k);
    w.perm_pos = a.alloc_n<int32_t>(T * k);
    // 16 spare rows: an expert's FP8 GEMM writes its rows padded to 16 (moe()).
    w.eact = a.alloc_n<float>((T * k + 16) * c.moe_intermediate_size);  // SwiGLU output
    w.eout = a.alloc_n<float>((T * k + 16) * H);
  }
  w.logit_rows = std::min<int64_t>(T, 256);
  w.sel = a.alloc_n<float>(w.logit_rows * H);
  w.logits = a.alloc_n<float>(w.logit_rows * V);
  w.sample = a.alloc_n<SampleParams>(w.logit_rows);
  w.tokens = a.alloc_n<int32_t>(w.logit_rows);
  w.sample_scan = a.alloc_n<uint64_t>(w.logit_rows * kSampleScanBlocks * 2);
  if (!m.mtp.empty()) {
    w.cat = a.alloc_n<float>(T * 2 * H);
    w.hprev = a.alloc_n<float>(T * H);
  }
  if (!opt.exact) {
    // BF16 staging for cuBLASLt: activations, and a weight dequantised per GEMM.
    std::vector<DevWeight> dense = {m.lm_head};
    for (const auto* ls : {&m.layers, &m.mtp}) {
      for (const DevLayer& L : *ls) {
        for (const DevWeight& x :
             {L.qkv_a, L.q_b, L.q, L.kv_b, L.o, L.mlp.gate, L.mlp.up, L.mlp.down, L.shared.gate,
              L.shared.up, L.shared.down, L.eh_proj, L.head})
          if (x.w) dense.push_back(x);
      }
    }
    for (const DevWeight& x : dense)
      if (x.type != WType::BF16) w.wb_elems = std::max(w.wb_elems, x.rows * x.k);
    // BF16 copies of the widest dense input, or of the experts' T·k rows (BF16 experts).
    int64_t xb_elems = T * std::max(max_k_of(dense), 2 * H);
    if (E > 0) xb_elems = std::max(xb_elems, (T * k + 16) * std::max(H, c.moe_intermediate_size));
    w.xb = a.alloc_n<uint16_t>(xb_elems);
    w.wb = a.alloc_n<uint16_t>(w.wb_elems);
    w.blas_ws_bytes = size_t(32) << 20;
    w.blas_ws = a.alloc(w.blas_ws_bytes);
    // Quantised activations of the widest FP8 GEMM: T rows, or the experts' T·k rows each
    // group padded to 16.
    int64_t fp8_k = 0;
    for (const DevWeight& x : dense)
      if (x.type == WType::E4M3) fp8_k = std::max(fp8_k, x.k);
    int64_t q_rows = T;
    if (E > 0) {
      for (const auto* ls : {&m.layers, &m.mtp})
        for (const DevLayer& L : *ls)
          if (L.moe) fp8_k = std::max({fp8_k, L.gate_up_s.k, L.down_s.k});
      q_rows = std::max(q_rows, T * k + 16 * E);
      w.padded_offsets = a.alloc_n<int32_t>(E + 1);
      w.tile_start = a.alloc_n<int32_t>(E + 1);
      w.eact2 = a.alloc_n<float>((T * k + 16) * 2 * c.moe_intermediate_size);  // gate | up
    }
    if (bf16_cache || fp8_cache) {
      w.qcb = a.alloc_n<uint16_t>(T * heads * std::max(dc + dr, dn + dr));
      // Keys per chunk: the whole context up to 512 MiB of decompressed keys and values
      // (DeepSeek-V3: 8K keys; longer prompts take several chunks).
      const int64_t key_bytes = heads * (dn + dv) * 2;
      w.kv_keys = std::min(opt.max_context,
                           std::max<int64_t>(64, (int64_t(512) << 20) / key_bytes / 64 * 64));
      w.kvb = a.alloc_n<uint16_t>(w.kv_keys * heads * (dn + dv));
      w.kvlat = a.alloc_n<uint16_t>(w.kv_keys * (dc + dr));
      w.flash_ml = a.alloc_n<float>(T * heads * 2);
    }
    w.xq = a.alloc<uint8_t>(size_t(q_rows * fp8_k));
    w.xs = a.alloc_n<float>(q_rows * (fp8_k / 128));
  }
  m.plan.workspace = a.used() - before_work;
  return m;
}

}  // namespace

MemoryPlan plan_memory(const ModelWeights& w, const CudaEngineOptions& opt) {
  Arena a;
  return layout(w, opt, a).plan;
}

// Stages of a chunk for CudaEngineOptions::time_stages.
enum Stage : int {
  kStageAttnProj,   // q_a, q_b (or q), kv_a, o_proj
  kStageAttention,  // cache write; absorbed (W_UK, attention, W_UV) or flash (kv_b GEMM, kernel)
  kStageDense,      // dense layers' MLP
  kStageRouting,    // router, top-k, permutation, combine
  kStageExperts,    // routed experts
  kStageShared,     // shared experts
  kStageOther,      // embedding, norms, output head, copies
  kStages
};
constexpr const char* kStageNames[kStages] = {"attention projections",
                                              "attention",
                                              "dense MLP",
                                              "routing + combine",
                                              "routed experts",
                                              "shared experts",
                                              "norms, embedding, head, copies"};

struct CudaEngine::Impl {
  const ModelConfig& c;
  CudaEngineOptions opt;
  char* base = nullptr;
  cudaStream_t stream = nullptr;
  // Decode-sized chunks (side_stream): kernels off the chain's critical path run here, between
  // fork() and join(); a graph captures them as a parallel branch.
  cudaStream_t side = nullptr;
  cudaEvent_t fork_event = nullptr, join_event = nullptr;
  DevModel m;
  std::unique_ptr<Blas> blas;
  // The caches' blocks: which are free, shared, and each sequence's table (host bookkeeping;
  // the rows are in m.pool / m.mtp_pool). Shared with the caches, which may outlive the engine.
  std::shared_ptr<BlockPool> blocks, mtp_blocks;
  RopeTable rope_table;
  // Pinned host staging: the chunk's integers, hidden rows, logits, and for the rows sampled
  // on the GPU their parameters and tokens (T each: every selected row of a chunk).
  int32_t* h_ints = nullptr;
  int32_t* h_tables = nullptr;  // [T][max_blocks]
  float* h_rows = nullptr;
  float* h_logits = nullptr;
  SampleParams* h_sample = nullptr;
  int32_t* h_tokens = nullptr;
  int32_t *h_offsets = nullptr, *h_padded = nullptr;  // experts, [E + 1]
  // Captured decode graphs by (mtp, rows, logit rows, attention span, hidden wanted, what the
  // selected rows return: kLogitsOut | kTokensOut).
  std::map<std::tuple<bool, int64_t, int64_t, int64_t, bool, int>, cudaGraphExec_t> graphs;
  int64_t captured = 0;
  // time_stages: events of the chunk being run (reused), the stage each one starts, totals.
  bool timing = false;
  std::vector<cudaEvent_t> events;
  std::vector<int> event_stage;
  size_t events_used = 0;
  double stage_ms[kStages] = {}, stage_host_ms[kStages] = {};
  std::chrono::steady_clock::time_point stage_t0;

  // Records the start of stage s (s < 0: the end of the chunk).
  void stage(int s) {
    if (!timing) return;
    if (events_used == events.size()) {
      cudaEvent_t e = nullptr;
      DSV3_CUDA_CHECK(cudaEventCreate(&e));
      events.push_back(e);
      event_stage.push_back(0);
    }
    DSV3_CUDA_CHECK(cudaEventRecord(events[events_used], stream));
    const auto now = std::chrono::steady_clock::now();
    if (events_used > 0 && event_stage[events_used - 1] >= 0)
      stage_host_ms[event_stage[events_used - 1]] +=
          std::chrono::duration<double, std::milli>(now - stage_t0).count();
    stage_t0 = now;
    event_stage[events_used++] = s;
  }
  // After the stream is synchronised: adds the chunk's intervals to the totals.
  void collect_stages() {
    for (size_t i = 0; i + 1 < events_used; ++i) {
      float ms = 0;
      DSV3_CUDA_CHECK(cudaEventElapsedTime(&ms, events[i], events[i + 1]));
      if (event_stage[i] >= 0) stage_ms[event_stage[i]] += double(ms);
    }
    events_used = 0;
  }

  Impl(const Model& model, const CudaEngineOptions& o)
      : c(model.config()), opt(o), rope_table(RopeTable::build(model.config())) {
    DSV3_CHECK(o.device >= 0, "CUDA engine: bad device index {}", o.device);
    const int count = device_count();
    DSV3_CHECK(count > 0, "CUDA engine: no usable CUDA device here (driver missing or too old)");
    DSV3_CHECK(o.device < count, "CUDA engine: device cuda:{} asked for, {} present", o.device,
               count);
    opt.max_context = std::min(opt.max_context, c.max_position_embeddings);
    opt.gemv_tensor_cores = opt.gemv_tensor_cores && !opt.exact;
    DSV3_CUDA_CHECK(cudaSetDevice(opt.device));
    Arena plan;
    layout(model.weights(), opt, plan);
    size_t free_b = 0, total_b = 0;
    DSV3_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    DSV3_CHECK(plan.used() <= free_b,
               "CUDA engine: the model needs {:.2f} GiB on cuda:{} (weights, caches of {} x {} "
               "tokens, activations of {} tokens) but {:.2f} GiB are free: lower "
               "max_sequences / max_context",
               double(plan.used()) / (1u << 30), opt.device, opt.max_sequences, opt.max_context,
               opt.max_step_tokens, double(free_b) / (1u << 30));
    DSV3_CUDA_CHECK(cudaMalloc(&base, plan.used()));
    Arena real(base, plan.used());
    m = layout(model.weights(), opt, real);
    // Zeroed caches: rows not yet written hold zeros, not NaN bit patterns, should a kernel
    // ever read a padded tile of them (each masks them out).
    const size_t block_bytes = size_t(m.pool.row_bytes() * m.pool.block_tokens * m.pool.blocks);
    DSV3_CUDA_CHECK(cudaMemset(m.pool.base, 0, block_bytes * size_t(m.pool.layers)));
    if (m.mtp_pool.base) DSV3_CUDA_CHECK(cudaMemset(m.mtp_pool.base, 0, block_bytes));
    DSV3_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    DSV3_CUDA_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
    DSV3_CUDA_CHECK(cudaEventCreateWithFlags(&fork_event, cudaEventDisableTiming));
    DSV3_CUDA_CHECK(cudaEventCreateWithFlags(&join_event, cudaEventDisableTiming));
    if (!opt.exact) blas = std::make_unique<Blas>();
    blocks = std::make_shared<BlockPool>(c, c.num_hidden_layers, m.pool.blocks, m.pool.block_tokens,
                                         opt.prefix_caching, false);
    if (m.mtp_pool.base)
      mtp_blocks = std::make_shared<BlockPool>(c, 1, m.mtp_pool.blocks, m.mtp_pool.block_tokens,
                                               false, false);
    const int64_t T = m.work.T;
    DSV3_CUDA_CHECK(cudaMallocHost(&h_ints, size_t(4 * T) * sizeof(int32_t)));
    DSV3_CUDA_CHECK(cudaMallocHost(&h_tables, size_t(T * m.pool.max_blocks) * sizeof(int32_t)));
    DSV3_CUDA_CHECK(cudaMallocHost(&h_rows, size_t(T * c.hidden_size) * sizeof(float)));
    DSV3_CUDA_CHECK(
        cudaMallocHost(&h_logits, size_t(m.work.logit_rows * c.vocab_size) * sizeof(float)));
    DSV3_CUDA_CHECK(cudaMallocHost(&h_sample, size_t(T) * sizeof(SampleParams)));
    DSV3_CUDA_CHECK(cudaMallocHost(&h_tokens, size_t(T) * sizeof(int32_t)));
    DSV3_CUDA_CHECK(cudaMallocHost(&h_offsets, size_t(c.n_routed_experts + 1) * sizeof(int32_t)));
    DSV3_CUDA_CHECK(cudaMallocHost(&h_padded, size_t(c.n_routed_experts + 1) * sizeof(int32_t)));
    DSV3_CUDA_CHECK(cudaDeviceSynchronize());
  }

  ~Impl() {
    // Nothing can be reported from a destructor; a failure here would also show in the next
    // checked call of whoever uses the device next.
    if (stream) (void)cudaStreamSynchronize(stream);
    drop_graphs();
    for (cudaEvent_t e : events) (void)cudaEventDestroy(e);
    if (fork_event) (void)cudaEventDestroy(fork_event);
    if (join_event) (void)cudaEventDestroy(join_event);
    if (side) (void)cudaStreamDestroy(side);
    if (stream) (void)cudaStreamDestroy(stream);
    blas.reset();
    (void)cudaFreeHost(h_ints);
    (void)cudaFreeHost(h_tables);
    (void)cudaFreeHost(h_rows);
    (void)cudaFreeHost(h_logits);
    (void)cudaFreeHost(h_sample);
    (void)cudaFreeHost(h_tokens);
    (void)cudaFreeHost(h_offsets);
    (void)cudaFreeHost(h_padded);
    (void)cudaFree(base);
  }

  // FP8 weights in 128×128 blocks over many rows: E4M3 activations in 1×128 tiles on the FP8
  // tensor cores (the weight is read as stored, not dequantised).
  bool use_fp8_gemm(int64_t rows, const DevWeight& w) const {
    return blas && opt.fp8_gemm && rows > opt.gemv_max_rows && w.type == WType::E4M3 &&
           w.bn == 128 && w.bk == 128 && w.k % 128 == 0;
  }

  // y = x · W_eᵀ for the first `rows` of x ∈ E4M3 [rows, w.k] (scales as quantize_e4m3_tiles
  // wrote them), W_e the e-th of w's stacked groups of `group_rows` rows (e = 0: all of w).
  bool fp8_gemm(int64_t rows, const uint8_t* xq, const float* xs, const DevWeight& w, int64_t e,
                int64_t group_rows, float* y) {
    const int64_t kb_lt = round_up(w.k / 128, 4);
    const auto* wq = static_cast<const uint8_t*>(w.w) + e * group_rows * w.k;
    const float* ws = w.scale_lt + e * (group_rows / 128) * kb_lt;
    return blas->matmul_fp8_block(rows, group_rows, w.k, xq, xs, wq, ws, y, m.work.blas_ws,
                                  m.work.blas_ws_bytes, stream);
  }

  bool use_blas(int64_t rows, const DevWeight& w) const {
    return blas && rows > opt.gemv_max_rows && w.type != WType::F32 &&
           (w.type == WType::BF16 || w.rows * w.k <= m.work.wb_elems);
  }

  // y [rows, w.rows] = x [rows, w.k] · Wᵀ; f32: the F32 gemv kernels whatever the rows (the
  // router: its inputs rounded could flip a near-tie between experts).
  void linear(const float* x, int64_t rows, const DevWeight& w, float* y, bool f32 = false) {
    const Work& k = m.work;
    if (!f32 && use_fp8_gemm(rows, w)) {
      QuantizeArgs q;
      q.x = x;
      q.ldx = w.k;
      q.rows = rows;
      q.padded_rows = round_up(rows, 16);  // ≤ T: y has room for the padding rows
      q.k = w.k;
      q.q = k.xq;
      q.scales = k.xs;
      quantize_e4m3_tiles(q, stream);
      if (fp8_gemm(q.padded_rows, k.xq, k.xs, w, 0, w.rows, y)) return;
    }
    if (!f32 && use_blas(rows, w)) {
      to_bf16(x, k.xb, rows * w.k, stream);
      const void* wb = w.w;
      if (w.type != WType::BF16) {
        weight_to_bf16(w, k.wb, stream);
        wb = k.wb;
      }
      if (blas->matmul_bf16(rows, w.rows, w.k, k.xb, wb, y, k.blas_ws, k.blas_ws_bytes, stream))
        return;
    }
    GemvArgs g;
    g.w = w;
    g.n = w.rows;
    g.x = x;
    g.ldx = w.k;
    g.y = y;
    g.ldy = w.rows;
    g.m = rows;
    g.tensor_cores = opt.gemv_tensor_cores && !f32;
    gemv(g, stream);
  }

  // Side work for chunks of up to gemv_max_rows rows (gemvs only: no cuBLASLt workspace shared
  // between the streams).
  bool use_side(int64_t n) const { return opt.side_stream && n <= opt.gemv_max_rows; }
  // The side stream starts after what the main stream has enqueued so far ...
  void fork() {
    DSV3_CUDA_CHECK(cudaEventRecord(fork_event, stream));
    DSV3_CUDA_CHECK(cudaStreamWaitEvent(side, fork_event, 0));
  }
  // ... and the main stream goes on past this point only once the side work is done.
  void join() {
    DSV3_CUDA_CHECK(cudaEventRecord(join_event, side));
    DSV3_CUDA_CHECK(cudaStreamWaitEvent(stream, join_event, 0));
  }
  // While alive, the launches of the helpers (linear, mlp: they take `stream`) go to the side
  // stream.
  struct OnSide {
    Impl& e;
    explicit OnSide(Impl& impl) : e(impl) { std::swap(e.stream, e.side); }
    ~OnSide() { std::swap(e.stream, e.side); }
    OnSide(const OnSide&) = delete;
    OnSide& operator=(const OnSide&) = delete;
  };

  void mlp(const DevMlp& p, const float* in, int64_t n, float* out) {
    const int64_t inter = p.gate.rows;
    if (use_blas(n, p.gate) || use_fp8_gemm(n, p.gate)) {
      linear(in, n, p.gate, m.work.act);
      linear(in, n, p.up, m.work.act2);
      silu_mul(m.work.act, m.work.act2, m.work.act, n * inter, stream);
    } else {
      GemvArgs g;
      g.w = p.gate;
      g.w2 = p.up.w;
      g.scale2 = p.up.scale;
      g.n = inter;
      g.x = in;
      g.ldx = p.gate.k;
      g.y = m.work.act;
      g.ldy = inter;
      g.m = n;
      g.tensor_cores = opt.gemv_tensor_cores;
      gemv(g, stream);
    }
    linear(m.work.act, n, p.down, out);
  }

  // A block's FFN output, still to be added to the residual stream: delta, or with moe.expert_out
  // set the routed experts' outputs, combined by the next norm (combine_in_norm).
  struct Pending {
    const float* delta = nullptr;
    CombineArgs moe;
  };
  // x += pending, then out = RMSNorm(x) · w.
  void add_norm(const Pending& p, const float* w, int64_t n, float* out, int64_t ldo) {
    Work& k = m.work;
    const int64_t H = c.hidden_size;
    const float eps = float(c.rms_norm_eps);
    if (!p.moe.expert_out) {
      add_rmsnorm(k.x, H, p.delta, w, eps, n, H, out, ldo, stream);
    } else if (!add_rmsnorm_combine(k.x, H, p.moe, w, eps, n, H, out, ldo, stream)) {
      // Rows the fused kernel does not take: the sum into k.delta first (nothing pending
      // lives there: the MoE layer's output is still in eout).
      moe_combine(p.moe, n, H, k.delta, stream);
      add_rmsnorm(k.x, H, k.delta, w, eps, n, H, out, ldo, stream);
    }
  }

  Pending moe(const DevLayer& L, int64_t n, float* out) {
    Work& k = m.work;
    const int64_t E = c.n_routed_experts, top = c.num_experts_per_tok, H = c.hidden_size;
    // The shared experts beside the routing and the routed experts (a decode step's routing is
    // a chain of small latency-bound kernels).
    const bool shared_aside = L.has_shared && use_side(n);
    if (shared_aside) {
      fork();
      const OnSide on(*this);
      twice(kRepeatShared, [&] { mlp(L.shared, k.h, n, k.shared_out); });
    }
    // The router always in F32 (cuBLASLt's F32 GEMM, else the F32 gemv): BF16 inputs could
    // flip a near-tie between experts.
    stage(kStageRouting);
    RouteArgs r;
    r.e = E;
    r.k = top;
    const bool grouped = c.topk_method == "noaux_tc" || c.topk_method == "group_limited_greedy";
    r.n_group = grouped ? c.n_group : 1;
    r.topk_group = grouped ? c.topk_group : 1;
    r.sigmoid = c.scoring_func == "sigmoid";
    r.top2_group_score = c.topk_method == "noaux_tc";
    r.normalise = c.norm_topk_prob && (r.sigmoid || top > 1);
    r.scale = r.sigmoid || !r.normalise ? float(c.routed_scaling_factor) : 1.0f;
    twice(kRepeatRoute, [&] {
      if (!(L.router_f32 && blas && n > opt.gemv_max_rows &&
            blas->matmul_f32(n, E, H, k.h, L.router_f32, k.router, k.blas_ws, k.blas_ws_bytes,
                             stream)))
        linear(k.h, n, L.router, k.router, /*f32=*/true);
      route_and_permute(k.router, L.bias, n, r, k.experts, k.eweights, k.offsets, k.perm_rows,
                        k.perm_pos, k.active, stream);
    });
    stage(kStageExperts);
    twice(kRepeatExperts, [&] {
      if (!experts_grouped(L, n) && !experts_gemm(L, n)) experts_gemv(L, n);
    });
    stage(kStageShared);
    if (L.has_shared && !shared_aside)
      twice(kRepeatShared, [&] { mlp(L.shared, k.h, n, k.shared_out); });
    if (shared_aside) join();
    CombineArgs comb;
    comb.shared = L.has_shared ? k.shared_out : nullptr;
    comb.expert_out = k.eout;
    comb.weight = k.eweights;
    comb.pos = k.perm_pos;
    comb.k = top;
    // A piece timed twice must not add to x twice: the combine then runs on its own.
    if (opt.combine_in_norm && !(opt.repeat_pieces & kRepeatCombine)) return {nullptr, comb};
    stage(kStageRouting);
    twice(kRepeatCombine, [&] { moe_combine(comb, n, H, out, stream); });
    return {out, {}};
  }

  // FP8 experts take block-scaled GEMMs; either kind takes the GEMM path below when the chunk
  // averages expert_gemm_rows rows per expert.
  bool experts_fp8(const DevLayer& L, int64_t n) const {
    return use_fp8_gemm(n, L.gate_up_s) && use_fp8_gemm(n, L.down_s) &&
           c.moe_intermediate_size % 128 == 0;
  }
  // Routed experts of a chunk over gemv_max_rows rows that average grouped_min_rows to
  // expert_gemm_rows rows per expert (FP8 with 128×128 blocks; BF16 ones bf16_grouped_min_rows
  // to bf16_grouped_max_rows) take the grouped kernel when grouped_experts is on (engine.h says
  // why those bounds).
  bool use_grouped(const DevLayer& L, int64_t n) const {
    const int64_t H = c.hidden_size, inter = c.moe_intermediate_size;
    const int64_t pairs = n * c.num_experts_per_tok, E = c.n_routed_experts;
    const WType t = L.gate_up_s.type;
    const bool fp8 = experts_fp8(L, n);
    if (!opt.grouped_experts || n <= opt.gemv_max_rows ||
        !(fp8 || (t == WType::BF16 && L.down_s.type == WType::BF16)))
      return false;
    // pairs / E >= r is pairs >= r · E for integers, without the product's overflow.
    const int64_t rows = pairs / E;
    const bool in_range = fp8 ? rows >= opt.grouped_min_rows &&
                                    (rows < opt.expert_gemm_rows || wgmma_tiles(true, rows))
                              : rows >= opt.bf16_grouped_min_rows &&
                                    (rows < opt.bf16_grouped_max_rows || wgmma_tiles(false, rows));
    return in_range && grouped_supported(t, 2 * inter, H) && grouped_supported(t, H, inter);
  }
  // Whether FP8 or BF16 experts averaging `rows` rows take the grouped kernel's 128-row wgmma
  // tiles.
  bool wgmma_tiles(bool fp8, int64_t rows) const {
    return rows >= (fp8 ? opt.fp8_wgmma_min_rows : opt.bf16_wgmma_min_rows) &&
           grouped_tile_ok(fp8 ? WType::E4M3 : WType::BF16, 128);
  }
  bool experts_on_gemm(const DevLayer& L, int64_t n) const {
    const bool bf16 = blas && L.gate_up_s.type == WType::BF16 && L.down_s.type == WType::BF16;
    const int64_t rows = n * c.num_experts_per_tok / c.n_routed_experts;
    if (n <= opt.gemv_max_rows) return false;
    if (experts_fp8(L, n)) return rows >= opt.expert_gemm_rows;
    return bf16 && rows >= opt.bf16_expert_gemm_rows;
  }

  // The routed experts on the tensor cores, one GEMM per expert with rows (cuBLASLt 13.1 has no
  // grouped block-scaled GEMM), when the experts average expert_gemm_rows rows or more: below
  // that the gemv kernel, which reads each expert's weights once for all its rows in one
  // launch, was faster (bench-1b on the H200: 8 rows per expert, 1.8K vs 1.5K tok/s; 128
  // rows, 25K vs 13K tok/s prefill). FP8 weights with 128×128 blocks run block-scaled on E4M3
  // inputs, each expert's rows quantised padded to 16, so its GEMMs write up to 15 rows past
  // its own: zeros, into the next expert's rows, which that expert's GEMM (later on the same
  // stream) writes again; eact2 / eout have 16 spare rows for the last. BF16 weights run on
  // BF16 copies of the rows. Gate and up are one GEMM (N = 2 · inter, into eact2), then
  // eact = SwiGLU(gate, up), eout = down, in moe_permute's order.
  // False (nothing usable written) if the weights do not suit or cuBLASLt has no algorithm.
  bool experts_gemm(const DevLayer& L, int64_t n) {
    Work& k = m.work;
    const int64_t E = c.n_routed_experts, pairs = n * c.num_experts_per_tok;
    const int64_t H = c.hidden_size, inter = c.moe_intermediate_size;
    if (!experts_on_gemm(L, n)) return false;
    const bool fp8 = experts_fp8(L, n);
    // The host launches one GEMM per expert, so it needs the counts now.
    DSV3_CUDA_CHECK(cudaMemcpyAsync(h_offsets, k.offsets, size_t(E + 1) * sizeof(int32_t),
                                    cudaMemcpyDeviceToHost, stream));
    DSV3_CUDA_CHECK(cudaStreamSynchronize(stream));
    h_padded[0] = 0;
    for (int64_t e = 0; e < E; ++e)
      h_padded[e + 1] = h_padded[e] + int32_t(round_up(h_offsets[e + 1] - h_offsets[e], 16));
    // One projection of every expert with rows: its inputs (FP8 rows padded, BF16 rows as they
    // are) times its weight, into y in moe_permute's order.
    const auto each = [&](int64_t width, const DevWeight& w, int64_t group_rows, float* y) {
      for (int64_t e = 0; e < E; ++e) {
        const int64_t rows = h_offsets[e + 1] - h_offsets[e];
        if (rows == 0) continue;
        float* ye = y + int64_t(h_offsets[e]) * group_rows;
        const bool ok =
            fp8 ? fp8_gemm(h_padded[e + 1] - h_padded[e], k.xq + h_padded[e] * width,
                           k.xs + (width / 128) * h_padded[e], w, e, group_rows, ye)
                : blas->matmul_bf16(rows, group_rows, width, k.xb + int64_t(h_offsets[e]) * width,
                                    static_cast<const uint16_t*>(w.w) + e * group_rows * width, ye,
                                    k.blas_ws, k.blas_ws_bytes, stream);
        if (!ok) return false;
      }
      return true;
    };
    QuantizeArgs q = expert_rows_e4m3(h_padded[E]);
    if (fp8) {
      DSV3_CUDA_CHECK(cudaMemcpyAsync(k.padded_offsets, h_padded, size_t(E + 1) * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, stream));
      quantize_e4m3_tiles(q, stream);
    } else {
      gather_rows(k.h, H, k.perm_rows, pairs, H, k.xb, stream);
    }
    if (!each(H, L.gate_up_s, 2 * inter, k.eact2)) return false;
    experts_down_input(fp8, pairs, q);
    return each(inter, L.down_s, H, k.eout);
  }

  // The down projection's input from the experts' gate | up rows (eact2): SwiGLU, then for FP8
  // experts E4M3 tiles grouped as the gate | up input's were (q), for BF16 ones BF16 rows in xb.
  void experts_down_input(bool fp8, int64_t pairs, QuantizeArgs q) {
    Work& k = m.work;
    const int64_t inter = c.moe_intermediate_size;
    if (!fp8) {
      silu_mul_rows(k.eact2, k.eact2 + inter, 2 * inter, pairs, inter, k.xb, stream);
      return;
    }
    silu_mul_rows(k.eact2, k.eact2 + inter, 2 * inter, pairs, inter, k.eact, stream);
    q.x = k.eact;
    q.ldx = inter;
    q.x_rows = nullptr;
    q.k = inter;
    quantize_e4m3_tiles(q, stream);
  }

  // The experts' input rows (the normed hidden rows in moe_permute's order) to E4M3 tiles,
  // grouped by expert at padded_offsets; `padded_rows` (or a bound on it) sizes the launch.
  QuantizeArgs expert_rows_e4m3(int64_t padded_rows) const {
    const Work& k = m.work;
    QuantizeArgs q;
    q.x = k.h;
    q.ldx = c.hidden_size;
    q.x_rows = k.perm_rows;
    q.padded_rows = padded_rows;
    q.k = c.hidden_size;
    q.groups = int(c.n_routed_experts);
    q.offsets = k.offsets;
    q.padded_offsets = k.padded_offsets;
    q.q = k.xq;
    q.scales = k.xs;
    return q;
  }

  // The routed experts on our grouped kernel (grouped.cu), one launch per projection, with the
  // groups' layout computed on the device: no host wait, so decode batches stay graphs. FP8
  // experts' rows are quantised in 1×128 tiles as for the per-expert GEMMs, BF16 experts' rows
  // rounded to BF16. False if it does not apply (use_grouped).
  bool experts_grouped(const DevLayer& L, int64_t n) {
    if (!use_grouped(L, n)) return false;
    Work& k = m.work;
    const int64_t E = c.n_routed_experts, pairs = n * c.num_experts_per_tok;
    const int64_t H = c.hidden_size, inter = c.moe_intermediate_size;
    const bool fp8 = L.gate_up_s.type == WType::E4M3;
    const int64_t rows = pairs / E;
    const int auto_rows = wgmma_tiles(fp8, rows) ? 128 : grouped_tile_rows(rows);
    const int tile_rows =
        opt.grouped_tile_rows > 0 && grouped_tile_ok(L.gate_up_s.type, int(opt.grouped_tile_rows))
            ? int(opt.grouped_tile_rows)
            : auto_rows;
    // Bounds on the padded rows and tiles (each expert pads by < 16 rows, and < 1 tile).
    const int64_t rows_bound = pairs + 16 * E;
    const int64_t tiles_bound = grouped_tiles(rows_bound, tile_rows) + E;
    grouped_layout(k.offsets, int(E), tile_rows, k.padded_offsets, k.tile_start, stream);
    QuantizeArgs q = expert_rows_e4m3(rows_bound);
    if (fp8)
      quantize_e4m3_tiles(q, stream);
    else
      gather_rows(k.h, H, k.perm_rows, pairs, H, k.xb, stream);
    const auto project = [&](int64_t width, const DevWeight& w, int64_t group_rows, float* y) {
      GroupedArgs g;
      g.type = w.type;
      g.tile_rows = tile_rows;
      g.x = fp8 ? static_cast<const void*>(k.xq) : k.xb;
      g.x_scale = fp8 ? k.xs : nullptr;
      g.offsets = k.offsets;
      g.padded_offsets = k.padded_offsets;
      g.tile_start = k.tile_start;
      g.groups = int(E);
      g.total_tiles = tiles_bound;
      g.w = w.w;
      g.w_scale = w.scale;
      g.w_scale_ld = fp8 ? ceil_div(w.k, w.bk) : 0;
      g.n = group_rows;
      g.k = width;
      g.y = y;
      g.ldy = group_rows;
      grouped_gemm(g, stream);
    };
    project(H, L.gate_up_s, 2 * inter, k.eact2);
    experts_down_input(fp8, pairs, q);
    project(inter, L.down_s, H, k.eout);
    return true;
  }

  // The routed experts on the gemv kernel: every expert's rows in one launch.
  void experts_gemv(const DevLayer& L, int64_t n) {
    Work& k = m.work;
    const int64_t E = c.n_routed_experts, top = c.num_experts_per_tok, H = c.hidden_size;
    const int64_t inter = c.moe_intermediate_size;
    GemvArgs g;  // gate and up of every expert at once, SwiGLU fused
    // Expert e's gate rows at 2e · inter, its up rows inter after (and their scale rows).
    const DevWeight& gu = L.gate_up_s;
    const int64_t part_scale_rows = ceil_div(inter, gu.bn);
    g.w = gu;
    g.w2 = static_cast<const char*>(gu.w) + inter * gu.k * elem_bytes(gu.type);
    g.scale2 = gu.scale ? gu.scale + part_scale_rows * ceil_div(gu.k, gu.bk) : nullptr;
    g.n = inter;
    g.w_group_rows = 2 * inter;
    g.scale_group_rows = 2 * part_scale_rows;
    g.x = k.h;
    g.ldx = H;
    g.x_rows = k.perm_rows;
    g.y = k.eact;
    g.ldy = inter;
    g.m = n * top;
    g.groups = int(E);
    g.offsets = k.offsets;
    g.active = k.active;
    gemv(g, stream);
    GemvArgs d;  // down of every expert
    d.w = L.down_s;
    d.n = H;
    d.w_group_rows = H;
    d.scale_group_rows = ceil_div(H, L.down_s.bn);
    d.x = k.eact;
    d.ldx = inter;
    d.y = k.eout;
    d.ldy = H;
    d.m = n * top;
    d.groups = int(E);
    d.offsets = k.offsets;
    d.active = k.active;
    gemv(d, stream);
  }

  static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
  static int64_t elem_bytes(WType t) { return t == WType::F32 ? 4 : t == WType::E4M3 ? 1 : 2; }

  void attention(const DevLayer& L, const CachePool& pool, int64_t layer, int64_t n,
                 int64_t max_pos, float* out) {
    Work& k = m.work;
    const int64_t heads = c.num_attention_heads, dn = c.qk_nope_head_dim;
    const int64_t dr = c.qk_rope_head_dim, dv = c.v_head_dim, dc = c.kv_lora_rank;
    const float eps = float(c.rms_norm_eps);
    const int32_t* pos = k.ints + k.T;
    const int32_t* seq = k.ints + 2 * k.T;
    stage(kStageAttnProj);
    // k.kv rows: [q_a (q LoRA only, padded) | c_kv | k_pe].
    const int64_t qr = c.has_q_lora() ? c.q_lora_rank : 0, ldkv = L.qkv_a.rows;
    // The latent cache write beside q's chain (q_a's norm, q_b, the absorb), joined before the
    // attention reads the cache.
    const bool write_aside = use_side(n);
    const auto qkv_a = [&] { twice(kRepeatQkvA, [&] { linear(k.h, n, L.qkv_a, k.kv); }); };
    if (qr > 0) {
      qkv_a();  // q_a's rows feed q's chain
      if (write_aside) fork();
      twice(kRepeatQaNorm,
            [&] { add_rmsnorm(k.kv, ldkv, nullptr, L.q_a_norm, eps, n, qr, k.qa, qr, stream); });
      twice(kRepeatQb, [&] { linear(k.qa, n, L.q_b, k.q); });
    } else {
      // Without a q LoRA q reads the hidden row itself, so kv_a's gemv goes aside too.
      if (write_aside) {
        fork();
        const OnSide on(*this);
        qkv_a();
      } else {
        qkv_a();
      }
      twice(kRepeatQb, [&] { linear(k.h, n, L.q, k.q); });
    }
    const int64_t half = dr / 2;
    const bool flash = use_flash(pool, n);
    // The absorbed form rotates q_pe inside mla_absorb_q (one launch fewer a layer).
    if (flash) rope(k.q, n, heads, dn + dr, dn, m.inv_freq, half, rope_table.factor, pos, stream);
    stage(kStageAttention);
    twice(kRepeatCacheWrite, [&] {
      latent_to_cache(k.kv + L.latent_col, ldkv, n, L.kv_a_norm, eps, m.inv_freq, half,
                      rope_table.factor, pos, seq, pool, layer, write_aside ? side : stream);
    });
    if (flash && flash_attention(L, pool, layer, n)) {
      stage(kStageAttnProj);
      linear(k.o, n, L.o, out);
      return;
    }
    const QueryRope rot{pos, m.inv_freq, rope_table.factor};
    const QueryRope* qrope = flash ? nullptr : &rot;  // after rope() above: already rotated
    if (opt.attention_tensor_cores && k.qcb && mla_attention_tc_supported(pool)) {
      // BF16 straight from the absorb, the tensor-core kernel's input.
      twice(kRepeatAbsorb, [&] {
        if (!(opt.absorb_tensor_cores && n > opt.gemv_max_rows &&
              mla_absorb_q_tc(k.q, n, heads, dn, dr, dv, L.kv_b, qrope, k.qcb, stream)))
          mla_absorb_q(k.q, n, heads, dn, dr, dv, L.kv_b, qrope, nullptr, k.qcb, stream);
      });
      if (write_aside) join();
      twice(kRepeatAttention, [&] {
        mla_attention_tc(k.qcb, n, heads, pool, layer, pos, seq, max_pos, float(c.softmax_scale()),
                         k.partial, k.partial_floats, k.olat, stream);
      });
      if (opt.absorb_tensor_cores && n > opt.gemv_max_rows &&
          mla_uv_tc(k.olat, n, heads, dn, dv, L.kv_b, k.o, stream)) {
        stage(kStageAttnProj);
        linear(k.o, n, L.o, out);
        return;
      }
    } else {
      twice(kRepeatAbsorb,
            [&] { mla_absorb_q(k.q, n, heads, dn, dr, dv, L.kv_b, qrope, k.qc, nullptr, stream); });
      if (write_aside) join();
      twice(kRepeatAttention, [&] {
        mla_attention(k.qc, n, heads, pool, layer, pos, seq, max_pos, float(c.softmax_scale()),
                      k.partial, k.partial_floats, k.olat, stream);
      });
    }
    GemvArgs g;  // o[t, h] = W_UV[h] · o_lat[t, h]: one group per head
    g.w = L.kv_b;
    g.n = dv;
    g.w_group_rows = dn + dv;
    g.w_row0 = dn;
    g.x = k.olat;
    g.ldx = heads * dc;
    g.x_goff = dc;
    g.y = k.o;
    g.ldy = heads * dv;
    g.y_goff = dv;
    g.m = n;
    g.groups = int(heads);
    g.tensor_cores = opt.gemv_tensor_cores;
    twice(kRepeatUv, [&] { gemv(g, stream); });
    stage(kStageAttnProj);
    twice(kRepeatOProj, [&] { linear(k.o, n, L.o, out); });
  }

  // fn(), and again when the benchmarks ask to time `piece` by difference (repeat_pieces).
  template <class F>
  void twice(unsigned piece, F&& fn) {
    fn();
    if (opt.repeat_pieces & piece) fn();
  }

  // One transformer block over the chunk's rows; `pending` is the previous block's FFN output,
  // added to the residual stream in the fused add + norm.
  Pending block(const DevLayer& L, const CachePool& pool, int64_t layer, int64_t n, int64_t max_pos,
                const Pending& pending) {
    Work& k = m.work;
    const int64_t H = c.hidden_size;
    stage(kStageOther);
    add_norm(pending, L.in_norm, n, k.h, H);
    attention(L, pool, layer, n, max_pos, k.delta);
    stage(kStageOther);
    add_norm({k.delta, {}}, L.post_norm, n, k.h, H);
    if (L.moe) {
      const Pending out = moe(L, n, k.delta);
      stage(kStageOther);
      return out;
    }
    stage(kStageDense);
    mlp(L.mlp, k.h, n, k.delta);
    stage(kStageOther);
    return {k.delta, {}};
  }

  // Chunk rows [row, row + count) of one sequence, its first at position pos0.
  struct Span {
    int64_t row, count, seq, pos0;  // seq: the sequence's row of the block tables
  };
  std::vector<Span> spans;  // of the chunk being enqueued eagerly (empty for graphs)

  // Whether a chunk takes the flash prefill below rather than the absorbed form.
  bool use_flash(const CachePool& pool, int64_t n) const {
    // Chunks of graph_max_rows or fewer take the absorbed form eagerly too, so a replayed graph
    // and an eager step of the same shape run the same kernels. Decode-like chunks (few tokens
    // per sequence: a batch of 256 single tokens) would decompress every sequence's whole
    // cache per token; they keep the absorbed form too.
    return opt.flash_prefill && blas && (pool.bf16 || pool.fp8) && m.work.kvb &&
           n > opt.gemv_max_rows && n > opt.graph_max_rows && !spans.empty() &&
           n >= opt.flash_min_tokens * int64_t(spans.size()) &&
           flash_prefill_supported(int(c.qk_nope_head_dim), int(c.qk_rope_head_dim),
                                   int(c.v_head_dim)) &&
           pool.dc % 8 == 0;
  }
  // Prefill attention in the non-absorbed form (chunks over gemv_max_rows, BF16 or FP8 cache): per
  // sequence, K/V of its keys from one GEMM of the cached latents with kv_b (BF16 out), then
  // flash_prefill over them with the chunk's queries, o straight into o_proj's input. Per
  // score dn + dr multiply-adds instead of dc + dr, nothing of S written out. For chunks
  // use_flash() accepts; false (o not written) if cuBLASLt had no algorithm.
  bool flash_attention(const DevLayer& L, const CachePool& pool, int64_t layer, int64_t n) {
    Work& k = m.work;
    const int dn = int(c.qk_nope_head_dim), dr = int(c.qk_rope_head_dim), dv = int(c.v_head_dim);
    const int64_t heads = c.num_attention_heads, dc = pool.dc, D = pool.row();
    const int64_t wkv = heads * (dn + dv), dq = heads * (dn + dr);
    to_bf16(k.q, k.qcb, n * dq, stream);
    const void* w = L.kv_b.w;
    if (L.kv_b.type != WType::BF16) {
      weight_to_bf16(L.kv_b, k.wb, stream);
      w = k.wb;
    }
    FlashArgs f;
    f.ldq = dq;
    f.ldkv = wkv;
    f.ldkpe = D;
    f.dn = dn;
    f.dr = dr;
    f.dv = dv;
    f.heads = heads;
    f.scale_log2 = float(c.softmax_scale()) * 1.4426950408889634f;
    f.ldo = heads * dv;
    f.ml = k.flash_ml;
    f.kv = k.kvb;
    for (const Span& sp : spans) {
      const int64_t keys = sp.pos0 + sp.count;
      f.q = k.qcb + sp.row * dq;
      f.n = sp.count;
      f.pos0 = sp.pos0;
      f.o = k.o + sp.row * heads * dv;
      for (int64_t kb = 0; kb < keys; kb += k.kv_keys) {
        const int64_t ke = std::min(keys, kb + k.kv_keys);
        // The chunk's latents out of their blocks into one matrix; the kernel indexes k_pe by
        // key number, so kpe points at where key 0's would be.
        gather_cache_rows(pool, layer, sp.seq, kb, ke, k.kvlat, stream);
        f.kpe = k.kvlat + dc - kb * D;
        if (!blas->gemm_bf16(true, ke - kb, wkv, dc, k.kvlat, D, w, dc, k.kvb, wkv, true, k.blas_ws,
                             k.blas_ws_bytes, stream))
          return false;
        f.k_begin = kb;
        f.k_end = ke;
        f.first = kb == 0;
        f.last = ke == keys;
        flash_prefill(f, stream);
      }
    }
    return true;
  }

  struct Piece {
    LatentCache* cache;
    const int32_t* tokens;
    int64_t begin, end;  // token range of the input
    float* hidden_dst;   // host rows for the piece's hidden states (or null)
    float* logits_dst;   // host row of the piece's first wanted logits (or null)
    bool all_logits;
    const float* hprev;  // MTP: host rows of the main model's hidden states
    // Instead of logits_dst: the last row's token, sampled on the GPU with these parameters.
    int32_t* token_dst = nullptr;
    SampleParams sample{};
  };
  static constexpr int kLogitsOut = 1, kTokensOut = 2;

  void drop_graphs() {
    for (auto& [key, exec] : graphs) (void)cudaGraphExecDestroy(exec);
    graphs.clear();
  }

  // The attention's key splits follow the chunk's last position. Rounded up to a multiple of
  // kSpanStep, one captured graph serves kSpanStep consecutive decode steps; the eager path
  // rounds the same way, so both launch the same kernels with the same arguments.
  static constexpr int64_t kSpanStep = 256;
  int64_t attention_span(int64_t max_pos) const {
    return std::min(ceil_div(max_pos + 1, kSpanStep) * kSpanStep, opt.max_context);
  }

  // Everything a chunk of n rows runs on the stream, from the upload of its integers (staged in
  // h_ints, and for the MTP module the previous hidden rows in h_rows) to the final norm and
  // the copy of the hidden rows to h_rows. Kernel arguments depend only on (n, span, mtp), so
  // this is what a graph captures.
  const DevLayer* enqueue_body(int64_t n, int64_t span, bool mtp, bool want_hidden) {
    Work& k = m.work;
    const int64_t T = k.T, H = c.hidden_size;
    const int64_t max_pos = span - 1;
    DSV3_CUDA_CHECK(cudaMemcpyAsync(k.ints, h_ints, size_t(4 * T) * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, stream));
    // Tables of up to n sequences (a chunk of n rows has at most n).
    DSV3_CUDA_CHECK(cudaMemcpyAsync(k.tables, h_tables,
                                    size_t(n * m.pool.max_blocks) * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, stream));
    const float eps = float(c.rms_norm_eps);
    Pending pending;
    const DevLayer* head_layer = nullptr;
    if (!mtp) {
      embedding(k.ints, n, m.embed, m.embed_type, H, k.x, stream);
      for (size_t l = 0; l < m.layers.size(); ++l)
        pending = block(m.layers[l], m.pool, int64_t(l), n, max_pos, pending);
      add_norm(pending, m.final_norm, n, k.xn, H);
    } else {
      const DevLayer& L = m.mtp[0];
      DSV3_CUDA_CHECK(cudaMemcpyAsync(k.hprev, h_rows, size_t(n * H) * sizeof(float),
                                      cudaMemcpyHostToDevice, stream));
      // MODEL_SPEC §6: x = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)]).
      embedding(k.ints, n, m.embed, m.embed_type, H, k.h, stream);
      add_rmsnorm(k.h, H, nullptr, L.enorm, eps, n, H, k.cat, 2 * H, stream);
      add_rmsnorm(k.hprev, H, nullptr, L.hnorm, eps, n, H, k.cat + H, 2 * H, stream);
      linear(k.cat, n, L.eh_proj, k.x);
      pending = block(L, m.mtp_pool, 0, n, max_pos, {});
      add_norm(pending, L.head_norm, n, k.xn, H);
      head_layer = &L;
    }
    if (want_hidden)
      DSV3_CUDA_CHECK(cudaMemcpyAsync(h_rows, k.xn, size_t(n * H) * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream));
    return head_layer;
  }

  // Logits of selected rows s0 .. s0 + cnt (indices in ints[3T ...]); `out` says where they go:
  // kLogitsOut into h_logits, kTokensOut through the sampler (parameters from h_sample + s0)
  // into h_tokens + s0 (rows not sampled on the GPU get a greedy token nobody reads).
  void enqueue_logits(int64_t s0, int64_t cnt, const DevWeight& head, int out) {
    Work& k = m.work;
    const int64_t H = c.hidden_size, V = c.vocab_size;
    gather_rows(k.xn, H, k.ints + 3 * k.T + s0, cnt, H, k.sel, stream);
    linear(k.sel, cnt, head, k.logits);
    if (out & kLogitsOut)
      DSV3_CUDA_CHECK(cudaMemcpyAsync(h_logits, k.logits, size_t(cnt * V) * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream));
    if (out & kTokensOut) {
      DSV3_CUDA_CHECK(cudaMemcpyAsync(k.sample, h_sample + s0, size_t(cnt) * sizeof(SampleParams),
                                      cudaMemcpyHostToDevice, stream));
      twice(kRepeatSample, [&] {
        sample_tokens(k.logits, cnt, V, V, k.sample, k.tokens,
                      opt.sample_split_scan ? k.sample_scan : nullptr, stream);
      });
      DSV3_CUDA_CHECK(cudaMemcpyAsync(h_tokens + s0, k.tokens, size_t(cnt) * sizeof(int32_t),
                                      cudaMemcpyDeviceToHost, stream));
    }
  }

  // A decode-sized chunk (graph_max_rows) whose logits fit one pass and with no host wait in it
  // (the routed experts' GEMM path reads their row counts) is replayed from a graph; cuBLASLt
  // calls are captured like kernels (fixed workspace, plans made at capture).
  bool graph_eligible(int64_t n, int64_t nsel) const {
    if (!opt.graphs || n > opt.graph_max_rows || nsel > m.work.logit_rows) return false;
    for (const auto* ls : {&m.layers, &m.mtp})
      for (const DevLayer& L : *ls)
        if (L.moe && experts_on_gemm(L, n)) return false;
    return true;
  }

  // Replays (capturing first if needed) the graph of this chunk shape. False if capture is not
  // possible here; the caller then runs the chunk eagerly (and graphs stay off).
  bool launch_graph(int64_t n, int64_t nsel, int64_t span, bool mtp, bool want_hidden, int out) {
    const auto key = std::make_tuple(mtp, n, nsel, span, want_hidden, out);
    auto it = graphs.find(key);
    if (it == graphs.end()) {
      if (graphs.size() >= 64) drop_graphs();  // long runs of many shapes: start over
      cudaGraph_t g = nullptr;
      DSV3_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
      try {
        const DevLayer* hl = enqueue_body(n, span, mtp, want_hidden);
        if (nsel > 0) enqueue_logits(0, nsel, hl ? hl->head : m.lm_head, out);
      } catch (const Error&) {
        // Leave the stream usable; the eager path reports the error again if it is real.
        (void)cudaStreamEndCapture(stream, &g);
        if (g) (void)cudaGraphDestroy(g);
        (void)cudaGetLastError();
        opt.graphs = false;
        return false;
      }
      DSV3_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t err = cudaGraphInstantiate(&exec, g, 0);
      (void)cudaGraphDestroy(g);
      DSV3_CUDA_CHECK(err);
      it = graphs.emplace(key, exec).first;
      ++captured;
    }
    DSV3_CUDA_CHECK(cudaGraphLaunch(it->second, stream));
    return true;
  }

  // Runs one chunk (≤ T tokens) through the main model (mtp = false) or the MTP module.
  void run_chunk(const std::vector<Piece>& pieces, bool mtp) {
    Work& k = m.work;
    timing = false;  // also after a chunk that threw
    events_used = 0;
    const int64_t T = k.T, H = c.hidden_size, V = c.vocab_size;
    int64_t n = 0, nsel = 0, max_pos = 0;
    std::vector<float*> sel_dst;    // per selected row: where its logits go (or null)
    std::vector<int32_t*> tok_dst;  // ... or where its GPU-sampled token goes
    const int64_t MB = m.pool.max_blocks;
    for (size_t pi = 0; pi < pieces.size(); ++pi) {
      const Piece& p = pieces[pi];
      // Piece pi is sequence pi of the launch: its block table, grown to cover the new rows.
      const std::vector<int32_t>& table = p.cache->blocks_for(p.cache->size() + (p.end - p.begin));
      std::copy(table.begin(), table.end(), h_tables + int64_t(pi) * MB);
      std::fill(h_tables + int64_t(pi) * MB + int64_t(table.size()),
                h_tables + int64_t(pi + 1) * MB, 0);
      for (int64_t j = p.begin; j < p.end; ++j, ++n) {
        const int64_t pos = p.cache->size() + (j - p.begin);
        h_ints[n] = p.tokens[j];
        h_ints[T + n] = int32_t(pos);
        h_ints[2 * T + n] = int32_t(pi);
        max_pos = std::max(max_pos, pos);
        const bool last = j == p.end - 1;
        if ((p.logits_dst && (p.all_logits || last)) || (p.token_dst && last)) {
          h_sample[nsel] = p.token_dst ? p.sample : SampleParams{};
          h_ints[3 * T + nsel++] = int32_t(n);
          sel_dst.push_back(p.logits_dst ? p.logits_dst + (p.all_logits ? (j - p.begin) * V : 0)
                                         : nullptr);
          tok_dst.push_back(p.token_dst);
        }
      }
    }
    // What the selected rows of a pass of logit_rows return.
    const auto outputs = [&](int64_t s0, int64_t cnt) {
      int out = 0;
      for (int64_t i = s0; i < s0 + cnt; ++i)
        out |= (sel_dst[size_t(i)] ? kLogitsOut : 0) | (tok_dst[size_t(i)] ? kTokensOut : 0);
      return out;
    };
    if (mtp) {
      int64_t r = 0;
      for (const Piece& p : pieces) {
        std::memcpy(h_rows + r * H, p.hprev, size_t((p.end - p.begin) * H) * sizeof(float));
        r += p.end - p.begin;
      }
    }
    bool want_hidden = false;
    for (const Piece& p : pieces) want_hidden |= p.hidden_dst != nullptr;
    const int64_t span = attention_span(max_pos);
    const DevWeight& head = mtp ? m.mtp[0].head : m.lm_head;
    const bool replayed =
        graph_eligible(n, nsel) && launch_graph(n, nsel, span, mtp, want_hidden, outputs(0, nsel));
    timing = opt.time_stages && !replayed;
    stage(kStageOther);
    if (!replayed) {
      spans.clear();
      int64_t row = 0;
      for (size_t pi = 0; pi < pieces.size(); ++pi) {
        const Piece& p = pieces[pi];
        spans.push_back({row, p.end - p.begin, int64_t(pi), p.cache->size()});
        row += p.end - p.begin;
      }
      enqueue_body(n, span, mtp, want_hidden);
      spans.clear();
    }
    for (int64_t s0 = 0; s0 < nsel; s0 += k.logit_rows) {
      const int64_t cnt = std::min(k.logit_rows, nsel - s0);
      if (!replayed) enqueue_logits(s0, cnt, head, outputs(s0, cnt));
      DSV3_CUDA_CHECK(cudaStreamSynchronize(stream));
      for (int64_t i = 0; i < cnt; ++i) {
        if (float* d = sel_dst[size_t(s0 + i)])
          std::memcpy(d, h_logits + i * V, size_t(V) * sizeof(float));
        if (int32_t* d = tok_dst[size_t(s0 + i)]) *d = h_tokens[s0 + i];
      }
    }
    stage(-1);
    DSV3_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (timing) collect_stages();
    timing = false;
    if (want_hidden) {
      int64_t r = 0;
      for (const Piece& p : pieces) {
        if (p.hidden_dst)
          std::memcpy(p.hidden_dst, h_rows + r * H, size_t((p.end - p.begin) * H) * 4);
        r += p.end - p.begin;
      }
    }
    // With their ids the main model's full blocks become shareable prefixes (prefix_caching).
    for (const Piece& p : pieces) {
      if (mtp)
        p.cache->commit(p.end - p.begin);
      else
        p.cache->commit(std::span<const int32_t>(p.tokens + p.begin, size_t(p.end - p.begin)));
    }
  }

  // Splits the inputs' tokens into chunks of at most T and runs them in order (a sequence's
  // later tokens see its earlier ones in the cache, so chunking changes nothing).
  void run(std::vector<Piece> all, bool mtp) {
    std::vector<Piece> chunk;
    int64_t used = 0;
    for (const Piece& p : all) {
      for (int64_t b = p.begin; b < p.end;) {
        const int64_t take = std::min(p.end - b, m.work.T - used);
        Piece q = p;
        q.begin = b;
        q.end = b + take;
        if (q.hidden_dst) q.hidden_dst += (b - p.begin) * c.hidden_size;
        if (q.hprev) q.hprev += (b - p.begin) * c.hidden_size;
        if (q.logits_dst && q.all_logits) q.logits_dst += (b - p.begin) * c.vocab_size;
        if (q.logits_dst && !q.all_logits && q.end != p.end) q.logits_dst = nullptr;
        if (q.end != p.end) q.token_dst = nullptr;
        chunk.push_back(q);
        b += take;
        used += take;
        if (used == m.work.T) {
          run_chunk(chunk, mtp);
          chunk.clear();
          used = 0;
        }
      }
    }
    if (!chunk.empty()) run_chunk(chunk, mtp);
  }

  void check_cache(const LatentCache* cache, bool mtp, size_t tokens) const {
    DSV3_CHECK(cache && cache->on_device(),
               "CUDA engine: a step needs caches made by this engine's new_{}cache() (or over "
               "its cache_pool())",
               mtp ? "mtp_" : "");
    DSV3_CHECK(cache->pool() == (mtp ? mtp_blocks : blocks).get(),
               "CUDA engine: a cache from another pool ({})",
               cache->pool() == (mtp ? blocks : mtp_blocks).get()
                   ? (mtp ? "main cache passed to mtp_step" : "MTP cache passed to step")
                   : "another engine's");
    DSV3_CHECK(tokens > 0, "engine step: an input has no tokens");
    cache->check_room(int64_t(tokens));
  }

  void check_ids(const std::vector<int32_t>& ids) const {
    for (int32_t id : ids)
      DSV3_CHECK(id >= 0 && id < c.vocab_size, "token id {} is outside the vocabulary [0, {})", id,
                 c.vocab_size);
  }

  LatentCache make_cache(int64_t capacity, bool mtp) {
    const int64_t cap = capacity > 0 ? capacity : opt.max_context;
    DSV3_CHECK(cap <= opt.max_context,
               "CUDA engine: a cache of {} tokens asked for, the engine holds {} per sequence "
               "(max_context)",
               cap, opt.max_context);
    const std::shared_ptr<BlockPool>& pool = mtp ? mtp_blocks : blocks;
    LatentCache cache(pool, cap);
    // All its blocks promised now, so a step never finds the pool empty halfway.
    DSV3_CHECK(cache.reserve_rest(),
               "CUDA engine: the latent cache has {} free blocks of {} tokens and a cache of {} "
               "tokens needs {}: end other sequences first, or raise max_sequences / "
               "cache_blocks",
               pool->available_blocks(), pool->block_tokens(), cap,
               ceil_div(cap, pool->block_tokens()));
    return cache;
  }
};

CudaEngine::CudaEngine(const Model& model, CudaEngineOptions opt)
    : model_(model), impl_(std::make_unique<Impl>(model, opt)) {}

CudaEngine::~CudaEngine() = default;

int64_t CudaEngine::context() const {
  return impl_->opt.max_context;
}

const CudaEngineOptions& CudaEngine::options() const {
  return impl_->opt;
}

const MemoryPlan& CudaEngine::memory() const {
  return impl_->m.plan;
}

void CudaEngine::synchronize() const {
  DSV3_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

void CudaEngine::set_graphs(bool on) const {
  impl_->opt.graphs = on;
}

int64_t CudaEngine::graphs_captured() const {
  return impl_->captured;
}

std::vector<CudaEngine::StageTime> CudaEngine::stage_times() const {
  std::vector<StageTime> out;
  for (int s = 0; s < kStages; ++s)
    out.push_back({kStageNames[s], impl_->stage_ms[s], impl_->stage_host_ms[s]});
  return out;
}

void CudaEngine::reset_stage_times() const {
  for (double& t : impl_->stage_ms) t = 0;
  for (double& t : impl_->stage_host_ms) t = 0;
}

LatentCache CudaEngine::new_cache(int64_t capacity) const {
  return impl_->make_cache(capacity, false);
}

std::shared_ptr<BlockPool> CudaEngine::cache_pool() const {
  return impl_->blocks;
}

LatentCache CudaEngine::new_mtp_cache(int64_t capacity) const {
  DSV3_CHECK(!impl_->m.mtp.empty(), "this model has no MTP layer (num_nextn_predict_layers 0)");
  return impl_->make_cache(capacity, true);
}

Tensor CudaEngine::step(const std::vector<Input>& inputs, Tensor* hidden) const {
  Impl& im = *impl_;
  DSV3_CUDA_CHECK(cudaSetDevice(im.opt.device));
  const ModelConfig& c = config();
  int64_t out_rows = 0, n = 0;
  for (const Input& in : inputs) {
    im.check_cache(in.cache, false, in.tokens.size());
    im.check_ids(in.tokens);
    out_rows += in.all_logits ? int64_t(in.tokens.size()) : 1;
    n += int64_t(in.tokens.size());
  }
  Tensor logits = Tensor::zeros(DType::F32, {out_rows, c.vocab_size});
  if (hidden) *hidden = Tensor::zeros(DType::F32, {n, c.hidden_size});
  std::vector<Impl::Piece> pieces;
  int64_t orow = 0, hrow = 0;
  for (const Input& in : inputs) {
    const int64_t k = int64_t(in.tokens.size());
    pieces.push_back({in.cache, in.tokens.data(), 0, k,
                      hidden ? hidden->ptr<float>() + hrow * c.hidden_size : nullptr,
                      logits.ptr<float>() + orow * c.vocab_size, in.all_logits, nullptr});
    orow += in.all_logits ? k : 1;
    hrow += k;
  }
  im.run(pieces, false);
  return logits;
}

std::vector<infer::SampleResult> CudaEngine::step_sample(
    const std::vector<Input>& inputs, const std::vector<infer::Sampler*>& samplers,
    Tensor* hidden) const {
  Impl& im = *impl_;
  DSV3_CUDA_CHECK(cudaSetDevice(im.opt.device));
  check_sample_inputs(inputs, samplers);
  const ModelConfig& c = config();
  const int64_t V = c.vocab_size;
  int64_t host_rows = 0, n = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    im.check_cache(inputs[k].cache, false, inputs[k].tokens.size());
    im.check_ids(inputs[k].tokens);
    if (samplers[k] && !samplers[k]->device_drawable()) ++host_rows;
    n += int64_t(inputs[k].tokens.size());
  }
  // Only the rows sampled here come back as logits.
  Tensor logits = Tensor::zeros(DType::F32, {host_rows, V});
  if (hidden) *hidden = Tensor::zeros(DType::F32, {n, c.hidden_size});
  std::vector<int32_t> tokens(inputs.size(), -1);
  std::vector<Impl::Piece> pieces;
  int64_t lrow = 0, hrow = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Input& in = inputs[k];
    const infer::Sampler* sm = samplers[k];
    Impl::Piece p{in.cache,
                  in.tokens.data(),
                  0,
                  int64_t(in.tokens.size()),
                  hidden ? hidden->ptr<float>() + hrow * c.hidden_size : nullptr,
                  nullptr,
                  false,
                  nullptr};
    if (sm && sm->device_drawable()) {
      const infer::SamplingParams& sp = sm->params();
      p.token_dst = &tokens[k];
      // The uniform is taken now, as sample() would take it (greedy takes none).
      p.sample = {sp.temperature, sp.top_k, sp.top_p, sp.min_p,
                  sp.greedy() ? 0.0 : samplers[k]->uniform()};
    } else if (sm) {
      p.logits_dst = logits.ptr<float>() + lrow++ * V;
    }
    pieces.push_back(p);
    hrow += int64_t(in.tokens.size());
  }
  im.run(pieces, false);
  std::vector<infer::SampleResult> out(inputs.size());
  lrow = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    infer::Sampler* sm = samplers[k];
    if (!sm) continue;
    if (!sm->device_drawable()) {
      out[k] = sample_on_host(*sm, {logits.ptr<float>() + lrow++ * V, size_t(V)});
      continue;
    }
    const int32_t t = tokens[k];
    // The CPU sampler's errors for the same logits.
    DSV3_CHECK(t != kSampleNonFinite,
               "sampler: a logit is NaN or inf; the model produced non-finite output");
    DSV3_CHECK(t != kSampleAllMasked, "sampler: all {} logits are -inf; no token can be sampled",
               V);
    DSV3_CHECK(t != kSampleOverflow,
               "sampler: the largest logit overflows float at temperature {}; the model produced "
               "extreme logits",
               sm->params().temperature);
    DSV3_CHECK(t >= 0 && t < V, "CUDA engine: the GPU sampler returned token {} (vocabulary {})", t,
               V);
    sm->accept(t);
    out[k].token = t;
  }
  return out;
}

Tensor CudaEngine::mtp_step(const std::vector<MtpInput>& inputs) const {
  Impl& im = *impl_;
  DSV3_CUDA_CHECK(cudaSetDevice(im.opt.device));
  const ModelConfig& c = config();
  DSV3_CHECK(!im.m.mtp.empty(), "this model has no MTP layer");
  for (const MtpInput& in : inputs) {
    im.check_cache(in.cache, true, in.tokens.size());
    im.check_ids(in.tokens);
    DSV3_CHECK(in.hidden.ndim() == 2 && in.hidden.dim(0) == int64_t(in.tokens.size()) &&
                   in.hidden.dim(1) == c.hidden_size && in.hidden.dtype() == DType::F32 &&
                   in.hidden.device().is_cpu(),
               "MTP step: hidden {} does not match {} tokens", shape_str(in.hidden.shape()),
               in.tokens.size());
  }
  Tensor logits = Tensor::zeros(DType::F32, {int64_t(inputs.size()), c.vocab_size});
  std::vector<Impl::Piece> pieces;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const MtpInput& in = inputs[i];
    pieces.push_back({in.cache, in.tokens.data(), 0, int64_t(in.tokens.size()), nullptr,
                      logits.ptr<float>() + int64_t(i) * c.vocab_size, false,
                      in.hidden.ptr<float>()});
  }
  im.run(pieces, true);
  return logits;
}

}  // namespace dsv3::cuda
