// dsv3 generate: text (or ids) in, generated text streamed out.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>

#include "commands.h"
#include "core/error.h"
#include "infer/generate.h"
#include "infer/text_stream.h"
#include "sampling_flags.h"
#include "step_engines.h"

namespace dsv3::apps {

namespace {

struct GenerateArgs {
  std::string model, tokenizer, device = "cpu";
  std::vector<std::string> prompts;
  std::vector<std::string> prompt_ids;
  SamplingFlags sampling;
  bool speculative = false, print_ids = false, no_special = false, batch_gemms = false,
       batch_invariant = false;
  std::string kv_cache_dtype = "auto";
};

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    const std::string part = s.substr(i, j - i);
    char* end = nullptr;
    const long v = std::strtol(part.c_str(), &end, 10);
    DSV3_CHECK(!part.empty() && end && *end == 0 && v >= 0 && v <= INT32_MAX,
               "--prompt-ids: '{}' is not a token id (use e.g. --prompt-ids 0,17,42)", part);
    ids.push_back(int32_t(v));
    i = j + 1;
  }
  return ids;
}

void run(const GenerateArgs& a) {
  EngineChoice e;
  e.cuda_index = cuda_index_of(a.device);
  e.sequences = int64_t(a.prompts.size() + a.prompt_ids.size());
  e.batch_gemms = a.batch_gemms;
  e.batch_invariant = a.batch_invariant;
  e.kv_cache_dtype = a.kv_cache_dtype;
  check_engine_flags(e);
  DSV3_CHECK(a.prompts.empty() != a.prompt_ids.empty(),
             "give the prompt as --prompt TEXT or as --prompt-ids LIST (not both, not neither)");
  const Model model(ModelWeights::load(a.model));
  const std::unique_ptr<StepEngine> engine_ptr = make_step_engine(model, e);
  const StepEngine& engine = *engine_ptr;

  std::unique_ptr<Tokenizer> tok;
  const std::string tok_path = a.tokenizer.empty() ? a.model : a.tokenizer;
  const bool have_tok = !a.tokenizer.empty() ||
                        std::filesystem::exists(std::filesystem::path(a.model) / "tokenizer.json");
  if (have_tok) {
    tok = std::make_unique<Tokenizer>(Tokenizer::load(tok_path));
    DSV3_CHECK(int64_t(tok->vocab_size()) <= model.config().vocab_size,
               "the tokenizer has {} tokens but the model's vocabulary is {}: they do not belong "
               "together",
               tok->vocab_size(), model.config().vocab_size);
  }
  DSV3_CHECK(tok || a.prompts.empty(),
             "{} has no tokenizer.json: pass --tokenizer DIR, or give --prompt-ids", a.model);

  std::vector<GenerationRequest> reqs;
  for (const std::string& p : a.prompts) {
    // DeepSeek's tokenizer.json adds no BOS itself; tokenizer_config.json's add_bos_token
    // says the model expects one (as HF's tokenizer class adds it).
    std::vector<int32_t> ids;
    if (!a.no_special && tok->add_bos_token() && tok->bos_id() >= 0) ids.push_back(tok->bos_id());
    const auto body = tok->encode(p, false);
    ids.insert(ids.end(), body.begin(), body.end());
    reqs.push_back({std::move(ids), {}});
  }
  for (const std::string& p : a.prompt_ids) reqs.push_back({parse_ids(p), {}});
  const infer::SamplingParams params = a.sampling.params();
  for (auto& r : reqs) {
    r.params = params;
    if (tok && tok->eos_id() >= 0 && params.stop_token_ids.empty())
      r.params.stop_token_ids = {tok->eos_id()};
  }

  // One prompt streams as it goes; several print in order when done.
  const bool stream = reqs.size() == 1 && tok;
  std::vector<TextStream> texts;
  if (tok)
    for (size_t i = 0; i < reqs.size(); ++i) texts.emplace_back(*tok, params.stop_strings);
  GenerateOptions opt;
  opt.speculative = a.speculative;
  opt.on_token = [&](size_t i, int32_t id) {
    if (!tok) return true;
    const TextStream::Piece p = texts[i].push(id);
    if (stream) {
      std::fputs(p.text.c_str(), stdout);
      std::fflush(stdout);
    }
    return !p.stopped;
  };
  GenerationStats st;
  const auto outs = generate(engine, reqs, opt, &st);
  for (size_t i = 0; i < outs.size(); ++i) {
    if (tok) {
      const std::string rest = texts[i].finish();
      if (stream) {
        fmt::print("{}\n", rest);
      } else {
        fmt::print("--- [{}] ({}, {} tokens)\n{}\n", i, outs[i].finish_reason,
                   outs[i].tokens.size(), texts[i].text());
      }
    }
  }
  if (a.print_ids) {
    for (size_t i = 0; i < outs.size(); ++i) {
      std::string line;
      for (int32_t id : outs[i].tokens) line += (line.empty() ? "" : " ") + std::to_string(id);
      fmt::print("{}\n", line);
    }
  }
  std::fflush(stdout);
  fmt::print(stderr,
             "prefill: {} tokens in {:.3f} s ({:.1f} tok/s); decode: {} tokens in {:.3f} s "
             "({:.1f} tok/s, {} steps)\n",
             st.prompt_tokens, st.prefill_seconds,
             st.prompt_tokens / std::max(st.prefill_seconds, 1e-9), st.generated_tokens,
             st.decode_seconds, st.generated_tokens / std::max(st.decode_seconds, 1e-9), st.steps);
  if (a.speculative)
    fmt::print(stderr,
               "speculative (MTP): {} of {} drafts accepted ({:.1f}%), {:.2f} tokens per decode "
               "step (1.00 without speculation)\n",
               st.accepted, st.drafted, 100.0 * st.acceptance(), st.tokens_per_step());
}

}  // namespace

void add_generate(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("generate", "Generate text from a prompt, streaming it as it comes");
  auto a = std::make_shared<GenerateArgs>();
  cmd->add_option("--model", a->model, "checkpoint directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--tokenizer", a->tokenizer,
                  "tokenizer.json or its directory (default: the model directory)");
  cmd->add_option("--prompt", a->prompts, "prompt text (repeat for a batch)");
  cmd->add_option("--prompt-ids", a->prompt_ids, "prompt as token ids, e.g. 0,17,42 (repeatable)");
  cmd->add_flag("--no-special", a->no_special, "do not add the BOS token to text prompts");
  a->sampling.add_to(*cmd);
  cmd->add_flag("--speculative", a->speculative,
                "MTP speculative decoding: draft with the MTP module, verify in the same step");
  cmd->add_flag("--print-ids", a->print_ids,
                "print the generated ids, space-separated, as the last stdout line(s)");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  add_batch_flags(cmd, a->batch_gemms, a->batch_invariant);
  add_kv_cache_dtype_option(cmd, a->kv_cache_dtype);
  cmd->callback([a] { run(*a); });
}

}  // namespace dsv3::apps
