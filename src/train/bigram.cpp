#include "train/bigram.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "train/data.h"

namespace fs = std::filesystem;

namespace dsv3::train {

namespace {

// Sorted (key, count) runs: counting bigrams by sorting chunks of the stream and merging, so
// memory follows the number of distinct bigrams, not the stream's length.
void merge_counts(std::vector<uint64_t>& keys, std::vector<uint64_t>& counts,
                  std::vector<uint64_t>& chunk) {
  std::sort(chunk.begin(), chunk.end());
  std::vector<uint64_t> ck, cc;
  for (size_t i = 0; i < chunk.size();) {
    size_t j = i;
    while (j < chunk.size() && chunk[j] == chunk[i]) ++j;
    ck.push_back(chunk[i]);
    cc.push_back(j - i);
    i = j;
  }
  chunk.clear();
  std::vector<uint64_t> mk, mc;
  mk.reserve(keys.size() + ck.size());
  mc.reserve(keys.size() + ck.size());
  size_t a = 0, b = 0;
  while (a < keys.size() || b < ck.size()) {
    if (b == ck.size() || (a < keys.size() && keys[a] < ck[b])) {
      mk.push_back(keys[a]);
      mc.push_back(counts[a++]);
    } else if (a == keys.size() || ck[b] < keys[a]) {
      mk.push_back(ck[b]);
      mc.push_back(cc[b++]);
    } else {
      mk.push_back(keys[a]);
      mc.push_back(counts[a++] + cc[b++]);
    }
  }
  keys.swap(mk);
  counts.swap(mc);
}

uint64_t key(uint32_t prev, uint32_t next) {
  return uint64_t(prev) << 32 | next;
}

}  // namespace

BigramModel::BigramModel(const std::vector<std::span<const uint32_t>>& pieces, int64_t vocab_size,
                         double discount)
    : vocab_(vocab_size), d_(discount) {
  DSV3_CHECK(vocab_size > 0 && vocab_size <= (int64_t(1) << 32),
             "bigram: vocabulary size {} is out of range", vocab_size);
  DSV3_CHECK(discount > 0 && discount <= 1, "bigram: the discount must be in (0, 1], got {}",
             discount);
  constexpr size_t kChunk = size_t(1) << 24;
  std::vector<uint64_t> chunk;
  bool have_prev = false;
  uint32_t prev = 0;
  for (const auto& piece : pieces) {
    for (uint32_t t : piece) {
      DSV3_CHECK(int64_t(t) < vocab_size,
                 "bigram: token id {} is outside the vocabulary of {} (wrong vocab_size?)", t,
                 vocab_size);
      if (have_prev) {
        chunk.push_back(key(prev, t));
        if (chunk.size() == kChunk) merge_counts(keys_, counts_, chunk);
      }
      prev = t;
      have_prev = true;
    }
  }
  if (!chunk.empty()) merge_counts(keys_, counts_, chunk);
  DSV3_CHECK(!keys_.empty(), "bigram: the training stream has fewer than 2 tokens");

  const size_t V = size_t(vocab_size);
  ctx_total_.assign(V, 0);
  ctx_types_.assign(V, 0);
  std::vector<int64_t> cont_types(V, 0);  // N1+(• w)
  for (size_t i = 0; i < keys_.size(); ++i) {
    const size_t v = size_t(keys_[i] >> 32), w = size_t(keys_[i] & 0xffffffffu);
    ctx_total_[v] += int64_t(counts_[i]);
    ctx_types_[v] += 1;
    cont_types[w] += 1;
    n_bigrams_ += int64_t(counts_[i]);
  }
  const double all_types = double(keys_.size());  // N1+(• •)
  int64_t seen = 0;                               // W
  for (int64_t n : cont_types) seen += n > 0;
  const double uniform_mass = d_ * double(seen) / all_types / double(vocab_size);
  cont_.resize(V);
  for (size_t w = 0; w < V; ++w)
    cont_[w] = std::max(double(cont_types[w]) - d_, 0.0) / all_types + uniform_mass;
}

int64_t BigramModel::count(uint32_t prev, uint32_t next) const {
  const auto it = std::lower_bound(keys_.begin(), keys_.end(), key(prev, next));
  return it != keys_.end() && *it == key(prev, next) ? int64_t(counts_[size_t(it - keys_.begin())])
                                                     : 0;
}

double BigramModel::prob(uint32_t prev, uint32_t next) const {
  DSV3_CHECK(int64_t(prev) < vocab_ && int64_t(next) < vocab_,
             "bigram: token id {} is outside the vocabulary of {}", std::max(prev, next), vocab_);
  const double total = double(ctx_total_[prev]);
  if (total == 0) return cont_[next];
  const double c = double(count(prev, next));
  return std::max(c - d_, 0.0) / total + d_ * double(ctx_types_[prev]) / total * cont_[next];
}

double BigramModel::cross_entropy(const std::vector<std::span<const uint32_t>>& pieces) const {
  double nll = 0;
  int64_t n = 0;
  bool have_prev = false;
  uint32_t prev = 0;
  for (const auto& piece : pieces) {
    for (uint32_t t : piece) {
      if (have_prev) {
        nll -= std::log(prob(prev, t));
        ++n;
      }
      prev = t;
      have_prev = true;
    }
  }
  DSV3_CHECK(n > 0, "bigram: the evaluation stream has fewer than 2 tokens");
  return nll / double(n);
}

BigramResult bigram_baseline(const std::string& data_dir, double discount) {
  const SplitShards train_split = open_split(data_dir, "train");
  const auto& train = train_split.shards;
  const auto val = open_split(data_dir, "val").shards;
  auto spans = [](const std::vector<std::shared_ptr<TokenShard>>& shards, int64_t& tokens) {
    std::vector<std::span<const uint32_t>> s;
    for (const auto& sh : shards) {
      s.emplace_back(sh->tokens(), size_t(sh->size()));
      tokens += sh->size();
    }
    return s;
  };
  BigramResult r;
  const auto train_spans = spans(train, r.train_tokens), val_spans = spans(val, r.val_tokens);
  DSV3_CHECK(r.val_tokens >= 2,
             "the val split of {} has {} tokens: prepare the data with --val-fraction > 0",
             data_dir, r.val_tokens);
  r.vocab_size = train_split.vocab_size;
  if (r.vocab_size <= 0) {
    uint32_t max_id = 0;
    for (const auto* s : {&train_spans, &val_spans})
      for (const auto& sp : *s)
        for (uint32_t t : sp) max_id = std::max(max_id, t);
    r.vocab_size = int64_t(max_id) + 1;
  }
  const BigramModel m(train_spans, r.vocab_size, discount);
  r.distinct_bigrams = m.distinct_bigrams();
  r.val_loss = m.cross_entropy(val_spans);
  r.perplexity = std::exp(r.val_loss);
  return r;
}

}  // namespace dsv3::train
