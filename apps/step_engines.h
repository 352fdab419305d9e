// The engine behind --device for the commands that generate (generate, chat, serve): the CPU
// Engine, or the CUDA one, and the flags that shape the CUDA one.
#pragma once

#include <algorithm>
#include <memory>
#include <string>

#include "commands.h"
#include "infer/engine.h"
#include "infer/step_engine.h"
#ifdef DSV3_HAVE_CUDA
#include "kernels/cuda/engine.h"
#endif

namespace dsv3::apps {

// What the commands ask of the engine. The CUDA engine allocates its latent cache up front as
// blocks that sequences take as they grow (each up to max_context): `sequences` x
// `max_context` (0: the engine's default) tokens, or `cache_tokens` when given.
struct EngineChoice {
  int cuda_index = -1;  // -1: the CPU engine
  int64_t sequences = 1, max_context = 0, cache_tokens = 0;
  // How the CUDA engine decodes batches of 2 to 16 (CudaEngineOptions::gemv_tensor_cores and
  // gemv_max_rows): by default on the gemv's BF16 tensor-core kernel (a row's logits move with
  // its batch by ~1e-5); --batch-gemms: cuBLASLt GEMMs from 2 rows (FP8 weights take E4M3
  // activations, DeepSeek's own inference numerics); --batch-invariant: the F32 kernels, each
  // sequence's tokens the ones it gets alone.
  bool batch_gemms = false, batch_invariant = false;
  bool prefix_caching = true;           // caches over cache_pool() share prompt-prefix blocks
  std::string kv_cache_dtype = "auto";  // --kv-cache-dtype: auto (BF16) or fp8 (CUDA)
};

inline std::unique_ptr<StepEngine> make_step_engine(const Model& model, const EngineChoice& e) {
  if (e.cuda_index < 0) return std::make_unique<Engine>(model);
#ifdef DSV3_HAVE_CUDA
  cuda::CudaEngineOptions opt;
  opt.device = e.cuda_index;
  opt.max_sequences = std::max<int64_t>(e.sequences, 1);
  if (e.max_context > 0) opt.max_context = e.max_context;
  if (e.batch_gemms) opt.gemv_max_rows = 1;
  opt.gemv_tensor_cores = !e.batch_invariant;
  opt.prefix_caching = e.prefix_caching;
  opt.fp8_cache = e.kv_cache_dtype == "fp8";
  if (e.cache_tokens > 0)
    opt.cache_blocks = (e.cache_tokens + opt.block_tokens - 1) / opt.block_tokens;
  return std::make_unique<cuda::CudaEngine>(model, opt);
#else
  fail("this dsv3 was built without the CUDA backend");
#endif
}

// The CUDA-only flags of the commands that generate, and their check (before a checkpoint is
// loaded: that can take minutes).
inline void check_engine_flags(const EngineChoice& e) {
  for (const auto& [on, flag] : {std::pair{e.batch_gemms, "--batch-gemms"},
                                 std::pair{e.batch_invariant, "--batch-invariant"}})
    DSV3_CHECK(e.cuda_index >= 0 || !on,
               "{} is for the CUDA engine: add --device cuda[:N] or drop it", flag);
  DSV3_CHECK(!(e.batch_gemms && e.batch_invariant),
             "--batch-gemms and --batch-invariant pull opposite ways (GEMMs whose rows depend on "
             "their batch, or F32 kernels whose rows do not): pick one");
  DSV3_CHECK(e.cuda_index >= 0 || e.kv_cache_dtype == "auto",
             "--kv-cache-dtype {} is for the CUDA engine (the CPU cache is F32): add --device "
             "cuda[:N] or drop it",
             e.kv_cache_dtype);
}
inline void add_batch_flags(CLI::App* cmd, bool& gemms, bool& invariant) {
  cmd->add_flag("--batch-gemms", gemms,
                "CUDA: decode batches of 2+ as cuBLASLt GEMMs (FP8 weights with E4M3 "
                "activations, as DeepSeek's inference: 1.05x the default's tokens/s at batch 8 "
                "and 1.27x at 16 on DeepSeek-V3 shapes, slower on BF16 ones); a sequence's "
                "tokens then depend on what it is batched with, at FP8's precision");
  cmd->add_flag("--batch-invariant", invariant,
                "CUDA: decode batches of up to 16 on the F32 kernels, so each sequence gets the "
                "tokens it gets alone (at batch 8 0.46x the default's tokens/s on DeepSeek-V3 "
                "shapes, 0.74x on V2-Lite's); default: the gemv's tensor-core kernel, where "
                "batching moves the logits by ~1e-5 and can tip a greedy near-tie");
}
inline void add_kv_cache_dtype_option(CLI::App* cmd, std::string& dtype) {
  cmd->add_option("--kv-cache-dtype", dtype,
                  "CUDA: the latent cache's format: auto (BF16) or fp8 (c_kv in E4M3 with "
                  "per-128 scales, FlashMLA's FP8 cache: 1.76x the tokens per GiB at "
                  "DeepSeek-V3's sizes, E4M3's precision in the attention)")
      ->check(CLI::IsMember({"auto", "fp8"}))
      ->capture_default_str();
}

}  // namespace dsv3::apps
