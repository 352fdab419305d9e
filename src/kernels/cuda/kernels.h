// The CUDA kernels of the inference path, as host-side launchers on a stream. Activations are
// F32 row-major; weights stay in their stored dtype (F32, BF16, FP8 E4M3 with block scales)
// and are decoded in registers. Each launcher checks its launch (DSV3_CUDA_CHECK_LAUNCH).
// The CPU kernels (kernels/cpu/) are the reference each of these is tested against, or
// float64 where the CPU has no counterpart (the tensor-core attention and FP8 GEMM kernels;
// tests/cuda/test_kernels_gpu.cpp, test_fp8_gemm_gpu.cpp). Kept free of fmt: .cu files include it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#ifdef __CUDACC__
#define DSV3_HOST_DEVICE __host__ __device__
#else
#define DSV3_HOST_DEVICE
#endif

namespace dsv3::cuda {

enum class WType : int { F32 = 0, BF16 = 1, F16 = 2, E4M3 = 3 };

// A weight as the kernels read it: [rows, k] row-major, optionally FP8 with F32 block scales
// [ceil(rows / bn), ceil(k / bk)] (W = q · scale).
struct DevWeight {
  const void* w = nullptr;
  const float* scale = nullptr;  // null unless E4M3
  // The same scales with each row padded to a multiple of 4 blocks, the layout cuBLASLt reads
  // (Blas::matmul_fp8_block); the same pointer when ceil(k / bk) already is one.
  const float* scale_lt = nullptr;
  WType type = WType::BF16;
  int64_t rows = 0, k = 0;
  int bn = 128, bk = 128;
};

// Skinny GEMM y = x·Wᵀ over groups of rows (the decode path: weights read once, decoded in
// registers, F32 accumulation). Group g uses weight rows g·w_group_rows + w_row0 + [0, n);
// its input rows are x + row·ldx + g·x_goff (row = x_rows[p] if given, else p) for p in
// [offsets[g], offsets[g+1]) (offsets null: every group takes rows [0, m)); its outputs go to
// y + p·ldy + g·y_goff. FP8 scale rows: g·scale_group_rows + (w_row0 + n) / bn when
// scale_group_rows > 0 (stacked experts), else the global weight row / bn.
// With w2 (same layout): y = silu(x·Wᵀ) ⊙ (x·W2ᵀ), the fused SwiGLU gate/up.
struct GemvArgs {
  DevWeight w;
  const void* w2 = nullptr;
  const float* scale2 = nullptr;
  int64_t n = 0;  // outputs per group
  int64_t w_group_rows = 0, w_row0 = 0, scale_group_rows = 0;
  const float* x = nullptr;
  int64_t ldx = 0, x_goff = 0;
  const int32_t* x_rows = nullptr;
  float* y = nullptr;
  int64_t ldy = 0, y_goff = 0;
  int64_t m = 0;
  int groups = 1;
  const int32_t* offsets = nullptr;
  // Optional [1 + groups]: the number of groups with rows, then their ids (moe_permute writes
  // it). The grid then spans only `groups` slots (≤ rows), not every expert.
  const int32_t* active = nullptr;
  // 2 to 16 rows without row lists on the BF16 tensor cores where the weight suits them (BF16 or
  // FP8 in 128-wide blocks; gemv.cu gemv_mma_kernel): inputs split in two BF16 parts, ~1e-5
  // relative, so a row batched no longer gets the bits it gets alone (the F32 kernels' promise).
  bool tensor_cores = false;
};
void gemv(const GemvArgs& a, cudaStream_t s);
// Benchmarks only: later gemv launches split each output over ks warps (1: no split-K; 2, 4 or
// 8), to measure what the split buys; 0 (the default) restores the engine's choice.
// Process-wide.
void gemv_split_k(int ks);
// Benchmarks only: false sends single-row passes to the general kernel (one output per warp)
// instead of the one that computes several outputs per warp.
void gemv_allow_rows_per_warp(bool on);
// Benchmarks only: warps a block of the one-row kernel (at least its split; default 2). Returns
// the setting it replaces.
int gemv_rows_block_warps(int warps);
// Benchmarks only: false sends 2 to 16 input rows that the tensor-core kernel does not take to
// the general kernel instead of the tile kernel (whose rows get the bits they get alone).
void gemv_allow_tile(bool on);
// Benchmarks only: input rows the tile kernel takes a pass (8, the default: weights read once
// for 5 to 8 rows, one step a tile; or 4, two steps a tile). The same bits. Returns the
// setting it replaces.
int gemv_tile_pass_rows(int rows);
// Benchmarks only: the one-row kernel's loads for FP8 weights, chunks (1: the default, 2 or 4)
// per lane and row in one batch; the same bits. Returns the setting it replaces.
int gemv_rows_batch(int chunks);
// Benchmarks only (gemv.cu): bit 0, a gemv lets the next kernel launch at once rather than
// once its weights are read; bit 1, weights are read past L1; bit 2, the one-row kernel loads
// its first weights before waiting for the kernel before it. Default 6. Returns the flags
// before.
int gemv_flags(int flags);

// Whether the decode path's kernels launch with programmatic dependent launch (launch.cuh:
// each may start while the one before it finishes). On by default; off for benchmarks' A/B and
// tests. Process-wide.
void set_programmatic_launch(bool on);

// out[t] = table[ids[t]] as F32. table [V, H] of `type`.
void embedding(const int32_t* ids, int64_t n, const void* table, WType type, int64_t h, float* out,
               cudaStream_t s);

// Per row: x += delta (when delta is non-null), then out = w ⊙ x / sqrt(mean(x²) + eps) with the
// sum of squares in double (as the CPU). x [n, d] with row stride ldx; out row stride ldo (out
// may alias x). w F32 [d].
void add_rmsnorm(float* x, int64_t ldx, const float* delta, const float* w, float eps, int64_t n,
                 int64_t d, float* out, int64_t ldo, cudaStream_t s);

// Interleaved RoPE (MODEL_SPEC §3) on x [n, vecs, width], slice [offset, offset + 2·half) of each
// vector: angle = f32(pos)·inv_freq[i] in f32, cos/sin in double rounded to f32, times factor.
void rope(float* x, int64_t n, int64_t vecs, int64_t width, int64_t offset, const float* inv_freq,
          int64_t half, float factor, const int32_t* positions, cudaStream_t s);

// The latent cache, paged (vLLM's PagedAttention, FlashMLA's paged KV): blocks of block_tokens
// rows, laid out [layers][blocks][block_tokens][dc + dr] in F32 or BF16 (half the memory and the
// attention's bytes; FlashMLA's cache format), so consecutive block ids are consecutive rows of
// a layer. Sequence s of a launch finds position p in block tables[s · max_blocks + p /
// block_tokens]. block_tokens is a multiple of 32 (the attention kernels' key tiles never cross
// a block). Row t of kv ([n, dc + dr] with row stride ld, the kv_a projection) goes to sequence
// seqs[t], position positions[t]: its first dc values RMS-normalised by w_norm, its last dr rotated
// by RoPE, computed in F32 and then stored.
//
// fp8 (FlashMLA's FP8 cache): a row is c_kv as E4M3 codes in 1×128 tiles (dc a multiple of
// 128; per tile scale = max(amax / 448, FLT_MIN), 1 for an all-zero tile, as the FP8 GEMMs'
// activations), then the dc / 128 F32 scales (padded to 16 bytes), then k_pe in BF16, the row
// padded to 16 bytes: 656 bytes at DeepSeek-V3's 512 / 64 against 1,152 in BF16. Rows are then
// addressed in bytes (row_ptr).
constexpr int64_t kFp8CacheMaxDc = 1024;  // the widest c_kv an FP8 cache takes
struct CachePool {
  void* base = nullptr;
  int64_t layers = 0, blocks = 0, block_tokens = 0, dc = 0, dr = 0;
  bool bf16 = false;
  const int32_t* tables = nullptr;  // device, [sequences of the launch][max_blocks]
  int64_t max_blocks = 0;
  bool fp8 = false;
  DSV3_HOST_DEVICE int64_t row() const { return dc + dr; }
  DSV3_HOST_DEVICE int64_t elem_bytes() const { return bf16 ? 2 : 4; }  // F32 / BF16 rows
  DSV3_HOST_DEVICE int64_t fp8_kpe_offset() const { return dc + (dc / 32 + 15) / 16 * 16; }
  DSV3_HOST_DEVICE int64_t row_bytes() const {
    return fp8 ? (fp8_kpe_offset() + 2 * dr + 15) / 16 * 16 : row() * elem_bytes();
  }
  // The row number (over the whole pool) of (sequence, layer, position).
  DSV3_HOST_DEVICE int64_t row_index(int64_t seq, int64_t layer, int64_t pos) const {
    return (layer * blocks + tables[seq * max_blocks + pos / block_tokens]) * block_tokens +
           pos % block_tokens;
  }
  // Element offset of (sequence, layer, position)'s row (F32 / BF16 rows).
  DSV3_HOST_DEVICE int64_t at(int64_t seq, int64_t layer, int64_t pos) const {
    return row_index(seq, layer, pos) * row();
  }
  DSV3_HOST_DEVICE char* row_ptr(int64_t seq, int64_t layer, int64_t pos) const {
    return static_cast<char*>(base) + row_index(seq, layer, pos) * row_bytes();
  }
};
void latent_to_cache(const float* kv, int64_t ld, int64_t n, const float* w_norm, float eps,
                     const float* inv_freq, int64_t half, float factor, const int32_t* positions,
                     const int32_t* seqs, const CachePool& pool, int64_t layer, cudaStream_t s);
// Rows [k_begin, k_end) of sequence seq's cache in one layer, copied contiguous into out
// ([k_end - k_begin][dc + dr], the cache's element type; BF16 from an FP8 cache, dequantised):
// the flash prefill's kv_b GEMM reads them as one matrix.
void gather_cache_rows(const CachePool& pool, int64_t layer, int64_t seq, int64_t k_begin,
                       int64_t k_end, void* out, cudaStream_t s);

// out = silu(gate) ⊙ up over n elements (out may alias gate).
void silu_mul(const float* gate, const float* up, float* out, int64_t n, cudaStream_t s);
// The same over rows: out [rows, width] (contiguous) from gate and up rows of stride ld (the
// routed experts' fused gate | up GEMM output: up = gate + width, ld = 2 · width).
void silu_mul_rows(const float* gate, const float* up, int64_t ld, int64_t rows, int64_t width,
                   float* out, cudaStream_t s);
// ... into BF16 (round to nearest even): the input of the BF16 grouped experts' down GEMM.
void silu_mul_rows(const float* gate, const float* up, int64_t ld, int64_t rows, int64_t width,
                   uint16_t* out, cudaStream_t s);
// F32 -> BF16 (round to nearest even), n elements.
void to_bf16(const float* x, uint16_t* out, int64_t n, cudaStream_t s);
// x F32 -> E4M3 q [padded_rows, k] in 1×128 tiles (k a multiple of 128), as the training recipe
// quantises (train/fp8.h): per tile scale = max(amax / 448, FLT_MIN) (1 for an all-zero tile),
// q = x / scale rounded to nearest even and saturated. The rows come in groups, each padded so
// cuBLASLt takes it (Blas::matmul_fp8_block wants a multiple of 16 rows): without groups, one
// group of padded_rows whose first `rows` are x's rows 0 .. rows; with groups (the MoE experts),
// group g holds input rows p in [offsets[g], offsets[g+1]) at output rows padded_offsets[g] + (p
// - offsets[g]), input row x_rows[p] (or p); padded_rows may then be a bound on
// padded_offsets[groups] (rows past it are left alone). Scales of a group starting at output row s0
// with len rows: scales + (k / 128) · s0, laid out [k / 128][len] (rows fastest, what cuBLASLt
// reads). Padding rows get zero codes and scale 1.
struct QuantizeArgs {
  const float* x = nullptr;
  int64_t ldx = 0;
  const int32_t* x_rows = nullptr;
  int64_t rows = 0, padded_rows = 0, k = 0;
  int groups = 0;
  const int32_t* offsets = nullptr;         // device, [groups + 1]
  const int32_t* padded_offsets = nullptr;  // device, [groups + 1]; the last is padded_rows
  uint8_t* q = nullptr;
  float* scales = nullptr;
};
void quantize_e4m3_tiles(const QuantizeArgs& a, cudaStream_t s);
// A weight of any stored dtype -> BF16 [rows, k] (FP8 dequantised with its block scales).
void weight_to_bf16(const DevWeight& w, uint16_t* out, cudaStream_t s);
// dst[i] = src[rows[i]] for rows of width d.
void gather_rows(const float* src, int64_t ld_src, const int32_t* rows, int64_t n, int64_t d,
                 float* dst, cudaStream_t s);
// ... into BF16 (round to nearest even).
void gather_rows(const float* src, int64_t ld_src, const int32_t* rows, int64_t n, int64_t d,
                 uint16_t* dst, cudaStream_t s);

// The routed experts' GEMMs in one launch (kernels/cuda/grouped.cu): for each group (expert) e,
// y[offsets[e] + i] = x_e[i] · W_eᵀ for its valid rows i < offsets[e+1] - offsets[e]; y: F32
// rows of ldy. type E4M3: x E4M3 rows grouped at padded_offsets with tile scales as
// quantize_e4m3_tiles writes them; W E4M3 [groups · n, k] with 128×128 block scales
// w_scale [groups · n / 128][w_scale_ld]. type BF16: x BF16 rows at offsets (padded_offsets
// and the scales unused), W BF16 [groups · n, k]. A block takes tile_rows (grouped_tile_ok) rows
// of one group; tile_start [groups + 1]: the prefix sums of grouped_tiles(rows of each group,
// tile_rows) as grouped_layout writes them; total_tiles the last, or any bound on it (blocks
// past tile_start[groups] exit), so the host need not read the counts. Shapes:
// grouped_supported.
struct GroupedArgs {
  WType type = WType::E4M3;
  int tile_rows = 64;
  const void* x = nullptr;
  const float* x_scale = nullptr;
  const int32_t *offsets = nullptr, *padded_offsets = nullptr, *tile_start = nullptr;
  int groups = 0;
  int64_t total_tiles = 0;
  const void* w = nullptr;
  const float* w_scale = nullptr;
  int64_t w_scale_ld = 0, n = 0, k = 0;
  float* y = nullptr;
  int64_t ldy = 0;
};
// Tiles of a group of `rows` rows (padded or not: 16 divides every tile size).
DSV3_HOST_DEVICE int64_t grouped_tiles(int64_t rows, int tile_rows);
// The tile rows for groups averaging `rows` rows: 16 below 16, 32 below 48, else 64. Few enough
// that a block's products are mostly of real rows, as many as keep its tensor cores busy; a
// heavier group takes more tiles, whose blocks run side by side and read its weights through
// L2 (CudaEngineOptions::grouped_tile_rows has the measurements).
int grouped_tile_rows(int64_t rows);
// From the groups' row offsets [groups + 1] on the device: padded_offsets (each group padded
// to 16 rows, as quantize_e4m3_tiles and the E4M3 kernel want) and tile_start for tiles of
// tile_rows rows.
void grouped_layout(const int32_t* offsets, int groups, int tile_rows, int32_t* padded_offsets,
                    int32_t* tile_start, cudaStream_t s);
// E4M3 or BF16 weights, n a multiple of 128 and k of 128 bytes.
bool grouped_supported(WType type, int64_t n, int64_t k);
// Whether grouped_gemm has a kernel for tiles of tile_rows rows of this weight type: 16, 32 and
// 64 for both (mma.sync); 128 for both on Hopper (wgmma).
bool grouped_tile_ok(WType type, int tile_rows);
void grouped_gemm(const GroupedArgs& a, cudaStream_t s);

// MoE routing (MODEL_SPEC §5), one warp per token, the CPU's rule and tie-breaks: logits
// [n, e] -> expert [n, k] (descending by biased score) and weight [n, k].
struct RouteArgs {
  int64_t e = 0, k = 0, n_group = 1, topk_group = 1;
  bool sigmoid = true, top2_group_score = true, normalise = true;
  float scale = 1.0f;
};
void route(const float* logits, const float* bias, int64_t n, const RouteArgs& r, int32_t* expert,
           float* weight, cudaStream_t s);
// Groups the n·k (token, expert) pairs by expert: offsets [e + 1], rows[p] = the token of the
// pair at position p, pos[a] = the position of pair a; active [1 + e]: how many experts have
// pairs, then their ids in ascending order.
void moe_permute(const int32_t* expert, int64_t pairs, int64_t k, int64_t e, int32_t* offsets,
                 int32_t* rows, int32_t* pos, int32_t* active, cudaStream_t s);
// route() then moe_permute(); up to 4 tokens (decode steps) in one launch (V2-Lite dims,
// 26 MoE layers, batch-1 decode 456.4 / 455.5 tok/s against 444.1 / 441.3 in two; H200).
void route_and_permute(const float* logits, const float* bias, int64_t n, const RouteArgs& r,
                       int32_t* expert, float* weight, int32_t* offsets, int32_t* rows,
                       int32_t* pos, int32_t* active, cudaStream_t s);
// Benchmarks only: false makes route_and_permute launch route() and moe_permute() apart at any
// size (the same results). Returns the setting it replaces.
bool fused_route_permute(bool on);
// The routed experts' outputs of n tokens, to be combined: y[t] = (shared ? shared[t] : 0) +
// Σ_j weight[t, j] · expert_out[pos[t·k + j]] over width d, summed in j's order.
struct CombineArgs {
  const float* shared = nullptr;      // [n, d], or null
  const float* expert_out = nullptr;  // rows in moe_permute's order
  const float* weight = nullptr;      // [n, k]
  const int32_t* pos = nullptr;       // [n · k]: moe_permute's positions
  int64_t k = 0;
};
void moe_combine(const CombineArgs& c, int64_t n, int64_t d, float* y, cudaStream_t s);
// add_rmsnorm with delta = moe_combine's y, summed on the fly (the same bits, one launch fewer);
// false, with nothing launched, where rows do not suit its kernel (d % 4, d > 8192, alignment).
bool add_rmsnorm_combine(float* x, int64_t ldx, const CombineArgs& delta, const float* w, float eps,
                         int64_t n, int64_t d, float* out, int64_t ldo, cudaStream_t s);

// Absorbed MLA (MODEL_SPEC §3). q [n, H, dn + dr] and kv_b [H·(dn + dv), dc]: qc [n, H, dc + dr] =
// [q_nope·W_UK ; q_pe], the query against cache rows [c_kv ; k_pe], in F32 (qc) or BF16 (qcb,
// for mla_attention_tc; the other null). q_pe is rotated here as rope() would (rope non-null:
// positions[t], inv_freq [dr / 2], factor), else copied (already rotated).
struct QueryRope {
  const int32_t* positions = nullptr;
  const float* inv_freq = nullptr;
  float factor = 1.0f;
};
void mla_absorb_q(const float* q, int64_t n, int64_t heads, int64_t dn, int64_t dr, int64_t dv,
                  const DevWeight& kv_b, const QueryRope* rope, float* qc, uint16_t* qcb,
                  cudaStream_t s);
// The same into qcb on the BF16 tensor cores (q_nope and W_UK rounded to BF16, F32 sums: for
// chunks whose rows need not get their batch-1 bits). False, nothing launched, unless dn is 128,
// kv_lora a multiple of 128, kv_b FP8 (block width a multiple of 16) or BF16, rows 16-byte
// aligned.
bool mla_absorb_q_tc(const float* q, int64_t n, int64_t heads, int64_t dn, int64_t dr, int64_t dv,
                     const DevWeight& kv_b, const QueryRope* rope, uint16_t* qcb, cudaStream_t s);
// o [n, H, dv] = W_UV[h] · o_lat [n, H, dc] per head on the BF16 tensor cores (both rounded to
// BF16, F32 sums and out), W_UV[h] = kv_b rows h·(dn + dv) + dn ..: the per-head gemv's result
// for chunks whose rows need not get their batch-1 bits. False, nothing launched, unless dv is
// 128, kv_lora a multiple of 128, kv_b FP8 (blocks multiples of 16) or BF16, rows 16-byte aligned.
bool mla_uv_tc(const float* o_lat, int64_t n, int64_t heads, int64_t dn, int64_t dv,
               const DevWeight& kv_b, float* o, cudaStream_t s);
// Attention of each query row over its sequence's (seqs[t]) cache rows 0 .. positions[t] (causal):
// o_lat [n, H, dc] = softmax(scale · qc·[c_kv ; k_pe]ᵀ) · c_kv. The keys are split into chunks
// (flash-decoding), as many as make one wave of blocks on the GPU and as far as `partial`
// (scratch of partial_floats floats) allows, then merged; one split writes o_lat itself.
void mla_attention(const float* qc, int64_t n, int64_t heads, const CachePool& pool, int64_t layer,
                   const int32_t* positions, const int32_t* seqs, int64_t max_position, float scale,
                   float* partial, int64_t partial_floats, float* o_lat, cudaStream_t s);

// mla_attention on the BF16 tensor cores for a BF16 or FP8 cache of kv_lora 512 / rope 64
// (DeepSeek-V3, V2-Lite, Moonlight) or 256 / 32: qc in BF16 [n, H, dc + dr] (rows 16-byte aligned),
// P in BF16 before P·c_kv; the same o_lat. mla_attention_tc_supported says when it applies.
bool mla_attention_tc_supported(const CachePool& pool);  // BF16 or FP8 caches
// For benchmarks: the blocks both attention kernels' splits aim to fill (0, the default: the
// kernel's blocks resident on the whole GPU, one wave).
void set_mla_split_blocks(int64_t blocks);
// For benchmarks and tests: whether models of up to 16 heads take a 16-head tensor-core kernel
// (true, the default; on mma.sync over a BF16 cache only) or a 64-head one; and whether, at
// kv_lora 512 / rope 64 on Hopper (BF16 or FP8 cache), those kernels are the wgmma ones (true,
// the default) or the mma.sync ones.
void set_mla_tc_narrow(bool on);
void set_mla_wgmma(bool on);
void mla_attention_tc(const uint16_t* qc, int64_t n, int64_t heads, const CachePool& pool,
                      int64_t layer, const int32_t* positions, const int32_t* seqs,
                      int64_t max_position, float scale, float* partial, int64_t partial_floats,
                      float* o_lat, cudaStream_t s);

// Token sampling (kernels/cuda/sample.cu): infer::Sampler's steps 3-7 for rows without
// penalties, one block per row of logits [rows, v] (row stride ld). params[r]: temperature 0 is
// greedy (the lowest id holding the max); otherwise logits / temperature, top-k (0: off), top-p
// (1: off), min-p (0: off) keep tokens by the Sampler's rules and the token is where u · (kept
// mass) falls in the ascending-id CDF of exp(logit - max), u in [0, 1) from the Sampler's
// generator. tokens[r]: the token, or one of the kSample* codes below.
struct SampleParams {
  float temperature = 0;
  int32_t top_k = 0;
  float top_p = 1, min_p = 0;
  double u = 0;
};
constexpr int32_t kSampleNonFinite = -1;  // a logit is NaN or +inf
constexpr int32_t kSampleAllMasked = -2;  // every logit is -inf
constexpr int32_t kSampleOverflow = -3;   // the largest logit overflows at this temperature
// scan: null, or room for rows · kSampleScanBlocks partial scans (2 words each): the first
// sweep (max, non-finite check) then runs in kSampleScanBlocks blocks a row before the kernel
// above, which reads their partials instead; the same tokens.
constexpr int kSampleScanBlocks = 16;
void sample_tokens(const float* logits, int64_t rows, int64_t v, int64_t ld,
                   const SampleParams* params, int32_t* tokens, uint64_t* scan, cudaStream_t s);

// MLA prefill attention, non-absorbed (kernels/cuda/flash.cu): per head h and query row t of
// one sequence (position pos0 + t), o[t, h] = softmax(scale · q[t, h] · K[h]ᵀ) · V[h] over the
// keys 0 .. pos0 + t, K[h] rows [k_nope ; k_pe], V[h] rows v. All inputs BF16:
//   q [n, heads, dn + dr] (rope part rotated), row stride ldq;
//   kv [keys k_begin .. k_end, heads, dn + dv] (k_nope then v per head: kv_b's output), stride
//   ldkv; kpe: the sequence's k_pe of key 0 (stride ldkpe; shared by the heads, in the cache).
// Long contexts run in key chunks: `first` starts the row state, otherwise it continues from
// o (unnormalised) and ml [n, heads, 2] (max, sum); `last` writes o normalised (F32 [n, heads,
// dv], row stride ldo), otherwise the state. dn, dr, dv multiples of 8, every row 16-byte
// aligned; flash_prefill_supported says which head sizes are compiled.
struct FlashArgs {
  const void *q = nullptr, *kv = nullptr, *kpe = nullptr;
  int64_t ldq = 0, ldkv = 0, ldkpe = 0;
  int dn = 0, dr = 0, dv = 0;
  int64_t heads = 0, n = 0, pos0 = 0, k_begin = 0, k_end = 0;
  bool first = true, last = true;
  float scale_log2 = 0;  // softmax scale · log2(e)
  float* o = nullptr;
  int64_t ldo = 0;
  float* ml = nullptr;
};
bool flash_prefill_supported(int dn, int dr, int dv);
void flash_prefill(const FlashArgs& a, cudaStream_t s);
// For tests and benchmarks: which kernel takes 192 / 128 heads on Hopper: 0 the mma.sync one
// (every other size's), or wgmma over tiles of 64 keys (1: the same bits as 0) or 128 (2, the
// default).
void set_flash_kernel(int kind);

}  // namespace dsv3::cuda
