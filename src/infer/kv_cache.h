// The latent KV cache (MODEL_SPEC §3): for every layer and every token so far, the normalised
// latent c_kv [kv_lora_rank] and the rotated shared key k_pe [qk_rope_head_dim]. That is all
// absorbed MLA needs: (512 + 64) values per token and layer for DeepSeek-V3, against
// 128·(192 + 128) for a per-head K/V cache. Kept in f32 on the CPU so decode logits equal the
// full forward's.
//
// Paged: rows live in fixed-size blocks of a BlockPool (one allocation), and a sequence's
// LatentCache is a block table into it, as in vLLM's PagedAttention. The server shares one
// pool among all sequences, so memory goes to the tokens that exist rather than to each
// sequence's worst case, and full blocks of an identical prompt prefix are shared between
// sequences (reference counts) instead of being computed again. `dsv3 generate` gives each
// sequence a private pool of one block, which is the old contiguous cache.
//
// A device engine's caches (kernels/cuda/engine.h) are pooled caches too, over a pool whose
// rows live in the engine's memory (host_rows false): the block tables and reference counts
// are kept here, the engine writes and reads the rows.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"
#include "io/config.h"

namespace dsv3 {

// Fixed-size blocks of latent rows with reference counts, a free list and an index of the
// full blocks that hold a known token prefix. Not thread-safe: one engine thread owns it.
class BlockPool {
 public:
  // `prefix_caching`: full blocks are indexed by the token prefix they hold, and a block
  // whose last reference goes keeps its rows until it is handed out again (LRU).
  // `host_rows` false: the rows live elsewhere (a device engine's memory); ckv() / kpe() must not
  // be called.
  BlockPool(const ModelConfig& c, int64_t layers, int64_t blocks, int64_t block_tokens,
            bool prefix_caching, bool host_rows = true);

  int64_t block_tokens() const { return block_tokens_; }
  int64_t blocks() const { return blocks_; }
  int64_t layers() const { return layers_; }
  int64_t kv_dim() const { return dc_; }
  int64_t rope_dim() const { return dr_; }
  bool prefix_caching() const { return prefix_caching_; }
  bool on_device() const { return !storage_; }

  // Row `row` of a block in one layer. Consecutive block ids are consecutive in memory, so a
  // run of blocks in a table can be read as one matrix.
  float* ckv(int32_t block, int64_t layer, int64_t row = 0) const;
  float* kpe(int32_t block, int64_t layer, int64_t row = 0) const;

  // Blocks no sequence references (some still hold a cached prefix).
  int64_t free_blocks() const { return int64_t(free_.size()); }
  int64_t used_blocks() const { return blocks_ - free_blocks(); }
  // Blocks promised to sequences that have not taken them yet.
  int64_t reserved_blocks() const { return reserved_; }
  // Free blocks nobody has been promised: what admission may still give out.
  int64_t available_blocks() const { return free_blocks() - reserved_; }
  // Full blocks indexed by their prefix (referenced or not).
  int64_t cached_blocks() const { return int64_t(index_.size()); }
  int32_t refcount(int32_t block) const { return refs_[size_t(block)]; }

  // Promises n free blocks to a caller (false, and nothing promised, if they are not there).
  bool reserve(int64_t n);
  void unreserve(int64_t n);
  // Hands out a free block (least recently freed first, prefix-less ones before cached ones)
  // with one reference, out of an earlier reserve(); its old prefix entry is forgotten.
  int32_t take_reserved();
  void retain(int32_t block);
  void release(int32_t block);

  // The prefix hash of a block: its tokens chained onto the hash of all blocks before it.
  static uint64_t chain_hash(uint64_t parent, std::span<const int32_t> tokens);
  // The block that holds exactly this prefix (hash, parent hash and the block's own tokens
  // all equal), or -1.
  int32_t find(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) const;
  // Indexes a full block under its prefix; a no-op when another block already holds it.
  void publish(int32_t block, uint64_t hash, uint64_t parent, std::span<const int32_t> tokens);
  void unpublish(int32_t block);
  bool published(int32_t block) const { return published_[size_t(block)]; }

  // Prompt tokens whose blocks find() would hand out to a new sequence with this prompt (never
  // the last token, whose logits must be computed), and how many of those blocks are free now
  // (taking them uses up free blocks).
  struct PrefixMatch {
    int64_t blocks = 0, free = 0;
  };
  PrefixMatch match(std::span<const int32_t> prompt) const;

 private:
  int64_t block_tokens_, blocks_, layers_, dc_, dr_;
  bool prefix_caching_;
  Tensor storage_;  // ckv [layers][blocks·B][dc], then kpe [layers][blocks·B][dr]
  std::vector<int32_t> refs_;
  std::list<int32_t> free_;  // front: handed out first
  std::vector<std::list<int32_t>::iterator> free_pos_;
  int64_t reserved_ = 0;
  // Prefix index: hash → block, with what find() verifies.
  std::unordered_map<uint64_t, int32_t> index_;
  std::vector<uint64_t> hash_, parent_;
  std::vector<int32_t> tokens_;  // [blocks, B]
  std::vector<bool> published_;
};

class LatentCache {
 public:
  LatentCache() = default;
  // A cache of `capacity` rows with a private pool of one block (allocated now).
  LatentCache(const ModelConfig& c, int64_t layers, int64_t capacity);
  // A cache of up to `capacity` rows whose blocks come from `pool`, taken as the sequence
  // grows out of a reservation that reserve_rest() makes.
  LatentCache(std::shared_ptr<BlockPool> pool, int64_t capacity);

  int64_t size() const { return size_; }
  int64_t capacity() const { return capacity_; }
  int64_t layers() const { return layers_; }
  bool on_device() const;         // its pool's rows live on a device
  const BlockPool* pool() const;  // null for a default-constructed cache

  // On a fresh pooled cache: takes (shares) the pool's blocks that hold the longest prefix of
  // `prompt` (never its last token) and starts the cache after them. Returns the tokens
  // shared; prefill then starts at that position.
  int64_t attach_prefix(std::span<const int32_t> prompt);
  // Reserves the pool blocks the rest of the capacity needs; false if the pool lacks them.
  bool reserve_rest();
  // Block ids in sequence order (pooled caches).
  std::vector<int32_t> block_table() const;
  // The block table grown (from the reservation) to cover rows [0, rows): what a device engine
  // needs before it writes rows up to `rows` itself.
  const std::vector<int32_t>& blocks_for(int64_t rows);

  // Rows [0, rows) of a layer (rows may run past size() for the step in flight): a view when
  // those rows sit in consecutive blocks, otherwise gathered block by block into a buffer of
  // this cache that the next call for the same kind reuses.
  Tensor ckv(int64_t layer, int64_t rows) const;
  Tensor kpe(int64_t layer, int64_t rows) const;
  // Checks that n more tokens fit (a clear error naming the context limit if not).
  void check_room(int64_t n) const;
  // Writes n rows of a layer at positions [size(), size() + n); commit() then makes them part
  // of the cache once every layer has them.
  void write(int64_t layer, const float* ckv_rows, const float* kpe_rows, int64_t n);
  // Commits the tokens written: with their ids, full blocks become shareable prefixes.
  void commit(std::span<const int32_t> tokens);
  void commit(int64_t n);
  // Forgets everything from position n on (rejected speculative tokens).
  void truncate(int64_t n);

  // Bytes a token costs across all layers in this cache's f32 storage.
  size_t bytes_per_token() const { return size_t((dc_ + dr_) * layers()) * sizeof(float); }

 private:
  struct Pages;
  Tensor rows_of(int64_t layer, int64_t rows, bool ckv) const;
  void grow_table(int64_t rows);

  int64_t dc_ = 0, dr_ = 0, capacity_ = 0, size_ = 0, layers_ = 0;
  std::shared_ptr<Pages> pages_;
  mutable Tensor gather_ckv_, gather_kpe_;
};

}  // namespace dsv3
