// Hand-written equivalent of tiktoken's o200k_base pre-tokenization pattern (same either dialect:
// it has no possessive or anchor). Checked in tests against the generic engine, tiktoken and HF.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "regex_whitespace_run.h"
#include "unicode_props.h"

namespace nextlong::regex {

class O200kScanner {
 public:
  static bool recognise(std::string_view pattern) {
    static constexpr std::string_view kO200k =
        R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|)"
        R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|)"
        R"(\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    return pattern == kO200k;
  }

  // End of the piece starting at p (< n). Pieces tile the text.
  size_t next(const uint8_t* s, size_t n, size_t p) const {
    size_t len0;
    uint8_t c0 = cls(s, n, p, &len0);
    const bool prefix_ok = c0 == kS || c0 == kMark || c0 == kO;  // [^\r\n\p{L}\p{N}]
    size_t e;
    // 1. prefix? upper* lower+ contraction?   (with the prefix first, then without)
    if (prefix_ok && p + len0 < n && (e = upper_lower(s, n, p + len0)) != kNone) return contraction(s, n, e);
    if ((e = upper_lower(s, n, p)) != kNone) return contraction(s, n, e);
    // 2. prefix? upper+ lower* contraction?
    if (prefix_ok && p + len0 < n && (e = upper_then_lower(s, n, p + len0)) != kNone) return contraction(s, n, e);
    if ((e = upper_then_lower(s, n, p)) != kNone) return contraction(s, n, e);
    // 3. \p{N}{1,3}
    if (c0 == kN) {
      size_t q = p + len0;
      for (int count = 1; count < 3 && q < n; ++count) {
        size_t len;
        if (cls(s, n, q, &len) != kN) break;
        q += len;
      }
      return q;
    }
    // 4. ' ?[^\s\p{L}\p{N}]+[\r\n/]*'
    size_t start_other = kNone;
    if (c0 == kO || c0 == kMark) start_other = p;
    else if (s[p] == ' ' && p + 1 < n) {
      size_t len1;
      uint8_t c1 = cls(s, n, p + 1, &len1);
      if (c1 == kO || c1 == kMark) start_other = p + 1;
    }
    if (start_other != kNone) {
      size_t q = start_other;
      while (q < n) {
        size_t len;
        uint8_t c = cls(s, n, q, &len);
        if (c != kO && c != kMark) break;
        q += len;
      }
      while (q < n && (s[q] == '\r' || s[q] == '\n' || s[q] == '/')) ++q;
      return q;
    }
    // 5-7. whitespace
    return whitespace_piece_end(s, n, p, len0, [](auto... a) { return cls(a...); }, kS, kRN,
                                /*trailing_ws_first=*/false);
  }

 private:
  static constexpr size_t kNone = ~size_t{0};
  // kUp: Lu Lt; kLow: Ll; kLmo: Lm Lo; kMark: M; kN: N; kS: \s but \r \n; kRN: \r \n; kO: other.
  enum : uint8_t { kUp = 1, kLow, kLmo, kMark, kN, kS, kRN, kO };
  static bool is_upper_set(uint8_t c) { return c == kUp || c == kLmo || c == kMark; }
  static bool is_lower_set(uint8_t c) { return c == kLow || c == kLmo || c == kMark; }

  static uint8_t cls(const uint8_t* s, size_t n, size_t p, size_t* len) {
    uint8_t b = s[p];
    if (b < 0x80) {
      *len = 1;
      if (b >= 'a' && b <= 'z') return kLow;
      if (b >= 'A' && b <= 'Z') return kUp;
      if (b >= '0' && b <= '9') return kN;
      if (b == '\r' || b == '\n') return kRN;
      if (b == ' ' || (b >= 0x09 && b <= 0x0D)) return kS;
      return kO;
    }
    uint32_t cp = unicode::decode_utf8(s, n, p, len);
    switch (unicode::category(cp)) {
      case unicode::kCatLu: case unicode::kCatLt: return kUp;
      case unicode::kCatLl: return kLow;
      case unicode::kCatLm: case unicode::kCatLo: return kLmo;
      case unicode::kCatMn: case unicode::kCatMc: case unicode::kCatMe: return kMark;
      case unicode::kCatNd: case unicode::kCatNl: case unicode::kCatNo: return kN;
      case unicode::kCatZs: case unicode::kCatZl: case unicode::kCatZp: return kS;
      default: return cp == 0x85 ? kS : kO;
    }
  }

  // [upper]*[lower]+ from q (backtracking like the regex); end or kNone.
  static size_t upper_lower(const uint8_t* s, size_t n, size_t q) {
    size_t u = q, last_lower_in_run = kNone, len;
    while (u < n) {
      uint8_t c = cls(s, n, u, &len);
      if (!is_upper_set(c)) break;
      if (is_lower_set(c)) last_lower_in_run = u + len;
      u += len;
    }
    if (u < n && is_lower_set(cls(s, n, u, &len))) {
      while (u < n) {
        uint8_t c = cls(s, n, u, &len);
        if (!is_lower_set(c)) break;
        u += len;
      }
      return u;
    }
    // give back upper-set characters until one can start [lower]+; it ends right after it, since
    // every later character of the run is upper-only
    return last_lower_in_run;
  }

  // [upper]+[lower]* from q; end or kNone.
  static size_t upper_then_lower(const uint8_t* s, size_t n, size_t q) {
    size_t u = q, len;
    while (u < n && is_upper_set(cls(s, n, u, &len))) u += len;
    if (u == q) return kNone;
    while (u < n && is_lower_set(cls(s, n, u, &len))) u += len;
    return u;
  }

  // (?i:'s|'t|'re|'ve|'m|'ll|'d)? at e.
  static size_t contraction(const uint8_t* s, size_t n, size_t e) {
    if (e + 1 >= n || s[e] != '\'') return e;
    uint8_t a = s[e + 1] | 0x20;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return e + 2;
    if (s[e + 1] == 0xC5 && e + 2 < n && s[e + 2] == 0xBF) return e + 3;  // U+017F LONG S ~ s
    if (e + 2 < n) {
      uint8_t b = s[e + 2] | 0x20;
      if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return e + 3;
    }
    return e;
  }
};

}  // namespace nextlong::regex
