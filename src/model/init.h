// Random-weight checkpoints in the exact DeepSeek-V3 HF layout (names, dtypes, FP8 block
// scales), for tests and benchmarks of any size: `dsv3 init`.
#pragma once

#include <cstdint>
#include <string>

#include "io/config.h"
#include "model/layout.h"

namespace dsv3 {

struct InitOptions {
  std::string dtype = "bf16";  // f32 | bf16 | fp8 (projections FP8, the rest as V3 stores it)
  uint64_t seed = 0;
  double std = 0.006;  // weights ~ N(0, std²) (the report's init); norms = 1, bias = 0
  size_t max_shard_bytes = size_t(4) << 30;
};

// The values `dsv3 init` gives one tensor (f32, before any dtype conversion): N(0, std²) from
// a generator seeded by seed and the tensor's name, so a tensor's values do not depend on the
// rest of the layout; norms 1, router bias 0. The trainer's initialisation is the same.
void random_tensor_values(const TensorSpec& spec, uint64_t seed, double std, float* out);

// Writes config.json + safetensors shards (+ index when sharded) into `dir`.
// Returns the bytes of tensor data written.
size_t write_random_checkpoint(const ModelConfig& config, const std::string& dir,
                               const InitOptions& opt);

}  // namespace dsv3
