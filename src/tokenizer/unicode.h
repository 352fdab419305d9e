// UTF-8 and Unicode helpers for the tokenizer: validation with byte offsets, the lossy
// decoding that HF tokenizers uses (Rust's String::from_utf8_lossy), Unicode White_Space and
// GPT-2's byte-level alphabet (each byte 0..255 shown as a printable code point).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv3::tok {

// Byte offset of the first byte that does not start/continue a well-formed UTF-8 sequence
// (truncated sequences included), or std::string_view::npos when `s` is valid.
size_t find_invalid_utf8(std::string_view s);

// Throws dsv3::Error "<what>: invalid UTF-8 at byte offset N" when `s` is not valid UTF-8.
void check_utf8(std::string_view s, std::string_view what);

// Decodes the code point starting at s[i]; `s` must be valid UTF-8. Sets *len to its bytes.
char32_t decode_utf8(std::string_view s, size_t i, int* len);

void append_utf8(std::string& out, char32_t cp);

// Appends `bytes`, replacing each maximal invalid subpart with U+FFFD exactly as Rust's
// String::from_utf8_lossy does (HF's decoders end with it).
void append_utf8_lossy(std::string& out, std::string_view bytes);

// Length (0..3) of a trailing sequence of `s` that is a valid but incomplete UTF-8 prefix:
// the bytes a streaming decoder must hold back until more arrive.
size_t incomplete_utf8_tail(std::string_view s);

// Unicode White_Space: what Rust's char::is_whitespace and regex `\s` accept.
bool is_white_space(char32_t cp);

// GPT-2 byte-level alphabet: byte -> code point, and code point -> byte (-1 if none).
const std::array<char32_t, 256>& byte_to_unicode();
int unicode_to_byte(char32_t cp);

// Maps raw bytes to their byte-level string (UTF-8 of the alphabet code points).
std::string bytes_to_byte_level(std::string_view bytes);
// Inverse of bytes_to_byte_level; returns false when a code point is not in the alphabet.
bool byte_level_to_bytes(std::string_view s, std::string* out);

}  // namespace dsv3::tok
