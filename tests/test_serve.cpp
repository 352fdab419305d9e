// The server's request layer and scheduler, without HTTP: validation maps bad input to
// OpenAI-style errors; the continuous-batching scheduler admits within its budget, retires,
// cancels, and gives every sequence the tokens transformers' greedy generate gives it alone
// (reference.safetensors), however requests are interleaved and prompts chunked.
#include <gtest/gtest.h>

#include "infer/engine.h"
#include "io/safetensors.h"
#include "serve/api.h"
#include "serve/scheduler.h"
#include "test_util.h"

using namespace dsv3;
using namespace dsv3::serve;
using dsv3::test_util::error_of;
using nlohmann::json;

namespace {

std::string fixture(const std::string& name) {
  return std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/" + name;
}

struct Reference {
  std::vector<std::vector<int32_t>> prompts, greedy;
};

// Transformers' generate(do_sample=False) continuations of each row's first 5 tokens.
Reference reference() {
  const auto ref = SafetensorsFile::open(fixture("models/v3_plain_f32/reference.safetensors"));
  const Tensor ids = ref->get("input_ids"), want = ref->get("greedy_tokens");
  Reference r;
  for (int64_t b = 0; b < want.dim(0); ++b) {
    const int32_t* p = ids.ptr<int32_t>() + b * ids.dim(1);
    const int32_t* w = want.ptr<int32_t>() + b * want.dim(1);
    r.prompts.emplace_back(p, p + 5);
    r.greedy.emplace_back(w, w + want.dim(1));
  }
  return r;
}

Request greedy_request(std::vector<int32_t> prompt, int max_tokens) {
  Request r;
  r.prompt = std::move(prompt);
  r.params.temperature = 0;
  r.params.max_new_tokens = max_tokens;
  r.channel = std::make_shared<Channel>();
  return r;
}

struct Collected {
  std::vector<int32_t> tokens;
  std::string finish_reason;
  bool finished = false;
};

void drain(Channel& ch, std::vector<Collected>* out) {
  for (TokenEvent& ev : ch.pop_all(std::chrono::milliseconds(0))) {
    Collected& c = (*out)[size_t(ev.index)];
    if (ev.token >= 0) c.tokens.push_back(ev.token);
    if (ev.finished) {
      c.finished = true;
      c.finish_reason = ev.finish_reason;
    }
  }
}

class ServeScheduler : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new Model(ModelWeights::load(fixture("models/v3_plain_f32")));
    engine_ = new Engine(*model_);
  }
  static void TearDownTestSuite() {
    delete engine_;
    delete model_;
  }
  static Model* model_;
  static Engine* engine_;
};
Model* ServeScheduler::model_ = nullptr;
Engine* ServeScheduler::engine_ = nullptr;

}  // namespace

// Both cache layouts: the paged pool, and each sequence's own engine cache (what a device
// engine gets: the same scheduler path the CUDA server runs).
class ServeSchedulerCaches : public ServeScheduler, public ::testing::WithParamInterface<bool> {};

TEST_P(ServeSchedulerCaches, InterleavedChunkedBatchEqualsTransformersGreedy) {
  const Reference ref = reference();
  ASSERT_GE(ref.prompts.size(), 2u);
  const int n = int(ref.greedy[0].size());
  // Small prefill chunks, so prompts are split and share steps with other sequences' decodes.
  SchedulerOptions opt;
  opt.prefill_chunk = 3;
  opt.paged = GetParam();
  Scheduler sched(*engine_, nullptr, opt);
  EXPECT_EQ(sched.paged(), GetParam());
  std::vector<Request> reqs;
  std::vector<std::vector<Collected>> got(ref.prompts.size(), std::vector<Collected>(1));
  for (size_t b = 0; b < ref.prompts.size(); ++b) {
    reqs.push_back(greedy_request(ref.prompts[b], n));
    ASSERT_EQ(sched.submit(reqs.back()), Scheduler::Submit::kOk);
    // Later requests arrive while earlier ones are mid-prefill or decoding.
    for (size_t k = 0; k < b + 1; ++k) sched.step();
  }
  for (int guard = 0; guard < 1000 && sched.step(); ++guard) {
  }
  for (size_t b = 0; b < ref.prompts.size(); ++b) {
    drain(*reqs[b].channel, &got[b]);
    EXPECT_TRUE(got[b][0].finished);
    EXPECT_EQ(got[b][0].finish_reason, "length");
    EXPECT_EQ(got[b][0].tokens, ref.greedy[b]) << "row " << b;
  }
  const SchedulerStats st = sched.stats();
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.reserved_tokens, 0);
  EXPECT_EQ(st.generated_tokens, int64_t(ref.prompts.size()) * n);
}
INSTANTIATE_TEST_SUITE_P(Layouts, ServeSchedulerCaches, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "Paged" : "EngineCaches"; });

// Engine-owned caches: admission by the token budget (exact sizes, not blocks), release at
// retirement, and --max-model-len capping the sequence.
TEST_F(ServeScheduler, EngineCachesAdmitWithinTheBudgetAndMaxModelLen) {
  const Reference ref = reference();
  SchedulerOptions opt;
  opt.paged = false;
  opt.max_model_len = 8;
  opt.max_batch_tokens = 16;  // two sequences of min(5 + 6, 8) = 8 tokens
  Scheduler sched(*engine_, nullptr, opt);
  EXPECT_EQ(sched.context(), 8);
  EXPECT_FALSE(sched.paged());
  EXPECT_NE(error_of([&] { sched.pool(); }).find("no block pool"), std::string::npos);
  std::vector<Request> reqs;
  for (int i = 0; i < 3; ++i) {
    reqs.push_back(greedy_request(ref.prompts[0], 6));
    EXPECT_EQ(sched.reservation(reqs.back()), 8);
    ASSERT_EQ(sched.submit(reqs.back()), Scheduler::Submit::kOk);
  }
  sched.step();
  EXPECT_EQ(sched.stats().running, 2);  // the third waits for budget
  EXPECT_EQ(sched.stats().waiting, 1);
  EXPECT_EQ(sched.stats().reserved_tokens, 16);
  for (int guard = 0; guard < 100 && sched.step(); ++guard) {
  }
  for (auto& r : reqs) {
    std::vector<Collected> got(1);
    drain(*r.channel, &got);
    // Positions 0..7: the 5-token prompt leaves room for 3 tokens.
    EXPECT_EQ(got[0].finish_reason, "length");
    EXPECT_EQ(got[0].tokens,
              std::vector<int32_t>(ref.greedy[0].begin(), ref.greedy[0].begin() + 3));
  }
  EXPECT_EQ(sched.stats().reserved_tokens, 0);
  Request big = greedy_request(std::vector<int32_t>(5, 1), 6);
  big.n = 3;  // 24 tokens > the budget of 16
  EXPECT_EQ(sched.submit(big), Scheduler::Submit::kTooLarge);
}

TEST_F(ServeScheduler, AloneEqualsTransformersGreedy) {
  const Reference ref = reference();
  Scheduler sched(*engine_, nullptr, {});
  for (size_t b = 0; b < ref.prompts.size(); ++b) {
    Request r = greedy_request(ref.prompts[b], int(ref.greedy[b].size()));
    ASSERT_EQ(sched.submit(r), Scheduler::Submit::kOk);
    while (sched.step()) {
    }
    std::vector<Collected> got(1);
    drain(*r.channel, &got);
    EXPECT_EQ(got[0].tokens, ref.greedy[b]) << "row " << b;
  }
}

TEST_F(ServeScheduler, AdmitsWithinTheBudgetAndRetires) {
  const Reference ref = reference();
  SchedulerOptions opt;
  opt.max_batch_tokens = 2 * kBlockTokens;  // each request below reserves one block
  opt.max_waiting = 3;
  Scheduler sched(*engine_, nullptr, opt);
  std::vector<Request> reqs;
  for (int i = 0; i < 3; ++i) {
    reqs.push_back(greedy_request(ref.prompts[0], 6));
    EXPECT_EQ(sched.reservation(reqs.back()), kBlockTokens);
    ASSERT_EQ(sched.submit(reqs.back()), Scheduler::Submit::kOk);
  }
  EXPECT_EQ(sched.submit(greedy_request(ref.prompts[0], 6)), Scheduler::Submit::kQueueFull);
  // Three choices need three blocks: more than the whole budget, so never admissible.
  Request big = greedy_request(ref.prompts[0], 6);
  big.n = 3;
  EXPECT_EQ(sched.submit(big), Scheduler::Submit::kTooLarge);

  sched.step();
  SchedulerStats st = sched.stats();
  EXPECT_EQ(st.running, 2);
  EXPECT_EQ(st.waiting, 1);
  EXPECT_EQ(st.reserved_tokens, 2 * kBlockTokens);
  EXPECT_EQ(st.cache_tokens, 2 * 5);
  int max_running = 0;
  while (sched.step()) max_running = std::max<int>(max_running, int(sched.stats().running));
  EXPECT_LE(max_running, 2);
  st = sched.stats();
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.waiting, 0);
  EXPECT_EQ(st.reserved_tokens, 0);
  EXPECT_EQ(st.cache_tokens, 0);
  // All three got the same (greedy) tokens, the third after waiting its turn.
  std::vector<std::vector<Collected>> got(3, std::vector<Collected>(1));
  for (int i = 0; i < 3; ++i) {
    drain(*reqs[size_t(i)].channel, &got[size_t(i)]);
    EXPECT_EQ(got[size_t(i)][0].tokens.size(), 6u);
    EXPECT_EQ(got[size_t(i)][0].tokens, got[0][0].tokens);
  }
  EXPECT_EQ(st.ttft.count, 3u);
  EXPECT_EQ(st.itl.count, 3u * 5u);
}

TEST_F(ServeScheduler, CancelFreesTheSequence) {
  const Reference ref = reference();
  Scheduler sched(*engine_, nullptr, {});
  Request a = greedy_request(ref.prompts[0], 20), b = greedy_request(ref.prompts[1], 5);
  ASSERT_EQ(sched.submit(a), Scheduler::Submit::kOk);
  sched.step();
  sched.step();
  a.channel->cancel();
  ASSERT_EQ(sched.submit(b), Scheduler::Submit::kOk);
  sched.step();
  EXPECT_EQ(sched.stats().running, 1);  // a is gone, b runs
  while (sched.step()) {
  }
  std::vector<Collected> ga(1), gb(1);
  drain(*a.channel, &ga);
  drain(*b.channel, &gb);
  EXPECT_EQ(ga[0].finish_reason, "cancelled");
  EXPECT_LT(ga[0].tokens.size(), 20u);
  EXPECT_EQ(gb[0].finish_reason, "length");
  EXPECT_EQ(gb[0].tokens, std::vector<int32_t>(ref.greedy[1].begin(), ref.greedy[1].begin() + 5));
}

TEST_F(ServeScheduler, StopsAtTheContextAndOnStopTokens) {
  const Reference ref = reference();
  Scheduler sched(*engine_, nullptr, {});
  const int64_t ctx = model_->config().max_position_embeddings;
  Request r = greedy_request(std::vector<int32_t>(size_t(ctx - 3), 7), 100);
  Request z = greedy_request(ref.prompts[0], 0);
  // The reference's third greedy token as a stop token: generation ends right on it.
  Request s = greedy_request(ref.prompts[0], 10);
  s.params.stop_token_ids = {ref.greedy[0][2]};
  for (Request* q : {&r, &z, &s}) ASSERT_EQ(sched.submit(*q), Scheduler::Submit::kOk);
  while (sched.step()) {
  }
  std::vector<Collected> gr(1), gz(1), gs(1);
  drain(*r.channel, &gr);
  drain(*z.channel, &gz);
  drain(*s.channel, &gs);
  EXPECT_EQ(gr[0].tokens.size(), 3u);  // prompt + generated == context
  EXPECT_EQ(gr[0].finish_reason, "length");
  EXPECT_TRUE(gz[0].tokens.empty());
  EXPECT_EQ(gz[0].finish_reason, "length");
  EXPECT_EQ(gs[0].finish_reason, "stop");
  EXPECT_EQ(gs[0].tokens, std::vector<int32_t>(ref.greedy[0].begin(), ref.greedy[0].begin() + 3));
}

TEST_F(ServeScheduler, NChoicesShareOneChannel) {
  const Reference ref = reference();
  Scheduler sched(*engine_, nullptr, {});
  Request r = greedy_request(ref.prompts[0], 4);
  r.n = 3;
  ASSERT_EQ(sched.submit(r), Scheduler::Submit::kOk);
  while (sched.step()) {
  }
  std::vector<Collected> got(3);
  drain(*r.channel, &got);
  for (const Collected& c : got)
    EXPECT_EQ(c.tokens, std::vector<int32_t>(ref.greedy[0].begin(), ref.greedy[0].begin() + 4));
}

// ---- the paged cache: prefix sharing, refcounts, admission by free blocks ----

TEST_F(ServeScheduler, SharedPrefixGivesTheTokensEachGetsAlone) {
  const Reference ref = reference();
  const int n = int(ref.greedy[0].size());
  SchedulerOptions opt;
  opt.block_tokens = 2;  // the fixture's context is 64 tokens: small blocks to share
  Scheduler sched(*engine_, nullptr, opt);
  // A runs alone: its prompt and generated tokens fill blocks that become shareable.
  Request a = greedy_request(ref.prompts[0], n);
  ASSERT_EQ(sched.submit(a), Scheduler::Submit::kOk);
  while (sched.step()) {
  }
  EXPECT_EQ(sched.stats().prefix_hit_tokens, 0);
  EXPECT_GT(sched.stats().blocks_cached, 0);
  // B: the same prompt (shares its first 4 tokens). C: A's prompt and 3 tokens of its
  // answer, i.e. a follow-up turn (shares 6). D: another prompt, nothing shared. B and C run
  // while sharing blocks with each other.
  std::vector<int32_t> follow = ref.prompts[0];
  follow.insert(follow.end(), ref.greedy[0].begin(), ref.greedy[0].begin() + 3);
  Request b = greedy_request(ref.prompts[0], n), c = greedy_request(follow, n - 3),
          d = greedy_request(ref.prompts[1], n);
  for (Request* r : {&b, &c, &d}) ASSERT_EQ(sched.submit(*r), Scheduler::Submit::kOk);
  sched.step();
  EXPECT_EQ(sched.stats().prefix_hit_tokens, 4 + 6);
  // The first two blocks are held by B and C (the cached, unreferenced ones count as free).
  EXPECT_EQ(sched.pool().refcount(0), 2);
  while (sched.step()) {
  }
  std::vector<Collected> gb(1), gc(1), gd(1);
  drain(*b.channel, &gb);
  drain(*c.channel, &gc);
  drain(*d.channel, &gd);
  EXPECT_EQ(gb[0].tokens, ref.greedy[0]);
  EXPECT_EQ(gc[0].tokens, std::vector<int32_t>(ref.greedy[0].begin() + 3, ref.greedy[0].end()));
  EXPECT_EQ(gd[0].tokens, ref.greedy[1]);
  const SchedulerStats st = sched.stats();
  EXPECT_EQ(st.blocks_used, 0);
  EXPECT_EQ(st.blocks_reserved, 0);
  EXPECT_EQ(st.blocks_free, st.blocks_total);
  EXPECT_EQ(st.prompt_tokens, int64_t(3 * 5 + 8));
}

TEST_F(ServeScheduler, CancelAndRetireReleaseSharedBlocks) {
  const Reference ref = reference();
  SchedulerOptions opt;
  opt.block_tokens = 2;
  Scheduler sched(*engine_, nullptr, opt);
  Request a = greedy_request(ref.prompts[0], 30);
  ASSERT_EQ(sched.submit(a), Scheduler::Submit::kOk);
  sched.step();  // A's prompt: blocks [0 1], [2 3] published
  Request b = greedy_request(ref.prompts[0], 30);
  ASSERT_EQ(sched.submit(b), Scheduler::Submit::kOk);
  sched.step();
  const BlockPool& pool = sched.pool();
  EXPECT_EQ(pool.refcount(0), 2);
  EXPECT_EQ(pool.refcount(1), 2);
  // Each reserved its whole capacity (35 tokens: 18 blocks), B less the 2 it shares.
  EXPECT_EQ(pool.used_blocks() + pool.reserved_blocks(), 18 + 16);
  a.channel->cancel();
  sched.step();
  EXPECT_EQ(pool.refcount(0), 1);  // B still holds the shared prefix
  EXPECT_EQ(pool.used_blocks() + pool.reserved_blocks(), 18);
  b.channel->cancel();
  sched.step();
  EXPECT_EQ(pool.used_blocks(), 0);
  EXPECT_EQ(pool.reserved_blocks(), 0);
  EXPECT_EQ(pool.refcount(0), 0);
  EXPECT_GE(pool.cached_blocks(), 2);  // the prefix outlives its sequences
  std::vector<Collected> ga(1), gb(1);
  drain(*a.channel, &ga);
  drain(*b.channel, &gb);
  EXPECT_EQ(ga[0].finish_reason, "cancelled");
  EXPECT_EQ(gb[0].finish_reason, "cancelled");
}

TEST_F(ServeScheduler, WaitsForFreeBlocksAndSharingLowersTheNeed) {
  const Reference ref = reference();
  SchedulerOptions opt;
  opt.block_tokens = 4;
  opt.max_batch_tokens = 5 * 4;  // 5 blocks
  Scheduler sched(*engine_, nullptr, opt);
  // 5 + 6 tokens: 3 blocks each. C shares A's first block while A runs, so it needs 2 and
  // both fit (alone they would need 6); then B finds no free block and waits its turn.
  Request a = greedy_request(ref.prompts[0], 6), c = greedy_request(ref.prompts[0], 6),
          b = greedy_request(ref.prompts[1], 6);
  ASSERT_EQ(sched.submit(a), Scheduler::Submit::kOk);
  sched.step();
  ASSERT_EQ(sched.submit(c), Scheduler::Submit::kOk);
  sched.step();
  EXPECT_EQ(sched.stats().running, 2);
  EXPECT_EQ(sched.stats().prefix_hit_tokens, 4);
  EXPECT_EQ(sched.stats().blocks_used + sched.stats().blocks_reserved, 5);
  ASSERT_EQ(sched.submit(b), Scheduler::Submit::kOk);
  sched.step();
  EXPECT_EQ(sched.stats().running, 2);
  EXPECT_EQ(sched.stats().waiting, 1);
  while (sched.step()) {
  }
  std::vector<Collected> ga(1), gb(1), gc(1);
  drain(*a.channel, &ga);
  drain(*b.channel, &gb);
  drain(*c.channel, &gc);
  EXPECT_EQ(ga[0].tokens, std::vector<int32_t>(ref.greedy[0].begin(), ref.greedy[0].begin() + 6));
  EXPECT_EQ(gc[0].tokens, ga[0].tokens);
  EXPECT_EQ(gb[0].tokens, std::vector<int32_t>(ref.greedy[1].begin(), ref.greedy[1].begin() + 6));
  EXPECT_EQ(sched.stats().blocks_used, 0);
  EXPECT_EQ(sched.stats().blocks_reserved, 0);
}

// ---- request validation ----

namespace {

class ServeApi : public ::testing::Test {
 protected:
  ServeApi()
      : tok_(Tokenizer::load(fixture("tokenizer/gpt2_style.tokenizer.json"))),
        tpl_(ChatTemplateConfig{
            "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}",
            "", ""}) {
    model_.name = "tiny";
    model_.context = 64;
    model_.vocab = int64_t(tok_.vocab_size());
  }
  // The ApiError a chat body raises (status 0 when it parses).
  ApiError chat_error(const std::string& body) {
    try {
      parse_chat_request(parse_body(body), model_, tok_, tpl_);
    } catch (const ApiError& e) {
      return e;
    }
    return ApiError(0, "(no error)");
  }
  ApiError completion_error(const std::string& body) {
    try {
      parse_completion_request(parse_body(body), model_, tok_);
    } catch (const ApiError& e) {
      return e;
    }
    return ApiError(0, "(no error)");
  }
  Tokenizer tok_;
  ChatTemplate tpl_;
  ModelInfo model_;
};

const std::string kHi = R"("messages": [{"role": "user", "content": "Hi"}])";

}  // namespace

TEST_F(ServeApi, ParsesAChatRequest) {
  const ParsedRequest p = parse_chat_request(
      parse_body("{" + kHi +
                 R"(, "model": "tiny", "temperature": 0.5, "top_p": 0.9, "top_k": 40,
        "min_p": 0.05, "max_tokens": 7, "stop": ["a", "b"], "seed": 9, "n": 2,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "logprobs": true,
        "top_logprobs": 3, "stream": true, "stream_options": {"include_usage": true},
        "unknown_field": {"ignored": 1}})"),
      model_, tok_, tpl_);
  EXPECT_EQ(p.prompt, tok_.encode("<user>Hi<assistant>"));
  EXPECT_FLOAT_EQ(p.params.temperature, 0.5f);
  EXPECT_FLOAT_EQ(p.params.top_p, 0.9f);
  EXPECT_EQ(p.params.top_k, 40);
  EXPECT_FLOAT_EQ(p.params.min_p, 0.05f);
  EXPECT_EQ(p.params.max_new_tokens, 7);
  EXPECT_EQ(p.params.stop_strings, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(p.params.seed, 9u);
  EXPECT_EQ(p.n, 2);
  EXPECT_FLOAT_EQ(p.params.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(p.params.frequency_penalty, -0.5f);
  EXPECT_EQ(p.params.logprobs, 3);
  EXPECT_TRUE(p.stream && p.include_usage && p.logprobs);
  EXPECT_FALSE(p.thinking);
  // Without max_tokens, a chat may run to the end of the context.
  const ParsedRequest d = parse_chat_request(parse_body("{" + kHi + "}"), model_, tok_, tpl_);
  EXPECT_EQ(d.params.max_new_tokens, 64 - int(d.prompt.size()));
  EXPECT_FALSE(d.params.logprobs.has_value());
}

TEST_F(ServeApi, CompletionPromptForms) {
  const auto text = parse_completion_request(parse_body(R"({"prompt": "Hello"})"), model_, tok_);
  EXPECT_EQ(text.prompt, tok_.encode("Hello"));
  EXPECT_EQ(text.params.max_new_tokens, 16);  // OpenAI's default for completions
  const auto ids = parse_completion_request(parse_body(R"({"prompt": [1, 2, 3], "logprobs": 2,
      "max_completion_tokens": 5})"),
                                            model_, tok_);
  EXPECT_EQ(ids.prompt, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(ids.params.logprobs, 2);
  EXPECT_EQ(ids.params.max_new_tokens, 5);
  const auto one = parse_completion_request(parse_body(R"({"prompt": ["Hello"]})"), model_, tok_);
  EXPECT_EQ(one.prompt, text.prompt);
}

TEST_F(ServeApi, BadRequestsGiveOpenAIErrors) {
  struct Case {
    std::string body;
    bool chat;
    int status;
    std::string code, param;
  };
  std::string big;
  for (int i = 0; i < 80; ++i) big += " word";
  const std::vector<Case> cases = {
      {"{not json", true, 400, "invalid_json", ""},
      {"[1, 2]", true, 400, "invalid_type", ""},
      {"{\"prompt\": \"\xff\xfe\"}", false, 400, "invalid_json", ""},
      {"{}", true, 400, "missing_required_parameter", "messages"},
      {R"({"messages": []})", true, 400, "invalid_type", "messages"},
      {R"({"messages": [{"content": "x"}]})", true, 400, "invalid_type", "messages[0]"},
      {R"({"messages": [{"role": "wizard", "content": "x"}]})", true, 400, "invalid_value",
       "messages[0].role"},
      {R"({"messages": [{"role": "user", "content": 5}]})", true, 400, "invalid_type",
       "messages[0].content"},
      {"{" + kHi + R"(, "model": "gpt-4"})", true, 404, "model_not_found", "model"},
      {"{" + kHi + R"(, "model": 3})", true, 400, "invalid_type", "model"},
      {"{" + kHi + R"(, "temperature": "hot"})", true, 400, "invalid_type", "temperature"},
      {"{" + kHi + R"(, "temperature": 3})", true, 400, "invalid_value", "temperature"},
      {"{" + kHi + R"(, "top_p": 0})", true, 400, "invalid_value", "top_p"},
      {"{" + kHi + R"(, "n": 0})", true, 400, "invalid_value", "n"},
      {"{" + kHi + R"(, "n": 1.5})", true, 400, "invalid_type", "n"},
      {"{" + kHi + R"(, "stream": "yes"})", true, 400, "invalid_type", "stream"},
      {"{" + kHi + R"(, "stop": [1]})", true, 400, "invalid_type", "stop"},
      {"{" + kHi + R"(, "stop": ""})", true, 400, "invalid_value", "stop"},
      {"{" + kHi + R"(, "max_tokens": 0})", true, 400, "invalid_value", "max_tokens"},
      {"{" + kHi + R"(, "max_tokens": 1000000000})", true, 400, "context_length_exceeded",
       "max_tokens"},
      {"{" + kHi + R"(, "top_logprobs": 2})", true, 400, "invalid_value", "top_logprobs"},
      {"{" + kHi + R"(, "stream_options": {"include_usage": true}})", true, 400, "invalid_value",
       "stream_options"},
      {R"({"messages": [{"role": "user", "content": ")" + big + R"("}]})", true, 400,
       "context_length_exceeded", "messages"},
      {R"({"prompt": 5})", false, 400, "invalid_type", "prompt"},
      {R"({"prompt": ""})", false, 400, "invalid_value", "prompt"},
      {R"({"prompt": [1, -1]})", false, 400, "invalid_value", "prompt"},
      {R"({"prompt": [1, 99999999]})", false, 400, "invalid_value", "prompt"},
      {R"({"prompt": ["a", "b"]})", false, 400, "invalid_value", "prompt"},
      {R"({"prompt": "x", "logprobs": 50})", false, 400, "invalid_value", "logprobs"},
  };
  for (const Case& c : cases) {
    const ApiError e = c.chat ? chat_error(c.body) : completion_error(c.body);
    EXPECT_EQ(e.status, c.status) << c.body << ": " << e.what();
    EXPECT_EQ(e.code, c.code) << c.body << ": " << e.what();
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.what();
    const json b = e.body();
    EXPECT_TRUE(b["error"]["message"].is_string() && b["error"]["type"].is_string()) << b;
  }
}

TEST(ServeReasoning, SplitsAtTheMarkerAcrossPieces) {
  ReasoningSplitter s(true);
  std::string reasoning, content;
  for (const char* piece : {"Let me th", "ink.</th", "ink>\n\nThe ans", "wer"}) {
    const auto o = s.push(piece);
    reasoning += o.reasoning;
    content += o.content;
    // Nothing of the marker ever leaks into either part.
    EXPECT_EQ(o.reasoning.find('<'), std::string::npos);
  }
  const auto f = s.finish();
  reasoning += f.reasoning;
  content += f.content;
  EXPECT_EQ(reasoning, "Let me think.");
  EXPECT_EQ(content, "The answer");
  ReasoningSplitter off(false);
  EXPECT_EQ(off.push("a</think>b").content, "a</think>b");
}
