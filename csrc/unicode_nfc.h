// Unicode NFC normalization (for tokenizer.json files with an NFC normalizer, e.g. Qwen2). Done in
// C++ because the corpus engine calls encode_ordinary directly, without Python in between.
#pragma once
#include <string>
#include <string_view>

namespace nextlong::unicode {

// True when `text` (UTF-8) is certainly already NFC (no character that NFC could change).
bool nfc_quick_check(std::string_view text);
// Appends NFC(text) to out. Malformed UTF-8 bytes become U+FFFD.
void nfc_normalize(std::string_view text, std::string& out);

}  // namespace nextlong::unicode
