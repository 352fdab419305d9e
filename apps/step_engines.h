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

// `sequences`: how many sequences may hold a cache at once, `max_context` (0: the engine's
// default) the tokens each holds; the CUDA engine allocates sequences x max_context up front.
inline std::unique_ptr<StepEngine> make_step_engine(const Model& model, int cuda_index,
                                                    int64_t sequences, int64_t max_context = 0) {
  if (cuda_index < 0) return std::make_unique<Engine>(model);
#ifdef DSV3_HAVE_CUDA
  cuda::CudaEngineOptions opt;
  opt.device = cuda_index;
  opt.max_sequences = std::max<int64_t>(sequences, 1);
  if (max_context > 0) opt.max_context = max_context;
  return std::make_unique<cuda::CudaEngine>(model, opt);
#else
  (void)sequences;
  (void)max_context;
  fail("this dsv3 was built without the CUDA backend");
#endif
}

}  // namespace dsv3::apps
