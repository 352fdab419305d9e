#include "core/tensor.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace dsv3 {

std::string Device::str() const {
  return type == DeviceType::CPU ? "cpu" : fmt::format("cuda:{}", index);
}

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    char* end = nullptr;
    const long i = std::strtol(s.c_str() + 5, &end, 10);
    if (end && *end == 0 && end != s.c_str() + 5 && i >= 0) return cuda(int(i));
  }
  fail("unknown device '{}': use cpu, cuda or cuda:N", s);
}

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Tensor Tensor::empty(DType dtype, Shape shape) {
  for (int64_t d : shape) DSV3_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
  const size_t bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  // 64-byte alignment for SIMD loads; at least one byte so the pointer is never null.
  const size_t alloc = (bytes + 63) / 64 * 64 + 64;
  void* p = std::aligned_alloc(64, alloc);
  if (!p)
    fail("out of memory allocating {} bytes for a tensor of shape {}", bytes, shape_str(shape));
  std::memset(static_cast<char*>(p) + bytes, 0, alloc - bytes);  // the padding reads as zeros
  std::shared_ptr<void> owner(p, [](void* q) { std::free(q); });
  return wrap(dtype, std::move(shape), p, std::move(owner), Device::cpu());
}

Tensor Tensor::zeros(DType dtype, Shape shape, Device device) {
  DSV3_CHECK(device.is_cpu(), "Tensor::zeros on {}: use the device's allocator", device.str());
  Tensor t = empty(dtype, std::move(shape));
  std::memset(t.data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::wrap(DType dtype, Shape shape, void* data, std::shared_ptr<void> owner,
                    Device device) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.data_ = data;
  t.owner_ = std::move(owner);
  t.device_ = device;
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  DSV3_CHECK(shape_numel(shape) == numel(), "cannot reshape {} to {}", shape_str(shape_),
             shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  DSV3_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0],
             "row slice [{}, {}) out of range for shape {}", begin, end, shape_str(shape_));
  Tensor t = *this;
  const size_t row_bytes = shape_[0] ? nbytes() / size_t(shape_[0]) : 0;
  t.data_ = static_cast<char*>(data_) + size_t(begin) * row_bytes;
  t.shape_[0] = end - begin;
  return t;
}

std::vector<float> Tensor::to_f32_vector() const {
  DSV3_CHECK(device_.is_cpu(), "to_f32_vector needs a CPU tensor");
  std::vector<float> v(static_cast<size_t>(numel()));
  convert_to_f32(dtype_, data_, v.data(), v.size());
  return v;
}

Tensor Tensor::to(DType dtype) const {
  DSV3_CHECK(device_.is_cpu(), "Tensor::to needs a CPU tensor");
  Tensor t = zeros(dtype, shape_);
  if (dtype == dtype_) {
    std::memcpy(t.data(), data_, nbytes());
  } else {
    const auto f = to_f32_vector();
    convert_from_f32(dtype, f.data(), t.data(), f.size());
  }
  return t;
}

}  // namespace dsv3
