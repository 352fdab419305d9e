#include "train/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include <fmt/format.h>

#include "core/error.h"
#include "core/threads.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace dsv3::train {

namespace {

constexpr char kMagic[8] = {'D', 'S', 'V', '3', 'T', 'O', 'K', '1'};
constexpr size_t kHeader = 8 + 4 + 4 + 8 + 8;

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::vector<std::string> read_documents(const std::string& path, bool lines) {
  std::ifstream in(path, std::ios::binary);
  DSV3_CHECK(in.good(), "cannot read input file {}", path);
  std::vector<std::string> docs;
  const bool jsonl = path.ends_with(".jsonl") || path.ends_with(".json");
  if (!jsonl && !lines) {
    std::stringstream ss;
    ss << in.rdbuf();
    if (!ss.str().empty()) docs.push_back(ss.str());
    return docs;
  }
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    if (!jsonl) {
      docs.push_back(line);
      continue;
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail("{}:{}: not valid JSON ({})", path, n, e.what());
    }
    DSV3_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(),
               "{}:{}: each JSONL line must be an object with a string \"text\"", path, n);
    docs.push_back(j["text"].get<std::string>());
  }
  return docs;
}

}  // namespace

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens,
                 const std::vector<uint64_t>& starts) {
  std::string buf(kHeader, '\0');
  std::memcpy(buf.data(), kMagic, 8);
  const uint32_t version = 1, reserved = 0;
  const uint64_t nt = tokens.size(), nd = starts.size();
  std::memcpy(buf.data() + 8, &version, 4);
  std::memcpy(buf.data() + 12, &reserved, 4);
  std::memcpy(buf.data() + 16, &nt, 8);
  std::memcpy(buf.data() + 24, &nd, 8);
  buf.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 4);
  buf.append(reinterpret_cast<const char*>(starts.data()), starts.size() * 8);
  write_file_atomic(path, buf);
}

PrepareStats prepare_data(const Tokenizer& tok, const std::vector<std::string>& inputs,
                          const std::string& out_dir, const PrepareOptions& opt) {
  DSV3_CHECK(!inputs.empty(), "data prepare: no input files");
  DSV3_CHECK(opt.val_fraction >= 0 && opt.val_fraction < 1,
             "--val-fraction must be in [0, 1), got {}", opt.val_fraction);
  DSV3_CHECK(tok.eos_id() >= 0, "the tokenizer names no EOS token to end documents with");
  std::vector<std::string> docs;
  for (const std::string& f : inputs) {
    auto d = read_documents(f, opt.lines_are_documents);
    docs.insert(docs.end(), std::make_move_iterator(d.begin()), std::make_move_iterator(d.end()));
  }
  DSV3_CHECK(!docs.empty(), "data prepare: the inputs hold no text");
  std::vector<std::vector<int32_t>> ids(docs.size());
  parallel_for(int64_t(docs.size()), [&](int64_t a, int64_t b, int) {
    for (int64_t i = a; i < b; ++i) ids[size_t(i)] = tok.encode(docs[size_t(i)], false);
  });

  fs::create_directories(out_dir);
  PrepareStats st;
  const uint32_t eos = uint32_t(tok.eos_id());
  for (const bool val : {false, true}) {
    std::vector<uint32_t> tokens;
    std::vector<uint64_t> starts;
    int shard = 0;
    auto flush = [&] {
      if (tokens.empty()) return;
      const std::string name = fmt::format("{}-{:05d}.bin", val ? "val" : "train", shard++);
      write_shard((fs::path(out_dir) / name).string(), tokens, starts);
      (val ? st.val_shards : st.train_shards).push_back(name);
      tokens.clear();
      starts.clear();
    };
    for (size_t i = 0; i < docs.size(); ++i) {
      // A document's split depends only on the seed and its index.
      const bool is_val =
          double(splitmix(opt.seed ^ splitmix(i)) >> 11) * 0x1p-53 < opt.val_fraction;
      if (is_val != val) continue;
      starts.push_back(tokens.size());
      for (int32_t t : ids[i]) tokens.push_back(uint32_t(t));
      tokens.push_back(eos);
      (val ? st.val_docs : st.train_docs) += 1;
      (val ? st.val_tokens : st.train_tokens) += int64_t(ids[i].size()) + 1;
      if (int64_t(tokens.size()) >= opt.shard_tokens) flush();
    }
    flush();
  }
  DSV3_CHECK(st.train_tokens > 0, "data prepare: every document went to validation");
  nlohmann::json meta = {
      {"format", "dsv3 token shards v1"},
      {"vocab_size", tok.vocab_size()},
      {"eos_id", tok.eos_id()},
      {"val_fraction", opt.val_fraction},
      {"seed", opt.seed},
      {"train",
       {{"tokens", st.train_tokens}, {"docs", st.train_docs}, {"shards", st.train_shards}}},
      {"val", {{"tokens", st.val_tokens}, {"docs", st.val_docs}, {"shards", st.val_shards}}}};
  write_file_atomic((fs::path(out_dir) / "meta.json").string(), meta.dump(2) + "\n");
  return st;
}

std::shared_ptr<TokenShard> TokenShard::open(const std::string& path) {
  auto s = std::shared_ptr<TokenShard>(new TokenShard());
  s->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY);
  DSV3_CHECK(fd >= 0, "cannot open token shard {}: {}", path, std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  s->bytes_ = size_t(st.st_size);
  if (s->bytes_ < kHeader) {
    ::close(fd);
    fail("token shard {} is truncated ({} bytes): run dsv3 data prepare again", path, s->bytes_);
  }
  void* m = ::mmap(nullptr, s->bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  DSV3_CHECK(m != MAP_FAILED, "cannot map token shard {}", path);
  s->map_ = m;
  const char* p = static_cast<const char*>(m);
  DSV3_CHECK(std::memcmp(p, kMagic, 8) == 0, "{} is not a dsv3 token shard (bad magic)", path);
  uint32_t version;
  uint64_t nt, nd;
  std::memcpy(&version, p + 8, 4);
  std::memcpy(&nt, p + 16, 8);
  std::memcpy(&nd, p + 24, 8);
  DSV3_CHECK(version == 1, "token shard {} has version {}, this build reads 1", path, version);
  DSV3_CHECK(nt < (uint64_t(1) << 40) && nd <= nt && kHeader + nt * 4 + nd * 8 == s->bytes_,
             "token shard {} is corrupt: {} tokens and {} documents do not fit its {} bytes", path,
             nt, nd, s->bytes_);
  s->n_tokens_ = int64_t(nt);
  s->n_docs_ = int64_t(nd);
  s->tokens_ = reinterpret_cast<const uint32_t*>(p + kHeader);
  s->doc_starts_ = reinterpret_cast<const uint64_t*>(p + kHeader + nt * 4);
  return s;
}

TokenShard::~TokenShard() {
  if (map_) ::munmap(map_, bytes_);
}

SplitShards open_split(const std::string& data_dir, const std::string& split) {
  const fs::path meta_path = fs::path(data_dir) / "meta.json";
  std::ifstream in(meta_path);
  DSV3_CHECK(in.good(), "{} not found: prepare the data with `dsv3 data prepare`",
             meta_path.string());
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{} is not valid JSON: {}", meta_path.string(), e.what());
  }
  DSV3_CHECK(
      meta.contains(split) && meta[split].contains("shards") && meta[split]["shards"].is_array(),
      "{} lists no {} shards", meta_path.string(), split);
  SplitShards out;
  out.vocab_size = meta.value("vocab_size", int64_t(0));
  for (const auto& name : meta[split]["shards"]) {
    DSV3_CHECK(name.is_string(), "{}: shard names must be strings", meta_path.string());
    out.shards.push_back(TokenShard::open((fs::path(data_dir) / name.get<std::string>()).string()));
  }
  return out;
}

DataLoader::DataLoader(const std::string& data_dir, const std::string& split, int64_t seq_len,
                       uint64_t seed, int64_t vocab_size)
    : seq_len_(seq_len), seed_(seed) {
  DSV3_CHECK(split == "train" || split == "val", "unknown data split '{}'", split);
  DSV3_CHECK(seq_len > 0, "sequence length must be positive, got {}", seq_len);
  SplitShards sp = open_split(data_dir, split);
  DSV3_CHECK(sp.vocab_size <= vocab_size,
             "{} was tokenised with a {}-token vocabulary but the model has {}: the tokenizer and "
             "the model do not match",
             data_dir, sp.vocab_size, vocab_size);
  for (auto& s : sp.shards) {
    for (int64_t i = 0; i < s->size(); ++i)
      DSV3_CHECK(int64_t(s->tokens()[i]) < vocab_size,
                 "token shard {} holds id {} at {}, outside the model's vocabulary of {}",
                 s->path(), s->tokens()[i], i, vocab_size);
    offsets_.push_back(total_);
    total_ += s->size();
    shards_.push_back(std::move(s));
  }
  windows_ = total_ > seq_len ? (total_ - 1) / seq_len : 0;
  DSV3_CHECK(windows_ > 0, "the {} split of {} has {} tokens, too few for one sequence of {}",
             split, data_dir, total_, seq_len + 1);
  reshuffle();
}

void DataLoader::reshuffle() {
  order_.resize(size_t(windows_));
  for (int64_t i = 0; i < windows_; ++i) order_[size_t(i)] = i;
  // Fisher–Yates with a generator fixed by (seed, epoch): the same order on every machine.
  uint64_t state = splitmix(seed_ ^ splitmix(uint64_t(pos_.epoch) + 1));
  for (int64_t i = windows_ - 1; i > 0; --i) {
    state = splitmix(state);
    std::swap(order_[size_t(i)], order_[size_t(state % uint64_t(i + 1))]);
  }
}

uint32_t DataLoader::token(int64_t g) const {
  const size_t s =
      size_t(std::upper_bound(offsets_.begin(), offsets_.end(), g) - offsets_.begin() - 1);
  return shards_[s]->tokens()[g - offsets_[s]];
}

DataLoader::Batch DataLoader::next(int64_t batch_size) {
  Batch b{Tensor::zeros(DType::I32, {batch_size, seq_len_}),
          Tensor::zeros(DType::I32, {batch_size, seq_len_})};
  for (int64_t r = 0; r < batch_size; ++r) {
    if (pos_.index >= windows_) {
      ++pos_.epoch;
      pos_.index = 0;
      reshuffle();
    }
    const int64_t start = order_[size_t(pos_.index++)] * seq_len_;
    for (int64_t t = 0; t < seq_len_; ++t) {
      b.inputs.ptr<int32_t>()[r * seq_len_ + t] = int32_t(token(start + t));
      b.targets.ptr<int32_t>()[r * seq_len_ + t] = int32_t(token(start + t + 1));
    }
  }
  return b;
}

void DataLoader::seek(Position p) {
  DSV3_CHECK(p.epoch >= 0 && p.index >= 0 && p.index <= windows_,
             "data position (epoch {}, index {}) is outside this data ({} sequences)", p.epoch,
             p.index, windows_);
  pos_ = p;
  reshuffle();
}

}  // namespace dsv3::train
