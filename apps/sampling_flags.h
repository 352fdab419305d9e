// Sampling flags shared by `dsv3 generate` and `dsv3 chat`.
#pragma once

#include <CLI/CLI.hpp>

#include "infer/sampler.h"

namespace dsv3::apps {

struct SamplingFlags {
  // DeepSeek's recommended settings for V3/R1 chat; --temperature 0 is greedy.
  float temperature = 0.6f, top_p = 0.95f, min_p = 0.0f;
  float repetition_penalty = 1.0f, frequency_penalty = 0.0f, presence_penalty = 0.0f;
  int32_t top_k = 0, max_new_tokens = 256;
  int64_t seed = -1;
  std::vector<std::string> stop;

  void add_to(CLI::App& cmd) {
    cmd.add_option("--max-new-tokens,-n", max_new_tokens, "tokens to generate at most")
        ->capture_default_str();
    cmd.add_option("--temperature,-t", temperature, "0 = greedy")->capture_default_str();
    cmd.add_option("--top-k", top_k, "keep the k most likely tokens (0 = off)")
        ->capture_default_str();
    cmd.add_option("--top-p", top_p, "nucleus sampling: keep probability mass p (1 = off)")
        ->capture_default_str();
    cmd.add_option("--min-p", min_p, "drop tokens below min_p x the top probability (0 = off)")
        ->capture_default_str();
    cmd.add_option("--repetition-penalty", repetition_penalty,
                   "HF-style, over prompt and output (1 = off)")
        ->capture_default_str();
    cmd.add_option("--frequency-penalty", frequency_penalty, "OpenAI-style, over the output")
        ->capture_default_str();
    cmd.add_option("--presence-penalty", presence_penalty, "OpenAI-style, over the output")
        ->capture_default_str();
    cmd.add_option("--seed", seed, "random seed (-1: a fresh one each run)")->capture_default_str();
    cmd.add_option("--stop", stop, "stop string (repeatable); not included in the output");
  }

  infer::SamplingParams params() const {
    infer::SamplingParams p;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repetition_penalty = repetition_penalty;
    p.frequency_penalty = frequency_penalty;
    p.presence_penalty = presence_penalty;
    if (seed >= 0) p.seed = uint64_t(seed);
    p.max_new_tokens = max_new_tokens;
    p.stop_strings = stop;
    p.validate();
    return p;
  }
};

}  // namespace dsv3::apps
