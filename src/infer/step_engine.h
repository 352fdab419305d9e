// What generation needs from an inference engine, whatever device runs it: caches for new
// sequences, a step over the new tokens of several sequences, and the MTP module's step. The
// CPU Engine (infer/engine.h) and the CUDA engine (kernels/cuda/engine.h) implement it, so
// generate() and the CLI run on either.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/tensor.h"
#include "infer/kv_cache.h"
#include "infer/sampler.h"
#include "model/model.h"

namespace dsv3 {

class StepEngine {
 public:
  virtual ~StepEngine() = default;

  virtual const Model& model() const = 0;
  const ModelConfig& config() const { return model().config(); }
  // The longest sequence a cache of this engine holds (CPU: the model's context).
  virtual int64_t context() const = 0;

  // A cache for one sequence of up to `capacity` tokens (default: context()).
  virtual LatentCache new_cache(int64_t capacity = 0) const = 0;
  virtual LatentCache new_mtp_cache(int64_t capacity = 0) const = 0;
  // Whether step() also takes caches whose rows live in a host BlockPool the caller made (the
  // server's paged cache with prefix sharing).
  virtual bool takes_pooled_caches() const { return false; }
  // A device engine's own pool of cache blocks (its rows in device memory), for callers that
  // manage caches over a pool as the server does: LatentCache(cache_pool(), capacity) with
  // attach_prefix() and reserve_rest(). Null when the engine has none (the CPU engine: it takes
  // host pools instead).
  virtual std::shared_ptr<BlockPool> cache_pool() const { return nullptr; }

  struct Input {
    LatentCache* cache;
    std::vector<int32_t> tokens;  // appended at positions cache->size() ...
    bool all_logits = false;      // logits for every new token, or only the last
  };
  // Logits F32 [rows, V] on the CPU: per input, all its rows or its last, in input order.
  // `hidden` receives the final-normed hidden states F32 [all new tokens, H] (the MTP input).
  virtual Tensor step(const std::vector<Input>& inputs, Tensor* hidden = nullptr) const = 0;

  // A step whose inputs' last rows turn into tokens: samplers[k] draws input k's token (and
  // records it) as sample() does, or as sample_with_logprobs() when its params ask for
  // logprobs; a null sampler gives no token (-1: a prompt chunk short of its end). Inputs must
  // not ask for all_logits. This default runs step() and the samplers on the CPU; a device
  // engine draws on its device for the samplers that allow it (Sampler::device_drawable), so
  // their rows' logits never cross the bus.
  virtual std::vector<infer::SampleResult> step_sample(const std::vector<Input>& inputs,
                                                       const std::vector<infer::Sampler*>& samplers,
                                                       Tensor* hidden = nullptr) const;

  struct MtpInput {
    LatentCache* cache;           // from new_mtp_cache()
    std::vector<int32_t> tokens;  // token i + 1 for each position i appended
    Tensor hidden;                // F32 [tokens.size(), H] on the CPU: the main model's h_i
  };
  // MTP depth 1: logits F32 [inputs, V] of the last row of each input (predicting i + 2).
  virtual Tensor mtp_step(const std::vector<MtpInput>& inputs) const = 0;
};

// One row's token drawn here, as step_sample() draws those it does not send to a device:
// sample_with_logprobs() when the sampler's params ask for logprobs, else sample().
infer::SampleResult sample_on_host(infer::Sampler& s, std::span<float> logits);

// Throws unless step_sample() can take these arguments: one sampler (or null) per input, and
// no input asking for all its logits.
void check_sample_inputs(const std::vector<StepEngine::Input>& inputs,
                         const std::vector<infer::Sampler*>& samplers);

}  // namespace dsv3
