// A token bigram language model: the baseline a trained model's validation loss is compared
// with (`dsv3 data bigram`). It scores the same targets the model is scored on: every token of
// the split's concatenated stream after the first, predicted from the one before it (across
// document and shard boundaries, as the DataLoader's windows run).
//
// Interpolated Kneser-Ney with absolute discount d (Chen & Goodman 1998, sec. 3.5), V the
// vocabulary size, c(v w) the training count of the bigram v w, c(v •) = Σ_w c(v w),
// N1+(v •) = #{w : c(v w) > 0}, N1+(• w) = #{v : c(v w) > 0}, N1+(• •) = #distinct bigrams,
// W = #{w : N1+(• w) > 0}:
//
//   P(w | v) = max(c(v w) - d, 0) / c(v •) + d N1+(v •) / c(v •) · P_cont(w)   (c(v •) > 0)
//   P(w | v) = P_cont(w)                                                      (c(v •) = 0)
//   P_cont(w) = max(N1+(• w) - d, 0) / N1+(• •) + d W / N1+(• •) · 1 / V
//
// The continuation unigram is itself discounted and interpolated with the uniform
// distribution, so a token never seen in training still has a finite loss; each P(· | v) sums
// to 1 over the vocabulary (for 0 < d ≤ 1).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace dsv3::train {

class BigramModel {
 public:
  // Fits on the stream made of `pieces` one after the other (a bigram may span two pieces).
  // Every token must be < vocab_size; counts are sparse (sorted distinct bigrams).
  BigramModel(const std::vector<std::span<const uint32_t>>& pieces, int64_t vocab_size,
              double discount = 0.75);

  double prob(uint32_t prev, uint32_t next) const;
  // Mean -ln P(t[i+1] | t[i]) over the concatenated stream (its length - 1 predictions).
  double cross_entropy(const std::vector<std::span<const uint32_t>>& pieces) const;

  int64_t count(uint32_t prev, uint32_t next) const;  // c(prev next)
  int64_t vocab_size() const { return vocab_; }
  int64_t training_bigrams() const { return n_bigrams_; }
  int64_t distinct_bigrams() const { return int64_t(keys_.size()); }
  double discount() const { return d_; }

 private:
  int64_t vocab_ = 0, n_bigrams_ = 0;
  double d_ = 0.75;
  std::vector<uint64_t> keys_;      // prev << 32 | next, sorted, distinct
  std::vector<uint64_t> counts_;    // c(prev next) for each key
  std::vector<int64_t> ctx_total_;  // c(v •)
  std::vector<int64_t> ctx_types_;  // N1+(v •)
  std::vector<double> cont_;        // P_cont(w)
};

struct BigramResult {
  int64_t vocab_size = 0;
  int64_t train_tokens = 0, val_tokens = 0;  // tokens in each split's stream
  int64_t distinct_bigrams = 0;
  double val_loss = 0;  // nats per predicted token (val_tokens - 1 predictions)
  double perplexity = 0;
};

// Fits on DIR's train split and evaluates on its val split (a `dsv3 data prepare` directory:
// meta.json and its shards). The vocabulary is meta.json's vocab_size, or the largest token
// id + 1 when it names none.
BigramResult bigram_baseline(const std::string& data_dir, double discount = 0.75);

}  // namespace dsv3::train
