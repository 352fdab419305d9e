// Tensor: a typed, shaped view of memory on a device. It does not own memory directly:
// `owner` keeps alive whatever does (a heap buffer, a memory-mapped checkpoint file, a
// block of the CUDA pool), so weights loaded from safetensors are zero-copy views.
// Row-major and contiguous; the model code works on raw pointers taken from tensors.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dsv3 {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  static Device cpu() { return {}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool operator==(const Device&) const = default;
  std::string str() const;
  // Parses "cpu", "cuda", "cuda:N".
  static Device parse(const std::string& s);
};

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  // Allocates zero-initialised memory.
  static Tensor zeros(DType dtype, Shape shape, Device device = Device::cpu());
  // Allocates memory left uninitialised, for a caller that writes every element (a serial
  // memset of a multi-GB tensor costs more than the parallel loop that fills it).
  static Tensor empty(DType dtype, Shape shape);
  // Wraps memory owned by `owner` (kept alive as long as the tensor or a view of it is).
  static Tensor wrap(DType dtype, Shape shape, void* data, std::shared_ptr<void> owner,
                     Device device = Device::cpu());

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int ndim() const { return int(shape_.size()); }
  Device device() const { return device_; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool defined() const { return data_ != nullptr; }
  explicit operator bool() const { return defined(); }

  void* data() { return data_; }
  const void* data() const { return data_; }
  template <class T>
  T* ptr() {
    return static_cast<T*>(data_);
  }
  template <class T>
  const T* ptr() const {
    return static_cast<const T*>(data_);
  }

  // Same memory, another shape with the same number of elements.
  Tensor reshape(Shape shape) const;
  // Rows [begin, end) along the first dimension (a view).
  Tensor slice_rows(int64_t begin, int64_t end) const;
  // Copy converted to `dtype` (CPU only).
  Tensor to(DType dtype) const;
  // Copy of the elements as f32 (any float dtype; CPU).
  std::vector<float> to_f32_vector() const;

 private:
  DType dtype_ = DType::F32;
  Shape shape_;
  Device device_;
  void* data_ = nullptr;
  std::shared_ptr<void> owner_;
};

}  // namespace dsv3
