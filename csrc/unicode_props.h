// Code point properties the pre-tokenizer regex needs: UTF-8 decoding, general category, White_Space.
#pragma once
#include <cstddef>
#include <cstdint>

#include "unicode_tables.h"

namespace nextlong::unicode {

inline uint8_t category(uint32_t cp) {
  if (cp >= 0x110000) return kCatCn;
  return kCategoryStage2[kCategoryStage1[cp / kCategoryBlock] * kCategoryBlock + cp % kCategoryBlock];
}

// Unicode White_Space: what Oniguruma's and Rust regex's Unicode-aware \s match (and Rust's
// char::is_whitespace). Outside ASCII it is exactly Zs, Zl, Zp plus U+0085.
inline bool is_space(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
  if (cp == 0x85) return true;
  uint8_t c = category(cp);
  return c == kCatZs || c == kCatZl || c == kCatZp;
}

// Decodes the code point at s[p] (p < n). Sets *len to its byte length (>= 1). Malformed bytes
// decode as U+FFFD, one byte at a time, so scanning always advances and never reads past n.
inline uint32_t decode_utf8(const uint8_t* s, size_t n, size_t p, size_t* len) {
  uint32_t b0 = s[p];
  if (b0 < 0x80) { *len = 1; return b0; }
  size_t need;
  uint32_t cp;
  if ((b0 & 0xE0) == 0xC0) { need = 1; cp = b0 & 0x1F; }
  else if ((b0 & 0xF0) == 0xE0) { need = 2; cp = b0 & 0x0F; }
  else if ((b0 & 0xF8) == 0xF0) { need = 3; cp = b0 & 0x07; }
  else { *len = 1; return 0xFFFD; }
  if (p + need >= n) { *len = 1; return 0xFFFD; }
  for (size_t i = 1; i <= need; ++i) {
    uint32_t b = s[p + i];
    if ((b & 0xC0) != 0x80) { *len = 1; return 0xFFFD; }
    cp = (cp << 6) | (b & 0x3F);
  }
  *len = need + 1;
  return cp;
}

// Steps back from p to the start of the previous code point (not below lo).
inline size_t prev_char(const uint8_t* s, size_t lo, size_t p) {
  --p;
  while (p > lo && (s[p] & 0xC0) == 0x80) --p;
  return p;
}

}  // namespace nextlong::unicode
