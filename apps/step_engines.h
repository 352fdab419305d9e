// The engine behind --device for the commands that generate (generate, chat, serve): the CPU
// Engine, or the CUDA one.
#pragma once

#include <algorithm>
#include <memory>

#include "commands.h"
#include "infer/engine.h"
#include "infer/step_engine.h"
#ifdef DSV3_HAVE_CUDA
#include "kernels/cuda/engine.h"
#endif

namespace dsv3::apps {

// `sequences` x `max_context` (0: the engine's default) tokens: the CUDA engine's latent cache,
// allocated up front as blocks that sequences take as they grow (each up to max_context);
// `cache_tokens` (0: sequences x max_context) sizes that cache otherwise; `prefix_caching`:
// whether caches made over its cache_pool() share full prompt-prefix blocks.
// `batch_gemms` (--batch-gemms, CUDA only): decode batches of 2 or more on the tensor cores,
// whose rounded activations make a sequence's tokens depend on what it is batched with
// (CudaEngineOptions::gemv_max_rows).
inline std::unique_ptr<StepEngine> make_step_engine(const Model& model, int cuda_index,
                                                    int64_t sequences, int64_t max_context = 0,
                                                    bool batch_gemms = false,
                                                    bool prefix_caching = true,
                                                    int64_t cache_tokens = 0) {
  if (cuda_index < 0) return std::make_unique<Engine>(model);
#ifdef DSV3_HAVE_CUDA
  cuda::CudaEngineOptions opt;
  opt.device = cuda_index;
  opt.max_sequences = std::max<int64_t>(sequences, 1);
  if (max_context > 0) opt.max_context = max_context;
  if (batch_gemms) opt.gemv_max_rows = 1;
  opt.prefix_caching = prefix_caching;
  if (cache_tokens > 0) opt.cache_blocks = (cache_tokens + opt.block_tokens - 1) / opt.block_tokens;
  return std::make_unique<cuda::CudaEngine>(model, opt);
#else
  (void)prefix_caching;
  (void)cache_tokens;
  (void)sequences;
  (void)max_context;
  (void)batch_gemms;
  fail("this dsv3 was built without the CUDA backend");
#endif
}

// The --batch-gemms flag of the commands that batch sequences (serve, generate), and its check
// (before a checkpoint is loaded: that can take minutes).
inline void check_batch_gemms(int cuda_index, bool batch_gemms) {
  DSV3_CHECK(cuda_index >= 0 || !batch_gemms,
             "--batch-gemms is for the CUDA engine: add --device cuda[:N] or drop it");
}
inline void add_batch_gemms_flag(CLI::App* cmd, bool& flag) {
  cmd->add_flag("--batch-gemms", flag,
                "CUDA: decode batches of 2+ on the tensor cores (about 3x the tokens/s at batch "
                "8 on DeepSeek-V3 shapes), but a sequence's tokens may then depend on what it is "
                "batched with; default: up to 16 sequences on the batch-independent kernel");
}

}  // namespace dsv3::apps
