#include "wordpiece.h"

#include <stdexcept>

namespace nextlong {

WordPiece::WordPiece(const std::vector<std::pair<std::string, uint32_t>>& vocab, WordPieceOptions opt)
    : opt_(std::move(opt)) {
  if (opt_.continuing_prefix.empty()) throw std::invalid_argument("WordPiece: empty continuing_subword_prefix");
  initial_.reserve(vocab.size());
  continuation_.reserve(vocab.size());
  const std::string& prefix = opt_.continuing_prefix;
  for (const auto& [token, id] : vocab) {
    initial_.insert(token, id);
    max_initial_ = std::max(max_initial_, token.size());
    if (token.size() > prefix.size() && token.compare(0, prefix.size(), prefix) == 0) {
      continuation_.insert(std::string_view(token).substr(prefix.size()), id);
      max_continuation_ = std::max(max_continuation_, token.size() - prefix.size());
    }
    vocab_size_ = std::max<size_t>(vocab_size_, size_t{id} + 1);
  }
  for (int c = 0; c < 128; ++c) {
    bool control = c < 0x20 || c == 0x7F;  // general category Cc
    bool punct = (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
                 (c >= 0x7B && c <= 0x7E);
    if (c == '\t' || c == '\n' || c == '\r' || c == ' ') kind_[c] = kSpace;
    else if (control) kind_[c] = kDrop;  // includes NUL, \x0b and \x0c: removed, not separators
    else if (punct) kind_[c] = kPunct;
    else kind_[c] = kWordChar;
  }
}

bool WordPiece::has_added_token(std::string_view text) const {
  for (const std::string& token : opt_.added_tokens)
    if (!token.empty() && text.find(token) != std::string_view::npos) return true;
  return false;
}

}  // namespace nextlong
