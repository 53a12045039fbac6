// The whitespace alternatives that end the cl100k and o200k families of patterns,
// `\s*[\r\n]+ | \s+(?!\S) | \s+`, shared by their hand-written scanners.
#pragma once
#include <cstddef>
#include <cstdint>

namespace nextlong::regex {

// End of the whitespace piece starting at p, whose first character (len0 bytes) is whitespace.
// `cls(s, n, q, &len)` classifies the character at q; `space` is \s other than \r \n, `newline` is
// \r or \n. `trailing_ws_first`: the pattern tries `\s++$` before the others (tiktoken's cl100k).
template <class Classify>
inline size_t whitespace_piece_end(const uint8_t* s, size_t n, size_t p, size_t len0, Classify cls,
                                   uint8_t space, uint8_t newline, bool trailing_ws_first) {
  constexpr size_t kNone = ~size_t{0};
  size_t q = p, last_newline_end = kNone, last_start = p;
  int chars = 0;
  while (q < n) {
    size_t len;
    const uint8_t c = cls(s, n, q, &len);
    if (c != space && c != newline) break;
    if (c == newline) last_newline_end = q + 1;
    last_start = q;
    q += len;
    ++chars;
  }
  if (trailing_ws_first && q == n) return q;            // \s++$
  if (last_newline_end != kNone) return last_newline_end;  // \s*[\r\n]+ (or \s*[\r\n])
  if (q == n) return q;                                  // \s+(?!\S) at the end of text
  if (chars >= 2) return last_start;                     // \s+(?!\S): all but the last character
  return p + len0;                                       // \s+ (one character)
}

}  // namespace nextlong::regex
