#include "tokenizer/unicode.h"

#include "core/error.h"

namespace dsv3::tok {
namespace {

// Expected sequence length for a lead byte, 0 when it cannot start a sequence.
int expected_len(uint8_t b) {
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

// The second byte's range depends on the lead (no overlongs, surrogates or > U+10FFFF).
bool second_ok(uint8_t lead, uint8_t b) {
  switch (lead) {
    case 0xE0:
      return b >= 0xA0 && b <= 0xBF;
    case 0xED:
      return b >= 0x80 && b <= 0x9F;
    case 0xF0:
      return b >= 0x90 && b <= 0xBF;
    case 0xF4:
      return b >= 0x80 && b <= 0x8F;
    default:
      return (b & 0xC0) == 0x80;
  }
}

// How many bytes from p form a valid (possibly partial) sequence; *need = full length.
size_t scan(const uint8_t* p, size_t avail, int* need) {
  int n = expected_len(p[0]);
  *need = n == 0 ? 1 : n;
  if (n == 0) return 0;
  if (n == 1) return 1;
  if (avail < 2 || !second_ok(p[0], p[1])) return 1;
  size_t k = 2;
  while (k < static_cast<size_t>(n) && k < avail && (p[k] & 0xC0) == 0x80) ++k;
  return k;
}

}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t i = 0, n = s.size();
  while (i < n) {
    // ASCII fast path: 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    int need;
    size_t k = scan(p + i, n - i, &need);
    if (k != static_cast<size_t>(need)) return i;
    i += k;
  }
  return std::string_view::npos;
}

void check_utf8(std::string_view s, std::string_view what) {
  size_t bad = find_invalid_utf8(s);
  if (bad != std::string_view::npos)
    fail("{}: invalid UTF-8 at byte offset {} (byte 0x{:02X}); the tokenizer needs UTF-8 text",
         what, bad, static_cast<unsigned>(static_cast<uint8_t>(s[bad])));
}

char32_t decode_utf8(std::string_view s, size_t i, int* len) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + i;
  if (p[0] < 0x80) {
    *len = 1;
    return p[0];
  }
  if (p[0] < 0xE0) {
    *len = 2;
    return (char32_t(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
  }
  if (p[0] < 0xF0) {
    *len = 3;
    return (char32_t(p[0] & 0x0F) << 12) | (char32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  }
  *len = 4;
  return (char32_t(p[0] & 0x07) << 18) | (char32_t(p[1] & 0x3F) << 12) |
         (char32_t(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

void append_utf8_lossy(std::string& out, std::string_view bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t i = 0, n = bytes.size(), run = 0;
  while (i < n) {
    int need;
    size_t k = scan(p + i, n - i, &need);
    if (k == static_cast<size_t>(need)) {
      i += k;
      continue;
    }
    out.append(bytes.substr(run, i - run));
    out += "\xEF\xBF\xBD";
    i += k == 0 ? 1 : k;
    run = i;
  }
  out.append(bytes.substr(run));
}

size_t incomplete_utf8_tail(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    uint8_t b = p[n - back];
    if ((b & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    int need;
    size_t k = scan(p + n - back, back, &need);
    return (k == back && back < static_cast<size_t>(need)) ? back : 0;
  }
  return 0;
}

bool is_white_space(char32_t c) {
  return (c >= 0x9 && c <= 0xD) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

const std::array<char32_t, 256>& byte_to_unicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

int unicode_to_byte(char32_t cp) {
  static const std::array<int16_t, 324> inverse = [] {
    std::array<int16_t, 324> t;
    t.fill(-1);
    const auto& fwd = byte_to_unicode();
    for (int b = 0; b < 256; ++b) t[fwd[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

std::string bytes_to_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  const auto& fwd = byte_to_unicode();
  for (char c : bytes) append_utf8(out, fwd[static_cast<uint8_t>(c)]);
  return out;
}

bool byte_level_to_bytes(std::string_view s, std::string* out) {
  out->clear();
  if (find_invalid_utf8(s) != std::string_view::npos) return false;
  for (size_t i = 0; i < s.size();) {
    int len;
    int b = unicode_to_byte(decode_utf8(s, i, &len));
    if (b < 0) return false;
    *out += static_cast<char>(b);
    i += len;
  }
  return true;
}

}  // namespace dsv3::tok
