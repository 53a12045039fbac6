// Hand-written equivalent of the cl100k-family pre-tokenization patterns (cl100k_base as tiktoken
// and HF read it, the Llama-3 / classic cl100k pattern, and Qwen2's). Why: the generic backtracking engine
// spends most of its time dispatching; this does one pass with a per-character class lookup.
// Exactness is checked in tests against the generic engine and against tiktoken/HF.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "regex_engine.h"
#include "regex_whitespace_run.h"
#include "unicode_props.h"

namespace nextlong::regex {

namespace cl100k_detail {
enum : uint8_t { kL = 1, kN = 2, kS = 3, kRN = 4, kO = 5 };
constexpr uint8_t ascii_class(int c) {
  if (c == '\r' || c == '\n') return kRN;
  if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return kS;
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return kL;
  if (c >= '0' && c <= '9') return kN;
  return kO;
}
struct AsciiTable {
  uint8_t v[128];
  constexpr AsciiTable() : v() {
    for (int c = 0; c < 128; ++c) v[c] = ascii_class(c);
  }
};
inline constexpr AsciiTable kAsciiTable{};
}  // namespace cl100k_detail

class Cl100kScanner {
 public:
  struct Variant {
    int max_digits;          // 3 (1 for Qwen2), or 0 for unbounded (Oniguruma reading of \p{N}{1,3}+)
    bool trailing_ws_first;  // `\s++$` alternative before `\s*[\r\n]` (current tiktoken cl100k)
  };

  // Recognises a pattern (in a dialect) this scanner reproduces exactly; false otherwise.
  static bool recognise(std::string_view pattern, Dialect dialect, Variant* v) {
    static constexpr std::string_view kCl100k =
        R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s)";
    static constexpr std::string_view kCl100kOld =
        R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)";
    static constexpr std::string_view kLlama3 =
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    if (pattern == kCl100k) {
      *v = {dialect == Dialect::kOniguruma ? 0 : 3, true};
      return true;
    }
    static constexpr std::string_view kQwen2 =
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    if (pattern == kCl100kOld || pattern == kLlama3) {
      *v = {3, false};
      return true;
    }
    if (pattern == kQwen2) {
      *v = {1, false};
      return true;
    }
    return false;
  }

  explicit Cl100kScanner(Variant v) : v_(v) {}

  // End of the piece starting at p (< n). Pieces tile the text: no gaps.
  size_t next(const uint8_t* s, size_t n, size_t p) const {
    size_t len0;
    uint8_t c0 = cls(s, n, p, &len0);
    // 1. '(?i:[sdmt]|ll|ve|re)
    if (s[p] == '\'' && p + 1 < n) {
      uint8_t a = s[p + 1] | 0x20;
      if (a == 's' || a == 'd' || a == 'm' || a == 't') return p + 2;  // only 'X' and 'x' give x|0x20
      if (s[p + 1] == 0xC5 && p + 2 < n && s[p + 2] == 0xBF) return p + 3;  // U+017F LONG S ~ s
      if (p + 2 < n) {
        uint8_t b = s[p + 2] | 0x20;
        if (((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e'))) return p + 3;
      }
    }
    // 2. [^\r\n\p{L}\p{N}]?\p{L}+
    if (c0 == kL) return run(s, n, p + len0, kL);
    if (c0 == kS || c0 == kO) {
      size_t len1;
      if (p + len0 < n && cls(s, n, p + len0, &len1) == kL) return run(s, n, p + len0 + len1, kL);
    }
    // 3. \p{N}{1,3}
    if (c0 == kN) {
      size_t q = p + len0;
      int count = 1;
      while (q < n && (v_.max_digits == 0 || count < v_.max_digits)) {
        size_t len;
        if (cls(s, n, q, &len) != kN) break;
        q += len;
        ++count;
      }
      return q;
    }
    // 4. ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    size_t start_other = SIZE_MAX;
    if (c0 == kO) start_other = p;
    else if (s[p] == ' ' && p + 1 < n) {
      size_t len1;
      if (cls(s, n, p + 1, &len1) == kO) start_other = p + 1;
    }
    if (start_other != SIZE_MAX) {
      size_t q = run(s, n, start_other, kO);
      while (q < n && (s[q] == '\r' || s[q] == '\n')) ++q;
      return q;
    }
    // 5-8. whitespace (c0 is \s here)
    return whitespace_piece_end(s, n, p, len0, [](auto... a) { return cls(a...); }, kS, kRN, v_.trailing_ws_first);
  }

 private:
  static constexpr uint8_t kL = cl100k_detail::kL, kN = cl100k_detail::kN, kS = cl100k_detail::kS,
                           kRN = cl100k_detail::kRN, kO = cl100k_detail::kO;

  static uint8_t cls(const uint8_t* s, size_t n, size_t p, size_t* len) {
    uint8_t b = s[p];
    if (b < 0x80) {
      *len = 1;
      return cl100k_detail::kAsciiTable.v[b];
    }
    uint32_t cp = unicode::decode_utf8(s, n, p, len);
    uint8_t cat = unicode::category(cp);
    if (cat >= unicode::kCatLu && cat <= unicode::kCatLo) return kL;
    if (cat >= unicode::kCatNd && cat <= unicode::kCatNo) return kN;
    if (cp == 0x85 || cat == unicode::kCatZs || cat == unicode::kCatZl || cat == unicode::kCatZp) return kS;
    return kO;
  }
  static size_t run(const uint8_t* s, size_t n, size_t q, uint8_t want) {
    while (q < n) {
      size_t len;
      if (cls(s, n, q, &len) != want) break;
      q += len;
    }
    return q;
  }

  Variant v_;
};

}  // namespace nextlong::regex
