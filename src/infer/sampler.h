// Token sampling for generation: what turns one position's logits into the next token.
//
// Processing order (the warpers in HF `generate`'s default order; the penalties in vLLM's):
//   1. repetition penalty over prompt + generated ids (HF/llama.cpp: logit > 0 ? logit / p
//      : logit * p, once per distinct id),
//   2. frequency and presence penalties over generated ids only (OpenAI:
//      logit -= frequency * count + presence * [count > 0]),
//   3. temperature (logit / T),
//   4. top-k (keep every token whose logit >= the k-th largest, so ties with the k-th are kept,
//      as HF's TopKLogitsWarper does),
//   5. top-p (keep the smallest set of most likely tokens whose probability sums to >= p; the
//      most likely token always stays; HF's TopPLogitsWarper),
//   6. min-p (keep tokens with p >= min_p * p_max; HF's MinPLogitsWarper),
//   7. draw one token from the softmax of what is left.
// Removed tokens get -inf. Temperature 0 means greedy: steps 1-2 then argmax (ties go to the
// lowest id); top-k/top-p/min-p are accepted but ignored, as HF ignores them without
// do_sample, since none of them can change the argmax.
//
// Where HF leaves a choice open we decide: tokens with exactly equal logits that straddle the
// top-p boundary are ordered by ascending id (HF's order for them comes from an unstable-
// contract sort); the draw walks the kept tokens in ascending id order with a float64 CDF.
//
// Reproducibility: each Sampler owns an xoshiro256** generator seeded through splitmix64 (both
// integer-only and fully specified, see Rng), so a seed gives the same random numbers on every
// platform, and the same tokens unless a compiler's float rounding (FMA contraction, say) moves
// a CDF step across a draw; each step moves by ~1e-7 relative at most, so that takes a draw
// landing that close to a step (chance ~1e-7 per kept token).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace dsv3::infer {

// Which distribution logprobs describe.
enum class LogprobsMode {
  // log-softmax of the logits as the model produced them, before any penalty or warper.
  // vLLM's default (its logprobs_mode "raw_logprobs"), hence ours.
  kRaw,
  // log-softmax of the distribution actually sampled from (after steps 1-6; removed tokens
  // are -inf and never listed). Under greedy decoding: after the penalties only.
  kProcessed,
};

struct SamplingParams {
  // Defaults follow OpenAI / vLLM; where HF differs (top_k = 50, greedy unless do_sample) we
  // follow OpenAI, since the server exposes OpenAI's API.
  float temperature = 1.0f;         // 0 = greedy; otherwise >= 1e-5
  int32_t top_k = 0;                // 0 = off
  float top_p = 1.0f;               // in (0, 1]; 1 = off
  float min_p = 0.0f;               // in [0, 1); 0 = off
  float repetition_penalty = 1.0f;  // > 0; 1 = off
  float frequency_penalty = 0.0f;   // in [-2, 2] as OpenAI; 0 = off
  float presence_penalty = 0.0f;    // in [-2, 2] as OpenAI; 0 = off
  // Unset: a nondeterministic seed. Set: reproducible tokens (see Reproducibility above).
  std::optional<uint64_t> seed;
  int32_t max_new_tokens = 16;  // OpenAI's and vLLM's max_tokens default; 0 = generate nothing
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop_strings;
  // Unset: no logprobs. N >= 0: the chosen token's logprob plus the N most likely tokens'
  // (vLLM's `logprobs`; OpenAI's logprobs=true with top_logprobs=N).
  std::optional<int32_t> logprobs;
  LogprobsMode logprobs_mode = LogprobsMode::kRaw;

  // Throws dsv3::Error naming the first out-of-range or contradictory field.
  void validate() const;
  bool greedy() const { return temperature == 0.0f; }
  bool is_stop_token(int32_t id) const;
};

// xoshiro256** (Blackman & Vigna), state filled by four splitmix64 outputs from
// seed ^ splitmix64(stream). `stream` separates the n choices of one request that share a seed.
class Rng {
 public:
  explicit Rng(uint64_t seed, uint64_t stream = 0);
  uint64_t next();
  // Uniform in [0, 1) with 53 random bits: (next() >> 11) * 2^-53.
  double uniform();

 private:
  uint64_t s_[4];
};

struct TokenLogprob {
  int32_t token;
  float logprob;
};

struct SampleResult {
  int32_t token = -1;
  float logprob = 0.0f;           // of `token`, in params.logprobs_mode
  std::vector<TokenLogprob> top;  // up to params.logprobs entries, most likely first (ties:
                                  // lower id first); fewer when fewer tokens are possible
};

// One sequence's sampler: its parameters, its generator and its token history (for the
// penalties). A value type: copy it to fork a sequence (e.g. to score speculative drafts
// without touching the real history). Not thread-safe; use one per sequence.
class Sampler {
 public:
  // Validates params. `prompt` feeds the repetition penalty; `stream` is the choice index when
  // a request asks for n > 1 completions with one seed.
  explicit Sampler(SamplingParams params, std::span<const int32_t> prompt = {},
                   uint64_t stream = 0);

  // Processes `logits` (one position, vocabulary-sized; overwritten), draws a token and
  // records it in the history as accept() does.
  int32_t sample(std::span<float> logits);
  // As sample(), and reports logprobs as params().logprobs asks (only the chosen token's when
  // params().logprobs is unset).
  SampleResult sample_with_logprobs(std::span<float> logits);

  // Steps 1-6 in place: afterwards softmax(logits) is the distribution sample() draws from
  // (removed tokens are -inf). Under greedy decoding only the penalties are applied.
  void process(std::span<float> logits);

  // Records a token chosen elsewhere (speculative verification, forced tokens).
  void accept(int32_t token);
  // The next uniform [0, 1) number of this sequence's generator, for callers that make their
  // own random decisions (speculative acceptance tests) and want them seeded too.
  double uniform() { return rng_.uniform(); }

  const SamplingParams& params() const { return params_; }
  int32_t num_generated() const { return num_generated_; }
  // Whether a device engine may draw this sampler's tokens itself (kernels/cuda/sample.cu):
  // steps 3-7 only, so no penalty (they need the history) and no logprobs (they need the whole
  // distribution here). It then takes uniform() for a non-greedy draw, as sample() would, and
  // records its token with accept().
  bool device_drawable() const;

 private:
  void apply_penalties(std::span<float> logits) const;
  // Steps 3-6 on penalized logits: fills kept_ (ascending ids), or sets all_kept_ when every
  // finite logit is kept (after setting removed ones to -inf when the kept set is large).
  void select(std::span<float> logits);
  void mask_removed(std::span<float> logits) const;  // -inf outside kept_
  int32_t draw(std::span<const float> logits);

  SamplingParams params_;
  Rng rng_;
  std::unordered_set<int32_t> seen_;                // prompt + generated ids
  std::unordered_map<int32_t, int32_t> generated_;  // generated id -> count
  int32_t num_generated_ = 0;

  // Per-call scratch, kept to avoid reallocating vocabulary-sized buffers every token.
  bool all_kept_ = false;  // every finite logit is kept (kept_ unused)
  float kept_max_ = 0.0f;  // largest kept logit
  std::vector<int32_t> kept_;
  std::vector<float> raw_;
  std::vector<float> heap_;
  std::vector<float> weights_;
  std::vector<uint32_t> buckets_;
  std::vector<double> block_sums_;
  std::vector<std::pair<float, int32_t>> pairs_;
};

// Finds stop strings in detokenized output. OpenAI semantics: the output is cut where the
// earliest match begins, and the stop string itself is not part of the output.
class StopChecker {
 public:
  // Throws dsv3::Error on an empty stop string.
  explicit StopChecker(std::vector<std::string> stop_strings);

  // The byte offset where `text` must be cut, i.e. the start of the earliest match of any stop
  // string, or nullopt. Calls are incremental: each `text` must extend the previous call's
  // text (append-only, as detokenized output grows), so only the new tail plus the
  // (longest stop string - 1) bytes before it are searched. reset() starts over.
  std::optional<size_t> find(std::string_view text);
  void reset() { scanned_ = 0; }

  // Bytes at the end of `text` that could still become the start of a stop string; a streaming
  // server holds them back until the next token decides.
  size_t holdback(std::string_view text) const;

  bool empty() const { return stops_.empty(); }

 private:
  std::vector<std::string> stops_;
  size_t max_len_ = 0;
  size_t scanned_ = 0;
};

}  // namespace dsv3::infer
