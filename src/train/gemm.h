// Row-major BLAS GEMM for both instantiations of the training ops (float → sgemm, double →
// dgemm): C = A·B (op per transpose flag) + beta·C. Callers split work across the thread pool
// themselves; BLAS runs single-threaded (cpu::init_blas).
#pragma once

#include <cblas.h>

#include <cstdint>
#include <type_traits>

namespace dsv3::train {

template <typename T>
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, blasint(m), blasint(n), blasint(k), 1.0f, a, blasint(lda), b,
                blasint(ldb), beta, c, blasint(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, blasint(m), blasint(n), blasint(k), 1.0, a, blasint(lda), b,
                blasint(ldb), beta, c, blasint(ldc));
  }
}

}  // namespace dsv3::train
