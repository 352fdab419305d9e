// Serving load test: starts a real `dsv3 serve` (the binary, on a loopback port) and drives it
// with N concurrent streaming clients for M seconds, each sending greedy /v1/completions
// requests back to back; then the same load against `--max-seqs 1` (one sequence at a time,
// no batching) in the same run. Every request must succeed (exit 1 otherwise). Reports
// generated tokens/s and client-side p50/p99 time to first token and inter-token latency
// (gaps between streamed chunks), and the batched / one-at-a-time throughput ratio.
//
// bench_serve --dsv3 build/bin/dsv3 --model DIR --tokenizer DIR [--clients 8] [--seconds 20]
//             [--max-tokens 32] [--max-seqs 16] [--prompt TEXT]
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>

extern char** environ;

using Clock = std::chrono::steady_clock;
using nlohmann::json;

namespace {

double ms_since(Clock::time_point t0, Clock::time_point t1) {
  return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, size_t(p / 100.0 * double(v.size())));
  return v[i];
}

// A `dsv3 serve` child process on a free loopback port.
class ServerProcess {
 public:
  ServerProcess(const std::string& dsv3, std::vector<std::string> args) {
    port_file_ = std::filesystem::temp_directory_path() /
                 fmt::format("bench_serve_{}_{}.port", getpid(), counter_++);
    std::filesystem::remove(port_file_);
    args.insert(args.begin(), {dsv3, "serve"});
    for (const char* a : {"--host", "127.0.0.1", "--port", "0", "--port-file"}) args.push_back(a);
    args.push_back(port_file_.string());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, dsv3.c_str(), nullptr, nullptr, argv.data(), environ) != 0)
      throw std::runtime_error("cannot start " + dsv3);
    for (int i = 0; i < 1200; ++i) {  // model loading can take a while
      std::ifstream f(port_file_);
      if (f >> port_) {
        httplib::Client c("127.0.0.1", port_);
        if (auto r = c.Get("/health"); r && r->status == 200) return;
      }
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("dsv3 serve exited at start");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    throw std::runtime_error("dsv3 serve not healthy within 120 s");
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int st = 0;
      waitpid(pid_, &st, 0);
    }
    std::filesystem::remove(port_file_);
  }
  int port() const { return port_; }

 private:
  static inline int counter_ = 0;
  std::filesystem::path port_file_;
  pid_t pid_ = -1;
  int port_ = 0;
};

struct LoadResult {
  int64_t requests = 0, failures = 0, tokens = 0;
  double seconds = 0;
  std::vector<double> ttft_ms, itl_ms;
};

// One streaming request; appends its TTFT and inter-chunk gaps. False on any failure.
bool stream_one(httplib::Client& cli, const std::string& body, LoadResult* local, int64_t* tokens) {
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.set_header("Content-Type", "application/json");
  req.body = body;
  std::string buf;
  bool done = false, ok = true;
  const auto t0 = Clock::now();
  auto last = t0;
  int chunks = 0;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buf.append(data, n);
    size_t cut;
    while ((cut = buf.find("\n\n")) != std::string::npos) {
      const std::string ev = buf.substr(0, cut);
      buf.erase(0, cut + 2);
      if (ev.rfind("data: ", 0) != 0) continue;
      const std::string payload = ev.substr(6);
      if (payload == "[DONE]") {
        done = true;
        continue;
      }
      const json j = json::parse(payload, nullptr, false);
      if (j.is_discarded()) return ok = false;
      if (j.contains("usage") && j["usage"].is_object())
        *tokens = j["usage"]["completion_tokens"].get<int64_t>();
      if (!j.contains("choices") || j["choices"].empty()) continue;
      const json& c = j["choices"][0];
      if (!c["finish_reason"].is_null()) continue;  // the closing chunk carries no token
      const auto now = Clock::now();
      (chunks++ == 0 ? local->ttft_ms : local->itl_ms).push_back(ms_since(last, now));
      last = now;
    }
    return true;
  };
  auto res = cli.send(req);
  return ok && res && res->status == 200 && done;
}

LoadResult run_load(int port, int clients, double seconds, const std::string& prompt,
                    int max_tokens) {
  LoadResult total;
  std::mutex mu;
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration<double>(seconds);
  std::vector<std::thread> threads;
  for (int k = 0; k < clients; ++k)
    threads.emplace_back([&, k] {
      httplib::Client cli("127.0.0.1", port);
      cli.set_read_timeout(600);
      LoadResult local;
      // At least one request each, so a 0-second run is the warm-up it is used as.
      for (int i = 0; i == 0 || Clock::now() < deadline; ++i) {
        // Distinct prompts: what is measured is batching, not the prefix cache.
        const json body = {{"prompt", fmt::format("Client {} asks question {}: {}", k, i, prompt)},
                           {"max_tokens", max_tokens},
                           {"temperature", 0},
                           {"stream", true},
                           {"stream_options", {{"include_usage", true}}}};
        int64_t tokens = 0;
        ++local.requests;
        if (stream_one(cli, body.dump(), &local, &tokens))
          local.tokens += tokens;
        else
          ++local.failures;
      }
      std::lock_guard<std::mutex> lk(mu);
      total.requests += local.requests;
      total.failures += local.failures;
      total.tokens += local.tokens;
      total.ttft_ms.insert(total.ttft_ms.end(), local.ttft_ms.begin(), local.ttft_ms.end());
      total.itl_ms.insert(total.itl_ms.end(), local.itl_ms.begin(), local.itl_ms.end());
    });
  for (auto& t : threads) t.join();
  total.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  std::string dsv3, model_dir, tok_dir, prompt = "Tell me about the sea.";
  int clients = 8, max_tokens = 32, max_seqs = 16;
  double seconds = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--dsv3")
      dsv3 = v;
    else if (k == "--model")
      model_dir = v;
    else if (k == "--tokenizer")
      tok_dir = v;
    else if (k == "--prompt")
      prompt = v;
    else if (k == "--clients")
      clients = std::stoi(v);
    else if (k == "--seconds")
      seconds = std::stod(v);
    else if (k == "--max-tokens")
      max_tokens = std::stoi(v);
    else if (k == "--max-seqs")
      max_seqs = std::stoi(v);
    else {
      fmt::print(stderr, "bench_serve: unknown flag {}\n", k);
      return 1;
    }
  }
  if (dsv3.empty() || model_dir.empty() || tok_dir.empty()) {
    fmt::print(stderr,
               "usage: bench_serve --dsv3 BIN --model DIR --tokenizer DIR [--clients 8] "
               "[--seconds 20] [--max-tokens 32] [--max-seqs 16] [--prompt TEXT]\n");
    return 1;
  }
  fmt::print("{} clients x {} s, streaming /v1/completions, greedy, max_tokens {}\n", clients,
             seconds, max_tokens);
  fmt::print("{:>10} {:>9} {:>7} {:>10} {:>11} {:>11} {:>10} {:>10}\n", "max-seqs", "requests",
             "errors", "gen tok/s", "TTFT p50ms", "TTFT p99ms", "ITL p50ms", "ITL p99ms");
  double tput[2] = {0, 0};
  int64_t errors = 0;
  try {
    for (int mode = 0; mode < 2; ++mode) {
      const int seqs = mode == 0 ? max_seqs : 1;
      ServerProcess server(
          dsv3, {"--model", model_dir, "--tokenizer", tok_dir, "--max-seqs", std::to_string(seqs),
                 "--max-waiting", "4096", "--shutdown-grace", "5"});
      run_load(server.port(), 1, 0, prompt, 4);  // warm-up: one request
      const LoadResult r = run_load(server.port(), clients, seconds, prompt, max_tokens);
      tput[mode] = double(r.tokens) / r.seconds;
      errors += r.failures;
      fmt::print("{:>10} {:>9} {:>7} {:>10.1f} {:>11.1f} {:>11.1f} {:>10.1f} {:>10.1f}\n", seqs,
                 r.requests, r.failures, tput[mode], percentile(r.ttft_ms, 50),
                 percentile(r.ttft_ms, 99), percentile(r.itl_ms, 50), percentile(r.itl_ms, 99));
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_serve: {}\n", e.what());
    return 1;
  }
  fmt::print("continuous batching / one at a time: {:.2f}x generated tokens/s\n",
             tput[0] / std::max(tput[1], 1e-9));
  if (errors) {
    fmt::print(stderr, "bench_serve: {} requests failed\n", errors);
    return 1;
  }
  return 0;
}
