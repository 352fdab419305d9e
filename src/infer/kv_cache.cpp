#include "infer/kv_cache.h"

#include <cstring>

#include "core/error.h"

namespace dsv3 {

LatentCache::LatentCache(const ModelConfig& c, int64_t layers, int64_t capacity)
    : dc_(c.kv_lora_rank), dr_(c.qk_rope_head_dim), capacity_(capacity), layers_(layers) {
  for (int64_t l = 0; l < layers; ++l) {
    ckv_.push_back(Tensor::zeros(DType::F32, {capacity, dc_}));
    kpe_.push_back(Tensor::zeros(DType::F32, {capacity, dr_}));
  }
}

LatentCache LatentCache::on_device(int64_t layers, int64_t capacity, int64_t slot,
                                   std::shared_ptr<void> lease) {
  LatentCache c;
  c.layers_ = layers;
  c.capacity_ = capacity;
  c.slot_ = slot;
  c.lease_ = std::move(lease);
  return c;
}

void LatentCache::check_room(int64_t n) const {
  DSV3_CHECK(size_ + n <= capacity_,
             "the sequence would reach {} tokens, past the cache's capacity of {} (the context "
             "limit): shorten the prompt or --max-new-tokens",
             size_ + n, capacity_);
}

Tensor LatentCache::ckv(int64_t layer, int64_t rows) const {
  DSV3_ASSERT(!on_device());
  return ckv_[size_t(layer)].slice_rows(0, rows);
}

Tensor LatentCache::kpe(int64_t layer, int64_t rows) const {
  DSV3_ASSERT(!on_device());
  return kpe_[size_t(layer)].slice_rows(0, rows);
}

void LatentCache::write(int64_t layer, const float* ckv_rows, const float* kpe_rows, int64_t n) {
  DSV3_ASSERT(!on_device());
  check_room(n);
  std::memcpy(ckv_[size_t(layer)].ptr<float>() + size_ * dc_, ckv_rows, size_t(n * dc_) * 4);
  std::memcpy(kpe_[size_t(layer)].ptr<float>() + size_ * dr_, kpe_rows, size_t(n * dr_) * 4);
}

void LatentCache::commit(int64_t n) {
  DSV3_ASSERT(size_ + n <= capacity_);
  size_ += n;
}

void LatentCache::truncate(int64_t n) {
  DSV3_ASSERT(n >= 0 && n <= size_);
  size_ = n;
}

}  // namespace dsv3
