// Flat open-addressing hash maps for the BPE hot path: byte strings -> id, and (id, id) -> merge.
// Why not std::unordered_map: one cache line per probe, no allocation per entry, string_view lookup.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace nextlong::bpe {

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93ULL;
  x ^= x >> 32;
  return x;
}

inline uint64_t hash_bytes(const uint8_t* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xbf58476d1ce4e5b9ULL);
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0x94d049bb133111ebULL;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  if (n) {
    uint64_t v = 0;
    std::memcpy(&v, p, n);
    h = (h ^ v) * 0x94d049bb133111ebULL;
    h ^= h >> 29;
  }
  return mix64(h);
}

// A fixed-width summary of a key: all of its bytes when it is at most 8 long (so short keys compare
// without touching the arena), else its first 8 bytes. Injective for a given length <= 8.
inline uint64_t key_word(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  if (n >= 8) {
    std::memcpy(&v, p, 8);
  } else if (n >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + n - 4, 4);
    v = lo | (uint64_t{hi} << 32);
  } else if (n > 0) {
    v = uint64_t{p[0]} | (uint64_t{p[n / 2]} << 8) | (uint64_t{p[n - 1]} << 16);
  }
  return v;
}

inline uint64_t key_hash(const uint8_t* p, size_t n, uint64_t word) {
  if (n <= 8) return mix64(word * 0x9E3779B97F4A7C15ULL + n);
  return hash_bytes(p, n);
}

// Byte string -> uint32 value. Keys of up to 8 bytes live in the slot; longer keys also in an arena.
class BytesMap {
 public:
  static constexpr uint32_t kMissing = 0xFFFFFFFFu;

  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
  }
  size_t size() const { return size_; }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    arena_.clear();
    size_ = 0;
  }

  // Inserts or overwrites.
  void insert(std::string_view key, uint32_t value) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    const uint8_t* p = reinterpret_cast<const uint8_t*>(key.data());
    size_t n = key.size();
    uint64_t w = key_word(p, n);
    uint64_t h = key_hash(p, n, w);
    size_t i = h & mask_;
    while (true) {
      Slot& s = slots_[i];
      if (s.len == kEmpty) {
        s.word = w;
        s.hash = static_cast<uint32_t>(h >> 32);
        s.len = static_cast<uint32_t>(n);
        s.value = value;
        s.off = static_cast<uint32_t>(arena_.size());
        if (n > 8) arena_.append(key.substr(8));
        ++size_;
        return;
      }
      if (same(s, p, n, w, h)) {
        s.value = value;
        return;
      }
      i = (i + 1) & mask_;
    }
  }

  inline uint32_t find(const uint8_t* p, size_t n) const {
    uint64_t w = key_word(p, n);
    uint64_t h = key_hash(p, n, w);
    size_t i = h & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.len == kEmpty) return kMissing;
      if (same(s, p, n, w, h)) return s.value;
      i = (i + 1) & mask_;
    }
  }

 private:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  struct Slot {
    uint64_t word = 0;
    uint32_t hash = 0;  // high half of the hash
    uint32_t len = kEmpty;
    uint32_t value = 0;
    uint32_t off = 0;  // arena offset of bytes 8.. of long keys
  };
  inline bool same(const Slot& s, const uint8_t* p, size_t n, uint64_t w, uint64_t h) const {
    if (s.len != n || s.word != w) return false;
    if (n <= 8) return true;
    return s.hash == static_cast<uint32_t>(h >> 32) && std::memcmp(arena_.data() + s.off, p + 8, n - 8) == 0;
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    size_t cap = old.empty() ? 16 : old.size() * 2;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (const Slot& s : old) {
      if (s.len == kEmpty) continue;
      // recompute the full hash from the stored key
      uint64_t h;
      if (s.len <= 8) {
        h = mix64(s.word * 0x9E3779B97F4A7C15ULL + s.len);
      } else {
        std::string full(8 + (s.len - 8), '\0');
        std::memcpy(&full[0], &s.word, 8);
        std::memcpy(&full[8], arena_.data() + s.off, s.len - 8);
        h = hash_bytes(reinterpret_cast<const uint8_t*>(full.data()), full.size());
      }
      size_t i = h & mask_;
      while (slots_[i].len != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_{16};
  std::string arena_;
  size_t mask_ = 15;
  size_t size_ = 0;
};

// (left id, right id) -> (rank, merged id).
class PairMap {
 public:
  struct Merge {
    uint32_t rank;
    uint32_t id;
  };
  static constexpr uint32_t kNoRank = 0xFFFFFFFFu;

  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
  }
  // A pair inserted twice keeps the later entry (as HF tokenizers' merge map does).
  void insert(uint32_t a, uint32_t b, uint32_t rank, uint32_t id) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    uint64_t key = (uint64_t{a} << 32) | b;
    size_t i = mix64(key) & mask_;
    while (true) {
      Slot& s = slots_[i];
      if (s.key == kEmptyKey) {
        s.key = key;
        s.m = {rank, id};
        ++size_;
        return;
      }
      if (s.key == key) {
        s.m = {rank, id};
        return;
      }
      i = (i + 1) & mask_;
    }
  }
  inline Merge find(uint32_t a, uint32_t b) const {
    uint64_t key = (uint64_t{a} << 32) | b;
    size_t i = mix64(key) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.key == key) return s.m;
      if (s.key == kEmptyKey) return {kNoRank, 0};
      i = (i + 1) & mask_;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmptyKey = ~uint64_t{0};
  struct Slot {
    uint64_t key = kEmptyKey;
    Merge m{kNoRank, 0};
  };
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    size_t cap = old.empty() ? 16 : old.size() * 2;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (const Slot& s : old) {
      if (s.key == kEmptyKey) continue;
      size_t i = mix64(s.key) & mask_;
      while (slots_[i].key != kEmptyKey) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_{16};
  size_t mask_ = 15;
  size_t size_ = 0;
};

}  // namespace nextlong::bpe
