// The HTTP front of `dsv3 serve` (cpp-httplib): OpenAI-compatible endpoints, metrics, a chat
// page. HTTP handler threads parse and validate, submit to the Scheduler and stream its
// tokens back; one engine thread owns the model and runs the scheduler loop.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <httplib.h>

#include "serve/api.h"
#include "serve/scheduler.h"

namespace dsv3::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;      // 0: any free port (see Server::port())
  std::string api_key;  // empty: no authentication
  size_t max_body_bytes = 1 << 20;
  int http_threads = 64;         // concurrent connections (each stream holds one)
  double shutdown_grace_s = 30;  // after SIGTERM, in-flight requests get this long to finish
  SchedulerOptions scheduler;
};

class Server {
 public:
  // `engine`: the CPU Engine or a device one; `model.context` is replaced by the scheduler's
  // (the engine's context, or --max-model-len).
  Server(const StepEngine& engine, const Tokenizer& tok, const ChatTemplate& tpl, ModelInfo model,
         ServerOptions opt);
  ~Server();

  // Binds the listening socket; throws dsv3::Error when it cannot. Returns the port.
  int bind();
  // Serves until shutdown(): starts the engine thread, accepts connections, and when asked to
  // stop drains in-flight requests (cancelling what is left after the grace period).
  void serve();
  // Thread-safe, idempotent: stop accepting, let in-flight requests finish (up to the grace
  // period), then return from serve().
  void shutdown();

  Scheduler& scheduler() { return *sched_; }

 private:
  void routes();
  void generate(const httplib::Request& req, httplib::Response& res, bool chat);
  std::string metrics_text() const;
  void count(const std::string& endpoint, int status);

  const Tokenizer& tok_;
  const ChatTemplate& tpl_;
  ModelInfo model_;
  ServerOptions opt_;
  std::unique_ptr<Scheduler> sched_;
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;

  mutable std::mutex mu_;
  bool shutting_down_ = false;
  std::atomic<int> active_{0};                                // generation requests in flight
  std::map<std::pair<std::string, int>, uint64_t> requests_;  // (endpoint, status) -> count
  std::atomic<uint64_t> next_id_{1};
};

}  // namespace dsv3::serve
