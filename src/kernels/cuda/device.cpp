#include <fmt/format.h>

#include "core/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"

namespace dsv3::cuda {

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  fail("CUDA error at {}:{}: {} ({})", file, line, call, cudaGetErrorString(err));
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string device_summary(int index) {
  cudaDeviceProp p{};
  DSV3_CUDA_CHECK(cudaGetDeviceProperties(&p, index));
  return fmt::format("{} (sm_{}{}, {} SMs, {:.1f} GiB)", p.name, p.major, p.minor,
                     p.multiProcessorCount, double(p.totalGlobalMem) / (1u << 30));
}

bool wgmma_device() {
  int dev = 0, major = 0;
  DSV3_CUDA_CHECK(cudaGetDevice(&dev));
  DSV3_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  return major == 9;
}

}  // namespace dsv3::cuda
