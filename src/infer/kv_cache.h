// One sequence's latent KV cache (MODEL_SPEC §3): for every layer and every token so far, the
// normalised latent c_kv [kv_lora_rank] and the rotated shared key k_pe [qk_rope_head_dim].
// That is all absorbed MLA needs: (512 + 64) values per token and layer for DeepSeek-V3,
// against 128·(192 + 128) for a per-head K/V cache. Kept in f32 on the CPU so decode logits
// equal the full forward's. A device engine's cache (kernels/cuda/engine.h) keeps its rows in
// the engine's memory: this object then holds only the size, the capacity and a slot there.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "io/config.h"

namespace dsv3 {

class LatentCache {
 public:
  LatentCache() = default;
  LatentCache(const ModelConfig& c, int64_t layers, int64_t capacity);
  // A cache whose rows live on a device, in slot `slot` of its engine's pool; `lease` gives
  // the slot back when the last copy of this cache goes.
  static LatentCache on_device(int64_t layers, int64_t capacity, int64_t slot,
                               std::shared_ptr<void> lease);

  int64_t size() const { return size_; }
  int64_t capacity() const { return capacity_; }
  int64_t layers() const { return layers_; }
  bool on_device() const { return slot_ >= 0; }
  int64_t slot() const { return slot_; }  // -1 on the CPU

  // Views of rows [0, rows) of a layer (rows may run past size() for the step in flight).
  Tensor ckv(int64_t layer, int64_t rows) const;
  Tensor kpe(int64_t layer, int64_t rows) const;
  // Checks that n more tokens fit (a clear error naming the context limit if not).
  void check_room(int64_t n) const;
  // Writes n rows of a layer at positions [size(), size() + n); commit(n) then makes them part
  // of the cache once every layer has them.
  void write(int64_t layer, const float* ckv_rows, const float* kpe_rows, int64_t n);
  void commit(int64_t n);
  // Forgets everything from position n on (rejected speculative tokens).
  void truncate(int64_t n);

  // Bytes a token costs across all layers in this cache's f32 storage.
  size_t bytes_per_token() const { return size_t((dc_ + dr_) * layers()) * sizeof(float); }

 private:
  int64_t dc_ = 0, dr_ = 0, capacity_ = 0, size_ = 0, layers_ = 0, slot_ = -1;
  std::shared_ptr<void> lease_;
  std::vector<Tensor> ckv_, kpe_;  // per layer [capacity, dc] and [capacity, dr]
};

}  // namespace dsv3
