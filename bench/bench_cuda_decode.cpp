// Decode speed of the CUDA engine against the GPU's memory bandwidth, both measured in this run.
// At batch 1 a token must read every weight it uses once, so
//   achieved bandwidth = (bytes of the weights one token touches) × tokens/s,
// compared with a device-to-device cudaMemcpy of 1 GiB (bytes read + written) timed here.
// Each step includes what a caller gets: the logits copied back to the host.
// Usage: bench_cuda_decode --model DIR [--steps 32] [--batch 1,8,64] [--prompt 64]
//        [--gemv-max-rows 16]
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "core/error.h"
#include "decode_bytes.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/engine.h"

using namespace dsv3;
using bench::bytes_per_token;
using bench::parse_list;
using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Median of 10 device-to-device copies of 1 GiB: (read + written) bytes per second.
double copy_bandwidth() {
  const size_t n = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  DSV3_CUDA_CHECK(cudaMalloc(&a, n));
  DSV3_CUDA_CHECK(cudaMalloc(&b, n));
  DSV3_CUDA_CHECK(cudaMemset(a, 1, n));
  cudaEvent_t e0, e1;
  DSV3_CUDA_CHECK(cudaEventCreate(&e0));
  DSV3_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<double> bw;
  for (int rep = 0; rep < 13; ++rep) {
    DSV3_CUDA_CHECK(cudaEventRecord(e0));
    DSV3_CUDA_CHECK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    DSV3_CUDA_CHECK(cudaEventRecord(e1));
    DSV3_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    DSV3_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (rep >= 3) bw.push_back(2.0 * double(n) / (double(ms) * 1e-3));
  }
  DSV3_CUDA_CHECK(cudaFree(a));
  DSV3_CUDA_CHECK(cudaFree(b));
  std::sort(bw.begin(), bw.end());
  return bw[bw.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, batches = "1,8,64";
  int steps = 32, prompt = 64, gemv_rows = 16;
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
    else if (k == "--gemv-max-rows")
      gemv_rows = std::stoi(v);
  }
  if (model_dir.empty()) {
    fmt::print(stderr,
               "usage: bench_cuda_decode --model DIR [--steps N] [--batch 1,8,64] [--prompt N] "
               "[--gemv-max-rows N]\n");
    return 2;
  }
  try {
    DSV3_CHECK(cuda::device_count() > 0, "no CUDA device");
    const std::vector<int> bs = parse_list(batches);
    const auto t_load = Clock::now();
    const Model model(ModelWeights::load(model_dir));
    cuda::CudaEngineOptions opt;
    opt.max_sequences = *std::max_element(bs.begin(), bs.end());
    opt.max_context = prompt + steps + 8;
    opt.max_step_tokens = std::max<int64_t>(512, opt.max_sequences);
    opt.gemv_max_rows = gemv_rows;
    const cuda::CudaEngine engine(model, opt);
    const ModelConfig& c = model.config();
    fmt::print("device {}\n", cuda::device_summary(0));
    fmt::print(
        "engine memory {:.2f} GiB (weights {:.2f}, caches {:.2f}, activations {:.2f}); "
        "load + upload {:.1f} s\n",
        double(engine.memory().total()) / (1u << 30), double(engine.memory().weights) / (1u << 30),
        double(engine.memory().caches) / (1u << 30), double(engine.memory().workspace) / (1u << 30),
        secs(t_load, Clock::now()));
    const double bw = copy_bandwidth();
    const size_t per_tok = bytes_per_token(model.weights());
    fmt::print("device-to-device copy {:.0f} GB/s (read + write)\n", bw / 1e9);
    fmt::print("weights read per token at batch 1: {:.1f} MB\n", double(per_tok) / 1e6);
    fmt::print("{:>6} {:>10} {:>12} {:>14} {:>12}\n", "batch", "tok/s", "ms/step", "GB/s (b=1)",
               "prefill tok/s");
    for (int b : bs) {
      std::vector<LatentCache> caches;
      for (int i = 0; i < b; ++i) caches.push_back(engine.new_cache(prompt + steps + 8));
      std::vector<StepEngine::Input> in;
      for (int i = 0; i < b; ++i) {
        std::vector<int32_t> ids(static_cast<size_t>(prompt));
        for (int j = 0; j < prompt; ++j)
          ids[size_t(j)] = int32_t((7919 * (i * prompt + j) + 13) % c.vocab_size);
        in.push_back({&caches[size_t(i)], ids, false});
      }
      const auto t_pre = Clock::now();
      Tensor logits = engine.step(in);
      const double pre = double(b) * prompt / secs(t_pre, Clock::now());
      const int64_t v = c.vocab_size;
      const auto next = [&] {
        for (int i = 0; i < b; ++i) {
          const float* row = logits.ptr<float>() + int64_t(i) * v;
          in[size_t(i)].tokens = {int32_t(std::max_element(row, row + v) - row)};
        }
        logits = engine.step(in);
      };
      for (int s = 0; s < 3; ++s) next();  // warm-up: cuBLASLt plans, caches
      const auto t0 = Clock::now();
      for (int s = 0; s < steps; ++s) next();
      const double t = secs(t0, Clock::now());
      const double tps = double(b) * steps / t;
      const std::string gbs = b == 1 ? fmt::format("{:.0f} ({:.0f}%)", double(per_tok) * tps / 1e9,
                                                   100.0 * double(per_tok) * tps / bw)
                                     : "-";
      fmt::print("{:>6} {:>10.1f} {:>12.3f} {:>14} {:>12.0f}\n", b, tps, 1e3 * t / steps, gbs, pre);
    }
  } catch (const Error& e) {
    fmt::print(stderr, "bench_cuda_decode: {}\n", e.what());
    return 1;
  }
  return 0;
}
