#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace dsv3 {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A header this large is not a checkpoint header; refusing it early avoids a huge JSON parse
// of a corrupt length field. The HF library uses the same bound.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

std::string errno_str(int e) {
  return std::strerror(e);
}

// An fd that closes itself, so every error path releases it.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

// Reads a non-negative JSON integer that fits in int64 (nlohmann stores large values as
// unsigned and fractional ones as float; both are format errors here).
bool json_to_nonneg(const json& v, int64_t* out, bool* negative) {
  *negative = false;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) return false;
    *out = int64_t(u);
    return true;
  }
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
    *negative = *out < 0;
    return !*negative;
  }
  return false;
}

void write_all(int fd, const char* p, size_t n, const std::string& tmp) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("cannot write {}: {} (is the disk full?)", tmp, errno_str(errno));
    }
    p += w;
    n -= size_t(w);
  }
}

// Writes a file through PATH.tmp + fsync + rename so that readers never see a partial file
// and a failure (full disk, crash) leaves the old PATH as it was. `produce` streams the bytes
// through the callback it is given, so large checkpoints are never held in memory twice.
void write_atomic_streamed(
    const std::string& path,
    const std::function<void(const std::function<void(const char*, size_t)>&)>& produce) {
  const std::string tmp = path + ".tmp";
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.fd < 0) fail("cannot create {}: {}", tmp, errno_str(errno));
  try {
    produce([&](const char* p, size_t n) { write_all(fd.fd, p, n, tmp); });
    if (::fsync(fd.fd) != 0) fail("cannot fsync {}: {}", tmp, errno_str(errno));
    const int fdv = fd.fd;
    fd.fd = -1;
    // close can report a delayed write error (NFS, quotas): it counts as a failed write.
    if (::close(fdv) != 0) fail("cannot close {}: {}", tmp, errno_str(errno));
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      fail("cannot rename {} to {}: {}", tmp, path, errno_str(errno));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Persist the rename itself; failing here does not make the new file wrong, so it is ignored.
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.fd >= 0) (void)::fsync(dfd.fd);
}

}  // namespace

// ---------------------------------------------------------------- SafetensorsFile

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.fd < 0) fail("cannot open safetensors file {}: {}", path, errno_str(errno));
    struct stat st {};
    if (::fstat(fd.fd, &st) != 0) fail("cannot stat {}: {}", path, errno_str(errno));
    DSV3_CHECK(S_ISREG(st.st_mode), "safetensors file {} is not a regular file", path);
    f->size_ = size_t(st.st_size);
    DSV3_CHECK(f->size_ >= 8,
               "safetensors file {} is {} bytes, shorter than the 8-byte header length: the "
               "file is truncated or not a safetensors file",
               path, f->size_);
    void* m = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd.fd, 0);
    if (m == MAP_FAILED) fail("cannot mmap {}: {}", path, errno_str(errno));
    const size_t sz = f->size_;
    f->mapping_ = std::shared_ptr<void>(m, [sz](void* p) { ::munmap(p, sz); });
    f->base_ = static_cast<const char*>(m);
  }

  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | uint8_t(f->base_[i]);
  DSV3_CHECK(hlen <= kMaxHeaderBytes,
             "safetensors file {}: header length {} is larger than the 100 MB limit: the file "
             "is corrupt or not a safetensors file",
             path, hlen);
  DSV3_CHECK(hlen <= f->size_ - 8,
             "safetensors file {}: header length {} exceeds the file size {}: the file is "
             "truncated or corrupt",
             path, hlen, f->size_);
  const size_t data_start = 8 + size_t(hlen);
  const size_t data_len = f->size_ - data_start;

  json header;
  try {
    header = json::parse(f->base_ + 8, f->base_ + data_start);
  } catch (const json::exception& e) {
    fail("safetensors file {}: header is not valid JSON ({})", path, e.what());
  }
  DSV3_CHECK(header.is_object(), "safetensors file {}: header is a JSON {}, not an object", path,
             header.type_name());

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      DSV3_CHECK(v.is_object(), "safetensors file {}: __metadata__ is not a JSON object", path);
      for (auto m = v.begin(); m != v.end(); ++m) {
        DSV3_CHECK(m.value().is_string(),
                   "safetensors file {}: __metadata__ value of '{}' is a {}, expected a string",
                   path, m.key(), m.value().type_name());
        f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    DSV3_CHECK(v.is_object(), "safetensors file {}: tensor '{}': entry is not a JSON object", path,
               name);
    for (const char* key : {"dtype", "shape", "data_offsets"})
      DSV3_CHECK(v.contains(key), "safetensors file {}: tensor '{}': missing '{}'", path, name,
                 key);
    const json& jd = v["dtype"];
    const json& js = v["shape"];
    const json& jo = v["data_offsets"];
    DSV3_CHECK(jd.is_string(), "safetensors file {}: tensor '{}': dtype is not a string", path,
               name);
    DSV3_CHECK(js.is_array(), "safetensors file {}: tensor '{}': shape is not an array", path,
               name);
    DSV3_CHECK(jo.is_array() && jo.size() == 2,
               "safetensors file {}: tensor '{}': data_offsets is not an array [begin, end]", path,
               name);

    Entry e{};
    const std::string dt = jd.get<std::string>();
    DSV3_CHECK(dtype_from_name(dt, &e.dtype),
               "safetensors file {}: tensor '{}': unknown dtype '{}' (supported: F32, F16, BF16, "
               "F8_E4M3, F8_E5M2, I32, I64, U8, BOOL)",
               path, name, dt);

    // numel * element size with overflow checks: a corrupt shape must not wrap around to a
    // size that happens to match the offsets.
    uint64_t bytes = dtype_size(e.dtype);
    for (const json& d : js) {
      int64_t dim = 0;
      bool neg = false;
      if (!json_to_nonneg(d, &dim, &neg)) {
        DSV3_CHECK(!neg, "safetensors file {}: tensor '{}': negative dimension in shape {}", path,
                   name, js.dump());
        fail("safetensors file {}: tensor '{}': shape {} is not a list of integers", path, name,
             js.dump());
      }
      e.shape.push_back(dim);
      DSV3_CHECK(!__builtin_mul_overflow(bytes, uint64_t(dim), &bytes),
                 "safetensors file {}: tensor '{}': shape {} is too large (size overflows)", path,
                 name, js.dump());
    }
    DSV3_CHECK(bytes <= uint64_t(std::numeric_limits<int64_t>::max()),
               "safetensors file {}: tensor '{}': shape {} is too large (size overflows)", path,
               name, js.dump());

    int64_t b = 0, en = 0;
    bool nb = false, ne = false;
    DSV3_CHECK(json_to_nonneg(jo[0], &b, &nb) && json_to_nonneg(jo[1], &en, &ne),
               "safetensors file {}: tensor '{}': data_offsets {} are not non-negative integers",
               path, name, jo.dump());
    DSV3_CHECK(en >= b, "safetensors file {}: tensor '{}': data_offsets {} end before they begin",
               path, name, jo.dump());
    DSV3_CHECK(uint64_t(en) <= data_len,
               "safetensors file {}: tensor '{}': data_offsets {} run past the end of the data "
               "({} bytes): the file is truncated or corrupt",
               path, name, jo.dump(), data_len);
    DSV3_CHECK(uint64_t(en - b) == bytes,
               "safetensors file {}: tensor '{}': data_offsets {} hold {} bytes but dtype {} and "
               "shape {} need {}",
               path, name, jo.dump(), en - b, dt, shape_str(e.shape), bytes);
    e.begin = data_start + size_t(b);
    e.end = data_start + size_t(en);
    f->entries_.emplace(name, std::move(e));
  }

  // Overlapping tensors would alias each other's bytes: the file is corrupt.
  std::vector<std::pair<const std::string*, const Entry*>> order;
  order.reserve(f->entries_.size());
  for (const auto& [n, e] : f->entries_) order.emplace_back(&n, &e);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return a.second->begin != b.second->begin ? a.second->begin < b.second->begin
                                              : a.second->end < b.second->end;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    DSV3_CHECK(order[i - 1].second->end <= order[i].second->begin,
               "safetensors file {}: tensors '{}' and '{}' have overlapping data_offsets: the "
               "file is corrupt",
               path, *order[i - 1].first, *order[i].first);
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() = default;

Tensor SafetensorsFile::get(const std::string& name) const {
  auto it = entries_.find(name);
  DSV3_CHECK(it != entries_.end(), "safetensors file {} has no tensor {}", path_, name);
  const Entry& e = it->second;
  const char* p = base_ + e.begin;
  // Files written by other tools may place a tensor at an offset that is not a multiple of
  // its element size; typed access to it would be undefined, so such a tensor is copied.
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) != 0) {
    Tensor t = Tensor::zeros(e.dtype, e.shape);
    std::memcpy(t.data(), p, e.end - e.begin);
    return t;
  }
  // The mapping is read-only (PROT_READ): writing through this view faults, which is the
  // intent; Tensor has no const-data flavour.
  return Tensor::wrap(e.dtype, e.shape, const_cast<char*>(p), mapping_);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> r;
  r.reserve(entries_.size());
  for (const auto& kv : entries_) r.push_back(kv.first);
  return r;
}

// ---------------------------------------------------------------- TensorStore

TensorStore TensorStore::open(const std::string& path) {
  TensorStore s;
  s.path_ = path;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  DSV3_CHECK(!ec && fs::exists(st), "checkpoint {} does not exist", path);

  if (!fs::is_directory(st)) {
    s.files_.push_back(SafetensorsFile::open(path));
    for (const std::string& n : s.files_[0]->names()) s.where_[n] = 0;
    return s;
  }

  const fs::path index_path = fs::path(path) / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    const std::string ip = index_path.string();
    json index;
    {
      std::string text;
      Fd fd(::open(ip.c_str(), O_RDONLY | O_CLOEXEC));
      if (fd.fd < 0) fail("cannot open {}: {}", ip, errno_str(errno));
      char buf[65536];
      for (;;) {
        const ssize_t r = ::read(fd.fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) fail("cannot read {}: {}", ip, errno_str(errno));
        if (r == 0) break;
        text.append(buf, size_t(r));
      }
      try {
        index = json::parse(text);
      } catch (const json::exception& e) {
        fail("index {} is not valid JSON ({})", ip, e.what());
      }
    }
    DSV3_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
               "index {} has no \"weight_map\" object", ip);
    std::map<std::string, size_t> shard_index;  // file name -> index into files_
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      DSV3_CHECK(it.value().is_string(), "index {}: weight_map entry of '{}' is not a string", ip,
                 it.key());
      const std::string shard = it.value().get<std::string>();
      // Shards live next to the index; a path here is corrupt or hostile.
      DSV3_CHECK(
          !shard.empty() && shard.find('/') == std::string::npos && shard != "." && shard != "..",
          "index {}: shard name '{}' of tensor {} is not a file name", ip, shard, it.key());
      auto [si, inserted] = shard_index.emplace(shard, s.files_.size());
      if (inserted) {
        const fs::path sp = fs::path(path) / shard;
        DSV3_CHECK(fs::exists(sp), "index {} references shard {}, which is missing from {}", ip,
                   shard, path);
        s.files_.push_back(SafetensorsFile::open(sp.string()));
      }
      DSV3_CHECK(s.files_[si->second]->has(it.key()),
                 "index {} places tensor {} in shard {}, which does not contain it", ip, it.key(),
                 shard);
      s.where_[it.key()] = si->second;
    }
    return s;
  }

  std::vector<std::string> files;
  for (const auto& de : fs::directory_iterator(path, ec)) {
    if (de.path().extension() == ".safetensors" && de.is_regular_file())
      files.push_back(de.path().string());
  }
  DSV3_CHECK(!ec, "cannot list checkpoint directory {}: {}", path, ec.message());
  DSV3_CHECK(!files.empty(), "no .safetensors files in {}", path);
  std::sort(files.begin(), files.end());
  for (const std::string& fp : files) {
    s.files_.push_back(SafetensorsFile::open(fp));
    const size_t idx = s.files_.size() - 1;
    for (const std::string& n : s.files_.back()->names()) {
      auto [it, inserted] = s.where_.emplace(n, idx);
      DSV3_CHECK(inserted, "checkpoint {}: tensor {} is in both {} and {}", path, n,
                 s.files_[it->second]->path(), fp);
    }
  }
  return s;
}

Tensor TensorStore::get(const std::string& name) const {
  auto it = where_.find(name);
  DSV3_CHECK(it != where_.end(), "checkpoint {} has no tensor {}", path_, name);
  return files_[it->second]->get(name);
}

Tensor TensorStore::get(const std::string& name, const Shape& expected) const {
  Tensor t = get(name);
  DSV3_CHECK(t.shape() == expected, "tensor {} in {} has shape {}, expected {}", name,
             file_of(name), shape_str(t.shape()), shape_str(expected));
  return t;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> r;
  r.reserve(where_.size());
  for (const auto& kv : where_) r.push_back(kv.first);
  return r;
}

std::string TensorStore::file_of(const std::string& name) const {
  auto it = where_.find(name);
  DSV3_CHECK(it != where_.end(), "checkpoint {} has no tensor {}", path_, name);
  return files_[it->second]->path();
}

// ---------------------------------------------------------------- SafetensorsWriter

void SafetensorsWriter::add(const std::string& name, const Tensor& t) {
  DSV3_CHECK(!name.empty() && name != "__metadata__",
             "safetensors writer: invalid tensor name '{}'", name);
  DSV3_CHECK(t.defined(), "safetensors writer: tensor {} is undefined", name);
  DSV3_CHECK(t.device().is_cpu(), "safetensors writer: tensor {} is on {}, copy it to the CPU",
             name, t.device().str());
  for (const auto& kv : tensors_)
    DSV3_CHECK(kv.first != name, "safetensors writer: tensor {} added twice", name);
  tensors_.emplace_back(name, t);
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

size_t SafetensorsWriter::total_bytes() const {
  size_t n = 0;
  for (const auto& kv : tensors_) n += kv.second.nbytes();
  return n;
}

namespace {

using TensorList = std::vector<const std::pair<std::string, Tensor>*>;

// Header bytes (length prefix included) for `list`, padded with spaces so the data starts
// 8-byte aligned, as the HF library does: mmapped tensors then keep their natural alignment.
std::string make_header(const TensorList& list, const std::map<std::string, std::string>& meta) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!meta.empty()) h["__metadata__"] = meta;
  size_t off = 0;
  for (const auto* kv : list) {
    const Tensor& t = kv->second;
    nlohmann::ordered_json e;
    e["dtype"] = std::string(dtype_name(t.dtype()));
    e["shape"] = t.shape();
    e["data_offsets"] = {off, off + t.nbytes()};
    off += t.nbytes();
    h[kv->first] = std::move(e);
  }
  std::string js = h.dump();
  js.append((8 - (8 + js.size()) % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = js.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return out + js;
}

void write_list(const std::string& path, const TensorList& unordered,
                const std::map<std::string, std::string>& meta) {
  // Widest dtypes first (as the HF safetensors library does): with the 8-byte aligned data
  // start, every tensor then sits at an offset aligned to its element size.
  TensorList list = unordered;
  std::stable_sort(list.begin(), list.end(), [](const auto* a, const auto* b) {
    return dtype_size(a->second.dtype()) > dtype_size(b->second.dtype());
  });
  const std::string header = make_header(list, meta);
  write_atomic_streamed(path, [&](const std::function<void(const char*, size_t)>& out) {
    out(header.data(), header.size());
    for (const auto* kv : list)
      out(static_cast<const char*>(kv->second.data()), kv->second.nbytes());
  });
}

}  // namespace

void SafetensorsWriter::write(const std::string& path) const {
  TensorList list;
  for (const auto& kv : tensors_) list.push_back(&kv);
  write_list(path, list, metadata_);
}

void SafetensorsWriter::write_sharded(const std::string& dir, size_t max_shard_bytes) const {
  std::error_code ec;
  fs::create_directories(dir, ec);
  DSV3_CHECK(!ec && fs::is_directory(dir), "cannot create checkpoint directory {}: {}", dir,
             ec ? ec.message() : "not a directory");

  // Greedy packing in the order added; a tensor larger than the limit gets a shard of its own.
  std::vector<TensorList> shards(1);
  size_t cur = 0;
  for (const auto& kv : tensors_) {
    const size_t n = kv.second.nbytes();
    if (!shards.back().empty() && cur + n > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(&kv);
    cur += n;
  }

  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  std::set<std::string> written;
  if (shards.size() == 1) {
    write_list((fs::path(dir) / "model.safetensors").string(), shards[0], metadata_);
    written.insert("model.safetensors");
    // A stale index from an earlier sharded save would take precedence over the new file.
    fs::remove(index_path, ec);
    DSV3_CHECK(!ec, "cannot remove the stale {}: {}", index_path.string(), ec.message());
  } else {
    json weight_map = json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string fname =
          fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
      write_list((fs::path(dir) / fname).string(), shards[i], metadata_);
      written.insert(fname);
      for (const auto* kv : shards[i]) weight_map[kv->first] = fname;
    }
    // nlohmann::json keeps keys sorted, matching the HF index (json.dumps(sort_keys=True)).
    json index = {{"metadata", {{"total_size", total_bytes()}}}, {"weight_map", weight_map}};
    write_file_atomic(index_path.string(), index.dump(2, ' ', true) + "\n");
  }
  // Checkpoint files of an earlier save into this directory would otherwise be read along
  // with the new ones (a directory without index is read whole). Removed only after the new
  // checkpoint is complete, and only names this writer produces.
  for (const auto& de : fs::directory_iterator(dir, ec)) {
    const std::string n = de.path().filename().string();
    const bool ours =
        n == "model.safetensors" || (n.size() == 32 && n.rfind("model-", 0) == 0 &&
                                     n.substr(11, 4) == "-of-" && n.substr(20) == ".safetensors");
    if (ours && !written.count(n)) {
      std::error_code rec;
      fs::remove(de.path(), rec);
      DSV3_CHECK(!rec, "cannot remove the stale checkpoint file {}: {}", de.path().string(),
                 rec.message());
    }
  }
}

void write_file_atomic(const std::string& path, const std::string& data) {
  write_atomic_streamed(path, [&](const std::function<void(const char*, size_t)>& out) {
    out(data.data(), data.size());
  });
}

}  // namespace dsv3
