// Serving load test: an in-process `dsv3 serve` on a loopback port, driven over HTTP by C
// concurrent clients, each sending greedy /v1/completions requests back to back. Reports
// request and token throughput and latency per concurrency, plus time to first token and
// inter-token latency from the server's own /metrics histograms (sum / count).
// Usage: bench_serve --model DIR --tokenizer DIR [--concurrency 1,4,8] [--requests 16]
//        [--max-tokens 32] [--prompt "text"]
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "serve/server.h"

using namespace dsv3;
using Clock = std::chrono::steady_clock;

namespace {

double metric(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return 0;
  return std::stod(text.substr(at + name.size() + 2));
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, tok_dir, prompt = "Tell me about the sea.";
  std::vector<int> concurrency = {1, 4, 8};
  int requests = 16, max_tokens = 32;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model")
      model_dir = v;
    else if (k == "--tokenizer")
      tok_dir = v;
    else if (k == "--prompt")
      prompt = v;
    else if (k == "--requests")
      requests = std::stoi(v);
    else if (k == "--max-tokens")
      max_tokens = std::stoi(v);
    else if (k == "--concurrency") {
      concurrency.clear();
      for (size_t p = 0; p < v.size();) {
        size_t q = v.find(',', p);
        if (q == std::string::npos) q = v.size();
        concurrency.push_back(std::stoi(v.substr(p, q - p)));
        p = q + 1;
      }
    } else {
      fmt::print(stderr, "bench_serve: unknown flag {}\n", k);
      return 1;
    }
  }
  if (model_dir.empty() || tok_dir.empty()) {
    fmt::print(stderr,
               "usage: bench_serve --model DIR --tokenizer DIR [--concurrency 1,4,8] "
               "[--requests 16] [--max-tokens 32] [--prompt TEXT]\n");
    return 1;
  }
  try {
    const Model model(ModelWeights::load(model_dir));
    const Engine engine(model);
    const Tokenizer tok = Tokenizer::load(tok_dir);
    const ChatTemplate tpl(load_chat_template_config(tok_dir, false));
    serve::ModelInfo info{"bench", model.config().max_position_embeddings,
                          model.config().vocab_size};
    serve::ServerOptions opt;
    opt.port = 0;
    opt.shutdown_grace_s = 5;
    opt.scheduler.max_seqs = 64;
    serve::Server server(engine, tok, tpl, info, opt);
    const int port = server.bind();
    std::thread serving([&] { server.serve(); });

    const nlohmann::json body = {{"prompt", prompt},
                                 {"max_tokens", max_tokens},
                                 {"temperature", 0},
                                 {"return_token_ids", true}};
    fmt::print("{:>11} {:>9} {:>10} {:>12} {:>12} {:>10} {:>10}\n", "concurrency", "requests",
               "req/s", "gen tok/s", "mean lat s", "TTFT ms", "ITL ms");
    httplib::Client probe("127.0.0.1", port);
    for (int c : concurrency) {
      const std::string before = probe.Get("/metrics")->body;
      std::atomic<int> next{0};
      std::atomic<int64_t> tokens{0}, failures{0};
      std::atomic<int64_t> latency_us{0};
      const auto t0 = Clock::now();
      std::vector<std::thread> clients;
      for (int k = 0; k < c; ++k)
        clients.emplace_back([&] {
          httplib::Client cli("127.0.0.1", port);
          cli.set_read_timeout(600);
          while (next++ < requests) {
            const auto r0 = Clock::now();
            auto res = cli.Post("/v1/completions", body.dump(), "application/json");
            latency_us +=
                std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - r0).count();
            if (!res || res->status != 200) {
              ++failures;
              continue;
            }
            tokens += nlohmann::json::parse(res->body)["usage"]["completion_tokens"].get<int64_t>();
          }
        });
      for (auto& t : clients) t.join();
      const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      const std::string after = probe.Get("/metrics")->body;
      auto delta = [&](const char* name) { return metric(after, name) - metric(before, name); };
      const double ttft = delta("dsv3_time_to_first_token_seconds_sum") /
                          std::max(1.0, delta("dsv3_time_to_first_token_seconds_count"));
      const double itl = delta("dsv3_inter_token_latency_seconds_sum") /
                         std::max(1.0, delta("dsv3_inter_token_latency_seconds_count"));
      fmt::print("{:>11} {:>9} {:>10.2f} {:>12.1f} {:>12.3f} {:>10.1f} {:>10.2f}{}\n", c, requests,
                 requests / secs, double(tokens) / secs, latency_us / 1e6 / requests, ttft * 1e3,
                 itl * 1e3, failures ? fmt::format("  ({} failed)", int64_t(failures)) : "");
    }
    server.shutdown();
    serving.join();
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_serve: {}\n", e.what());
    return 1;
  }
  return 0;
}
