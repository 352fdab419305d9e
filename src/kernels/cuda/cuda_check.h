// Error checking for every CUDA runtime call and kernel launch: a failure becomes a
// dsv3::Error naming the call, the file and line, and CUDA's own message.
// Kept free of fmt so that .cu files (compiled by nvcc) can include it.
#pragma once

#include <cuda_runtime.h>

namespace dsv3::cuda {
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line);
}  // namespace dsv3::cuda

#define DSV3_CUDA_CHECK(call)                                               \
  do {                                                                      \
    const cudaError_t dsv3_err_ = (call);                                   \
    if (dsv3_err_ != cudaSuccess)                                           \
      ::dsv3::cuda::throw_cuda_error(dsv3_err_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: catches bad launch configurations immediately.
#define DSV3_CUDA_CHECK_LAUNCH() DSV3_CUDA_CHECK(cudaGetLastError())
