#include "serve/server.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <random>
#include <thread>

#include "core/error.h"
#include "serve/web_page.h"

namespace dsv3::serve {

using nlohmann::json;

namespace {

constexpr auto kPoll = std::chrono::milliseconds(200);
// How often a non-streaming response writes a space while it waits (see generate()).
constexpr auto kHeartbeat = std::chrono::milliseconds(200);

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n",
                  "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status, e.body());
}

int64_t unix_now() {
  return int64_t(std::time(nullptr));
}

// One choice's output as it accumulates.
struct ChoiceState {
  std::string text, reasoning;
  std::vector<int32_t> ids;
  json logprobs;  // chat: array of entries; completions: the legacy object
  std::string finish_reason;
  bool finished = false, role_sent = false;
  std::unique_ptr<ReasoningSplitter> split;
};

// What a whole request streams or returns; shared by the handler and its content provider.
struct Job {
  std::shared_ptr<Channel> ch;
  ParsedRequest pr;
  bool chat = false;
  std::string id, model;
  int64_t created = 0;
  std::vector<ChoiceState> choices;
  int finished = 0;
  int64_t completion_tokens = 0;
  bool done_sent = false;
  std::atomic<int>* active = nullptr;  // the server's count of requests in flight

  ~Job() {
    if (active) --*active;
  }

  json usage() const {
    const int64_t p = int64_t(pr.prompt.size());
    return {{"prompt_tokens", p},
            {"completion_tokens", completion_tokens},
            {"total_tokens", p + completion_tokens}};
  }
  json chunk(json choice) const {
    json c = {{"id", id},
              {"object", chat ? "chat.completion.chunk" : "text_completion"},
              {"created", created},
              {"model", model},
              {"choices", json::array({std::move(choice)})}};
    if (pr.include_usage) c["usage"] = nullptr;
    return c;
  }
  // Applies one event; for streaming returns the SSE chunks it produces.
  std::vector<json> apply(const Tokenizer& tok, TokenEvent& ev) {
    std::vector<json> out;
    ChoiceState& c = choices[size_t(ev.index)];
    std::string reasoning, content;
    if (ev.token >= 0) {
      ++completion_tokens;
      c.ids.push_back(ev.token);
    }
    ReasoningSplitter::Out o = c.split->push(ev.text);
    if (ev.finished) {
      ReasoningSplitter::Out f = c.split->finish();
      o.reasoning += f.reasoning;
      o.content += f.content;
    }
    c.text += o.content;
    c.reasoning += o.reasoning;
    json lp_delta;
    if (ev.logprobs) {
      if (chat) {
        json e = chat_logprob_entry(tok, *ev.logprobs);
        c.logprobs.push_back(e);
        lp_delta = {{"content", json::array({e})}};
      } else {
        json one = {{"tokens", json::array()},
                    {"token_logprobs", json::array()},
                    {"top_logprobs", json::array()}};
        append_completion_logprobs(tok, *ev.logprobs, &one);
        append_completion_logprobs(tok, *ev.logprobs, &c.logprobs);
        lp_delta = one;
      }
    }
    if (pr.stream) {
      const bool has_text = !o.content.empty() || !o.reasoning.empty();
      if (chat) {
        if (has_text || !lp_delta.is_null() || !c.role_sent) {
          json delta = json::object();
          if (!c.role_sent) delta["role"] = "assistant";
          c.role_sent = true;
          if (!o.reasoning.empty()) delta["reasoning_content"] = o.reasoning;
          if (!o.content.empty() || !pr.thinking) delta["content"] = o.content;
          out.push_back(chunk({{"index", ev.index},
                               {"delta", delta},
                               {"logprobs", lp_delta},
                               {"finish_reason", nullptr}}));
        }
      } else if (has_text || !lp_delta.is_null()) {
        out.push_back(chunk({{"index", ev.index},
                             {"text", o.content},
                             {"logprobs", lp_delta},
                             {"finish_reason", nullptr}}));
      }
    }
    if (ev.finished) {
      c.finished = true;
      c.finish_reason = ev.finish_reason;
      ++finished;
      if (pr.stream) {
        json choice = {
            {"index", ev.index}, {"logprobs", nullptr}, {"finish_reason", ev.finish_reason}};
        if (chat)
          choice["delta"] = json::object();
        else
          choice["text"] = "";
        if (pr.return_token_ids) choice["token_ids"] = c.ids;
        out.push_back(chunk(choice));
      }
    }
    return out;
  }

  json final_response() const {
    json arr = json::array();
    for (size_t i = 0; i < choices.size(); ++i) {
      const ChoiceState& c = choices[i];
      json choice = {{"index", i}, {"finish_reason", c.finish_reason}};
      if (chat) {
        json msg = {{"role", "assistant"}, {"content", c.text}};
        if (pr.thinking) msg["reasoning_content"] = c.reasoning;
        choice["message"] = msg;
        choice["logprobs"] = pr.logprobs ? json{{"content", c.logprobs}} : json(nullptr);
      } else {
        choice["text"] = c.text;
        choice["logprobs"] = pr.logprobs ? c.logprobs : json(nullptr);
      }
      if (pr.return_token_ids) choice["token_ids"] = c.ids;
      arr.push_back(choice);
    }
    return {{"id", id},           {"object", chat ? "chat.completion" : "text_completion"},
            {"created", created}, {"model", model},
            {"choices", arr},     {"usage", usage()}};
  }
};

std::string sse(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace

Server::Server(const StepEngine& engine, const Tokenizer& tok, const ChatTemplate& tpl,
               ModelInfo model, ServerOptions opt)
    : tok_(tok),
      tpl_(tpl),
      model_(std::move(model)),
      opt_(std::move(opt)),
      sched_(std::make_unique<Scheduler>(engine, &tok, opt_.scheduler)),
      http_(std::make_unique<httplib::Server>()) {
  // Requests are held to what the scheduler's caches hold (--max-model-len, a device's slots).
  model_.context = sched_->context();
  routes();
}

Server::~Server() = default;

void Server::count(const std::string& endpoint, int status) {
  // Only known endpoints become labels, so clients cannot grow the metric without bound.
  static const char* const kKnown[] = {"/v1/chat/completions", "/v1/completions", "/v1/models"};
  const bool known = std::find(std::begin(kKnown), std::end(kKnown), endpoint) != std::end(kKnown);
  std::lock_guard<std::mutex> lk(mu_);
  ++requests_[{known ? endpoint : "other", status}];
}

void Server::generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  const std::string endpoint = chat ? "/v1/chat/completions" : "/v1/completions";
  auto job = std::make_shared<Job>();
  try {
    const json body = parse_body(req.body);
    job->pr = chat ? parse_chat_request(body, model_, tok_, tpl_)
                   : parse_completion_request(body, model_, tok_);
  } catch (const ApiError& e) {
    count(endpoint, e.status);
    return send_error(res, e);
  }
  job->chat = chat;
  job->ch = std::make_shared<Channel>();
  job->model = model_.name;
  job->created = unix_now();
  job->id = fmt::format("{}-{:x}{:06x}", chat ? "chatcmpl" : "cmpl", next_id_++,
                        std::random_device{}() & 0xffffff);
  job->choices.resize(size_t(job->pr.n));
  for (auto& c : job->choices) {
    c.split = std::make_unique<ReasoningSplitter>(chat && job->pr.thinking);
    if (!chat)
      c.logprobs = {{"tokens", json::array()},
                    {"token_logprobs", json::array()},
                    {"top_logprobs", json::array()}};
    else
      c.logprobs = json::array();
  }
  Request r{job->pr.prompt, job->pr.params, job->pr.n, job->ch};
  switch (sched_->submit(r)) {
    case Scheduler::Submit::kOk:
      break;
    case Scheduler::Submit::kQueueFull:
      count(endpoint, 429);
      return send_error(res, ApiError(429, "The server is busy (its queue is full); retry later",
                                      "", "queue_full", "rate_limit_error"));
    case Scheduler::Submit::kTooLarge:
      count(endpoint, 400);
      return send_error(
          res, ApiError(400,
                        fmt::format("This request needs {} cache tokens (prompt + max_tokens, "
                                    "times n), more than the server's --max-batch-tokens {}",
                                    sched_->reservation(r), sched_->options().max_batch_tokens),
                        "max_tokens", "request_too_large"));
    case Scheduler::Submit::kShuttingDown:
      count(endpoint, 503);
      return send_error(
          res, ApiError(503, "The server is shutting down", "", "shutting_down", "server_error"));
  }
  count(endpoint, 200);
  // Counted until the Job goes, i.e. until the response (or the stream) is complete.
  ++active_;
  job->active = &active_;

  const Tokenizer* tok = &tok_;
  if (!job->pr.stream) {
    // httplib 0.11 tells a handler nothing about its client, and a socket the peer closed
    // still selects as writable: only a write finds out (the first after the close draws a
    // reset, the next fails). So while the answer is being generated, one space (JSON allows
    // leading whitespace) goes out each kHeartbeat; a failed write cancels the sequences.
    // An answer ready within kHeartbeat is sent without any.
    auto last_write =
        std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
    res.set_chunked_content_provider(
        "application/json",
        [job, tok, last_write](size_t, httplib::DataSink& sink) {
          if (job->done_sent) return false;
          for (TokenEvent& ev : job->ch->pop_all(kPoll)) job->apply(*tok, ev);
          std::string out;
          if (job->finished == job->pr.n)
            out = job->final_response().dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
          else if (std::chrono::steady_clock::now() - *last_write >= kHeartbeat)
            out = " ";
          if (!out.empty()) {
            if (!sink.write(out.data(), out.size())) {
              job->ch->cancel();
              return false;
            }
            *last_write = std::chrono::steady_clock::now();
          }
          if (job->finished == job->pr.n) {
            job->done_sent = true;
            sink.done();
          }
          return true;
        },
        [job](bool success) {
          if (!success) job->ch->cancel();
        });
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [job, tok](size_t, httplib::DataSink& sink) {
        if (job->done_sent) return false;
        std::string out;
        for (TokenEvent& ev : job->ch->pop_all(kPoll))
          for (const json& c : job->apply(*tok, ev)) out += sse(c);
        if (job->finished == job->pr.n) {
          if (job->pr.include_usage) {
            json u = {{"id", job->id},
                      {"object", job->chat ? "chat.completion.chunk" : "text_completion"},
                      {"created", job->created},
                      {"model", job->model},
                      {"choices", json::array()},
                      {"usage", job->usage()}};
            out += sse(u);
          }
          out += "data: [DONE]\n\n";
        }
        // A failed write means the client went away: free its sequences at the next step.
        if (!out.empty() && !sink.write(out.data(), out.size())) {
          job->ch->cancel();
          return false;
        }
        if (out.empty() && !sink.is_writable()) {
          job->ch->cancel();
          return false;
        }
        if (job->finished == job->pr.n) {
          job->done_sent = true;
          sink.done();
        }
        return true;
      },
      [job](bool success) {
        if (!success) job->ch->cancel();
      });
}

std::string Server::metrics_text() const {
  const SchedulerStats st = sched_->stats();
  std::string o;
  o += "# HELP dsv3_requests_total Requests answered, by endpoint and HTTP status.\n";
  o += "# TYPE dsv3_requests_total counter\n";
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (const auto& [k, v] : requests_)
      o += fmt::format("dsv3_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", k.first,
                       k.second, v);
  }
  auto scalar = [&](const char* name, const char* type, const char* help, double v) {
    o += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, v);
  };
  scalar("dsv3_prompt_tokens_total", "counter", "Prompt tokens admitted.",
         double(st.prompt_tokens));
  scalar("dsv3_generation_tokens_total", "counter", "Tokens generated.",
         double(st.generated_tokens));
  scalar("dsv3_engine_steps_total", "counter", "Engine steps run.", double(st.steps));
  scalar("dsv3_queue_length", "gauge", "Requests waiting for admission.", double(st.waiting));
  scalar("dsv3_running_sequences", "gauge", "Sequences in the running batch.", double(st.running));
  scalar("dsv3_cache_tokens", "gauge", "Tokens held in the running sequences' caches.",
         double(st.cache_tokens));
  scalar("dsv3_cache_reserved_tokens", "gauge",
         "Cache blocks held or promised by running sequences, in tokens (64-token blocks).",
         double(st.reserved_tokens));
  scalar("dsv3_cache_budget_tokens", "gauge", "The --max-batch-tokens budget.",
         double(sched_->options().max_batch_tokens));
  scalar("dsv3_cache_blocks_total", "gauge", "Blocks in the cache pool.", double(st.blocks_total));
  scalar("dsv3_cache_blocks_used", "gauge", "Blocks referenced by running sequences.",
         double(st.blocks_used));
  scalar("dsv3_cache_blocks_free", "gauge",
         "Blocks no sequence references (cached prefixes included).", double(st.blocks_free));
  scalar("dsv3_cache_blocks_reserved", "gauge",
         "Free blocks promised to running sequences, not yet taken.", double(st.blocks_reserved));
  scalar("dsv3_cache_blocks_cached", "gauge",
         "Full blocks indexed by their token prefix, shareable by new requests.",
         double(st.blocks_cached));
  scalar("dsv3_prefix_cache_hit_tokens_total", "counter",
         "Prompt tokens read from shared prefix blocks instead of being computed.",
         double(st.prefix_hit_tokens));
  auto hist = [&](const char* name, const char* help, const Histogram& h) {
    o += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
    uint64_t cum = 0;
    for (size_t i = 0; i < h.bounds.size(); ++i) {
      cum += h.counts[i];
      o += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, h.bounds[i], cum);
    }
    cum += h.counts.back();
    o += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, cum, name,
                     h.sum, name, h.count);
  };
  hist("dsv3_time_to_first_token_seconds", "From submission to the first generated token.",
       st.ttft);
  hist("dsv3_inter_token_latency_seconds", "Between consecutive tokens of one sequence.", st.itl);
  return o;
}

void Server::routes() {
  httplib::Server& s = *http_;
  s.new_task_queue = [n = opt_.http_threads] { return new httplib::ThreadPool(size_t(n)); };
  s.set_payload_max_length(opt_.max_body_bytes);
  s.set_keep_alive_timeout(2);  // idle keep-alive connections delay shutdown this long at most
  s.set_read_timeout(30);
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (opt_.api_key.empty() || !req.path.starts_with("/v1/"))
      return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + opt_.api_key)
      return httplib::Server::HandlerResponse::Unhandled;
    count(req.path, 401);
    send_error(res, ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY'",
                             "", "invalid_api_key", "authentication_error"));
    return httplib::Server::HandlerResponse::Handled;
  });
  // Errors httplib produces itself (unknown path, body too large, ...) get OpenAI's shape.
  s.set_error_handler(
      httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        std::string msg = fmt::format("HTTP {}", res.status), code;
        if (res.status == 404) {
          msg = fmt::format("No such endpoint: {} {}", req.method, req.path);
          code = "not_found";
        } else if (res.status == 413) {
          msg = "The request body is larger than the server's --max-body-bytes";
          code = "body_too_large";
        }
        send_error(res, ApiError(res.status, msg, "", code));
        return httplib::Server::HandlerResponse::Handled;
      }));
  s.set_exception_handler(
      [this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        count(req.path, 500);
        send_error(res, ApiError(500, what, "", "internal_error", "server_error"));
      });

  s.Post("/v1/chat/completions",
         [this](const httplib::Request& req, httplib::Response& res) { generate(req, res, true); });
  s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    generate(req, res, false);
  });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    count("/v1/models", 200);
    send_json(res, 200,
              {{"object", "list"},
               {"data", json::array({{{"id", model_.name},
                                      {"object", "model"},
                                      {"created", unix_now()},
                                      {"owned_by", "dsv3"},
                                      {"max_model_len", model_.context}}})}});
  });
  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    bool down;
    {
      std::lock_guard<std::mutex> lk(mu_);
      down = shutting_down_;
    }
    send_json(res, down ? 503 : 200, {{"status", down ? "shutting_down" : "ok"}});
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_text(), "text/plain; version=0.0.4");
  });
  s.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(kWebPage, "text/html; charset=utf-8");
  });
}

int Server::bind() {
  if (opt_.port == 0) {
    port_ = http_->bind_to_any_port(opt_.host);
  } else {
    port_ = http_->bind_to_port(opt_.host, opt_.port) ? opt_.port : -1;
  }
  DSV3_CHECK(port_ > 0, "cannot listen on {}:{}: is the port taken? pick another with --port",
             opt_.host, opt_.port);
  return port_;
}

void Server::serve() {
  std::thread engine([this] { sched_->run(); });
  http_->listen_after_bind();  // returns once shutdown() stopped it and handlers finished
  sched_->stop();
  engine.join();
}

void Server::shutdown() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (shutting_down_) return;
    shutting_down_ = true;
  }
  // Drain before stopping the listener: httplib's stop() also cuts streams in progress.
  sched_->close();  // new requests get 503 from now on
  auto wait_idle = [&](double seconds) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (active_ > 0 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return active_ == 0;
  };
  if (!wait_idle(opt_.shutdown_grace_s)) {
    sched_->cancel_all();  // streams end with finish_reason "cancelled" and [DONE]
    wait_idle(5);
  }
  http_->stop();
}

}  // namespace dsv3::serve
