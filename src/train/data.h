// Training data: `dsv3 data prepare` tokenises documents into token shards, and DataLoader
// packs them into fixed-length sequences in a seeded, resumable order.
//
// Shard format (little-endian): "DSV3TOK1" | u32 version (1) | u32 reserved | u64 n_tokens |
// u64 n_docs | u32 tokens[n_tokens] | u64 doc_starts[n_docs]. Every document ends with the
// EOS token. meta.json beside the shards records the tokenizer, counts and split.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dsv3 {
class Tokenizer;
}

namespace dsv3::train {

struct PrepareOptions {
  double val_fraction = 0.05;        // share of documents held out for validation
  uint64_t seed = 0;                 // which documents are held out
  bool lines_are_documents = false;  // .txt: each non-empty line is a document
  int64_t shard_tokens = int64_t(1) << 26;
};

struct PrepareStats {
  int64_t train_tokens = 0, val_tokens = 0, train_docs = 0, val_docs = 0;
  std::vector<std::string> train_shards, val_shards;
};

// Reads .txt / .jsonl ("text" field per line) files, tokenises (all cores), appends EOS after
// every document, splits documents into train/val, and writes OUT/{train,val}-NNNNN.bin and
// OUT/meta.json (atomically).
PrepareStats prepare_data(const Tokenizer& tok, const std::vector<std::string>& inputs,
                          const std::string& out_dir, const PrepareOptions& opt);

// Writes one shard (the format above) atomically; prepare_data's writer, public for tools and
// tests that make token data without a tokenizer.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens,
                 const std::vector<uint64_t>& doc_starts);

// One memory-mapped shard, validated on open (a clear error names the file).
class TokenShard {
 public:
  static std::shared_ptr<TokenShard> open(const std::string& path);
  ~TokenShard();
  int64_t size() const { return n_tokens_; }
  const uint32_t* tokens() const { return tokens_; }
  int64_t docs() const { return n_docs_; }
  const uint64_t* doc_starts() const { return doc_starts_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t bytes_ = 0;
  int64_t n_tokens_ = 0, n_docs_ = 0;
  const uint32_t* tokens_ = nullptr;
  const uint64_t* doc_starts_ = nullptr;
};

// One split ("train" / "val") of a `dsv3 data prepare` directory: its shards in order (opened
// and validated) and the vocabulary size meta.json records (0 if absent). Errors name the
// file and say how to make one.
struct SplitShards {
  std::vector<std::shared_ptr<TokenShard>> shards;
  int64_t vocab_size = 0;
};
SplitShards open_split(const std::string& data_dir, const std::string& split);

// The split's shards as one token stream cut into windows of seq_len + 1 tokens (inputs and
// the next-token targets), visited in a seeded shuffled order, epoch after epoch.
class DataLoader {
 public:
  // split: "train" or "val"; vocab_size checks every token once (a mismatched tokenizer or a
  // corrupt shard is an error here, not garbage later).
  DataLoader(const std::string& data_dir, const std::string& split, int64_t seq_len, uint64_t seed,
             int64_t vocab_size);

  struct Batch {
    Tensor inputs;   // I32 [B, T]
    Tensor targets;  // I32 [B, T]: inputs shifted by one
  };
  Batch next(int64_t batch_size);

  int64_t windows() const { return windows_; }
  int64_t seq_len() const { return seq_len_; }
  int64_t tokens() const { return total_; }
  // Resumable position: (epoch, index into the epoch's order).
  struct Position {
    int64_t epoch = 0, index = 0;
  };
  Position position() const { return pos_; }
  void seek(Position p);

 private:
  int64_t window_at(int64_t i) const;  // i-th window of the current epoch's order
  void reshuffle();
  uint32_t token(int64_t global) const;

  std::vector<std::shared_ptr<TokenShard>> shards_;
  std::vector<int64_t> offsets_;  // first global token of each shard
  int64_t total_ = 0, seq_len_ = 0, windows_ = 0;
  uint64_t seed_ = 0;
  Position pos_;
  std::vector<int64_t> order_;
};

}  // namespace dsv3::train
