// The Brown corpus as plain text: de-tagging (spacing, quotes, headlines), the corpus file
// listing, and the JSONL writer behind `dsv3 data brown`.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "train/corpus.h"

namespace fs = std::filesystem;
using dsv3::test_util::error_of;
using namespace dsv3::train;

namespace {

fs::path fresh_dir(const std::string& tag) {
  const fs::path d = fs::path(::testing::TempDir()) / ("dsv3_corpus_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

}  // namespace

TEST(Corpus, DetagJoinsWordsWithEnglishSpacing) {
  // As in ca01: a paragraph's first sentence starts with a tab, paragraphs are separated by
  // blank lines, every token is word/tag.
  const std::string tagged =
      "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at "
      "investigation/nn of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` "
      "no/at evidence/nn ''/'' that/cs any/dti irregularities/nns took/vbd place/nn ./.\n"
      "Was/bedz it/pps ,/, (/( he/pps asked/vbd )/) ,/, fair/jj ?/. Yes/rb ;/. no/rb :/: "
      "maybe/rb !/.\n\n\n"
      "\tHe/pps didn't/dod* see/vb it/ppo --/-- and/cc neither/cc did/dod I/ppss ./.\n";
  EXPECT_EQ(detag_brown(tagged),
            "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent "
            "primary election produced \"no evidence\" that any irregularities took place. Was "
            "it, (he asked), fair? Yes; no: maybe!\n"
            "He didn't see it -- and neither did I.");
}

TEST(Corpus, DetagStripsTheTagAfterTheLastSlash) {
  EXPECT_EQ(detag_brown("\tone/cd and/or/cc 1/2/cd mg/l/nn //in two/cd ./."),
            "one and/or 1/2 mg/l / two.");
  EXPECT_EQ(detag_brown("\tno-tag-here word/nn"), "no-tag-here word");
}

TEST(Corpus, DetagQuotes) {
  // `` opens and '' closes a double quote, whatever precedes them.
  EXPECT_EQ(detag_brown("\t``/`` Only/rb a/at handful/nn ''/'' ,/, the/at jury/nn said/vbd ,/, "
                        "``/`` considering/in it/ppo ''/'' ./."),
            "\"Only a handful\", the jury said, \"considering it\".");
  // A lone ' alternates between opening and closing within a paragraph...
  EXPECT_EQ(detag_brown("\tmore/ap '/' pro/jj '/' letters/nns than/in '/' con/jj '/' ./."),
            "more 'pro' letters than 'con'.");
  EXPECT_EQ(detag_brown("\tsaid/vbd ,/, '/' Don't/do* worry/vb ''/'' ./."),
            "said, 'Don't worry\".");
  // ...and starts over with each paragraph (a quote left open does not flip the next one).
  EXPECT_EQ(detag_brown("\tsaid/vbd :/: '/' I/ppss have/hv\n\n\t'/' Then/rb go/vb '/' ./."),
            "said: 'I have\n'Then go'.");
  // Brackets, and an opener right after an opener.
  EXPECT_EQ(detag_brown("\tentitles/vbz [/, ``/`` conscientious/jj ''/'' ]/, it/ppo ./."),
            "entitles [\"conscientious\"] it.");
}

TEST(Corpus, DetagAttachesSplitClitics) {
  // The Brown corpus keeps contractions whole ("didn't/dod*", "he'd/pps+md"); a corpus split
  // the Penn way still joins up.
  EXPECT_EQ(detag_brown("\tHe/pps do/do n't/* know/vb ,/, he/pps 's/bez sure/jj they/ppss "
                        "'ll/md go/vb ./."),
            "He don't know, he's sure they'll go.");
  EXPECT_EQ(detag_brown("\thave/hv 'em/ppo go/vb 'round/in ./."), "have 'em go 'round.");
}

TEST(Corpus, DetagHeadlinesAndAbbreviations) {
  // All-"-hl" lines (headlines, datelines) get their own line, even inside a paragraph.
  const std::string tagged =
      "\tIt/pps says/vbz so/rb ./.\nColquitt/np-hl \n--/-- After/in a/at long/jj fight/nn "
      ",/, Mr./np Allen/np Jr./np ./.\n\n1/cd-hl ./.-hl\nIntroduction/nn-hl \nIt/pps has/hvz "
      "become/vbn practical/jj ./.\n";
  EXPECT_EQ(detag_brown(tagged),
            "It says so.\nColquitt\n-- After a long fight, Mr. Allen Jr.\n1.\nIntroduction\nIt "
            "has become practical.");
  // The corpus's doubled sentence punctuation ("; ;", "? ?", "! !") is written once.
  EXPECT_EQ(detag_brown("\ttrade/nn ;/. ;/. luck/nn ''/'' !/. !/. hatching/nn ''/'' ?/. ?/. "
                        "3/cd ,/, ,/, Mrs./np Hicks/np ./. ./."),
            "trade; luck\"! hatching\"? 3, Mrs. Hicks.");
  EXPECT_EQ(detag_brown(""), "");
  EXPECT_EQ(detag_brown("\n\n  \n"), "");
}

TEST(Corpus, BrownFilesAreSortedAndSkipTheRest) {
  const fs::path d = fresh_dir("files");
  for (const char* n : {"cb02", "ca01", "README", "CONTENTS", "cats.txt", "ca01.bak", "Ca03"})
    std::ofstream(d / n) << "\tx/nn ./.\n";
  fs::create_directories(d / "cc01");  // a directory, not a corpus file
  const std::vector<std::string> f = brown_files(d.string());
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(fs::path(f[0]).filename(), "ca01");
  EXPECT_EQ(fs::path(f[1]).filename(), "cb02");

  const std::string missing = error_of([&] { brown_files((d / "nope").string()); });
  EXPECT_NE(missing.find("nope"), std::string::npos) << missing;
  EXPECT_NE(missing.find("scripts/setup.sh"), std::string::npos) << missing;
  const fs::path empty = fresh_dir("empty");
  std::ofstream(empty / "README") << "not the corpus";
  const std::string none = error_of([&] { brown_files(empty.string()); });
  EXPECT_NE(none.find("no Brown corpus files"), std::string::npos) << none;
}

TEST(Corpus, WritesOneJsonDocumentPerFileInNameOrder) {
  const fs::path d = fresh_dir("jsonl");
  std::ofstream(d / "cb01") << "\n\n\tSecond/od file/nn ./.\n\n\n\tNew/jj paragraph/nn ./.\n";
  std::ofstream(d / "ca01") << "\n\n\t``/`` First/od ''/'' ,/, he/pps said/vbd ./.\n";
  std::ofstream(d / "README") << "skipped";
  const fs::path out = d / "sub" / "brown.jsonl";  // the parent is created
  const BrownStats st = write_brown_jsonl(d.string(), out.string());
  EXPECT_EQ(st.documents, 2);
  EXPECT_EQ(st.paragraphs, 3);
  EXPECT_EQ(st.words, 3 + 2 + 2);
  std::ifstream in(out);
  std::vector<std::string> texts;
  for (std::string line; std::getline(in, line);)
    texts.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
  ASSERT_EQ(texts.size(), 2u);
  EXPECT_EQ(texts[0], "\"First\", he said.");
  EXPECT_EQ(texts[1], "Second file.\nNew paragraph.");
  EXPECT_EQ(st.chars, int64_t(texts[0].size() + texts[1].size()));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));

  // A corpus file with no words is an error naming it, and the output is left as it was.
  const auto size = fs::file_size(out);
  std::ofstream(d / "cc01") << "\n\n\n";
  const std::string err = error_of([&] { write_brown_jsonl(d.string(), out.string()); });
  EXPECT_NE(err.find("cc01"), std::string::npos) << err;
  EXPECT_EQ(fs::file_size(out), size);
}
