// The one interface the corpus engine needs from a tokenizer: count or produce ids for plain text.
// The byte-level BPE tokenizer implements it; the meta-chunker and the tokenize pipeline take a
// `const TextEncoder*` (nullptr = measure in characters), so neither depends on the BPE internals.
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

namespace nextlong {

class TextEncoder {
 public:
  virtual ~TextEncoder() = default;
  // Appends the ids of `text` (UTF-8; special/added tokens are NOT parsed) to `out`.
  // Must be thread-safe: the corpus engine calls it from many threads at once on one object.
  virtual void encode_ordinary(std::string_view text, std::vector<uint32_t>& out) const = 0;
  // Number of ids encode_ordinary would append. Override when counting can be cheaper.
  virtual size_t count_ordinary(std::string_view text) const {
    std::vector<uint32_t> ids;
    encode_ordinary(text, ids);
    return ids.size();
  }
};

}  // namespace nextlong
