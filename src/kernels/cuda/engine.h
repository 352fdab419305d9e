// The CUDA inference engine: the same interface as the CPU Engine (infer/step_engine.h), the
// whole forward on one GPU. Weights are uploaded once in their stored dtype (FP8 stays FP8 with
// its block scales, BF16 stays BF16; norms become F32), routed experts stacked per layer so one
// launch serves all of them. Everything lives in ONE device allocation made at construction:
// weights, the latent cache (BF16 by default) and the activations of one forward chunk. One
// stream; every CUDA call and launch is checked. Decode steps replay CUDA graphs
// (CudaEngineOptions::graphs).
//
// The latent cache is paged: cache_blocks blocks of block_tokens rows (kernels.h CachePool),
// handed to sequences by a BlockPool (infer/kv_cache.h) as they grow; each step uploads the
// block tables of its sequences. new_cache(capacity) reserves the blocks of its capacity up
// front; a server makes its caches over cache_pool() instead and so shares full blocks of
// identical prompt prefixes (prefix_caching) and holds only what its sequences use. The pool's
// bookkeeping is not thread-safe: one thread steps the engine and makes and drops its caches.
//
// Arithmetic: activations F32. Linears with few rows (decode) run our gemv kernel, which decodes
// weights in registers and accumulates in F32 (matches the CPU to ~1e-6 of the logits' std);
// with more rows than `gemv_max_rows` they run cuBLASLt: FP8 weights with 128×128 blocks on
// FP8 tensor cores, activations quantised to E4M3 1×128 tiles (DeepSeek-V3's own inference
// numerics, `fp8_gemm`; the routed experts one GEMM each), other weights on BF16 copies of the
// activations (and of the weight, dequantised per GEMM), F32 accumulate (~1e-3 relative). `exact`
// keeps every linear on the F32 path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "infer/step_engine.h"

namespace dsv3::cuda {

struct CudaEngineOptions {
  int device = 0;
  int64_t max_sequences = 8;   // sizes the cache: max_sequences caches of max_context by default
  int64_t max_context = 4096;  // tokens one cache holds at most
  int64_t block_tokens = 64;   // rows per cache block (FlashMLA's page size); a multiple of 32
  int64_t cache_blocks = 0;    // blocks in the cache; 0: max_sequences · ceil(max_context / block)
  bool prefix_caching = true;  // full blocks of cache_pool() caches are shared by prompt prefix
  int64_t max_step_tokens = 512;  // tokens per forward chunk; bigger steps run in chunks
  // Linears over more rows than this use cuBLASLt (tensor cores), up to it the gemv kernels
  // (activations F32, or two BF16 parts on the tensor-core gemv below). The GEMMs round the
  // activations to FP8 or BF16, which tips near-ties.
  int64_t gemv_max_rows = 16;
  // Linears of 2 to gemv_max_rows (≤ 16) rows on the gemv's BF16 tensor-core kernel (kernels.h
  // GemvArgs::tensor_cores: inputs in two BF16 parts, ~1e-5 relative) where the weight suits it.
  // H200, decode tok/s against the F32 kernels (alternating in one call, 002fd9f): V3 dims x 4
  // layers FP8 b=8 3,315 / 3,358 against 1,543 / 1,553, b=16 4,095 / 4,145 against 1,573 /
  // 1,570; V2-Lite BF16 b=8 1,196 against 882. A row's logits then move with what it is
  // batched with by that much, which can tip a greedy near-tie. Off (--batch-invariant):
  // every row on the F32 kernels, its result the bits it gets alone, so a request decodes the
  // same alone or batched (tools/gpu/check_serve_cuda.py checks it). `exact` turns it off.
  bool gemv_tensor_cores = true;
  bool exact = false;  // F32 gemv for every linear and an F32 cache (tests vs the CPU)
  // The latent cache in BF16 (FlashMLA's format: half the memory and the attention's bytes of
  // F32, relative error ~2^-9 per value), else F32.
  bool bf16_cache = true;
  // The latent cache in FP8 instead (FlashMLA's FP8 format, kernels.h CachePool): c_kv as E4M3
  // in 1×128 tiles with F32 scales, k_pe in BF16; 656 bytes a row at DeepSeek-V3's sizes
  // against 1,152, so 1.76x the tokens in the same memory, at E4M3's precision (3 mantissa
  // bits) in the attention's keys and values. Not faster yet: the decode kernels decode its
  // tiles with plain loads (H200, 2K-token prompts, batch 64: 5,240 vs 5,354 tok/s). Needs
  // kv_lora_rank a multiple of 128.
  bool fp8_cache = false;
  // FP8 block-scaled GEMMs (cuBLASLt) for FP8 weights with 128×128 blocks over more than
  // gemv_max_rows rows, the routed experts included; off: BF16 GEMMs on dequantised copies.
  bool fp8_gemm = true;
  // Prefill attention (chunks over gemv_max_rows, BF16 or FP8 cache) in the non-absorbed form on
  // the tensor cores: keys and values decompressed by one GEMM, then a flash-attention kernel
  // (kernels/cuda/flash.cu). Off, or head sizes it has no kernel for: the absorbed form, as
  // decode runs it.
  bool flash_prefill = true;
  // ... for chunks whose sequences average at least this many tokens (prefill-like).
  int64_t flash_min_tokens = 64;
  // The absorbed attention (decode steps; prefill when flash_prefill does not apply) on the
  // BF16 tensor cores (mla_attention_tc: BF16 or FP8 cache of kv_lora 512 / rope 64 or 256 / 32,
  // queries and P in BF16); off, or other sizes: the F32 CUDA-core kernel.
  bool attention_tensor_cores = true;
  // Routed experts of a chunk over gemv_max_rows rows go by the rows they average an expert
  // (decode batches average a few, prefill many). FP8 ones (128×128 blocks): the gemv kernel
  // below grouped_min_rows, the grouped kernel (grouped.cu: our mma.sync kernel, one launch a
  // projection, its tile map built on the device, so no host wait and the step stays a graph)
  // up to expert_gemm_rows, and from there one cuBLASLt GEMM each (the host reads the counts).
  // H200, V3 dims x 4 layers: batch 256 (8 rows an expert) 18.0K vs 11.6K tok/s on the gemv
  // tile kernel, batch 128 (4) 11.6K vs 10.3K; at batch 64 (2) the gemv kernels are faster
  // (7.8K vs 7.4K), hence 3; at 256 rows the grouped kernel runs at 0.3x cuBLASLt's rate. A
  // 1K-token prefill chunk (32 rows, one 32-row tile an expert) 67.1K / 67.5K vs 65.1K / 65.5K
  // tok/s on cuBLASLt; a 1,280-token one (40 rows: two tiles, mostly padding) 71.3K / 71.6K vs
  // 72.7K / 72.9K, hence 33 (V3 dims x 4 layers, H200, two rounds in one call).
  int64_t grouped_min_rows = 3;
  int64_t expert_gemm_rows = 33;
  // On Hopper, FP8 ones averaging fp8_wgmma_min_rows rows or more take the grouped kernel's
  // 128-row tiles on wgmma instead of the cuBLASLt GEMMs, with no host wait. H200, V3 dims x 4
  // layers: an 8K prompt's experts (2K-token chunks, 64 rows) 30.2 ms of GPU time against 33.7,
  // host 0.2 ms against 94.5, 77.5K tok/s against 75.8K (one round). Below 33 rows the
  // mma.sync tiles read the weights faster (16-row tiles 65-74% of copy at 4-16 rows, the
  // 128-row ones 49-56%).
  int64_t fp8_wgmma_min_rows = 33;
  // BF16 ones on the grouped kernel from bf16_grouped_min_rows while under bf16_grouped_max_rows,
  // else one cuBLASLt GEMM each from bf16_expert_gemm_rows (also where the grouped kernel has no
  // shape for them), else the gemv. H200, V2-Lite dims (6 of 64 experts), the kernel on 64-row
  // tiles: it read the experts at 67-71% of copy from 6 to 24 rows an expert, 2.5-4.1x one
  // cuBLASLt GEMM each; it ran batch 17 and 24 (1 and 2 rows an expert) 1.05x and 1.07x the
  // gemv's rate; a 1K-token prompt's 96 rows an expert took 20.1 ms of GPU time against 23.8,
  // a 2K one's 192 rows 35.8 against 31.6 (tree 35c94c9 with this kernel). Over 16 rows an
  // expert the gemv takes its general kernel, a pass over the weights per 8 rows (batch 256:
  // 2,230 tok/s).
  int64_t bf16_grouped_min_rows = 1;
  int64_t bf16_grouped_max_rows = 128;
  int64_t bf16_expert_gemm_rows = 17;
  // On Hopper, BF16 ones averaging bf16_wgmma_min_rows rows or more take the grouped kernel's
  // 128-row tiles on wgmma, whatever bf16_grouped_max_rows says: one launch a projection fills
  // the GPU where one GEMM an expert leaves it part idle, and needs no host wait. H200, V2-Lite
  // dims: prefill 1K / 8K 46.2K / 46.9K tok/s against 33.8K / 40.3K (from 64 rows against
  // none); decode batch 32 / 64 / 256 2,889 / 5,240 / 16,177 against 2,844 / 5,110 / 15,151
  // (from 1 row against 64), the weights read at 79-85% of copy from 3 to 12 rows an expert
  // against 73-82% on the 16-row mma.sync tiles (bench_cuda_fp8_gemm part 3).
  int64_t bf16_wgmma_min_rows = 1;
  // Off: no grouped kernel (the GEMMs from their thresholds, else the gemv).
  bool grouped_experts = true;
  // The grouped kernel's rows a block (16, 32, 64, or 128 on Hopper); 0: by the rows the experts
  // average (cuda::grouped_tile_rows: 16 below 16, 32 below 48, else 64; 128 from
  // bf16_wgmma_min_rows / fp8_wgmma_min_rows). H200 (bench_cuda_fp8_gemm part
  // 3): FP8 experts at 4-16 rows read at 70-73% of copy on 16-row tiles against 42% on 64; BF16
  // ones at 3-12 rows at 80-86% against 73-77%; at 24 rows 32-row tiles are best (74-76%), at 48
  // 64-row ones. Decode, against 64-row tiles: V3 dims x 4 layers batch 128 / 256 20,861 / 34,453
  // against 14,545 / 25,562 tok/s; V2-Lite batch 32 / 64 / 256 2,881 / 5,174 / 15,344 against 2,559
  // / 4,755 / 14,891 (tree 3639601 with this rule).
  int64_t grouped_tile_rows = 0;
  // Decode-sized chunks run as a CUDA graph captured once per
  // shape and replayed: one launch instead of hundreds. Same kernels, same arguments, so the
  // logits are bit-identical to the eager launches (tests/cuda/test_engine_gpu.cpp).
  bool graphs = true;
  // The largest chunk (in tokens) replayed from graphs; larger ones (prefill) run eagerly and,
  // above this size, take flash_prefill.
  int64_t graph_max_rows = 64;
  // GPU time per stage of the chunks run eagerly (prefill, large batches), from CUDA events at
  // each change of stage: CudaEngine::stage_times(). Off: no events.
  bool time_stages = false;
  // Chunks over gemv_max_rows on the tensor-core attention run the absorbed projections (W_UK
  // into the query, W_UV out of the latent output) on the BF16 tensor cores (mla_absorb_q_tc,
  // mla_uv_tc) instead of the CUDA-core kernel and the per-head gemv: V3 x 4 layers FP8 decode
  // b=64 8,812 vs 7,709 tok/s, b=256 25,150 vs 17,479 (H200, one call).
  bool absorb_tensor_cores = true;
  // The sampler's first sweep over a row's logits in kSampleScanBlocks blocks a row instead of
  // its one (kernels.h sample_tokens): the same tokens. With the gemvs' early weights (gemv.cu
  // kWeightsEarly) batch-1 decode ran at 779.1-780.1 tok/s against 769.5-775.9 without either
  // and 770.0-772.2 with this alone (H200, three alternating rounds in one call).
  bool sample_split_scan = true;
  // Chunks of up to gemv_max_rows rows run the latent cache write (and, without a q LoRA, the
  // kv_a gemv before it) and the shared experts on a second stream beside the kernels that do
  // not need them (graphs: parallel branches): V3 x 4 layers FP8 batch-1 decode 794.5-804.0
  // tok/s against 782.2-789.0 on one stream (H200, three alternating rounds; 785-799 against
  // 778-782 on another machine). The same bits. Stage times (time_stages) do not see the second
  // stream's work.
  bool side_stream = true;
  // The routed experts' weighted sum done by the next add + RMSNorm as it reads it
  // (add_rmsnorm_combine), one launch fewer a MoE layer. The same bits. V2-Lite dims batch-1
  // decode 456.4 / 455.5 tok/s against 454.8 / 448.6 (H200, alternating in one call, 5cc1965).
  bool combine_in_norm = true;
  // Benchmarks only: enqueue these pieces of every layer twice (bits of RepeatPiece; each piece
  // rewrites what it wrote from unchanged inputs, so the logits stay the same), to time a
  // kernel inside a replayed graph by the difference in step time (no profiler sees into one).
  unsigned repeat_pieces = 0;
};
// Bits of CudaEngineOptions::repeat_pieces.
enum RepeatPiece : unsigned {
  kRepeatQkvA = 1,        // the q_a | kv_a gemv
  kRepeatQaNorm = 2,      // q_a's RMSNorm
  kRepeatQb = 4,          // the q_b gemv (q's, without a q LoRA)
  kRepeatCacheWrite = 8,  // latent_to_cache
  kRepeatAbsorb = 16,     // W_UK into the query
  kRepeatAttention = 32,  // the attention kernel and its merge
  kRepeatUv = 64,         // W_UV out of the latent output
  kRepeatOProj = 128,     // o_proj
  kRepeatSample = 256,    // the sampler (once a step)
  kRepeatRoute = 512,     // the router's gemv, routing and the permutation (MoE layers)
  kRepeatCombine = 1024,  // the experts' weighted sum (MoE layers; turns combine_in_norm off)
  kRepeatExperts = 2048,  // the routed experts' gemvs or GEMMs
  kRepeatShared = 4096,   // the shared experts
};

// Device bytes the engine allocates for a model (computed without a GPU).
struct MemoryPlan {
  size_t weights = 0, caches = 0, workspace = 0;
  size_t cache_bytes_per_token = 0;  // one sequence, all main layers
  size_t total() const { return weights + caches + workspace; }
};
MemoryPlan plan_memory(const ModelWeights& w, const CudaEngineOptions& opt);

class CudaEngine : public StepEngine {
 public:
  CudaEngine(const Model& model, CudaEngineOptions opt = {});
  ~CudaEngine() override;

  const Model& model() const override { return model_; }
  int64_t context() const override;
  LatentCache new_cache(int64_t capacity = 0) const override;
  LatentCache new_mtp_cache(int64_t capacity = 0) const override;
  std::shared_ptr<BlockPool> cache_pool() const override;
  Tensor step(const std::vector<Input>& inputs, Tensor* hidden = nullptr) const override;
  // Rows whose sampler is device_drawable() are sampled on the GPU (kernels/cuda/sample.cu):
  // only their token ids come back; the other rows' logits come back and are sampled here.
  std::vector<infer::SampleResult> step_sample(const std::vector<Input>& inputs,
                                               const std::vector<infer::Sampler*>& samplers,
                                               Tensor* hidden = nullptr) const override;
  Tensor mtp_step(const std::vector<MtpInput>& inputs) const override;

  const CudaEngineOptions& options() const;
  const MemoryPlan& memory() const;
  // Waits for the engine's stream (benchmarks; step() already returns finished results).
  void synchronize() const;
  // Turns graph replay on or off for later steps (benchmarks and tests compare the two).
  void set_graphs(bool on) const;
  // Graphs captured so far (each is replayed for every later chunk of the same shape).
  int64_t graphs_captured() const;
  // With time_stages: per stage since the last reset, in a fixed order, the GPU time (between
  // the events that open and close it, so idle gaps count where they fall) and the host's time
  // enqueueing it, waits included (the routed experts' GEMM path reads their row counts, which
  // waits for the work before it). Host time near GPU time elsewhere: bound by launches.
  struct StageTime {
    std::string name;
    double gpu_ms = 0, host_ms = 0;
  };
  std::vector<StageTime> stage_times() const;
  void reset_stage_times() const;

 private:
  struct Impl;
  const Model& model_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv3::cuda
