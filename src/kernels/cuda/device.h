// The CUDA device as dsv3 sees it: what is present, and its properties.
#pragma once

#include <string>

namespace dsv3::cuda {

int device_count();  // 0 when there is no GPU or driver (never throws)
std::string device_summary(int index);
// Whether the current device runs the sm_90a code (compute capability 9.x: H100, H200) and so
// the kernels on wgmma; other devices get the portable PTX, which has none.
bool wgmma_device();

}  // namespace dsv3::cuda
