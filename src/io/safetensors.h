// safetensors (MODEL_SPEC §7): 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets [begin, end)}, "__metadata__": {...}}, then the data.
// Files are memory-mapped and tensors are zero-copy views into the mapping.
// Every malformed input (bad header, overlapping or out-of-range offsets, unknown dtype,
// size that does not match the shape, truncated file) is a dsv3::Error naming the file and
// the tensor.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dsv3 {

class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  // A view of the tensor; keeps the mapping alive.
  Tensor get(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    size_t begin, end;  // absolute file offsets
  };
  SafetensorsFile() = default;
  std::string path_;
  std::shared_ptr<void> mapping_;  // munmap on release
  const char* base_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint: a directory with model.safetensors.index.json (sharded) or *.safetensors
// files, or a single .safetensors file. Tensor names are unique across shards.
class TensorStore {
 public:
  static TensorStore open(const std::string& path);
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  // Throws "checkpoint DIR has no tensor NAME" when missing.
  Tensor get(const std::string& name) const;
  // get() plus a shape check: "tensor NAME in FILE has shape [..], expected [..]".
  Tensor get(const std::string& name, const Shape& expected) const;
  std::vector<std::string> names() const;
  std::string file_of(const std::string& name) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // name -> index into files_
};

// Writes safetensors files. Tensors are laid out widest dtype first (in the order added within
// a width, as the HF library does) so each is aligned to its element size; 8-byte aligned header,
// offsets contiguous. Files are written atomically: to PATH.tmp, fsync, rename.
class SafetensorsWriter {
 public:
  void add(const std::string& name, const Tensor& t);  // CPU tensors; copied on write()
  void set_metadata(const std::string& key, const std::string& value);
  void write(const std::string& path) const;
  // Splits into shards of at most max_shard_bytes (one tensor never splits) named
  // model-00001-of-0000N.safetensors, plus model.safetensors.index.json; with a single shard
  // writes model.safetensors and no index.
  void write_sharded(const std::string& dir, size_t max_shard_bytes) const;
  size_t total_bytes() const;

 private:
  std::vector<std::pair<std::string, Tensor>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes `data` to `path` atomically (temp file in the same directory, fsync, rename):
// a crash or a full disk leaves the old file intact. Throws on any failure.
void write_file_atomic(const std::string& path, const std::string& data);

}  // namespace dsv3
