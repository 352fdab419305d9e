// dsv3 serve: an OpenAI-compatible HTTP server with continuous batching (docs/SERVING.md).
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "commands.h"
#include "core/error.h"
#include "serve/server.h"
#include "step_engines.h"

namespace dsv3::apps {

namespace {

// A device engine allocates its cache at start (max-seqs sequences of max-model-len tokens by
// default); without --max-model-len a sequence holds the model's context up to this many tokens.
constexpr int64_t kDeviceMaxModelLen = 4096;

struct ServeArgs {
  std::string model, tokenizer, template_file, name, port_file, device = "cpu";
  bool budget_given = false;  // --max-batch-tokens on the command line
  bool batch_gemms = false, batch_invariant = false;
  std::string kv_cache_dtype = "auto";
  serve::ServerOptions opt;
};

// SIGINT/SIGTERM only write a byte to this pipe (async-signal-safe); a watcher thread reads it
// and shuts the server down. A handler rather than sigwait, since OpenBLAS starts threads
// before main() whose signal mask we cannot set.
int g_signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &b, 1);
}

void run(ServeArgs a) {
  DSV3_CHECK(pipe(g_signal_pipe) == 0, "cannot create a pipe for signal handling");
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that goes away must not end the server

  const int cuda_index = cuda_index_of(a.device);
  EngineChoice e;
  e.cuda_index = cuda_index;
  e.batch_gemms = a.batch_gemms;
  e.batch_invariant = a.batch_invariant;
  e.kv_cache_dtype = a.kv_cache_dtype;
  check_engine_flags(e);
  const Model model(ModelWeights::load(a.model));
  int64_t& max_len = a.opt.scheduler.max_model_len;
  if (cuda_index >= 0 && max_len == 0)
    max_len = std::min(model.config().max_position_embeddings, kDeviceMaxModelLen);
  // The CUDA engine allocates its block cache up front: room for max_seqs sequences of the
  // whole context unless --max-batch-tokens says otherwise.
  if (cuda_index >= 0 && !a.budget_given)
    a.opt.scheduler.max_batch_tokens = a.opt.scheduler.max_seqs * max_len;
  e.sequences = a.opt.scheduler.max_seqs;
  e.max_context = max_len;
  e.prefix_caching = a.opt.scheduler.prefix_caching;
  e.cache_tokens = a.opt.scheduler.max_batch_tokens;
  const std::unique_ptr<StepEngine> engine_ptr = make_step_engine(model, e);
  const StepEngine& engine = *engine_ptr;
  const std::string tok_dir = a.tokenizer.empty() ? a.model : a.tokenizer;
  const std::filesystem::path tok_path(tok_dir);
  DSV3_CHECK(std::filesystem::exists(
                 std::filesystem::is_directory(tok_path) ? tok_path / "tokenizer.json" : tok_path),
             "{} has no tokenizer.json: pass --tokenizer DIR", tok_dir);
  const Tokenizer tok = Tokenizer::load(tok_dir);
  DSV3_CHECK(int64_t(tok.vocab_size()) <= model.config().vocab_size,
             "the tokenizer has {} tokens but the model's vocabulary is {}: they do not belong "
             "together",
             tok.vocab_size(), model.config().vocab_size);
  const std::string cfg_dir =
      std::filesystem::is_directory(tok_path) ? tok_dir : tok_path.parent_path().string();
  ChatTemplateConfig cfg = load_chat_template_config(cfg_dir, a.template_file.empty());
  if (!a.template_file.empty()) cfg.chat_template = load_chat_template_file(a.template_file);
  const ChatTemplate tpl(cfg);

  serve::ModelInfo info;
  info.name = a.name.empty() ? std::filesystem::path(a.model).filename().string() : a.name;
  if (info.name.empty()) info.name = "dsv3";
  info.vocab = model.config().vocab_size;

  serve::Server server(engine, tok, tpl, info, a.opt);
  const int port = server.bind();
  if (!a.port_file.empty()) {
    std::ofstream f(a.port_file + ".tmp");
    f << port << "\n";
    f.close();
    std::filesystem::rename(a.port_file + ".tmp", a.port_file);
  }
  const serve::Scheduler& sched = server.scheduler();
  fmt::print(stderr,
             "dsv3 serve: model '{}' on http://{}:{}/ ({}, context {}, budget {} tokens{}, {} "
             "sequences)\n",
             info.name, a.opt.host, port, a.device, sched.context(),
             a.opt.scheduler.max_batch_tokens, sched.paged() ? " paged" : "",
             a.opt.scheduler.max_seqs);

  std::thread signals([&] {
    unsigned char sig = 0;
    while (read(g_signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    if (sig != 0) fmt::print(stderr, "dsv3 serve: signal {}: finishing in-flight requests\n", sig);
    server.shutdown();
  });
  server.serve();
  // serve() normally returns after the watcher's shutdown(); if the listener stopped on its
  // own, wake the watcher (byte 0) so it can be joined.
  const unsigned char zero = 0;
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &zero, 1);
  signals.join();
  fmt::print(stderr, "dsv3 serve: stopped\n");
}

}  // namespace

void add_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "serve", "OpenAI-compatible HTTP server with continuous batching (docs/SERVING.md)");
  auto a = std::make_shared<ServeArgs>();
  serve::ServerOptions& o = a->opt;
  cmd->add_option("--model", a->model, "checkpoint directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--tokenizer", a->tokenizer,
                  "tokenizer directory with tokenizer.json (default: the model directory)");
  cmd->add_option("--template", a->template_file,
                  "chat template: a .jinja file or a JSON with \"chat_template\" (default: the "
                  "tokenizer's tokenizer_config.json)");
  cmd->add_option("--served-model-name", a->name,
                  "the model name requests must use (default: the model directory's name)");
  cmd->add_option("--host", o.host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", o.port, "port (0: any free port)")->capture_default_str();
  cmd->add_option("--port-file", a->port_file, "write the port here once listening");
  cmd->add_option("--api-key", o.api_key, "require 'Authorization: Bearer KEY' on /v1/ endpoints")
      ->envname("DSV3_API_KEY");
  CLI::Option* budget =
      cmd->add_option("--max-batch-tokens", o.scheduler.max_batch_tokens,
                      "size of the paged latent cache in tokens (64-token blocks); each running "
                      "sequence reserves prompt + max_tokens of it, less a shared prefix (on "
                      "CUDA: a budget over the engine's caches, default max-seqs x "
                      "max-model-len)")
          ->capture_default_str();
  cmd->add_flag("!--no-prefix-caching", o.scheduler.prefix_caching,
                "do not share cache blocks of identical prompt prefixes between requests");
  cmd->add_option("--max-seqs", o.scheduler.max_seqs, "sequences in the running batch at most")
      ->capture_default_str();
  cmd->add_option("--device", a->device,
                  "cpu, cuda or cuda:N (on CUDA each sequence's cache is the engine's own, no "
                  "prefix sharing)")
      ->capture_default_str();
  add_batch_flags(cmd, a->batch_gemms, a->batch_invariant);
  add_kv_cache_dtype_option(cmd, a->kv_cache_dtype);
  cmd->add_option("--max-model-len", o.scheduler.max_model_len,
                  "longest sequence (prompt + output) a request may make (default: the model's "
                  "context; on CUDA at most 4096, since max-seqs caches of it are allocated at "
                  "start)");
  cmd->add_option("--max-waiting", o.scheduler.max_waiting,
                  "requests waiting for admission before 429")
      ->capture_default_str();
  cmd->add_option("--prefill-chunk", o.scheduler.prefill_chunk,
                  "prompt tokens per engine step (over all prefilling sequences)")
      ->capture_default_str();
  cmd->add_option("--max-body-bytes", o.max_body_bytes, "largest request body accepted (413)")
      ->capture_default_str();
  cmd->add_option("--http-threads", o.http_threads,
                  "HTTP worker threads (each open stream holds one)")
      ->capture_default_str();
  cmd->add_option("--shutdown-grace", o.shutdown_grace_s,
                  "seconds in-flight requests get to finish after SIGTERM/SIGINT")
      ->capture_default_str();
  cmd->callback([a, budget] {
    a->budget_given = budget->count() > 0;
    run(*a);
  });
}

}  // namespace dsv3::apps
