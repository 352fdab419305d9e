// Training speed on the CPU against the machine's matrix-multiply peak, both measured in this
// run. The peak is OpenBLAS sgemm on large square matrices, split across the same threads the
// trainer uses (our pool, one single-threaded sgemm per block of rows: the way training's
// linears run). Training FLOPs per step = 3 × the forward's (backward ≈ 2× forward), counted by
// TrainModel::forward_flops (every matrix a token passes through, routed experts at k/E, and
// causal attention); recomputation, if on, is not counted as useful work.
// Usage: bench_train [--config configs/train-brown.json] [--steps 5] [--batch 8] [--seq 256]
#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "core/threads.h"
#include "kernels/cpu/cpu_kernels.h"
#include "train/model.h"
#include "train/train_config.h"

using namespace dsv3;
using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Best of 3: C[n, n] = A·Bᵀ with rows of C split across the pool (FLOP/s).
double sgemm_peak(int64_t n) {
  cpu::init_blas();
  std::vector<float> a(size_t(n * n), 0.5f), b(size_t(n * n), 0.25f), c(size_t(n * n));
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    parallel_for(
        n,
        [&](int64_t r0, int64_t r1, int) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(r1 - r0), blasint(n),
                      blasint(n), 1.0f, a.data() + r0 * n, blasint(n), b.data(), blasint(n), 0.0f,
                      c.data() + r0 * n, blasint(n));
        },
        64);
    best = std::max(best, 2.0 * double(n) * double(n) * double(n) / secs(t0, Clock::now()));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config = std::string(DSV3_SOURCE_DIR) + "/configs/train-brown.json";
  int64_t steps = 5, B = 8, T = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--config")
      config = v;
    else if (k == "--steps")
      steps = std::stoll(v);
    else if (k == "--batch")
      B = std::stoll(v);
    else if (k == "--seq")
      T = std::stoll(v);
    else {
      fmt::print(stderr, "usage: bench_train [--config F] [--steps N] [--batch B] [--seq T]\n");
      return 2;
    }
  }
  const nlohmann::json j = train::TrainConfig::read_file(config);
  const ModelConfig mc = ModelConfig::from_json(j.at("model"), config);
  train::TrainModel model(mc);
  model.init_random(0, 0.006);
  std::vector<int32_t> ids(size_t(B * T)), tgt(size_t(B * T));
  uint64_t s = 1;
  for (size_t i = 0; i < ids.size(); ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    ids[i] = int32_t((s >> 33) % uint64_t(mc.vocab_size));
  }
  for (size_t i = 0; i < ids.size(); ++i) tgt[i] = ids[(i + 1) % ids.size()];
  train::LossOptions opt;

  const double peak = sgemm_peak(2048);
  model.zero_grads();
  model.forward_backward(ids.data(), tgt.data(), B, T, opt);  // warm-up: buffers sized
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < steps; ++i) {
    model.zero_grads();
    model.forward_backward(ids.data(), tgt.data(), B, T, opt);
  }
  const double dt = secs(t0, Clock::now()) / double(steps);
  const double flops = 3.0 * model.forward_flops(B, T);
  fmt::print("threads {}, model {} ({:.1f}M parameters), batch {}×{}\n", num_threads(), config,
             double(model.num_values()) / 1e6, B, T);
  fmt::print("sgemm peak (2048³, same threads): {:.1f} GFLOP/s\n", peak / 1e9);
  fmt::print("training step (forward + backward, no optimizer): {:.3f} s = {:.0f} tokens/s\n", dt,
             double(B * T) / dt);
  fmt::print("useful FLOP/s: {:.1f} GFLOP/s = {:.0f}% of the sgemm peak\n", flops / dt / 1e9,
             100.0 * flops / dt / peak);
  return 0;
}
