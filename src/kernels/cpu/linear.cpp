// y = x·Wᵀ on the CPU. The weight is converted to f32 one block of rows at a time into a
// per-thread scratch buffer and multiplied there with OpenBLAS's sgemm (single-threaded:
// our own pool splits the output columns across cores). An F32 weight is used in place.
#include <cblas.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "core/threads.h"
#include "kernels/cpu/cpu_kernels.h"

namespace dsv3::cpu {

void init_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

namespace {

// Rows of W converted per block: a multiple of the FP8 block height keeps the scale lookups
// simple, and 64 rows of a 7168-wide weight (1.8 MB) stay within a core's cache share.
constexpr int64_t kRowBlock = 64;

}  // namespace

void linear(const float* x, int64_t rows, const Linear& w, float* y) {
  init_blas();
  const int64_t n = w.out_features(), k = w.in_features();
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
  const bool direct = w.weight.dtype() == DType::F32 && !w.quantized();
  parallel_for(blocks, [&](int64_t b0, int64_t b1, int) {
    thread_local std::vector<float> scratch;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRowBlock, r1 = std::min(n, r0 + kRowBlock);
      const float* wb;
      if (direct) {
        wb = w.weight.ptr<float>() + r0 * k;
      } else {
        scratch.resize(size_t((r1 - r0) * k));
        w.dequantize_rows(r0, r1, scratch.data());
        wb = scratch.data();
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(r1 - r0), int(k), 1.0f, x,
                  int(k), wb, int(k), 0.0f, y + r0, int(n));
    }
  });
}

}  // namespace dsv3::cpu
