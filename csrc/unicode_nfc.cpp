#include "unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <vector>

#include "unicode_props.h"

namespace nextlong::unicode {
namespace {

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

template <class T, size_t N>
int64_t index_of(const T (&keys)[N], T key) {
  const T* it = std::lower_bound(std::begin(keys), std::end(keys), key);
  return (it != std::end(keys) && *it == key) ? it - std::begin(keys) : -1;
}

bool needs_check(uint32_t cp) {
  const uint32_t* it = std::upper_bound(std::begin(kNfcCheckStarts), std::end(kNfcCheckStarts), cp);
  if (it == std::begin(kNfcCheckStarts)) return false;
  size_t i = (it - std::begin(kNfcCheckStarts)) - 1;
  return cp <= kNfcCheckEnds[i];
}

uint8_t ccc(uint32_t cp) {
  if (cp < 0x300) return 0;
  int64_t i = index_of(kCccKeys, cp);
  return i < 0 ? 0 : kCccValues[i];
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  int64_t i = cp < 0xC0 ? -1 : index_of(kDecompKeys, cp);
  if (i < 0) {
    out.push_back(cp);
    return;
  }
  uint32_t ref = kDecompRefs[i];
  out.insert(out.end(), kDecompPool + (ref & 0xFFFFFF), kDecompPool + (ref & 0xFFFFFF) + (ref >> 24));
}

uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  int64_t i = index_of(kComposeKeys, (uint64_t{a} << 21) | b);
  return i < 0 ? 0 : kComposeValues[i];
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace

bool nfc_quick_check(std::string_view text) {
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t n = text.size();
  for (size_t p = 0; p < n;) {
    if (s[p] < 0x80) { ++p; continue; }
    size_t len;
    uint32_t cp = decode_utf8(s, n, p, &len);
    if (needs_check(cp)) return false;
    p += len;
  }
  return true;
}

void nfc_normalize(std::string_view text, std::string& out) {
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t n = text.size();
  std::vector<uint32_t> cps;
  cps.reserve(n);
  for (size_t p = 0; p < n;) {
    size_t len;
    uint32_t cp = decode_utf8(s, n, p, &len);
    decompose(cp, cps);
    p += len;
  }
  // canonical ordering: stable sort of each run of non-starters by combining class
  for (size_t i = 0; i < cps.size();) {
    if (ccc(cps[i]) == 0) { ++i; continue; }
    size_t j = i;
    while (j < cps.size() && ccc(cps[j]) != 0) ++j;
    if (j - i > 1)
      std::stable_sort(cps.begin() + i, cps.begin() + j, [](uint32_t a, uint32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  // canonical composition
  std::vector<uint32_t> res;
  res.reserve(cps.size());
  int64_t starter = -1;
  uint8_t prev_ccc = 0;
  for (uint32_t cp : cps) {
    uint8_t c = ccc(cp);
    if (starter >= 0) {
      bool adjacent = static_cast<int64_t>(res.size()) - 1 == starter;
      if (adjacent || (prev_ccc != 0 && prev_ccc < c)) {
        uint32_t comp = compose(res[starter], cp);
        if (comp) {
          res[starter] = comp;
          continue;
        }
      }
    }
    if (c == 0) starter = static_cast<int64_t>(res.size());
    prev_ccc = c;
    res.push_back(cp);
  }
  out.reserve(out.size() + n + 8);
  for (uint32_t cp : res) append_utf8(cp, out);
}

}  // namespace nextlong::unicode
