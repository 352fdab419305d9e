// Tokenizer parity with Hugging Face `tokenizers` 0.23: the ids, decodes and tokenizer.json
// files under tests/fixtures/tokenizer were all produced by the real library
// (tools/reference/make_tokenizer_fixtures.py); nothing here is our own output.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

using dsv3::Tokenizer;
using nlohmann::json;

const std::string kFixtures = std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/tokenizer/";
const std::string kDeepSeek = std::string(DSV3_SOURCE_DIR) + "/.cache/tokenizer/deepseek_v3";

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f) << "missing fixture " << path;
  std::vector<json> rows;
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}

const Tokenizer& deepseek() {
  static const Tokenizer tok = [] {
    if (!std::filesystem::exists(kDeepSeek + "/tokenizer.json"))
      throw std::runtime_error("no " + kDeepSeek + "/tokenizer.json: run scripts/setup.sh");
    return Tokenizer::load(kDeepSeek);
  }();
  return tok;
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size() && i < 40; ++i) s += std::to_string(ids[i]) + " ";
  return s;
}

// Every fixture line: ids equal HF's, and decode(encode(text)) gives the text back.
void check_parity(const Tokenizer& tok, const std::string& fixture, size_t min_rows) {
  auto rows = read_jsonl(kFixtures + fixture);
  ASSERT_GE(rows.size(), min_rows);
  size_t bad = 0, bad_round_trip = 0;
  for (const auto& r : rows) {
    std::string text = r["text"];
    bool special = r.value("add_special_tokens", false);
    auto want = r["ids"].get<std::vector<int32_t>>();
    auto got = tok.encode(text, special);
    if (got != want && ++bad <= 5)
      ADD_FAILURE() << fixture << ": text " << json(text).dump() << "\n want " << show(want)
                    << "\n got  " << show(got);
    if (r.contains("transformers_ids")) {
      EXPECT_EQ(got, r["transformers_ids"].get<std::vector<int32_t>>()) << json(text).dump();
    }
    // lstrip/rstrip tokens swallow whitespace by design: those texts cannot round-trip.
    bool strips = false;
    for (const auto& a : tok.added_tokens())
      strips |= (a.lstrip || a.rstrip) && text.find(a.content) != std::string::npos;
    if (!special && !strips && tok.decode(want) != text && ++bad_round_trip <= 5)
      ADD_FAILURE() << fixture << ": round trip of " << json(text).dump() << " gave "
                    << json(tok.decode(want)).dump();
  }
  EXPECT_EQ(bad, 0u) << "of " << rows.size() << " strings";
  EXPECT_EQ(bad_round_trip, 0u);
}

TEST(TokenizerDeepSeek, LoadsRealTokenizer) {
  const Tokenizer& t = deepseek();
  EXPECT_EQ(t.vocab_size(), 128815u);  // MODEL_SPEC §8: ids up to 128,814
  EXPECT_EQ(t.bpe().vocab_size(), 128000u);
  EXPECT_EQ(t.added_tokens().size(), 818u);
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_TRUE(t.add_bos_token());
  EXPECT_EQ(t.token_to_id("<｜User｜>"), 128803);
  EXPECT_EQ(t.id_to_token(128803), "<｜User｜>");
  EXPECT_TRUE(t.is_special(1));
  EXPECT_FALSE(t.is_special(128803));  // chat markers are added but not special
  EXPECT_EQ(t.token_to_id("no such token"), -1);
}

TEST(TokenizerDeepSeek, ParityWithHfTokenizers) {
  check_parity(deepseek(), "deepseek_v3_parity.jsonl", 2000);
}

TEST(TokenizerDeepSeek, DecodeMatchesHf) {
  size_t n = 0;
  for (const auto& r : read_jsonl(kFixtures + "deepseek_v3_decode.jsonl")) {
    auto ids = r["ids"].get<std::vector<int32_t>>();
    bool skip = r["skip_special_tokens"];
    EXPECT_EQ(deepseek().decode(ids, skip), r["text"].get<std::string>())
        << "ids " << show(ids) << " skip " << skip;
    ++n;
  }
  EXPECT_GE(n, 300u);
}

TEST(TokenizerDeepSeek, StreamDecoderEqualsFullDecode) {
  const Tokenizer& t = deepseek();
  std::vector<std::vector<int32_t>> cases;
  for (const auto& r : read_jsonl(kFixtures + "deepseek_v3_decode.jsonl"))
    cases.push_back(r["ids"].get<std::vector<int32_t>>());
  auto rows = read_jsonl(kFixtures + "deepseek_v3_parity.jsonl");
  for (size_t i = 0; i < rows.size(); i += 7) cases.push_back(rows[i]["ids"]);
  for (const auto& ids : cases) {
    for (bool skip : {false, true}) {
      dsv3::StreamDecoder sd(t, skip);
      std::string streamed;
      for (int32_t id : ids) {
        std::string piece = sd.push(id);
        EXPECT_EQ(dsv3::tok::find_invalid_utf8(piece), std::string::npos);
        streamed += piece;
      }
      streamed += sd.flush();
      EXPECT_EQ(streamed, t.decode(ids, skip)) << show(ids);
    }
  }
  // A 4-byte emoji split over byte tokens comes out only when complete.
  auto ids = t.encode("😀");
  ASSERT_GT(ids.size(), 1u);
  dsv3::StreamDecoder sd(t);
  for (size_t i = 0; i + 1 < ids.size(); ++i) EXPECT_EQ(sd.push(ids[i]), "");
  EXPECT_EQ(sd.push(ids.back()), "😀");
}

TEST(TokenizerDeepSeek, SkipSpecialTokens) {
  const Tokenizer& t = deepseek();
  std::string text = "<｜begin▁of▁sentence｜>Hi<｜User｜>there<｜end▁of▁sentence｜>";
  auto ids = t.encode(text);
  ASSERT_EQ(ids.front(), 0);
  ASSERT_EQ(ids.back(), 1);
  EXPECT_EQ(t.decode(ids), text);
  EXPECT_EQ(t.decode(ids, true), "Hi<｜User｜>there");  // User marker is not special
}

TEST(TokenizerDeepSeek, InvalidInputIsAnError) {
  const Tokenizer& t = deepseek();
  try {
    t.encode(
        std::string("abc\xff"
                    "def"));
    FAIL() << "no error";
  } catch (const dsv3::Error& e) {
    EXPECT_NE(std::string(e.what()).find("byte offset 3"), std::string::npos) << e.what();
  }
  EXPECT_THROW(t.encode(std::string("ab\xe2\x82")), dsv3::Error);    // truncated
  EXPECT_THROW(t.encode(std::string("\xed\xa0\x80")), dsv3::Error);  // surrogate
  EXPECT_THROW(t.encode(std::string("\xc0\xaf")), dsv3::Error);      // overlong
  std::vector<int32_t> unknown{5, 200000};
  EXPECT_THROW(t.decode(unknown), dsv3::Error);
  EXPECT_THROW(t.decode(std::vector<int32_t>{-1}), dsv3::Error);
  EXPECT_THROW(t.id_to_token(128815), dsv3::Error);
}

TEST(TokenizerDeepSeek, LargeInputIsFastAndExact) {
  // Fixture strings joined by an added token (which always splits), so the expected ids are
  // HF's ids of each string with the token's id between them.
#if defined(__SANITIZE_ADDRESS__)
  const size_t target = 1u << 20;
#else
  const size_t target = 100u << 20;  // the 100 MB input
#endif
  const Tokenizer& t = deepseek();
  auto rows = read_jsonl(kFixtures + "deepseek_v3_parity.jsonl");
  std::string text;
  std::vector<int32_t> want;
  for (size_t rep = 0; text.size() < target; ++rep) {
    for (const auto& r : rows) {
      if (r.value("add_special_tokens", false)) continue;
      // Vary the strings between repetitions so that the piece cache is not all hits.
      std::string s = r["text"].get<std::string>();
      auto ids = r["ids"].get<std::vector<int32_t>>();
      text += s;
      want.insert(want.end(), ids.begin(), ids.end());
      text += "<｜end▁of▁sentence｜>";
      want.push_back(1);
      if (rep % 2 == 1) {
        std::string num = std::to_string(rep % 1000);  // \p{N}{1,3}: 1-3 digits, one piece
        text += num;
        auto nid = t.encode(num);
        ASSERT_EQ(nid.size(), 1u);
        want.push_back(nid[0]);
        text += "<｜end▁of▁sentence｜>";
        want.push_back(1);
      }
    }
  }
  auto t0 = std::chrono::steady_clock::now();
  auto got = t.encode(text);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(got == want) << "large input differs (" << got.size() << " vs " << want.size()
                           << " ids)";
  std::printf("encoded %.1f MB in %.2f s (%.1f MB/s)\n", text.size() / 1e6, s,
              text.size() / 1e6 / s);
#if !defined(__SANITIZE_ADDRESS__)
  EXPECT_LT(s, 30.0);  // a bound against pathological slowness, not a benchmark (bench/)
#endif
}

TEST(TokenizerDeepSeek, ThreadSafe) {
  const Tokenizer& t = deepseek();
  auto rows = read_jsonl(kFixtures + "deepseek_v3_parity.jsonl");
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      for (size_t i = k; i < rows.size(); i += 2)
        if (!rows[i].value("add_special_tokens", false) &&
            t.encode(rows[i]["text"].get<std::string>()) != rows[i]["ids"])
          ++bad;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(TokenizerGpt2Style, ParityIncludingAddedTokenFlags) {
  Tokenizer t = Tokenizer::load(kFixtures + "gpt2_style.tokenizer.json");
  check_parity(t, "gpt2_style_parity.jsonl", 400);
}

TEST(TokenizerLlama3Style, ParityIncludingBosTemplate) {
  Tokenizer t = Tokenizer::load(kFixtures + "llama3_style.tokenizer.json");
  EXPECT_EQ(t.bos_id(), 0);  // from the TemplateProcessing post-processor
  EXPECT_TRUE(t.bpe().ignore_merges);
  check_parity(t, "llama3_style_parity.jsonl", 400);
}

// Unicode White_Space (PropList.txt) is what HF's regex `\s` matches; PCRE2's UCP `\s` alone
// would also take U+180E.
TEST(TokenizerRegex, WhitespaceIsUnicodeWhiteSpace) {
  dsv3::tok::Regex ws("^\\s$"), non_ws("^\\S$"), in_class("^[\\s]$");
  const char32_t white[] = {0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x20,   0x85,   0xA0,  0x1680,
                            0x2000, 0x2005, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000};
  const char32_t not_white[] = {0x200B, 0x180E, 0x200C, 0x200D, 0xFEFF, 0x1C, 0x1F, 0x61, 0x3001};
  size_t b, e;
  for (char32_t c : white) {
    std::string s;
    dsv3::tok::append_utf8(s, c);
    EXPECT_TRUE(ws.find(s, 0, &b, &e)) << std::hex << static_cast<uint32_t>(c);
    EXPECT_TRUE(in_class.find(s, 0, &b, &e)) << std::hex << static_cast<uint32_t>(c);
    EXPECT_FALSE(non_ws.find(s, 0, &b, &e)) << std::hex << static_cast<uint32_t>(c);
    EXPECT_TRUE(dsv3::tok::is_white_space(c));
  }
  for (char32_t c : not_white) {
    std::string s;
    dsv3::tok::append_utf8(s, c);
    EXPECT_FALSE(ws.find(s, 0, &b, &e)) << std::hex << static_cast<uint32_t>(c);
    EXPECT_TRUE(non_ws.find(s, 0, &b, &e)) << std::hex << static_cast<uint32_t>(c);
    EXPECT_FALSE(dsv3::tok::is_white_space(c));
  }
}

// Rust's String::from_utf8_lossy: one U+FFFD per maximal invalid subpart (Unicode §3.9).
TEST(TokenizerUnicode, LossyMatchesUnicodeSubpartRule) {
  auto lossy = [](std::string_view s) {
    std::string out;
    dsv3::tok::append_utf8_lossy(out, s);
    return out;
  };
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(lossy("a\x80"
                  "b"),
            "a" + r + "b");
  EXPECT_EQ(lossy("\xE2\x82"), r);              // truncated: one replacement
  EXPECT_EQ(lossy("\xF0\x9F\x98"), r);          // truncated 4-byte
  EXPECT_EQ(lossy("\xED\xA0\x80"), r + r + r);  // surrogate: each byte
  EXPECT_EQ(lossy("\xF4\x90\x80\x80"), r + r + r + r);
  EXPECT_EQ(lossy("\xE2\x82\xAC"), "\xE2\x82\xAC");  // complete
  EXPECT_EQ(dsv3::tok::incomplete_utf8_tail("x\xF0\x9F\x98"), 3u);
  EXPECT_EQ(dsv3::tok::incomplete_utf8_tail("x\xED\xA0"), 0u);  // can never complete
}

std::string write_temp(const std::string& name, const std::string& text) {
  auto path = std::filesystem::temp_directory_path() / ("dsv3_tok_" + name + ".json");
  std::ofstream(path) << text;
  return path.string();
}

void expect_load_error(const std::string& name, const std::string& text,
                       const std::string& needle) {
  try {
    Tokenizer::load(write_temp(name, text));
    ADD_FAILURE() << name << ": loaded";
  } catch (const dsv3::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TokenizerErrors, MalformedTokenizerJson) {
  // Start from a valid small tokenizer and break one thing at a time.
  std::ifstream f(kFixtures + "gpt2_style.tokenizer.json");
  json good = json::parse(f);
  expect_load_error("badjson", "{\"model\": ", "not valid JSON");
  json j = good;
  j.erase("model");
  expect_load_error("nomodel", j.dump(), "\"model\"");
  j = good;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}};
  expect_load_error("metaspace", j.dump(), "Metaspace");
  j = good;
  j["normalizer"] = {{"type", "NFC"}};
  expect_load_error("nfc", j.dump(), "NFC");
  j = good;
  j["model"]["byte_fallback"] = true;
  expect_load_error("fallback", j.dump(), "byte_fallback");
  j = good;
  j["model"]["merges"].push_back("qqqq zzzz");
  expect_load_error("merge", j.dump(), "qqqq");
  j = good;
  j["decoder"] = {{"type", "WordPiece"}};
  expect_load_error("decoder", j.dump(), "WordPiece");
  j = good;
  j["pre_tokenizer"] = {{"type", "Split"},
                        {"pattern", {{"Regex", "(unclosed"}}},
                        {"behavior", "Isolated"},
                        {"invert", false}};
  expect_load_error("regex", j.dump(), "(unclosed");
  EXPECT_THROW(Tokenizer::load("/nonexistent/dir"), dsv3::Error);
}

// Merges as ["a","b"] pairs and as "a b" strings load to the same tokenizer.
TEST(TokenizerErrors, MergesInBothForms) {
  std::ifstream f(kFixtures + "gpt2_style.tokenizer.json");
  json j = json::parse(f);
  ASSERT_TRUE(j["model"]["merges"][0].is_array());
  Tokenizer pairs = Tokenizer::from_json_text(j.dump(), "pairs");
  for (auto& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  Tokenizer strings = Tokenizer::from_json_text(j.dump(), "strings");
  EXPECT_EQ(pairs.bpe().merges, strings.bpe().merges);
  std::string s = "The quick brown fox's 123 jumps";
  EXPECT_EQ(pairs.encode(s), strings.encode(s));
}

}  // namespace
