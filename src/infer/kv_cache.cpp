#include "infer/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace dsv3 {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The chain of every pooled cache starts here rather than at 0, so an empty parent is not a
// value a real chain could reach by accident.
constexpr uint64_t kRootHash = 0x6473763370726566ull;

}  // namespace

BlockPool::BlockPool(const ModelConfig& c, int64_t layers, int64_t blocks, int64_t block_tokens,
                     bool prefix_caching, bool host_rows)
    : block_tokens_(block_tokens),
      blocks_(blocks),
      layers_(layers),
      dc_(c.kv_lora_rank),
      dr_(c.qk_rope_head_dim),
      prefix_caching_(prefix_caching) {
  DSV3_CHECK(blocks >= 1 && block_tokens >= 1 && layers >= 1,
             "cache pool: {} blocks of {} tokens for {} layers", blocks, block_tokens, layers);
  if (host_rows)
    storage_ = Tensor::zeros(DType::F32, {layers * blocks * block_tokens * (dc_ + dr_)});
  refs_.assign(size_t(blocks), 0);
  free_pos_.resize(size_t(blocks));
  for (int32_t b = 0; b < int32_t(blocks); ++b) free_pos_[size_t(b)] = free_.insert(free_.end(), b);
  hash_.assign(size_t(blocks), 0);
  parent_.assign(size_t(blocks), 0);
  published_.assign(size_t(blocks), false);
  if (prefix_caching) tokens_.assign(size_t(blocks * block_tokens), 0);
}

float* BlockPool::ckv(int32_t block, int64_t layer, int64_t row) const {
  float* base = const_cast<float*>(storage_.ptr<float>());
  return base + ((layer * blocks_ + block) * block_tokens_ + row) * dc_;
}

float* BlockPool::kpe(int32_t block, int64_t layer, int64_t row) const {
  float* base = const_cast<float*>(storage_.ptr<float>()) + layers_ * blocks_ * block_tokens_ * dc_;
  return base + ((layer * blocks_ + block) * block_tokens_ + row) * dr_;
}

bool BlockPool::reserve(int64_t n) {
  DSV3_ASSERT(n >= 0);
  if (n > available_blocks()) return false;
  reserved_ += n;
  return true;
}

void BlockPool::unreserve(int64_t n) {
  DSV3_ASSERT(n >= 0 && n <= reserved_);
  reserved_ -= n;
}

int32_t BlockPool::take_reserved() {
  DSV3_ASSERT(reserved_ > 0 && !free_.empty());
  --reserved_;
  const int32_t b = free_.front();
  free_.pop_front();
  if (published_[size_t(b)]) unpublish(b);
  refs_[size_t(b)] = 1;
  return b;
}

void BlockPool::retain(int32_t block) {
  int32_t& r = refs_[size_t(block)];
  if (r == 0) {
    // Reviving a cached block uses up a free one: it must not be one already promised.
    DSV3_ASSERT(available_blocks() > 0);
    free_.erase(free_pos_[size_t(block)]);
  }
  ++r;
}

void BlockPool::release(int32_t block) {
  int32_t& r = refs_[size_t(block)];
  DSV3_ASSERT(r > 0);
  if (--r > 0) return;
  // A block with a prefix worth keeping goes to the back (evicted last, LRU); one without
  // goes to the front, to be reused first.
  free_pos_[size_t(block)] = published_[size_t(block)] ? free_.insert(free_.end(), block)
                                                       : free_.insert(free_.begin(), block);
}

uint64_t BlockPool::chain_hash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = splitmix64(parent);
  for (int32_t t : tokens) h = splitmix64(h ^ uint64_t(uint32_t(t)));
  return h;
}

int32_t BlockPool::find(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) const {
  if (!prefix_caching_) return -1;
  const auto it = index_.find(hash);
  if (it == index_.end()) return -1;
  const int32_t b = it->second;
  const int32_t* held = tokens_.data() + int64_t(b) * block_tokens_;
  if (parent_[size_t(b)] != parent || int64_t(tokens.size()) != block_tokens_ ||
      !std::equal(tokens.begin(), tokens.end(), held))
    return -1;
  return b;
}

void BlockPool::publish(int32_t block, uint64_t hash, uint64_t parent,
                        std::span<const int32_t> tokens) {
  DSV3_ASSERT(prefix_caching_ && int64_t(tokens.size()) == block_tokens_);
  if (published_[size_t(block)] || index_.count(hash)) return;
  index_.emplace(hash, block);
  hash_[size_t(block)] = hash;
  parent_[size_t(block)] = parent;
  std::copy(tokens.begin(), tokens.end(), tokens_.begin() + int64_t(block) * block_tokens_);
  published_[size_t(block)] = true;
}

void BlockPool::unpublish(int32_t block) {
  if (!published_[size_t(block)]) return;
  index_.erase(hash_[size_t(block)]);
  published_[size_t(block)] = false;
}

BlockPool::PrefixMatch BlockPool::match(std::span<const int32_t> prompt) const {
  PrefixMatch m;
  if (!prefix_caching_) return m;
  uint64_t parent = kRootHash;
  for (int64_t i = 0; (i + 1) * block_tokens_ < int64_t(prompt.size()); ++i) {
    const auto toks = prompt.subspan(size_t(i * block_tokens_), size_t(block_tokens_));
    const uint64_t h = chain_hash(parent, toks);
    const int32_t b = find(h, parent, toks);
    if (b < 0) break;
    ++m.blocks;
    if (refs_[size_t(b)] == 0) ++m.free;
    parent = h;
  }
  return m;
}

// A pooled cache's blocks and what it is still owed; released when the last copy goes.
struct LatentCache::Pages {
  std::shared_ptr<BlockPool> pool;
  std::vector<int32_t> table;
  int64_t reserved = 0;          // blocks promised by the pool, not yet taken
  std::vector<int32_t> tokens;   // token ids of the committed rows (prefix-caching pools)
  std::vector<uint64_t> hashes;  // prefix hash of each full block so far
  bool tokens_known = true;      // false once rows were committed without their ids

  ~Pages() {
    for (int32_t b : table) pool->release(b);
    pool->unreserve(reserved);
  }
};

LatentCache::LatentCache(const ModelConfig& c, int64_t layers, int64_t capacity)
    : dc_(c.kv_lora_rank), dr_(c.qk_rope_head_dim), capacity_(capacity), layers_(layers) {
  pages_ = std::make_shared<Pages>();
  pages_->pool = std::make_shared<BlockPool>(c, layers, 1, capacity, false);
  DSV3_ASSERT(pages_->pool->reserve(1));
  pages_->table.push_back(pages_->pool->take_reserved());
}

LatentCache::LatentCache(std::shared_ptr<BlockPool> pool, int64_t capacity)
    : dc_(pool->kv_dim()), dr_(pool->rope_dim()), capacity_(capacity), layers_(pool->layers()) {
  pages_ = std::make_shared<Pages>();
  pages_->pool = std::move(pool);
}

bool LatentCache::on_device() const {
  return pages_ && pages_->pool->on_device();
}

const BlockPool* LatentCache::pool() const {
  return pages_ ? pages_->pool.get() : nullptr;
}

const std::vector<int32_t>& LatentCache::blocks_for(int64_t rows) {
  DSV3_ASSERT(pages_ && rows <= capacity_);
  grow_table(rows);
  return pages_->table;
}

int64_t LatentCache::attach_prefix(std::span<const int32_t> prompt) {
  DSV3_ASSERT(pages_ && size_ == 0 && pages_->table.empty());
  BlockPool& pool = *pages_->pool;
  const int64_t B = pool.block_tokens();
  uint64_t parent = kRootHash;
  for (int64_t i = 0; (i + 1) * B < int64_t(prompt.size()) && (i + 1) * B <= capacity_; ++i) {
    const auto toks = prompt.subspan(size_t(i * B), size_t(B));
    const uint64_t h = BlockPool::chain_hash(parent, toks);
    const int32_t b = pool.find(h, parent, toks);
    if (b < 0) break;
    pool.retain(b);
    pages_->table.push_back(b);
    pages_->hashes.push_back(h);
    parent = h;
  }
  size_ = int64_t(pages_->table.size()) * B;
  pages_->tokens.assign(prompt.begin(), prompt.begin() + size_);
  return size_;
}

bool LatentCache::reserve_rest() {
  DSV3_ASSERT(pages_);
  const int64_t B = pages_->pool->block_tokens();
  const int64_t need = (capacity_ + B - 1) / B - int64_t(pages_->table.size()) - pages_->reserved;
  if (need <= 0) return true;
  if (!pages_->pool->reserve(need)) return false;
  pages_->reserved += need;
  return true;
}

std::vector<int32_t> LatentCache::block_table() const {
  return pages_ ? pages_->table : std::vector<int32_t>{};
}

void LatentCache::check_room(int64_t n) const {
  DSV3_CHECK(size_ + n <= capacity_,
             "the sequence would reach {} tokens, past the cache's capacity of {} (the context "
             "limit): shorten the prompt or --max-new-tokens",
             size_ + n, capacity_);
}

void LatentCache::grow_table(int64_t rows) {
  const int64_t B = pages_->pool->block_tokens();
  while (int64_t(pages_->table.size()) * B < rows) {
    DSV3_ASSERT(pages_->reserved > 0);  // reserve_rest() covers the whole capacity
    --pages_->reserved;
    pages_->table.push_back(pages_->pool->take_reserved());
  }
}

Tensor LatentCache::rows_of(int64_t layer, int64_t rows, bool want_ckv) const {
  DSV3_ASSERT(!on_device() && rows <= int64_t(pages_->table.size()) * pages_->pool->block_tokens());
  const BlockPool& pool = *pages_->pool;
  const int64_t B = pool.block_tokens(), width = want_ckv ? dc_ : dr_;
  const std::vector<int32_t>& t = pages_->table;
  const int64_t nb = (rows + B - 1) / B;
  auto at = [&](int32_t b, int64_t row) {
    return want_ckv ? pool.ckv(b, layer, row) : pool.kpe(b, layer, row);
  };
  bool run = true;
  for (int64_t i = 1; i < nb && run; ++i) run = t[size_t(i)] == t[0] + int32_t(i);
  if (run || rows == 0)
    return Tensor::wrap(DType::F32, {rows, width}, rows ? at(t[0], 0) : nullptr, pages_->pool);
  // Blocks scattered over the pool: attention reads one matrix, so copy them into one.
  Tensor& buf = want_ckv ? gather_ckv_ : gather_kpe_;
  if (!buf || buf.numel() < rows * width) buf = Tensor::zeros(DType::F32, {capacity_ * width});
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t n = std::min(B, rows - i * B);
    std::memcpy(buf.ptr<float>() + i * B * width, at(t[size_t(i)], 0), size_t(n * width) * 4);
  }
  return buf.reshape({buf.numel() / width, width}).slice_rows(0, rows);
}

Tensor LatentCache::ckv(int64_t layer, int64_t rows) const {
  return rows_of(layer, rows, true);
}

Tensor LatentCache::kpe(int64_t layer, int64_t rows) const {
  return rows_of(layer, rows, false);
}

void LatentCache::write(int64_t layer, const float* ckv_rows, const float* kpe_rows, int64_t n) {
  DSV3_ASSERT(!on_device());
  check_room(n);
  grow_table(size_ + n);
  const BlockPool& pool = *pages_->pool;
  const int64_t B = pool.block_tokens();
  for (int64_t r = 0; r < n;) {
    const int64_t pos = size_ + r, in_block = pos % B, k = std::min(n - r, B - in_block);
    const int32_t b = pages_->table[size_t(pos / B)];
    DSV3_ASSERT(pool.refcount(b) == 1);  // shared blocks are full and never written again
    std::memcpy(pool.ckv(b, layer, in_block), ckv_rows + r * dc_, size_t(k * dc_) * 4);
    std::memcpy(pool.kpe(b, layer, in_block), kpe_rows + r * dr_, size_t(k * dr_) * 4);
    r += k;
  }
}

void LatentCache::commit(int64_t n) {
  DSV3_ASSERT(size_ + n <= capacity_);
  size_ += n;
  if (pages_) pages_->tokens_known = false;
}

void LatentCache::commit(std::span<const int32_t> tokens) {
  const int64_t n = int64_t(tokens.size());
  DSV3_ASSERT(size_ + n <= capacity_);
  size_ += n;
  if (!pages_ || !pages_->pool->prefix_caching() || !pages_->tokens_known) return;
  Pages& p = *pages_;
  BlockPool& pool = *p.pool;
  const int64_t B = pool.block_tokens();
  p.tokens.insert(p.tokens.end(), tokens.begin(), tokens.end());
  // Every block this commit filled becomes findable by the prefix it completes.
  while ((int64_t(p.hashes.size()) + 1) * B <= size_) {
    const size_t i = p.hashes.size();
    const uint64_t parent = i == 0 ? kRootHash : p.hashes[i - 1];
    const auto toks = std::span<const int32_t>(p.tokens).subspan(i * size_t(B), size_t(B));
    const uint64_t h = BlockPool::chain_hash(parent, toks);
    pool.publish(p.table[i], h, parent, toks);
    p.hashes.push_back(h);
  }
}

void LatentCache::truncate(int64_t n) {
  DSV3_ASSERT(n >= 0 && n <= size_);
  size_ = n;
  if (!pages_) return;
  Pages& p = *pages_;
  const int64_t B = p.pool->block_tokens();
  // Blocks from the one holding position n on will be overwritten: they no longer hold the
  // prefix they were published under, and must be this sequence's alone.
  for (size_t i = size_t(n / B); i < p.table.size(); ++i) {
    DSV3_ASSERT(p.pool->refcount(p.table[i]) == 1);
    p.pool->unpublish(p.table[i]);
  }
  if (p.hashes.size() > size_t(n / B)) p.hashes.resize(size_t(n / B));
  if (p.tokens.size() > size_t(n)) p.tokens.resize(size_t(n));
}

}  // namespace dsv3
