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
  // --batch-gemms (CUDA): decode batches of 2 or more on the tensor cores, whose rounded
  // activations make a sequence's tokens depend on what it is batched with
  // (CudaEngineOptions::gemv_max_rows).
  bool batch_gemms = false;
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
  DSV3_CHECK(e.cuda_index >= 0 || !e.batch_gemms,
             "--batch-gemms is for the CUDA engine: add --device cuda[:N] or drop it");
  DSV3_CHECK(e.cuda_index >= 0 || e.kv_cache_dtype == "auto",
             "--kv-cache-dtype {} is for the CUDA engine (the CPU cache is F32): add --device "
             "cuda[:N] or drop it",
             e.kv_cache_dtype);
}
inline void add_batch_gemms_flag(CLI::App* cmd, bool& flag) {
  cmd->add_flag("--batch-gemms", flag,
                "CUDA: decode batches of 2+ on the tensor cores (about 3x the tokens/s at batch "
                "8 on DeepSeek-V3 shapes), but a sequence's tokens may then depend on what it is "
                "batched with; default: up to 16 sequences on the batch-independent kernel");
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
