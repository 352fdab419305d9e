#include "infer/generate.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "model/blocks.h"

namespace dsv3 {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::span<float> row(Tensor& t, int64_t r) {
  return {t.ptr<float>() + r * t.dim(1), size_t(t.dim(1))};
}

int32_t argmax(const float* v, int64_t n) {
  return int32_t(std::max_element(v, v + n) - v);
}

struct Seq {
  const GenerationRequest* req;
  LatentCache cache, mtp_cache;
  std::unique_ptr<infer::Sampler> sampler;
  GenerationOutput out;
  bool done = false;
  int32_t last = -1;   // the newest token, not yet in the cache
  int32_t draft = -1;  // MTP's guess for the token after `last`
};

}  // namespace

std::vector<GenerationOutput> generate(const StepEngine& engine,
                                       const std::vector<GenerationRequest>& requests,
                                       const GenerateOptions& options, GenerationStats* stats) {
  const ModelConfig& c = engine.config();
  const int64_t context = engine.context(), vocab = c.vocab_size;
  DSV3_CHECK(!options.speculative || !engine.model().weights().mtp.empty(),
             "speculative decoding needs the model's MTP layer (num_nextn_predict_layers >= 1)");
  GenerationStats st;
  std::vector<Seq> seqs(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    DSV3_CHECK(!r.prompt.empty(), "prompt {} is empty: give at least one token", i);
    DSV3_CHECK(int64_t(r.prompt.size()) < context,
               "prompt {} has {} tokens, the model's context is {}: shorten it", i, r.prompt.size(),
               context);
    for (int32_t id : r.prompt)
      DSV3_CHECK(id >= 0 && id < vocab, "prompt {} has token id {} outside the vocabulary [0, {})",
                 i, id, vocab);
    Seq& s = seqs[i];
    s.req = &r;
    s.cache = engine.new_cache(context);
    if (options.speculative) s.mtp_cache = engine.new_mtp_cache(context);
    s.sampler = std::make_unique<infer::Sampler>(r.params, r.prompt, i);
    st.prompt_tokens += int64_t(r.prompt.size());
  }

  bool decoding = false;
  // Records a sampled token; false once the sequence has finished.
  auto emit = [&](size_t i, int32_t tok) {
    Seq& s = seqs[i];
    s.out.tokens.push_back(tok);
    ++st.generated_tokens;
    if (decoding) ++st.decode_tokens;
    const bool keep = options.on_token ? options.on_token(i, tok) : true;
    if (s.req->params.is_stop_token(tok) || !keep) {
      s.out.finish_reason = "stop";
      s.done = true;
    } else if (int64_t(s.out.tokens.size()) >= s.req->params.max_new_tokens ||
               // The new token sits at position cache.size(); a sequence never exceeds the
               // context (and speculation needs one more slot for its draft).
               s.cache.size() + 1 + (options.speculative ? 1 : 0) >= context) {
      s.out.finish_reason = "length";
      s.done = true;
    }
    s.last = tok;
    return !s.done;
  };

  // Prefill in chunks; the last chunk's logits give each sequence its first token.
  const auto t0 = Clock::now();
  std::vector<size_t> pending;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (seqs[i].req->params.max_new_tokens == 0) {
      seqs[i].out.finish_reason = "length";
      seqs[i].done = true;
    } else {
      pending.push_back(i);
    }
  }
  std::vector<size_t> fed(seqs.size(), 0);
  while (!pending.empty()) {
    std::vector<StepEngine::Input> inputs;
    for (size_t i : pending) {
      const auto& p = seqs[i].req->prompt;
      const size_t n = std::min(p.size() - fed[i], size_t(options.prefill_chunk));
      inputs.push_back({&seqs[i].cache, {p.begin() + fed[i], p.begin() + fed[i] + n}, false});
      fed[i] += n;
    }
    // Sequences whose prompt ends in this chunk get their first token (drawn on the device
    // where the engine can).
    std::vector<infer::Sampler*> samplers;
    for (size_t i : pending)
      samplers.push_back(fed[i] == seqs[i].req->prompt.size() ? seqs[i].sampler.get() : nullptr);
    Tensor hidden;
    const std::vector<infer::SampleResult> drawn =
        engine.step_sample(inputs, samplers, options.speculative ? &hidden : nullptr);
    ++st.steps;
    std::vector<size_t> still;
    int64_t hrow = 0;
    for (size_t k = 0; k < pending.size(); ++k) {
      const size_t i = pending[k];
      Seq& s = seqs[i];
      const auto& p = s.req->prompt;
      const int64_t n = int64_t(inputs[k].tokens.size());
      const bool last_chunk = fed[i] == p.size();
      const int32_t tok = drawn[k].token;
      if (options.speculative) {
        // MTP position j pairs h_j with token j + 1; after the prompt's last position comes
        // the token just sampled.
        const size_t base = fed[i] - size_t(n);
        std::vector<int32_t> next(p.begin() + base + 1, p.begin() + std::min(fed[i] + 1, p.size()));
        if (last_chunk) next.push_back(tok);
        const Tensor ml =
            engine.mtp_step({{&s.mtp_cache, next, hidden.slice_rows(hrow, hrow + n)}});
        s.draft = argmax(ml.ptr<float>(), vocab);
      }
      if (last_chunk)
        emit(i, tok);
      else
        still.push_back(i);
      hrow += n;
    }
    pending = still;
  }
  st.prefill_seconds = seconds_since(t0);

  // Decode: one token per sequence per step, or token + draft when speculating.
  const auto t1 = Clock::now();
  decoding = true;
  for (;;) {
    std::vector<size_t> active;
    for (size_t i = 0; i < seqs.size(); ++i)
      if (!seqs[i].done) active.push_back(i);
    if (active.empty()) break;
    std::vector<StepEngine::Input> inputs;
    for (size_t i : active) {
      Seq& s = seqs[i];
      if (options.speculative)
        inputs.push_back({&s.cache, {s.last, s.draft}, true});
      else
        inputs.push_back({&s.cache, {s.last}, false});
    }
    ++st.steps;
    st.decode_steps += int64_t(active.size());
    if (!options.speculative) {
      std::vector<infer::Sampler*> samplers;
      for (size_t i : active) samplers.push_back(seqs[i].sampler.get());
      const std::vector<infer::SampleResult> drawn = engine.step_sample(inputs, samplers);
      for (size_t k = 0; k < active.size(); ++k) emit(active[k], drawn[k].token);
      continue;
    }
    Tensor hidden;
    Tensor logits = engine.step(inputs, &hidden);
    // Verify: the main model's token at the first position decides whether the draft stands.
    std::vector<StepEngine::MtpInput> mtp_inputs;
    std::vector<size_t> mtp_seqs;
    for (size_t k = 0; k < active.size(); ++k) {
      const size_t i = active[k];
      Seq& s = seqs[i];
      const int64_t pos = s.cache.size() - 2;  // position of `last`
      const int32_t draft = s.draft;
      ++st.drafted;
      const int32_t y0 = s.sampler->sample(row(logits, int64_t(2 * k)));
      const bool accepted = y0 == draft;
      std::vector<int32_t> mtp_tokens = {y0};
      int64_t rows = 1;
      if (emit(i, y0) && accepted) {
        ++st.accepted;
        const int32_t y1 = s.sampler->sample(row(logits, int64_t(2 * k + 1)));
        mtp_tokens.push_back(y1);
        rows = 2;
        emit(i, y1);
      } else if (!accepted) {
        s.cache.truncate(pos + 1);  // forget the rejected draft
      } else {
        ++st.accepted;  // accepted, but the sequence ended on y0
      }
      if (s.done) continue;
      Tensor h = f32_matrix(rows, c.hidden_size);
      std::memcpy(h.ptr<float>(), hidden.ptr<float>() + int64_t(2 * k) * c.hidden_size,
                  size_t(rows * c.hidden_size) * 4);
      mtp_inputs.push_back({&s.mtp_cache, mtp_tokens, h});
      mtp_seqs.push_back(i);
    }
    if (!mtp_inputs.empty()) {
      const Tensor ml = engine.mtp_step(mtp_inputs);
      for (size_t k = 0; k < mtp_seqs.size(); ++k)
        seqs[mtp_seqs[k]].draft = argmax(ml.ptr<float>() + int64_t(k) * vocab, vocab);
    }
  }
  st.decode_seconds = seconds_since(t1);
  if (stats) *stats = st;
  std::vector<GenerationOutput> out;
  for (Seq& s : seqs) out.push_back(std::move(s.out));
  return out;
}

}  // namespace dsv3
