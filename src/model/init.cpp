#include "model/init.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "io/safetensors.h"
#include "kernels/linear.h"
#include "model/layout.h"

namespace dsv3 {

namespace {

uint64_t mix64(uint64_t z) {  // splitmix64's output function
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// splitmix64: a tiny, well-mixed generator whose output is the same on every platform, so a
// seed names the same checkpoint everywhere (IEEE double arithmetic, libm's log).
struct Rng {
  uint64_t s;
  uint64_t next() { return mix64(s += 0x9e3779b97f4a7c15ull); }
  double symmetric() { return double(next() >> 11) * 0x1p-52 - 1.0; }  // [-1, 1)
};

// Normals 2p and 2p + 1 of a stream: Marsaglia's polar method (one log and one square root a
// pair, no trigonometry: Box–Muller's cos and log had been two thirds of `dsv3 init`'s time),
// each pair from its own generator seeded by its index, so any split of the stream over
// threads gives the same values.
void normal_pair(uint64_t s0, uint64_t p, double* out) {
  Rng rng{mix64(s0 + p * 0xd1b54a32d192ed03ull)};
  double u, v, q;
  do {
    u = rng.symmetric();
    v = rng.symmetric();
    q = u * u + v * v;
  } while (q >= 1.0 || q == 0.0);
  const double f = std::sqrt(-2.0 * std::log(q) / q);
  out[0] = u * f;
  out[1] = v * f;
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

}  // namespace

void random_tensor_values(const TensorSpec& spec, uint64_t seed, double std, float* out) {
  const int64_t n = shape_numel(spec.shape);
  if (spec.role == TensorRole::kNorm || spec.role == TensorRole::kBias) {
    std::fill(out, out + n, spec.role == TensorRole::kNorm ? 1.0f : 0.0f);
    return;
  }
  const uint64_t s0 = seed ^ fnv1a(spec.name);
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1, int) {
        double pair[2];
        for (int64_t i = i0; i < i1; ++i) {
          if (i == i0 || i % 2 == 0) normal_pair(s0, uint64_t(i / 2), pair);
          out[i] = float(pair[i % 2] * std);
        }
      },
      1 << 16);
}

size_t write_random_checkpoint(const ModelConfig& config, const std::string& dir,
                               const InitOptions& opt) {
  DSV3_CHECK(opt.dtype == "f32" || opt.dtype == "bf16" || opt.dtype == "fp8",
             "unknown --dtype '{}': use f32, bf16 or fp8", opt.dtype);
  ModelConfig c = config;
  c.quant = QuantConfig{};
  c.quant.fp8 = opt.dtype == "fp8";
  c.torch_dtype = opt.dtype == "f32" ? "float32" : "bfloat16";
  c.validate("config");
  const DType dense = opt.dtype == "f32" ? DType::F32 : DType::BF16;

  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  // One F32 buffer for the largest tensor, its pages first touched by the threads that fill it,
  // and uninitialised outputs that parallel loops fill: zeroing GBs of fresh memory on one
  // thread (a vector a tensor, Tensor::zeros) had been a sixth of perf's samples for V3 dims
  // with one layer (78.4 -> 64.0 s on the 2-core dev box).
  const std::vector<TensorSpec> layout = checkpoint_layout(c);
  int64_t most = 0;
  for (const TensorSpec& spec : layout) most = std::max(most, shape_numel(spec.shape));
  const std::unique_ptr<float[]> buf(new float[size_t(std::max<int64_t>(most, 1))]);
  for (const TensorSpec& spec : layout) {
    const int64_t n = shape_numel(spec.shape);
    float* v = buf.get();
    random_tensor_values(spec, opt.seed, opt.std, v);
    if (spec.role == TensorRole::kProjection && c.quant.fp8) {
      const Linear q =
          Linear::quantize_fp8(v, spec.shape[0], spec.shape[1], c.quant.block_n, c.quant.block_k);
      writer.add(spec.name, q.weight);
      writer.add(spec.name + "_scale_inv", q.scale_inv);
      continue;
    }
    const DType dt = spec.role == TensorRole::kBias ? DType::F32 : dense;
    Tensor t = Tensor::empty(dt, spec.shape);
    auto* dst = static_cast<char*>(t.data());
    const size_t es = dtype_size(dt);
    parallel_for(
        n,
        [&](int64_t i0, int64_t i1, int) {
          convert_from_f32(dt, v + i0, dst + size_t(i0) * es, size_t(i1 - i0));
        },
        1 << 16);
    writer.add(spec.name, t);
  }
  std::filesystem::create_directories(dir);
  writer.write_sharded(dir, opt.max_shard_bytes);
  write_file_atomic((std::filesystem::path(dir) / "config.json").string(),
                    c.to_json().dump(2) + "\n");
  return writer.total_bytes();
}

}  // namespace dsv3
