// The DeepSeek-V3 and -R1 chat templates rendered by our Jinja interpreter must equal, byte
// for byte, what HF transformers 5.17's apply_chat_template(tokenize=False) produced for the
// same messages (tests/fixtures/chat/chat_fixtures.json, made by
// tools/reference/make_chat_fixtures.py). Where transformers raised, we must throw.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace dsv3 {
namespace {

const std::string kRoot = DSV3_SOURCE_DIR;
const std::string kTokDir = kRoot + "/.cache/tokenizer/deepseek_v3";
const std::string kR1 = kRoot + "/../shared/assets/deepseek-r1-chat-template.json";
const std::string kR1Copy = kRoot + "/tests/fixtures/chat/deepseek-r1-chat-template.json";

nlohmann::ordered_json load(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw Error("cannot open " + path);
  return nlohmann::ordered_json::parse(f);
}

std::string r1_path() {
  return std::filesystem::exists(kR1) ? kR1 : kR1Copy;
}

TEST(ChatTemplate, MatchesTransformersFixtures) {
  ASSERT_TRUE(std::filesystem::exists(kTokDir + "/tokenizer_config.json"))
      << "run scripts/setup.sh to fetch the DeepSeek-V3 tokenizer into " << kTokDir;
  ChatTemplateConfig v3 = load_chat_template_config(kTokDir);
  EXPECT_EQ(v3.bos_token, "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(v3.eos_token, "<｜end▁of▁sentence｜>");
  ChatTemplateConfig r1 = v3;
  r1.chat_template = load_chat_template_file(r1_path());
  const ChatTemplate t_v3(v3, "v3"), t_r1(r1, "r1");

  auto fixtures = load(kRoot + "/tests/fixtures/chat/chat_fixtures.json");
  ASSERT_GE(fixtures.size(), 48u);
  int rendered = 0, errors = 0;
  for (const auto& fx : fixtures) {
    const ChatTemplate& t = fx["template"] == "v3" ? t_v3 : t_r1;
    const bool agp = fx["add_generation_prompt"].get<bool>();
    SCOPED_TRACE(fx["name"].get<std::string>() + " / " + fx["template"].get<std::string>() +
                 (agp ? " / add_generation_prompt" : ""));
    if (fx["rendered"].is_string()) {
      EXPECT_EQ(t.render(fx["messages"], agp), fx["rendered"].get<std::string>());
      ++rendered;
    } else {
      EXPECT_THROW(t.render(fx["messages"], agp), Error) << fx["error"];
      ++errors;
    }
  }
  EXPECT_GE(rendered, 48);
  EXPECT_GE(errors, 4);
}

TEST(ChatTemplate, R1AssetAndFixtureCopyAgree) {
  if (!std::filesystem::exists(kR1)) GTEST_SKIP() << kR1 << " not present beside the checkout";
  EXPECT_EQ(load_chat_template_file(kR1), load_chat_template_file(kR1Copy));
}

TEST(ChatTemplate, JinjaFileAndJsonFileGiveTheSameTemplate) {
  const std::string tpl = load_chat_template_file(kR1Copy);
  const auto tmp = std::filesystem::temp_directory_path() / "dsv3_test_r1.jinja";
  std::ofstream(tmp, std::ios::binary) << tpl;
  EXPECT_EQ(load_chat_template_file(tmp.string()), tpl);
  std::filesystem::remove(tmp);
}

TEST(ChatTemplate, ConfigErrorsNameTheFile) {
  const auto dir = std::filesystem::temp_directory_path() / "dsv3_test_chat_cfg";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token": {"content": "<s>"}})";
  try {
    load_chat_template_config(dir.string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("chat_template"), std::string::npos) << e.what();
  }
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"chat_template": "{{ bos_token }}|{{ eos_token }}", "bos_token": {"content": "<s>"},)"
         R"( "eos_token": "</s>"})";
  ChatTemplateConfig cfg = load_chat_template_config(dir.string());
  EXPECT_EQ(cfg.bos_token, "<s>");
  EXPECT_EQ(cfg.eos_token, "</s>");
  EXPECT_THROW(load_chat_template_config((dir / "missing").string()), Error);
  std::filesystem::remove_all(dir);
}

TEST(ChatTemplate, RejectsMalformedMessages) {
  const std::string tpl = "{% for m in messages %}{{ m['content'] }}{% endfor %}";
  EXPECT_THROW(render_chat(tpl, nlohmann::json::object(), false, "", ""), Error);
  EXPECT_THROW(render_chat(tpl, nlohmann::json::array(), false, "", ""), Error);
  EXPECT_THROW(render_chat(tpl, nlohmann::json::array({"hi"}), false, "", ""), Error);
}

}  // namespace
}  // namespace dsv3
