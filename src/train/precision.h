// The precision of the projections' GEMMs in training. Master weights, gradients, norms,
// router, attention core, embedding and heads stay FP32 in every mode (the report's split,
// TRAINING_SPEC §4).
#pragma once

#include <string>

#include "core/error.h"

namespace dsv3::train {

enum class Precision {
  kF32,   // plain FP32 GEMMs (train/ops.h)
  kBf16,  // GEMM inputs rounded to BF16 (RNE), FP32 accumulation: the BF16 baseline
  kFp8,   // the FP8 fine-grained recipe (train/fp8.h)
};

inline Precision parse_precision(const std::string& s) {
  if (s == "f32") return Precision::kF32;
  if (s == "bf16") return Precision::kBf16;
  if (s == "fp8") return Precision::kFp8;
  fail("unknown precision '{}': use f32, bf16 or fp8", s);
}

inline const char* precision_name(Precision p) {
  return p == Precision::kF32 ? "f32" : p == Precision::kBf16 ? "bf16" : "fp8";
}

}  // namespace dsv3::train
