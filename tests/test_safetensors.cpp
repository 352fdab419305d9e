// safetensors reader/writer tests. The reference for the format is the published spec
// (8-byte little-endian header length, JSON header, byte buffer with offsets relative to it):
// files are hand-built byte by byte here and the writer's output is checked by an independent
// minimal parser, so a bug shared by our reader and writer cannot hide.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((v >> (8 * i)) & 0xff);
  return s;
}

// A file as the spec lays it out: length prefix, header text, data.
std::string st_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

// Runs `fn`, expects a dsv3::Error and returns its message ("" if none was thrown).
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "dsv3_st_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string p(const std::string& name) const { return (fs::path(dir_) / name).string(); }
  std::string dir_;
};

// Deterministic distinct bytes so a misplaced offset shows up as a mismatch.
Tensor patterned(DType dt, Shape shape, uint8_t seed) {
  Tensor t = Tensor::zeros(dt, std::move(shape));
  auto* b = static_cast<uint8_t*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i) b[i] = uint8_t(seed + i * 37 + (i >> 8));
  if (dt == DType::BOOL)
    for (size_t i = 0; i < t.nbytes(); ++i) b[i] &= 1;
  return t;
}

const DType kAllDtypes[] = {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3, DType::F8_E5M2,
                            DType::I32, DType::I64, DType::U8,   DType::BOOL};

using SafetensorsRoundTrip = SafetensorsTest;

TEST_F(SafetensorsRoundTrip, EveryDtypeAndShapeWithIndependentParse) {
  SafetensorsWriter w;
  std::vector<std::pair<std::string, Tensor>> added;
  const std::vector<Shape> shapes = {{3, 5}, {}, {0}, {2, 0, 3}, {7}};
  uint8_t seed = 1;
  for (DType dt : kAllDtypes) {
    for (size_t si = 0; si < shapes.size(); ++si) {
      const std::string name = fmt::format("z.{}.{}", dtype_name(dt), si);  // not sorted order
      Tensor t = patterned(dt, shapes[si], seed++);
      w.add(name, t);
      added.emplace_back(name, t);
    }
  }
  w.set_metadata("format", "pt");
  w.set_metadata("note", "ünïcode \"quoted\"");
  const std::string path = p("rt.safetensors");
  w.write(path);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  // Independent parse of the bytes on disk.
  const std::string raw = read_all(path);
  ASSERT_GE(raw.size(), 8u);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | uint8_t(raw[size_t(i)]);
  ASSERT_LE(8 + hlen, raw.size());
  EXPECT_EQ((8 + hlen) % 8, 0u) << "data must start 8-byte aligned";
  const std::string htext = raw.substr(8, hlen);
  EXPECT_EQ(htext.find_last_not_of(' ') + 1, htext.find_last_of('}') + 1)
      << "padding must be spaces after the JSON";
  const json h = json::parse(htext);
  EXPECT_EQ(h["__metadata__"]["format"], "pt");
  EXPECT_EQ(h["__metadata__"]["note"], "ünïcode \"quoted\"");
  // The writer lays tensors out widest dtype first (stable within a width), so each one is
  // aligned to its element size; check that order, contiguity and alignment.
  auto written = added;
  std::stable_sort(written.begin(), written.end(), [](const auto& a, const auto& b) {
    return dtype_size(a.second.dtype()) > dtype_size(b.second.dtype());
  });
  size_t expect_off = 0, last_pos = 0;
  for (const auto& [name, t] : written) {
    const json& e = h.at(name);
    EXPECT_EQ(e["dtype"], std::string(dtype_name(t.dtype())));
    EXPECT_EQ(e["shape"].get<Shape>(), t.shape());
    const size_t b = e["data_offsets"][0], en = e["data_offsets"][1];
    EXPECT_EQ(b, expect_off) << name << ": offsets must be contiguous";
    EXPECT_EQ(en - b, t.nbytes()) << name;
    expect_off = en;
    EXPECT_EQ((8 + hlen + b) % dtype_size(t.dtype()), 0u) << name << ": misaligned";
    EXPECT_EQ(0, std::memcmp(raw.data() + 8 + hlen + b, t.data(), t.nbytes())) << name;
    const size_t pos = htext.find("\"" + name + "\"");  // layout order, in the header text
    EXPECT_GT(pos, last_pos) << name;
    last_pos = pos;
  }
  EXPECT_EQ(8 + hlen + expect_off, raw.size());
  EXPECT_EQ(w.total_bytes(), expect_off);

  // Our reader.
  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->names().size(), added.size());
  EXPECT_EQ(f->metadata().at("note"), "ünïcode \"quoted\"");
  for (const auto& [name, t] : added) {
    ASSERT_TRUE(f->has(name));
    const Tensor r = f->get(name);
    EXPECT_EQ(r.dtype(), t.dtype()) << name;
    EXPECT_EQ(r.shape(), t.shape()) << name;
    ASSERT_EQ(r.nbytes(), t.nbytes()) << name;
    EXPECT_EQ(0, std::memcmp(r.data(), t.data(), t.nbytes())) << name;
  }
}

TEST_F(SafetensorsRoundTrip, ViewsOutliveFileObjectAndEmptyFileIsFine) {
  SafetensorsWriter w;
  w.add("x", patterned(DType::F32, {4}, 9));
  w.write(p("a.safetensors"));
  Tensor view;
  {
    auto f = SafetensorsFile::open(p("a.safetensors"));
    view = f->get("x");
  }
  // The mapping must still be alive through the view's owner.
  EXPECT_EQ(0, std::memcmp(view.data(), patterned(DType::F32, {4}, 9).data(), 16));

  SafetensorsWriter empty;
  empty.write(p("empty.safetensors"));
  auto e = SafetensorsFile::open(p("empty.safetensors"));
  EXPECT_TRUE(e->names().empty());
  EXPECT_TRUE(e->metadata().empty());
  EXPECT_EQ(read_all(p("empty.safetensors")), le64(8) + "{}      ");
}

using SafetensorsSpec = SafetensorsTest;

// Laid out as the HF library writes it: "__metadata__" first, compact JSON, header padded
// with spaces to a multiple of 8, wider dtypes first so every tensor is naturally aligned,
// little-endian data.
TEST_F(SafetensorsSpec, HandBuiltFileFollowingPublishedFormat) {
  std::string header =
      R"({"__metadata__":{"format":"pt"},"c":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
      R"("b":{"dtype":"BF16","shape":[1,2],"data_offsets":[16,20]},)"
      R"("d":{"dtype":"F8_E4M3","shape":[0,4],"data_offsets":[20,20]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  // int64 -3; 1.0f = 0x3F800000, -2.5f = 0xC0200000; bf16 1.0 = 0x3F80, 0.5 = 0x3F00.
  const std::string data(
      "\xfd\xff\xff\xff\xff\xff\xff\xff"
      "\x00\x00\x80\x3f\x00\x00\x20\xc0"
      "\x80\x3f\x00\x3f",
      20);
  write_raw(p("hf.safetensors"), st_bytes(header, data));

  auto f = SafetensorsFile::open(p("hf.safetensors"));
  EXPECT_EQ(f->names(), (std::vector<std::string>{"a", "b", "c", "d"}));
  EXPECT_EQ(f->metadata().at("format"), "pt");
  const Tensor a = f->get("a");
  EXPECT_EQ(a.dtype(), DType::F32);
  EXPECT_EQ(a.shape(), Shape({2}));
  EXPECT_EQ(a.ptr<float>()[0], 1.0f);
  EXPECT_EQ(a.ptr<float>()[1], -2.5f);
  const Tensor b = f->get("b");
  EXPECT_EQ(b.dtype(), DType::BF16);
  EXPECT_EQ(b.shape(), Shape({1, 2}));
  EXPECT_EQ(bf16_to_f32(b.ptr<bf16_t>()[0]), 1.0f);
  EXPECT_EQ(bf16_to_f32(b.ptr<bf16_t>()[1]), 0.5f);
  const Tensor c = f->get("c");
  EXPECT_EQ(c.shape(), Shape({}));
  EXPECT_EQ(c.numel(), 1);
  EXPECT_EQ(c.ptr<int64_t>()[0], -3);
  const Tensor d = f->get("d");
  EXPECT_EQ(d.dtype(), DType::F8_E4M3);
  EXPECT_EQ(d.numel(), 0);
  // The data of a file whose header is padded to 8 is 8-byte aligned in the mapping.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c.data()) % 8, 0u);
}

TEST_F(SafetensorsSpec, DtypeSpellings) {
  const std::pair<const char*, size_t> names[] = {{"F32", 4},     {"F16", 2},     {"BF16", 2},
                                                  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I32", 4},
                                                  {"I64", 8},     {"U8", 1},      {"BOOL", 1}};
  std::string header = "{";
  size_t off = 0;
  for (const auto& [n, sz] : names) {
    header += fmt::format(R"({}"{}":{{"dtype":"{}","shape":[3],"data_offsets":[{},{}]}})",
                          off ? "," : "", n, n, off, off + 3 * sz);
    off += 3 * sz;
  }
  header += "}";
  write_raw(p("dt.safetensors"), st_bytes(header, std::string(off, '\x01')));
  auto f = SafetensorsFile::open(p("dt.safetensors"));
  for (const auto& [n, sz] : names) {
    const Tensor t = f->get(n);
    EXPECT_EQ(dtype_name(t.dtype()), n);
    EXPECT_EQ(t.nbytes(), 3 * sz) << n;
  }
}

using SafetensorsMalformed = SafetensorsTest;

TEST_F(SafetensorsMalformed, EveryBadFileIsAnErrorNamingFileAndTensor) {
  const std::string ok_entry = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  struct Case {
    const char* id;
    std::string bytes;
    std::string tensor;  // must appear in the message when non-empty
    std::string what;    // a word of the message
  };
  auto one = [](const std::string& entry, size_t data = 8) {
    return st_bytes(R"({"w.t":{)" + entry + "}}", std::string(data, '\0'));
  };
  const std::vector<Case> cases = {
      {"empty", "", "", "shorter"},
      {"short", "\x05\x00\x00", "", "shorter"},
      {"hlen_past_eof", le64(100) + "{}", "", "exceeds"},
      {"hlen_absurd", le64(uint64_t(1) << 40) + "{}", "", "100 MB"},
      {"hlen_max", le64(~uint64_t(0)) + "{}", "", "100 MB"},
      {"not_json", st_bytes("{\"a\":", ""), "", "JSON"},
      {"not_object", st_bytes("[1,2]", ""), "", "not an object"},
      {"entry_not_object", st_bytes(R"({"w.t":3})", ""), "w.t", "object"},
      {"no_dtype", one(R"("shape":[2],"data_offsets":[0,8])"), "w.t", "dtype"},
      {"no_shape", one(R"("dtype":"F32","data_offsets":[0,8])"), "w.t", "shape"},
      {"no_offsets", one(R"("dtype":"F32","shape":[2])"), "w.t", "data_offsets"},
      {"dtype_not_string", one(R"("dtype":4,"shape":[2],"data_offsets":[0,8])"), "w.t", "dtype"},
      {"shape_not_array", one(R"("dtype":"F32","shape":2,"data_offsets":[0,8])"), "w.t", "shape"},
      {"shape_float", one(R"("dtype":"F32","shape":[2.0],"data_offsets":[0,8])"), "w.t", "shape"},
      {"shape_string", one(R"("dtype":"F32","shape":["2"],"data_offsets":[0,8])"), "w.t", "shape"},
      {"offsets_short", one(R"("dtype":"F32","shape":[2],"data_offsets":[8])"), "w.t",
       "data_offsets"},
      {"offsets_neg", one(R"("dtype":"F32","shape":[2],"data_offsets":[-8,0])"), "w.t",
       "data_offsets"},
      {"unknown_dtype", one(R"("dtype":"F64","shape":[1],"data_offsets":[0,8])"), "w.t", "F64"},
      {"negative_dim", one(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), "w.t",
       "negative"},
      {"end_before_begin", one(R"("dtype":"U8","shape":[0],"data_offsets":[8,0])"), "w.t",
       "end before"},
      {"truncated", one(ok_entry, 5), "w.t", "truncated"},
      {"size_mismatch", one(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"), "w.t", "need 12"},
      // 2^32 * 2^32 * 4 wraps to 0 in 64 bits, which would match the empty range.
      {"numel_overflow",
       one(R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0])"), "w.t",
       "overflow"},
      {"dim_too_big", one(R"("dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0])"),
       "w.t", "shape"},
      {"overlap",
       st_bytes(R"({"w.a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("w.t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                std::string(8, '\0')),
       "w.t", "overlap"},
      {"metadata_not_string", st_bytes(R"({"__metadata__":{"epoch":3}})", ""), "epoch", "string"},
      {"metadata_not_object", st_bytes(R"({"__metadata__":[1]})", ""), "__metadata__", "object"},
  };
  for (const Case& c : cases) {
    const std::string path = p(std::string(c.id) + ".safetensors");
    write_raw(path, c.bytes);
    const std::string msg = error_of([&] { SafetensorsFile::open(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << c.id << ": " << msg;
    if (!c.tensor.empty()) {
      EXPECT_NE(msg.find(c.tensor), std::string::npos) << c.id << ": " << msg;
    }
    EXPECT_NE(msg.find(c.what), std::string::npos) << c.id << ": " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << c.id << ": one line: " << msg;
  }
  // Two zero-length tensors at the same offset do not overlap, and trailing bytes are allowed.
  write_raw(p("zeros.safetensors"),
            st_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                     R"("b":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},)"
                     R"("c":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                     std::string(9, '\0')));
  EXPECT_EQ(SafetensorsFile::open(p("zeros.safetensors"))->names().size(), 3u);
  // Missing files and directories.
  const std::string missing = p("missing.safetensors");
  EXPECT_NE(error_of([&] { SafetensorsFile::open(missing); }).find(missing), std::string::npos);
  EXPECT_NE(error_of([&] { SafetensorsFile::open(dir_); }).find(dir_), std::string::npos);
}

using SafetensorsStore = SafetensorsTest;

TEST_F(SafetensorsStore, ShardedWriteAndRead) {
  SafetensorsWriter w;
  std::vector<std::pair<std::string, Tensor>> added = {
      {"model.layers.1.w", patterned(DType::BF16, {8, 4}, 1)},    // 64 bytes
      {"model.layers.0.w", patterned(DType::F32, {4, 4}, 2)},     // 64
      {"model.norm.weight", patterned(DType::F32, {4}, 3)},       // 16
      {"lm_head.weight", patterned(DType::F8_E4M3, {40, 2}, 4)},  // 80: over the limit alone
      {"scalar", patterned(DType::I64, {}, 5)},                   // 8
  };
  for (const auto& [n, t] : added) w.add(n, t);
  const std::string out = p("ckpt/sub");
  w.write_sharded(out, 72);

  // Greedy packing in the order added with a 72-byte limit: 64 | 64 (64+64>72) | 16 (64+16>72)
  // | 80 (16+80>72, alone although over the limit) | 8 (80+8>72): five shards.
  const std::vector<std::string> expect_file = {
      "model-00001-of-00005.safetensors", "model-00002-of-00005.safetensors",
      "model-00003-of-00005.safetensors", "model-00004-of-00005.safetensors",
      "model-00005-of-00005.safetensors"};
  for (const auto& f : expect_file) EXPECT_TRUE(fs::exists(fs::path(out) / f)) << f;
  EXPECT_FALSE(fs::exists(fs::path(out) / "model.safetensors"));

  const std::string index_text = read_all(out + "/model.safetensors.index.json");
  const json index = json::parse(index_text);
  EXPECT_EQ(index["metadata"]["total_size"], 64 + 64 + 16 + 80 + 8);
  EXPECT_EQ(index["weight_map"].size(), added.size());
  EXPECT_EQ(index["weight_map"]["model.layers.1.w"], expect_file[0]);
  EXPECT_EQ(index["weight_map"]["scalar"], expect_file[4]);
  // The layout json.dumps(indent=2, sort_keys=True) produces, as in HF checkpoints.
  const std::string expect_text =
      "{\n  \"metadata\": {\n    \"total_size\": 232\n  },\n  \"weight_map\": {\n"
      "    \"lm_head.weight\": \"model-00004-of-00005.safetensors\",\n"
      "    \"model.layers.0.w\": \"model-00002-of-00005.safetensors\",\n"
      "    \"model.layers.1.w\": \"model-00001-of-00005.safetensors\",\n"
      "    \"model.norm.weight\": \"model-00003-of-00005.safetensors\",\n"
      "    \"scalar\": \"model-00005-of-00005.safetensors\"\n  }\n}\n";
  EXPECT_EQ(index_text, expect_text);

  const TensorStore s = TensorStore::open(out);
  EXPECT_EQ(s.names().size(), added.size());
  for (const auto& [n, t] : added) {
    const Tensor r = s.get(n, t.shape());
    EXPECT_EQ(r.dtype(), t.dtype());
    EXPECT_EQ(0, std::memcmp(r.data(), t.data(), t.nbytes())) << n;
  }
  EXPECT_EQ(s.file_of("lm_head.weight"), (fs::path(out) / expect_file[3]).string());

  const std::string m1 = error_of([&] { s.get("nope"); });
  EXPECT_NE(m1.find("checkpoint " + out + " has no tensor nope"), std::string::npos) << m1;
  const std::string m2 = error_of([&] { s.get("model.norm.weight", {5}); });
  EXPECT_NE(m2.find("model.norm.weight"), std::string::npos) << m2;
  EXPECT_NE(m2.find(expect_file[2]), std::string::npos) << m2;
  EXPECT_NE(m2.find("[4]"), std::string::npos) << m2;
  EXPECT_NE(m2.find("[5]"), std::string::npos) << m2;

  // Re-saving as one shard into the same directory must not leave the old index in charge.
  w.write_sharded(out, size_t(1) << 30);
  EXPECT_TRUE(fs::exists(fs::path(out) / "model.safetensors"));
  EXPECT_FALSE(fs::exists(fs::path(out) / "model.safetensors.index.json"));
  const TensorStore s1 = TensorStore::open(out);
  EXPECT_EQ(s1.file_of("scalar"), (fs::path(out) / "model.safetensors").string());
  EXPECT_EQ(s1.names().size(), added.size());
  for (const auto& f : expect_file) EXPECT_FALSE(fs::exists(fs::path(out) / f)) << f;

  // And back to two shards: the single file goes, unrelated files stay.
  write_raw(out + "/README.md", "keep");
  w.write_sharded(out, 128);
  EXPECT_FALSE(fs::exists(fs::path(out) / "model.safetensors"));
  EXPECT_TRUE(fs::exists(fs::path(out) / "README.md"));
  EXPECT_TRUE(fs::exists(fs::path(out) / "model-00002-of-00002.safetensors"));
  const TensorStore s2 = TensorStore::open(out);
  EXPECT_EQ(s2.names().size(), added.size());
  EXPECT_EQ(s2.file_of("scalar"), (fs::path(out) / "model-00002-of-00002.safetensors").string());
}

TEST_F(SafetensorsStore, DirectoryFileAndErrors) {
  // A directory without an index: every *.safetensors file.
  fs::create_directories(p("plain"));
  SafetensorsWriter a, b;
  a.add("x", patterned(DType::U8, {3}, 1));
  b.add("y", patterned(DType::U8, {2}, 2));
  a.write(p("plain/b.safetensors"));
  b.write(p("plain/a.safetensors"));
  write_raw(p("plain/notes.txt"), "ignored");
  const TensorStore s = TensorStore::open(p("plain"));
  EXPECT_EQ(s.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(s.file_of("y"), p("plain/a.safetensors"));

  // A single file.
  const TensorStore one = TensorStore::open(p("plain/b.safetensors"));
  EXPECT_EQ(one.names(), (std::vector<std::string>{"x"}));
  EXPECT_EQ(one.get("x", {3}).nbytes(), 3u);

  // The same tensor in two files.
  a.write(p("plain/c.safetensors"));
  const std::string dup = error_of([&] { TensorStore::open(p("plain")); });
  EXPECT_NE(dup.find("x"), std::string::npos) << dup;
  EXPECT_NE(dup.find(p("plain/c.safetensors")), std::string::npos) << dup;
  EXPECT_NE(dup.find(p("plain/b.safetensors")), std::string::npos) << dup;

  // Nothing there.
  fs::create_directories(p("none"));
  EXPECT_NE(
      error_of([&] { TensorStore::open(p("none")); }).find("no .safetensors files in " + p("none")),
      std::string::npos);
  EXPECT_NE(error_of([&] { TensorStore::open(p("nowhere")); }).find(p("nowhere")),
            std::string::npos);

  // Index naming a missing shard / a shard without the tensor / a bad weight_map.
  fs::create_directories(p("idx"));
  a.write(p("idx/s1.safetensors"));
  const std::string ip = p("idx/model.safetensors.index.json");
  write_raw(ip, R"({"weight_map": {"x": "s1.safetensors", "z": "s2.safetensors"}})");
  std::string m = error_of([&] { TensorStore::open(p("idx")); });
  EXPECT_NE(m.find(ip), std::string::npos) << m;
  EXPECT_NE(m.find("s2.safetensors"), std::string::npos) << m;
  write_raw(ip, R"({"weight_map": {"x": "s1.safetensors", "q": "s1.safetensors"}})");
  m = error_of([&] { TensorStore::open(p("idx")); });
  EXPECT_NE(m.find(ip), std::string::npos) << m;
  EXPECT_NE(m.find("q"), std::string::npos) << m;
  EXPECT_NE(m.find("s1.safetensors"), std::string::npos) << m;
  write_raw(ip, R"({"weight_map": {"x": "../s1.safetensors"}})");
  EXPECT_NE(error_of([&] { TensorStore::open(p("idx")); }).find(ip), std::string::npos);
  write_raw(ip, R"({"weight_map": [1]})");
  EXPECT_NE(error_of([&] { TensorStore::open(p("idx")); }).find(ip), std::string::npos);
  write_raw(ip, R"({"weight_map": )");
  EXPECT_NE(error_of([&] { TensorStore::open(p("idx")); }).find(ip), std::string::npos);
  write_raw(ip, R"({"metadata": {}, "weight_map": {"x": "s1.safetensors"}})");
  EXPECT_EQ(TensorStore::open(p("idx")).names(), (std::vector<std::string>{"x"}));
  // A corrupt shard reports the shard's own path.
  write_raw(p("idx/s1.safetensors"), "\x01\x02");
  EXPECT_NE(error_of([&] { TensorStore::open(p("idx")); }).find(p("idx/s1.safetensors")),
            std::string::npos);
}

using SafetensorsAtomic = SafetensorsTest;

TEST_F(SafetensorsAtomic, FailedWriteLeavesOldFileIntact) {
  const std::string path = p("keep.safetensors");
  SafetensorsWriter old_w;
  old_w.add("old", patterned(DType::F32, {2}, 1));
  old_w.write(path);
  const std::string before = read_all(path);

  SafetensorsWriter w;
  w.add("new", patterned(DType::F32, {1000}, 2));
  // The temp file cannot be created (its path is a directory): nothing may change.
  fs::create_directories(path + ".tmp");
  const std::string m = error_of([&] { w.write(path); });
  EXPECT_NE(m.find(path + ".tmp"), std::string::npos) << m;
  EXPECT_EQ(read_all(path), before);
  EXPECT_TRUE(SafetensorsFile::open(path)->has("old"));
  fs::remove(path + ".tmp");

  // The rename fails after all data is written (the target is a non-empty directory): the
  // temp file must be removed again.
  const std::string dpath = p("dir.safetensors");
  fs::create_directories(dpath + "/inside");
  EXPECT_NE(error_of([&] { w.write(dpath); }).find(dpath), std::string::npos);
  EXPECT_TRUE(fs::is_directory(dpath + "/inside"));
  EXPECT_FALSE(fs::exists(dpath + ".tmp"));

  // Same for write_file_atomic.
  write_file_atomic(p("t.txt"), "first");
  fs::create_directories(p("t.txt.tmp"));
  EXPECT_NE(error_of([&] { write_file_atomic(p("t.txt"), "second"); }).find(p("t.txt")),
            std::string::npos);
  EXPECT_EQ(read_all(p("t.txt")), "first");
  fs::remove(p("t.txt.tmp"));
  write_file_atomic(p("t.txt"), std::string("se\0cond", 7));
  EXPECT_EQ(read_all(p("t.txt")), std::string("se\0cond", 7));
  EXPECT_FALSE(fs::exists(p("t.txt.tmp")));
  // A missing parent directory is an error naming the path, not a crash.
  EXPECT_NE(error_of([&] { write_file_atomic(p("no/such/dir/f"), "x"); }).find(p("no/such")),
            std::string::npos);
}

TEST_F(SafetensorsAtomic, WriterRejectsBadInput) {
  SafetensorsWriter w;
  w.add("a", patterned(DType::U8, {1}, 0));
  EXPECT_NE(error_of([&] { w.add("a", patterned(DType::U8, {1}, 0)); }).find("a"),
            std::string::npos);
  EXPECT_FALSE(error_of([&] { w.add("__metadata__", patterned(DType::U8, {1}, 0)); }).empty());
  EXPECT_FALSE(error_of([&] { w.add("u", Tensor()); }).empty());
}

}  // namespace
}  // namespace dsv3
