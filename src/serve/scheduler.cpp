#include "serve/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace dsv3::serve {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int64_t blocks_of(int64_t tokens, int64_t block) {
  return (tokens + block - 1) / block;
}

}  // namespace

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;
  ++counts[i];
  sum += v;
  ++count;
}

void Channel::push(TokenEvent ev) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    q_.push_back(std::move(ev));
  }
  cv_.notify_all();
}

std::vector<TokenEvent> Channel::pop_all(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return !q_.empty(); });
  std::vector<TokenEvent> out(std::make_move_iterator(q_.begin()),
                              std::make_move_iterator(q_.end()));
  q_.clear();
  return out;
}

struct Scheduler::Seq {
  std::shared_ptr<Channel> ch;
  int index = 0;
  std::vector<int32_t> prompt;
  std::unique_ptr<infer::Sampler> sampler;
  std::unique_ptr<TextStream> text;
  LatentCache cache;
  int64_t reserve = 0;  // cache capacity (whole blocks when paged), reserved at admission
  size_t fed = 0;       // prompt tokens in the cache (shared prefix blocks included)
  int32_t last = -1;    // newest token, not yet in the cache
  int32_t generated = 0;
  bool done = false;
  Clock::time_point submitted, last_token;
};

Scheduler::Scheduler(const StepEngine& engine, const Tokenizer* tok, SchedulerOptions opt)
    : engine_(engine), tok_(tok), opt_(opt), context_(engine.context()) {
  DSV3_CHECK(opt_.max_model_len >= 0, "--max-model-len {} must not be negative",
             opt_.max_model_len);
  if (opt_.max_model_len > 0) context_ = std::min(context_, opt_.max_model_len);
  DSV3_CHECK(context_ >= 2, "a context of {} tokens leaves no room to generate", context_);
  DSV3_CHECK(opt_.max_seqs >= 1, "--max-seqs {} must be at least 1", opt_.max_seqs);
  DSV3_CHECK(opt_.prefill_chunk >= 1, "--prefill-chunk {} must be at least 1", opt_.prefill_chunk);
  DSV3_CHECK(opt_.max_waiting >= 0, "--max-waiting {} must not be negative", opt_.max_waiting);
  DSV3_CHECK(opt_.block_tokens >= 1, "cache blocks of {} tokens", opt_.block_tokens);
  if (opt_.paged && engine.cache_pool()) {
    // A device engine's own pool: its block size and prefix caching (set when it was made).
    pool_ = engine.cache_pool();
    opt_.block_tokens = pool_->block_tokens();
    stats_.blocks_total = pool_->blocks();
    stats_.blocks_free = pool_->free_blocks();
  } else if (opt_.paged && engine.takes_pooled_caches()) {
    DSV3_CHECK(opt_.max_batch_tokens >= opt_.block_tokens,
               "--max-batch-tokens {} must be at least one block ({} tokens)",
               opt_.max_batch_tokens, opt_.block_tokens);
    pool_ = std::make_shared<BlockPool>(engine.config(), engine.config().num_hidden_layers,
                                        opt_.max_batch_tokens / opt_.block_tokens,
                                        opt_.block_tokens, opt_.prefix_caching);
    stats_.blocks_total = stats_.blocks_free = pool_->blocks();
  } else {
    DSV3_CHECK(opt_.max_batch_tokens >= context_,
               "--max-batch-tokens {} must hold at least one sequence of the context ({} tokens)",
               opt_.max_batch_tokens, context_);
  }
}

Scheduler::~Scheduler() = default;

const BlockPool& Scheduler::pool() const {
  DSV3_CHECK(pool_, "this scheduler's caches are the engine's own: there is no block pool");
  return *pool_;
}

int64_t Scheduler::reservation(const Request& req) const {
  const int64_t want =
      std::min(int64_t(req.prompt.size()) + int64_t(req.params.max_new_tokens), context_);
  // A paged cache grows by whole blocks; an engine's own cache is sized exactly.
  const int64_t per_choice = pool_ ? blocks_of(want, opt_.block_tokens) * opt_.block_tokens : want;
  return int64_t(std::max(req.n, 1)) * per_choice;
}

Scheduler::Submit Scheduler::submit(Request req) {
  if (closed_) return Submit::kShuttingDown;
  const int64_t budget = pool_ ? pool_->blocks() * opt_.block_tokens : opt_.max_batch_tokens;
  if (reservation(req) > budget || req.n > opt_.max_seqs) return Submit::kTooLarge;
  std::vector<std::unique_ptr<Seq>> group;
  const auto now = Clock::now();
  for (int i = 0; i < req.n; ++i) {
    auto s = std::make_unique<Seq>();
    s->ch = req.channel;
    s->index = i;
    s->prompt = req.prompt;
    s->sampler = std::make_unique<infer::Sampler>(req.params, req.prompt, uint64_t(i));
    if (tok_) s->text = std::make_unique<TextStream>(*tok_, req.params.stop_strings);
    s->reserve = reservation(req) / std::max(req.n, 1);
    s->submitted = now;
    group.push_back(std::move(s));
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (int64_t(waiting_.size()) >= opt_.max_waiting) return Submit::kQueueFull;
    waiting_.push_back(std::move(group));
    stats_.waiting = int64_t(waiting_.size());
  }
  cv_.notify_all();
  return Submit::kOk;
}

void Scheduler::finish(Seq& s, const std::string& reason) {
  if (s.done) return;
  s.done = true;
  TokenEvent ev;
  ev.index = s.index;
  ev.finished = true;
  ev.finish_reason = reason;
  if (s.text && reason != "cancelled") ev.text = s.text->finish();
  s.ch->push(std::move(ev));
}

void Scheduler::deliver(Seq& s, const infer::SampleResult& r) {
  const auto now = Clock::now();
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.generated_tokens;
    if (s.generated == 0)
      stats_.ttft.observe(seconds_between(s.submitted, now));
    else
      stats_.itl.observe(seconds_between(s.last_token, now));
  }
  s.last_token = now;
  ++s.generated;
  s.last = r.token;
  const infer::SamplingParams& p = s.sampler->params();
  TokenEvent ev;
  ev.index = s.index;
  ev.token = r.token;
  if (p.logprobs) ev.logprobs = r;
  bool stop = p.is_stop_token(r.token);
  // Model vocabularies are padded past the tokenizer's (129,280 vs 128,815 ids for
  // DeepSeek-V3); a padding id decodes to nothing rather than failing the request.
  if (s.text && tok_->is_valid_id(r.token)) {
    TextStream::Piece piece = s.text->push(r.token);
    ev.text = std::move(piece.text);
    stop = stop || piece.stopped;
  }
  std::string reason;
  if (stop) reason = "stop";
  // The new token would sit at position cache.size(): a sequence never exceeds the context.
  else if (s.generated >= p.max_new_tokens || s.cache.size() + 1 >= context_)
    reason = "length";
  if (!reason.empty()) {
    s.done = true;
    ev.finished = true;
    ev.finish_reason = reason;
    if (s.text) ev.text += s.text->finish();
  }
  s.ch->push(std::move(ev));
}

void Scheduler::cancel_all() {
  std::lock_guard<std::mutex> lk(mu_);
  cancel_all_ = true;
  cv_.notify_all();
}

void Scheduler::stop() {
  std::lock_guard<std::mutex> lk(mu_);
  stopping_ = true;
  cv_.notify_all();
}

bool Scheduler::step() {
  // Admission: strict FIFO (no request overtakes an older one, so none starves), whole
  // requests at a time, while the sequence count and the cache budget allow.
  std::vector<std::unique_ptr<Seq>> admitted;
  bool cancel_everything = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    cancel_everything = cancel_all_;
    cancel_all_ = false;
    while (!waiting_.empty()) {
      auto& group = waiting_.front();
      if (cancel_everything || group.front()->ch->cancelled()) {
        for (auto& s : group) finish(*s, "cancelled");
        waiting_.pop_front();
        continue;
      }
      if (int64_t(running_.size() + admitted.size() + group.size()) > opt_.max_seqs) break;
      const bool generates = group.front()->sampler->params().max_new_tokens > 0;
      if (pool_) {
        // Blocks: each choice's capacity less the prefix blocks the pool already holds
        // (shared, not taken), plus the cached ones nobody references now (sharing them takes
        // them off the free list).
        const BlockPool::PrefixMatch m = pool_->match(group.front()->prompt);
        int64_t need = m.free;
        for (auto& s : group) need += blocks_of(s->reserve, opt_.block_tokens) - m.blocks;
        if (need > pool_->available_blocks()) break;
      } else if (generates) {
        int64_t need = 0;
        for (auto& s : group) need += s->reserve;
        if (engine_reserved_ + need > opt_.max_batch_tokens) break;
      }
      for (auto& s : group) {
        stats_.prompt_tokens += int64_t(s->prompt.size());
        if (generates && pool_) {
          s->cache = LatentCache(pool_, s->reserve);
          const int64_t shared = s->cache.attach_prefix(s->prompt);
          DSV3_ASSERT(s->cache.reserve_rest());
          s->fed = size_t(shared);
          stats_.prefix_hit_tokens += shared;
        } else if (generates) {
          s->cache = engine_.new_cache(s->reserve);
          engine_reserved_ += s->cache.capacity();
        }
        admitted.push_back(std::move(s));
      }
      waiting_.pop_front();
    }
    stats_.waiting = int64_t(waiting_.size());
  }
  for (auto& s : admitted) {
    if (s->sampler->params().max_new_tokens == 0) finish(*s, "length");
    running_.push_back(std::move(s));
  }
  for (auto& s : running_)
    if (cancel_everything || s->ch->cancelled()) finish(*s, "cancelled");

  // One engine step: every decoding sequence's newest token, plus prompt chunks from the
  // prefilling ones within the per-step prefill budget.
  std::vector<StepEngine::Input> inputs;
  std::vector<Seq*> in_step;
  int64_t prefill_budget = opt_.prefill_chunk;
  for (auto& sp : running_) {
    Seq& s = *sp;
    if (s.done) continue;
    if (s.fed < s.prompt.size()) {
      if (prefill_budget <= 0) continue;
      const size_t n = std::min(s.prompt.size() - s.fed, size_t(prefill_budget));
      prefill_budget -= int64_t(n);
      inputs.push_back(
          {&s.cache, {s.prompt.begin() + long(s.fed), s.prompt.begin() + long(s.fed + n)}, false});
      s.fed += n;
    } else {
      inputs.push_back({&s.cache, {s.last}, false});
    }
    in_step.push_back(&s);
  }
  const bool worked = !inputs.empty() || !admitted.empty() || cancel_everything;
  if (!inputs.empty()) {
    try {
      // Mid-prompt sequences get no token yet.
      std::vector<infer::Sampler*> samplers;
      for (Seq* s : in_step)
        samplers.push_back(s->fed < s->prompt.size() ? nullptr : s->sampler.get());
      const std::vector<infer::SampleResult> drawn = engine_.step_sample(inputs, samplers);
      for (size_t k = 0; k < in_step.size(); ++k)
        if (samplers[k]) deliver(*in_step[k], drawn[k]);
    } catch (const std::exception&) {
      // The engine does not fail on validated input; if it does anyway, end the affected
      // requests rather than the server.
      for (Seq* s : in_step) finish(*s, "error");
    }
  }

  // Retire finished sequences: their blocks go back to the pool (shared ones once their last
  // sequence goes), with their reservations.
  int64_t cache_tokens = 0;
  std::vector<std::unique_ptr<Seq>> still;
  for (auto& s : running_) {
    if (!s->done) {
      cache_tokens += s->cache.size();
      still.push_back(std::move(s));
    } else if (!pool_) {
      engine_reserved_ -= s->cache.capacity();  // 0 for a sequence that never had a cache
    }
  }
  running_ = std::move(still);
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!inputs.empty()) ++stats_.steps;
    stats_.running = int64_t(running_.size());
    stats_.cache_tokens = cache_tokens;
    if (pool_) {
      stats_.reserved_tokens =
          (pool_->used_blocks() + pool_->reserved_blocks()) * opt_.block_tokens;
      stats_.blocks_total = pool_->blocks();
      stats_.blocks_used = pool_->used_blocks();
      stats_.blocks_free = pool_->free_blocks();
      stats_.blocks_reserved = pool_->reserved_blocks();
      stats_.blocks_cached = pool_->cached_blocks();
    } else {
      stats_.reserved_tokens = engine_reserved_;
    }
  }
  return worked;
}

void Scheduler::run() {
  for (;;) {
    if (step()) continue;
    std::unique_lock<std::mutex> lk(mu_);
    if (stopping_ && waiting_.empty() && running_.empty()) break;
    cv_.wait_for(lk, std::chrono::milliseconds(100),
                 [&] { return !waiting_.empty() || stopping_ || cancel_all_; });
  }
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

}  // namespace dsv3::serve
