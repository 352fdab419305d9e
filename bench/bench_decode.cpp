// Decode speed on the CPU against the machine's memory bandwidth, both measured in this run.
// Decode at batch 1 must read every weight a token uses once per token, so
//   achieved bandwidth = (bytes of the weights one token touches) × tokens/s,
// and the ratio to a STREAM-style copy's bandwidth says how close decode is to the limit.
// Usage: bench_decode --model DIR [--steps 32] [--batch 1,4,16] [--prompt 16]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "decode_bytes.h"
#include "infer/engine.h"

using namespace dsv3;
using bench::bytes_per_token;
using bench::parse_list;
using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Best of several parallel copies of a 512 MiB buffer: bytes read + bytes written per second.
double copy_bandwidth() {
  const size_t n = size_t(512) << 20;
  std::vector<char> a(n, 1), b(n, 2);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    parallel_for(int64_t(n >> 20), [&](int64_t i0, int64_t i1, int) {
      std::memcpy(b.data() + (i0 << 20), a.data() + (i0 << 20), size_t(i1 - i0) << 20);
    });
    best = std::max(best, 2.0 * double(n) / secs(t0, Clock::now()));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, batches = "1,4,16";
  int steps = 32, prompt = 16;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model")
      model_dir = v;
    else if (k == "--steps")
      steps = std::stoi(v);
    else if (k == "--batch")
      batches = v;
    else if (k == "--prompt")
      prompt = std::stoi(v);
  }
  if (model_dir.empty()) {
    fmt::print(stderr,
               "usage: bench_decode --model DIR [--steps N] [--batch 1,4,16] [--prompt N]\n");
    return 2;
  }
  try {
    const Model model(ModelWeights::load(model_dir));
    const Engine engine(model);
    const ModelConfig& c = model.config();
    const double bw = copy_bandwidth();
    const size_t per_tok = bytes_per_token(model.weights());
    fmt::print("threads {}, memory copy bandwidth {:.1f} GB/s (read + write)\n", num_threads(),
               bw / 1e9);
    fmt::print("weights read per token at batch 1: {:.1f} MB\n", double(per_tok) / 1e6);
    fmt::print("{:>6} {:>10} {:>12} {:>14}\n", "batch", "tok/s", "ms/step", "GB/s (b=1)");
    for (int b : parse_list(batches)) {
      std::vector<LatentCache> caches;
      for (int i = 0; i < b; ++i) caches.push_back(engine.new_cache(prompt + steps + 2));
      std::vector<Engine::Input> in;
      for (int i = 0; i < b; ++i) {
        std::vector<int32_t> ids(static_cast<size_t>(prompt));
        for (int j = 0; j < prompt; ++j)
          ids[size_t(j)] = int32_t((7919 * (i * prompt + j) + 13) % c.vocab_size);
        in.push_back({&caches[size_t(i)], ids, false});
      }
      Tensor logits = engine.step(in);
      const int64_t v = c.vocab_size;
      const auto t0 = Clock::now();
      for (int s = 0; s < steps; ++s) {
        for (int i = 0; i < b; ++i) {
          const float* row = logits.ptr<float>() + int64_t(i) * v;
          in[size_t(i)].tokens = {int32_t(std::max_element(row, row + v) - row)};
        }
        logits = engine.step(in);
      }
      const double t = secs(t0, Clock::now());
      const double tps = double(b) * steps / t;
      const std::string gbs = b == 1 ? fmt::format("{:.1f} ({:.0f}%)", double(per_tok) * tps / 1e9,
                                                   100.0 * double(per_tok) * tps / bw)
                                     : "-";
      fmt::print("{:>6} {:>10.1f} {:>12.2f} {:>14}\n", b, tps, 1e3 * t / steps, gbs);
    }
  } catch (const Error& e) {
    fmt::print(stderr, "bench_decode: {}\n", e.what());
    return 1;
  }
  return 0;
}
