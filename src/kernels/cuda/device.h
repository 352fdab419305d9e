// The CUDA device as dsv3 sees it: what is present, and its properties.
#pragma once

#include <string>

namespace dsv3::cuda {

int device_count();  // 0 when there is no GPU or driver (never throws)
std::string device_summary(int index);

}  // namespace dsv3::cuda
