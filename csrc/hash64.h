// 64-bit content hash of chunk text, used to spot exact duplicates across the corpus.
// The algorithm is XXH64 with seed 0 (Yann Collet's xxHash64 spec), computed on the UTF-8 bytes with
// explicit little-endian loads, so values are identical across runs, platforms and compilers.
#pragma once
#include <cstddef>
#include <cstdint>

namespace nextlong {
uint64_t hash64(const void* data, size_t len, uint64_t seed = 0);
}  // namespace nextlong
