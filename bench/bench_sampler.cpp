// Time per token of dsv3::Sampler over DeepSeek-V3's full vocabulary (129,280 logits), for the
// sampling settings a server sees, against the floor measured in the same run: one pass that
// reads and writes the logits (the std::copy each draw starts from), since every setting must
// at least look at every logit. Median of 200 draws each; one thread.
//
//   bench_sampler
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "infer/sampler.h"

using namespace dsv3::infer;
using Clock = std::chrono::steady_clock;

namespace {

// Logits like a model's: N(0, 2²) plus a few strong candidates.
std::vector<float> model_like_logits(size_t vocab) {
  std::mt19937 gen(1);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> x(vocab);
  for (float& v : x) v = normal(gen);
  for (int i = 0; i < 20; ++i) x[gen() % vocab] += 6.0f + float(i % 5);
  return x;
}

template <class F>
double median_us(int reps, F&& f) {
  std::vector<double> us;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

}  // namespace

int main() {
  const size_t vocab = 129280;
  const std::vector<float> logits = model_like_logits(vocab);
  std::vector<float> x(vocab);
  const double floor = median_us(200, [&] { std::copy(logits.begin(), logits.end(), x.begin()); });
  std::printf("copy of %zu logits (the floor)        median %8.1f us\n", vocab, floor);
  struct Case {
    const char* name;
    float temperature;
    int32_t k;
    float p;
    bool logprobs;
  } cases[] = {{"top_k=50 top_p=0.9 T=0.7", 0.7f, 50, 0.9f, false},
               {"top_k=50 top_p=0.9 T=0.7 +5 logprobs", 0.7f, 50, 0.9f, true},
               {"top_p=0.9 only", 1.0f, 0, 0.9f, false},
               {"plain T=1", 1.0f, 0, 1.0f, false},
               {"greedy", 0.0f, 0, 1.0f, false}};
  for (const Case& c : cases) {
    SamplingParams sp;
    sp.temperature = c.temperature;
    sp.top_k = c.k;
    sp.top_p = c.p;
    sp.repetition_penalty = 1.1f;
    sp.seed = 3;
    if (c.logprobs) sp.logprobs = 5;
    const std::vector<int32_t> prompt(200, 17);
    Sampler s(sp, prompt);
    // The copy is timed too (each draw overwrites its logits); the floor is that copy alone.
    const double us = median_us(200, [&] {
      std::copy(logits.begin(), logits.end(), x.begin());
      if (c.logprobs)
        s.sample_with_logprobs(x);
      else
        s.sample(x);
    });
    std::printf("sampler %-38s median %8.1f us = %5.1f x the floor\n", c.name, us, us / floor);
  }
  return 0;
}
