// Generation: prefill every prompt, then decode all sequences together one step at a time,
// sampling each with its own Sampler, until a stop token, a caller's stop (stop strings), the
// token budget or the context ends it. With `speculative`, the MTP module drafts one token per
// step and the main model verifies it in the same step (MODEL_SPEC §6): a draft is kept only
// when it equals the token the main model's own sampling picks at that position, so greedy
// output is identical to plain decoding wherever a row's logits do not depend on the rows
// decoded beside it (on CUDA, --batch-invariant's F32 kernels, which take up to 16 rows a step:
// 8 sequences speculating). CUDA's default runs a verify's two rows a sequence on the
// tensor-core gemv, ~1e-5 from one row alone: a near-tie can tip.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "infer/engine.h"  // Engine (CPU); generate() takes any StepEngine
#include "infer/sampler.h"

namespace dsv3 {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  infer::SamplingParams params;
};

struct GenerationOutput {
  std::vector<int32_t> tokens;  // generated, without the prompt (a stop token is included)
  std::string finish_reason;    // "stop" (stop token or caller) or "length" (budget, context)
};

struct GenerationStats {
  int64_t prompt_tokens = 0, generated_tokens = 0, steps = 0;
  int64_t decode_steps = 0, decode_tokens = 0;  // after the first token of each sequence
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t drafted = 0, accepted = 0;  // speculative decoding
  double acceptance() const { return drafted ? double(accepted) / double(drafted) : 0.0; }
  // Tokens each decode step produced for one sequence: 1 without speculation, up to 2 with.
  double tokens_per_step() const {
    return decode_steps ? double(decode_tokens) / double(decode_steps) : 0.0;
  }
};

struct GenerateOptions {
  bool speculative = false;
  int64_t prefill_chunk = 512;  // prompt tokens per sequence per step
  // Called for every generated token in order; returning false ends that sequence with
  // finish_reason "stop" (after the token). Stop strings and streaming live here.
  std::function<bool(size_t seq, int32_t token)> on_token;
};

std::vector<GenerationOutput> generate(const StepEngine& engine,
                                       const std::vector<GenerationRequest>& requests,
                                       const GenerateOptions& options = {},
                                       GenerationStats* stats = nullptr);

}  // namespace dsv3
