// dsv3 chat: an interactive chat in the terminal, through the model's chat template.
// Lines typed are user turns; /reset clears the history, /exit (or end of input) leaves.
// R1-style reasoning (the text up to </think>) is shown apart from the answer.
#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "infer/generate.h"
#include "infer/text_stream.h"
#include "sampling_flags.h"
#include "step_engines.h"
#include "tokenizer/chat_template.h"

namespace dsv3::apps {

namespace {

struct ChatArgs {
  std::string model, tokenizer, template_file, system, device = "cpu", kv_cache_dtype = "auto";
  SamplingFlags sampling;
  bool speculative = false, batch_gemms = false, batch_invariant = false;
};

// Splits streamed text into reasoning (before </think>) and answer, holding back a tail that
// could be the start of the marker.
class ThinkSplitter {
 public:
  ThinkSplitter(bool thinking, bool tty) : thinking_(thinking), tty_(tty) {
    if (thinking_) open();
  }
  void push(const std::string& text) {
    pending_ += text;
    while (thinking_) {
      const size_t end = pending_.find(kEnd);
      if (end == std::string::npos) break;
      out(pending_.substr(0, end));
      pending_.erase(0, end + kEnd.size());
      close();
    }
    if (!thinking_) {
      if (!seen_start_ && pending_.find(kStart) != std::string::npos) {
        // A model that opens its own <think> block.
        const size_t s = pending_.find(kStart);
        out(pending_.substr(0, s));
        pending_.erase(0, s + kStart.size());
        seen_start_ = thinking_ = true;
        open();
        push("");
        return;
      }
      out(pending_);
      pending_.clear();
      return;
    }
    const size_t keep = std::min(pending_.size(), kEnd.size() - 1);
    out(pending_.substr(0, pending_.size() - keep));
    pending_.erase(0, pending_.size() - keep);
  }
  void finish() {
    out(pending_);
    pending_.clear();
    if (thinking_) close();
  }

 private:
  void open() { out(tty_ ? "\x1b[2m[thinking]\n" : "[thinking]\n"); }
  void close() {
    thinking_ = false;
    out(tty_ ? "\x1b[0m\n[answer]\n" : "\n[answer]\n");
  }
  static void out(const std::string& s) {
    std::fputs(s.c_str(), stdout);
    std::fflush(stdout);
  }
  inline static const std::string kStart = "<think>", kEnd = "</think>";
  bool thinking_, tty_, seen_start_ = false;
  std::string pending_;
};

void run(const ChatArgs& a) {
  EngineChoice e;
  e.cuda_index = cuda_index_of(a.device);
  e.kv_cache_dtype = a.kv_cache_dtype;
  e.batch_gemms = a.batch_gemms;  // a speculative step verifies two rows
  e.batch_invariant = a.batch_invariant;
  check_engine_flags(e);
  const Model model(ModelWeights::load(a.model));
  const std::unique_ptr<StepEngine> engine_ptr = make_step_engine(model, e);
  const StepEngine& engine = *engine_ptr;
  const std::string tok_dir = a.tokenizer.empty() ? a.model : a.tokenizer;
  DSV3_CHECK(std::filesystem::exists(std::filesystem::path(tok_dir) / "tokenizer.json"),
             "{} has no tokenizer.json: pass --tokenizer DIR", tok_dir);
  const Tokenizer tok = Tokenizer::load(tok_dir);
  DSV3_CHECK(int64_t(tok.vocab_size()) <= model.config().vocab_size,
             "the tokenizer has {} tokens but the model's vocabulary is {}", tok.vocab_size(),
             model.config().vocab_size);
  ChatTemplateConfig cfg = load_chat_template_config(tok_dir, a.template_file.empty());
  if (!a.template_file.empty()) cfg.chat_template = load_chat_template_file(a.template_file);
  const ChatTemplate tpl(cfg);

  infer::SamplingParams params = a.sampling.params();
  if (tok.eos_id() >= 0) params.stop_token_ids.push_back(tok.eos_id());
  const bool tty = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
  nlohmann::json history = nlohmann::json::array();
  if (!a.system.empty()) history.push_back({{"role", "system"}, {"content", a.system}});
  const size_t base = history.size();
  if (tty) fmt::print("dsv3 chat ({}). /reset clears the history, /exit leaves.\n", a.model);
  std::string line;
  for (;;) {
    if (tty) {
      std::fputs("\n> ", stdout);
      std::fflush(stdout);
    }
    if (!std::getline(std::cin, line) || line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      history.erase(history.begin() + long(base), history.end());
      fmt::print("(history cleared)\n");
      continue;
    }
    if (line.empty()) continue;
    history.push_back({{"role", "user"}, {"content", line}});
    const std::string prompt = tpl.render(history, true);
    GenerationRequest req{tok.encode(prompt, false), params};
    // R1's generation prompt opens the reasoning block itself.
    const bool thinking = prompt.size() >= 8 && prompt.ends_with("<think>\n");
    TextStream text(tok, params.stop_strings);
    ThinkSplitter shown(thinking, tty);
    GenerateOptions opt;
    opt.speculative = a.speculative;
    opt.on_token = [&](size_t, int32_t id) {
      const TextStream::Piece p = text.push(id);
      shown.push(p.text);
      return !p.stopped;
    };
    GenerationStats st;
    generate(engine, {req}, opt, &st);
    shown.push(text.finish());
    shown.finish();
    std::fputs("\n", stdout);
    std::fflush(stdout);
    history.push_back(
        {{"role", "assistant"}, {"content", (thinking ? "<think>\n" : "") + text.text()}});
    fmt::print(stderr, "[{} prompt tokens, {:.1f} tok/s prefill; {} tokens, {:.1f} tok/s decode]\n",
               st.prompt_tokens, st.prompt_tokens / std::max(st.prefill_seconds, 1e-9),
               st.generated_tokens, st.generated_tokens / std::max(st.decode_seconds, 1e-9));
  }
}

}  // namespace

void add_chat(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat",
                                 "Chat with a model in the terminal (chat template, "
                                 "streaming, history; /reset, /exit)");
  auto a = std::make_shared<ChatArgs>();
  cmd->add_option("--model", a->model, "checkpoint directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--tokenizer", a->tokenizer,
                  "directory with tokenizer.json and tokenizer_config.json (default: the model's)");
  cmd->add_option(
      "--template", a->template_file,
      "chat template: a .jinja file or a JSON with \"chat_template\" (e.g. DeepSeek-R1's)");
  cmd->add_option("--system", a->system, "system prompt");
  a->sampling.add_to(*cmd);
  cmd->add_flag("--speculative", a->speculative, "MTP speculative decoding");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  add_batch_flags(cmd, a->batch_gemms, a->batch_invariant);
  add_kv_cache_dtype_option(cmd, a->kv_cache_dtype);
  cmd->callback([a] { run(*a); });
}

}  // namespace dsv3::apps
