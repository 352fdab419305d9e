// Error checking for every CUDA runtime call and kernel launch: a failure becomes a
// dsv3::Error naming the call, the file and line, and CUDA's own message.
#pragma once

#include <cuda_runtime.h>

#include "core/error.h"

#define DSV3_CUDA_CHECK(call)                                                              \
  do {                                                                                     \
    const cudaError_t dsv3_err_ = (call);                                                  \
    if (dsv3_err_ != cudaSuccess)                                                          \
      ::dsv3::fail("CUDA error at {}:{}: {} ({})", __FILE__, __LINE__, #call,              \
                   cudaGetErrorString(dsv3_err_));                                         \
  } while (0)

// After a kernel launch: catches bad launch configurations immediately.
#define DSV3_CUDA_CHECK_LAUNCH() DSV3_CUDA_CHECK(cudaGetLastError())
