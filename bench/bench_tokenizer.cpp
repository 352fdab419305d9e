// Single-thread encode throughput of dsv3::Tokenizer on a text file, the counterpart of
// tools/reference/bench_hf_tokenizer.py: each line (newline included) is encoded on its own,
// without special tokens; best of --repeat runs. A fresh tokenizer is loaded first so the
// first run starts with a cold piece cache.
//
//   bench_tokenizer TOKENIZER(json or folder) TEXT_FILE [REPEAT]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TOKENIZER TEXT_FILE [REPEAT]\n", argv[0]);
    return 2;
  }
  try {
    dsv3::Tokenizer tok = dsv3::Tokenizer::load(argv[1]);
    std::ifstream f(argv[2], std::ios::binary);
    DSV3_CHECK(f, "cannot open {}", argv[2]);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    std::vector<std::string_view> lines;
    for (size_t pos = 0; pos < text.size();) {
      size_t nl = text.find('\n', pos);
      size_t end = nl == std::string::npos ? text.size() : nl + 1;
      lines.push_back(std::string_view(text).substr(pos, end - pos));
      pos = end;
    }
    int repeat = argc > 3 ? std::atoi(argv[3]) : 3;
    double best = 1e30, first = 0;
    size_t ntok = 0;
    std::vector<int32_t> ids;
    for (int r = 0; r < repeat; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      size_t n = 0;
      for (auto line : lines) {
        ids.clear();
        tok.encode_into(line, &ids);
        n += ids.size();
      }
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r == 0) first = dt;
      best = std::min(best, dt);
      ntok = n;
    }
    std::printf(
        "dsv3_tokenizer: %zu bytes, %zu lines, %zu tokens, best of %d: %.3f s, %.2f MB/s, "
        "%.3f Mtok/s (first, cold cache: %.3f s, %.2f MB/s)\n",
        text.size(), lines.size(), ntok, repeat, best, text.size() / best / 1e6, ntok / best / 1e6,
        first, text.size() / first / 1e6);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
