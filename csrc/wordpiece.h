// BERT WordPiece (what HF `tokenizers` runs for BertTokenizer: BertNormalizer, BertPreTokenizer,
// WordPiece), for ASCII text only. Why: the static embedder's whole cost is tokenization; this path
// gives the same ids as HF on every ASCII text and says "not mine" for the rest, which the caller
// sends to HF itself (exact either way). Why ASCII only: outside ASCII, BertNormalizer needs NFD,
// Unicode lowercase and HF's own (older) Unicode category tables to be reproduced exactly.
//
// The ASCII rules, as HF applies them (checked against HF in tests/test_wordpiece.py):
//  - clean_text: NUL and every control character except \t \n \r are removed (they do NOT split a
//    word: "a\x01b" is one word "ab"); \t \n \r and space become word separators.
//  - lowercase: A-Z -> a-z (accents and Chinese characters do not occur in ASCII).
//  - pre-tokenization: words split at whitespace (dropped) and at each ASCII punctuation character
//    !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~ (kept as a one-character word).
//  - WordPiece: a word longer than max_input_chars_per_word is [UNK]; otherwise greedy longest match
//    from the left, pieces after the first looked up with the "##" prefix; if some position matches
//    nothing, the whole word is one [UNK].
//  - added tokens ([PAD], [UNK], ...) are matched in the raw text before all of this: a text that
//    contains one is left to the caller's fallback.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bpe_hash.h"

namespace nextlong {

struct WordPieceOptions {
  bool lowercase = true;
  uint32_t unk_id = 0;
  size_t max_input_chars_per_word = 100;
  std::string continuing_prefix = "##";
  std::vector<std::string> added_tokens;  // texts containing one of these are not handled here
};

class WordPiece {
 public:
  WordPiece(const std::vector<std::pair<std::string, uint32_t>>& vocab, WordPieceOptions opt);

  // Calls emit(id) for each id of `text` (all ASCII) and returns true; returns false, having emitted
  // nothing, when the text contains an added token (the caller must then use HF).
  template <class Emit>
  bool encode_ascii(std::string_view text, Emit&& emit) const;

  uint32_t unk_id() const { return opt_.unk_id; }
  size_t vocab_size() const { return vocab_size_; }

 private:
  bool has_added_token(std::string_view text) const;
  template <class Emit>
  void encode_word(const uint8_t* w, size_t n, std::vector<uint32_t>& pieces, Emit& emit) const;

  WordPieceOptions opt_;
  bpe::BytesMap initial_;       // every vocabulary entry, as written
  bpe::BytesMap continuation_;  // entries that start with the prefix, without it
  size_t max_initial_ = 0, max_continuation_ = 0, vocab_size_ = 0;
  uint8_t kind_[128];  // per ASCII byte: what the normalizer and pre-tokenizer do with it
};

// ---- implementation (templated on the sink so the fused pooling loop inlines it) ----

enum AsciiKind : uint8_t { kDrop = 0, kSpace = 1, kPunct = 2, kWordChar = 3 };

template <class Emit>
void WordPiece::encode_word(const uint8_t* w, size_t n, std::vector<uint32_t>& pieces, Emit& emit) const {
  if (n > opt_.max_input_chars_per_word) {
    emit(opt_.unk_id);
    return;
  }
  pieces.clear();
  size_t start = 0;
  while (start < n) {
    const bpe::BytesMap& map = start == 0 ? initial_ : continuation_;
    size_t longest = start == 0 ? max_initial_ : max_continuation_;
    size_t end = std::min(n, start + longest);
    uint32_t id = bpe::BytesMap::kMissing;
    for (; end > start; --end) {
      id = map.find(w + start, end - start);
      if (id != bpe::BytesMap::kMissing) break;
    }
    if (id == bpe::BytesMap::kMissing) {
      emit(opt_.unk_id);
      return;
    }
    pieces.push_back(id);
    start = end;
  }
  for (uint32_t id : pieces) emit(id);
}

template <class Emit>
bool WordPiece::encode_ascii(std::string_view text, Emit&& emit) const {
  if (has_added_token(text)) return false;
  thread_local std::vector<uint32_t> pieces;
  thread_local std::string word;
  word.clear();
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t n = text.size();
  auto flush = [&]() {
    if (!word.empty()) {
      encode_word(reinterpret_cast<const uint8_t*>(word.data()), word.size(), pieces, emit);
      word.clear();
    }
  };
  for (size_t i = 0; i < n; ++i) {
    uint8_t c = s[i];
    switch (kind_[c & 0x7F]) {
      case kWordChar:
        word.push_back(static_cast<char>(opt_.lowercase && c >= 'A' && c <= 'Z' ? c + 32 : c));
        break;
      case kSpace:
        flush();
        break;
      case kPunct: {
        flush();
        uint8_t one = c;
        encode_word(&one, 1, pieces, emit);
        break;
      }
      default:  // removed by clean_text: joins its neighbours
        break;
    }
  }
  flush();
  return true;
}

}  // namespace nextlong
