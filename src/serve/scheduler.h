// Continuous batching for the server: one engine thread calls step() in a loop; every step
// runs the next token of each decoding sequence together with chunks of newly admitted
// prompts, so a long prompt never stalls the streams already running. HTTP threads submit()
// requests and read their tokens from a per-request Channel.
//
// Memory, on an engine that takes pooled caches (the CPU one): one BlockPool of
// max_batch_tokens / block_tokens blocks holds every sequence's latent rows
// (infer/kv_cache.h). At admission a sequence shares the pool's full blocks that already hold
// a prefix of its prompt (prefill starts after them) and reserves blocks for the rest of
// prompt + max_tokens; it takes them as it grows, so a running sequence can never run out of
// cache and no preemption is needed, while blocks not yet taken keep their cached prefixes for
// other requests. Retiring or cancelling a sequence releases its blocks.
// On a device engine (or with `paged` off) each sequence gets its own engine.new_cache() of
// the same reserved size, counted against the same max_batch_tokens budget; no prefix sharing.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "infer/sampler.h"
#include "infer/step_engine.h"
#include "infer/text_stream.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::serve {

inline constexpr int64_t kBlockTokens = 64;

// One generated token of one choice, or the end of that choice.
struct TokenEvent {
  int index = 0;       // choice index within the request
  int32_t token = -1;  // -1 on a pure end event
  std::string text;    // detokenised text that became ready (stop strings cut out)
  std::optional<infer::SampleResult> logprobs;  // when the request asked for them
  bool finished = false;
  std::string finish_reason;  // "stop", "length", "cancelled" (only when finished)
};

// Tokens flow from the engine thread to one HTTP handler. Thread-safe.
class Channel {
 public:
  void push(TokenEvent ev);
  // Waits up to `timeout` for events; returns all that are queued (maybe none).
  std::vector<TokenEvent> pop_all(std::chrono::milliseconds timeout);
  // The client went away: the scheduler drops the request's sequences at its next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<TokenEvent> q_;
  std::atomic<bool> cancelled_{false};
};

struct SeqSpec {
  std::vector<int32_t> prompt;
  infer::SamplingParams params;  // stop_token_ids and stop_strings included
};

// A request: n choices share one prompt, one channel and (when seeded) one seed, each with
// its own random stream.
struct Request {
  std::vector<int32_t> prompt;
  infer::SamplingParams params;
  int n = 1;
  std::shared_ptr<Channel> channel;
};

struct SchedulerOptions {
  int64_t max_batch_tokens = 16384;     // cache tokens reserved by all running sequences
  int64_t max_seqs = 16;                // running sequences
  int64_t max_waiting = 64;             // queued requests before 429
  int64_t prefill_chunk = 256;          // prompt tokens per step, over all prefilling sequences
  int64_t block_tokens = kBlockTokens;  // cache rows per block (small ones in tests)
  bool prefix_caching = true;           // share full blocks of identical prompt prefixes
  // Caches in one host BlockPool when the engine takes them; false: every sequence's cache
  // from engine.new_cache(), as a device engine needs (tests run that path on the CPU).
  bool paged = true;
  int64_t max_model_len = 0;  // longest sequence (prompt + output); 0: the engine's context
};

// A fixed-bucket histogram (Prometheus semantics: cumulative buckets, sum, count).
struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // per bucket, not cumulative; last = +Inf
  double sum = 0;
  uint64_t count = 0;
  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1) {}
  void observe(double v);
};

struct SchedulerStats {
  int64_t waiting = 0, running = 0;
  int64_t cache_tokens = 0;     // tokens held in running sequences' caches
  int64_t reserved_tokens = 0;  // blocks held or promised x block_tokens
  int64_t blocks_total = 0, blocks_used = 0, blocks_free = 0, blocks_reserved = 0;
  int64_t blocks_cached = 0;      // full blocks indexed by their prefix (in use or free)
  int64_t prefix_hit_tokens = 0;  // prompt tokens taken from shared blocks, not computed
  int64_t prompt_tokens = 0, generated_tokens = 0, steps = 0;
  Histogram ttft{{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  Histogram itl{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}};
};

class Scheduler {
 public:
  // `tok` may be null: then events carry no text and stop strings are not checked.
  Scheduler(const StepEngine& engine, const Tokenizer* tok, SchedulerOptions opt);
  ~Scheduler();

  enum class Submit { kOk, kQueueFull, kTooLarge, kShuttingDown };
  // Thread-safe. The prompt must already be validated (non-empty, ids in the vocabulary,
  // prompt + max_new_tokens within the context). kTooLarge: its reservation exceeds the
  // whole budget, so it could never run.
  Submit submit(Request req);

  // Cache tokens a request's choices reserve (what kTooLarge compares with the budget).
  int64_t reservation(const Request& req) const;

  // One engine step: drops cancelled sequences, admits waiting ones, runs the model once,
  // samples and delivers tokens, retires finished sequences. Returns false when idle.
  bool step();
  // Engine-thread loop: step() until stop(), sleeping while idle.
  void run();
  // Stops run() once everything in flight has finished (or at once with cancel_all first).
  void stop();
  // Ends every waiting and running request with finish_reason "cancelled".
  void cancel_all();
  // From now on submit() answers kShuttingDown.
  void close() { closed_ = true; }

  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return opt_; }
  // The longest sequence a request may make (prompt + output).
  int64_t context() const { return context_; }
  // Whether sequences' caches live in the shared, paged pool (else each is the engine's own).
  bool paged() const { return pool_ != nullptr; }
  // The cache pool (paged() only); read it on the engine thread only (or while no step runs).
  const BlockPool& pool() const;

 private:
  struct Seq;
  void finish(Seq& s, const std::string& reason);
  void deliver(Seq& s, const infer::SampleResult& r);

  const StepEngine& engine_;
  const Tokenizer* tok_;
  SchedulerOptions opt_;
  int64_t context_;

  mutable std::mutex mu_;  // guards waiting_, stats_, flags below
  std::condition_variable cv_;
  std::deque<std::vector<std::unique_ptr<Seq>>> waiting_;  // per request, its choices
  std::atomic<bool> closed_{false};
  bool stopping_ = false, cancel_all_ = false;
  SchedulerStats stats_;

  // Engine thread only.
  std::shared_ptr<BlockPool> pool_;  // null: each sequence's cache is the engine's own
  int64_t engine_reserved_ = 0;      // the capacities of those caches, summed
  std::vector<std::unique_ptr<Seq>> running_;
};

}  // namespace dsv3::serve
