// Byte-level BPE tokenizer: regex pre-tokenization, then lowest-rank-first pair merging on raw
// bytes. One class serves HuggingFace tokenizer.json files (merges given) and tiktoken rank files
// (pair table derived from the ranks); the Python loader (nextlong/tokenizer.py) translates either
// file into the constructor arguments.
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bpe_hash.h"
#include "regex_cl100k_scanner.h"
#include "regex_engine.h"
#include "regex_o200k_scanner.h"
#include "text_encoder.h"

namespace nextlong {

struct BpeAddedToken {
  std::string content;
  uint32_t id = 0;
  bool lstrip = false, rstrip = false, single_word = false, normalized = false;
};

struct BpeOptions {
  std::string pattern;  // pre-tokenization regex; empty = the whole text is one piece
  regex::Dialect dialect = regex::Dialect::kFancyRegex;
  bool keep_gaps = false;      // HF Split(Isolated) keeps unmatched text as pieces; tiktoken drops it
  int prefix_space = 0;        // 0 none, 1 once per text (ByteLevel before splitting), 2 per piece
  bool ignore_merges = false;  // a piece that is a whole vocab token becomes that token
  bool nfc = false;                 // NFC-normalize text before pre-tokenization (HF NFC normalizer)
  bool generic_regex_only = false;  // never use the hand-written cl100k/o200k scanners (tests)
  // HF BPE unk_token: a byte with no token becomes this id (consecutive ones fuse into one when
  // fuse_unk). -1: none, and text holding a byte without a token is refused (EncodeError).
  int64_t unk_id = -1;
  bool fuse_unk = false;
  // Per added token (indexed like the added list; empty: none): matched in ordinary text too. An HF file's
  // added tokens that are not special (runs of spaces, Qwen3's <think>) are part of how its text is written,
  // so encode_ordinary splits them out as tokenizers does with encode_special_tokens=true; special tokens
  // (<|endoftext|>) stay plain text there.
  std::vector<char> ordinary_added;
};

// Text the tokenizer refuses to encode (a piece past nextlong's limit, or a byte the vocabulary has no
// token for and no unk id): nextlong.errors.TokenizerError in Python, like a regex::RegexError.
struct EncodeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class BpeTokenizer : public TextEncoder {
 public:
  static constexpr int kPrefixNone = 0, kPrefixText = 1, kPrefixPiece = 2;
  // Longest pre-tokenization piece BPE merges (tiktoken and HF have no limit; nextlong bounds the
  // memory one piece takes, ~21 bytes per byte): a longer one raises EncodeError.
  static constexpr size_t kMaxPieceBytes = size_t(16) << 20;
  static constexpr size_t kMaxAddedTokenBytes = 1024;  // an added token's content; real ones are a few bytes

  // model: (id, bytes) of the vocabulary BPE can produce. merges: (left, right) ids in rank order,
  // or nullptr for tiktoken ranks (a token merges from any split into two vocab tokens, with its own
  // id as rank). decode_only: ids that only decode (tokens outside the byte alphabet).
  BpeTokenizer(const std::vector<std::pair<uint32_t, std::string>>& model,
               const std::vector<std::pair<uint32_t, uint32_t>>* merges, BpeOptions options,
               std::vector<BpeAddedToken> added,
               const std::vector<std::pair<uint32_t, std::string>>& decode_only);

  void encode_ordinary(std::string_view text, std::vector<uint32_t>& out) const override;
  size_t count_ordinary(std::string_view text) const override;
  // Splits out added tokens whose `allowed` flag is set (indexed like added()), then encodes the rest.
  void encode(std::string_view text, const std::vector<char>& allowed, std::vector<uint32_t>& out) const;
  // Appends the bytes of ids; returns false (and stops) at an id with no token.
  bool decode_bytes(const uint32_t* ids, size_t n, std::string& out) const;

  const std::vector<BpeAddedToken>& added() const { return added_; }
  size_t num_model_tokens() const { return num_model_; }
  uint32_t max_id() const { return static_cast<uint32_t>(id_bytes_.size()) - 1; }
  bool has_id(uint32_t id) const { return id < id_bytes_.size() && has_id_[id]; }
  const std::string& id_bytes(uint32_t id) const { return id_bytes_[id]; }
  // Model-vocabulary id of a byte string, or -1.
  int64_t model_id(std::string_view bytes) const;
  const BpeOptions& options() const { return opt_; }
  bool has_fast_scanner() const { return scanner_ != nullptr || o200k_ != nullptr; }
  // The regex steps one pre-tokenization pass over n bytes may take (0 without a pattern).
  int64_t step_budget(size_t n) const { return regex_ ? regex_->step_budget(n) : 0; }
  size_t regex_nodes() const { return regex_ ? regex_->num_nodes() : 0; }
  // Byte spans of the pre-tokenization pieces (gaps included when the options keep them).
  // steps_used, when given, receives the regex steps the pass took (0 for the scanners or no pattern).
  void split_pieces(std::string_view text, bool generic, std::vector<std::pair<size_t, size_t>>& out,
                    int64_t* steps_used = nullptr) const;

 private:
  // `steps`, when given, is the regex budget these calls share (encode() over its segments); else
  // each pass has its own step_budget of its length.
  void encode_text(std::string_view text, std::vector<uint32_t>& out, int64_t* steps = nullptr) const;
  void encode_normalized(std::string_view text, std::vector<uint32_t>& out, int64_t* steps = nullptr) const;
  void encode_piece(const uint8_t* s, size_t n, std::vector<uint32_t>& out) const;
  // Appends the initial symbols of s[0, n): byte tokens, or unk ids for bytes without one.
  template <class Push>
  void byte_symbols(const uint8_t* s, size_t n, Push&& push) const;
  void merge_small(const uint8_t* s, size_t n, std::vector<uint32_t>& out) const;
  void merge_large(const uint8_t* s, size_t n, std::vector<uint32_t>& out) const;
  struct Segment {
    size_t begin, end;
    int64_t token;  // added-token id, or -1 for text
  };
  // `skip_disallowed`: HF's encode_special_tokens rule: matches are found among all added tokens and a match of
  // one not allowed is skipped (its text stays text); else (tiktoken's allowed_special) only allowed ones match.
  void split_added(std::string_view text, size_t b, size_t e, bool normalized_pass,
                   const std::vector<char>& allowed, bool skip_disallowed, std::vector<Segment>& out) const;
  void encode_added(std::string_view text, const std::vector<char>& allowed, bool skip_disallowed,
                    std::vector<uint32_t>& out) const;
  void encode_plain(std::string_view text, std::vector<uint32_t>& out) const;  // no added token matched
  bool any_ordinary_added_ = false;

  BpeOptions opt_;
  template <class Fn>
  void for_each_piece(std::string_view text, bool generic, Fn&& fn, int64_t* steps_used = nullptr,
                      int64_t* shared_steps = nullptr) const;
  std::unique_ptr<regex::Regex> regex_;
  std::unique_ptr<regex::Cl100kScanner> scanner_;
  std::unique_ptr<regex::O200kScanner> o200k_;
  bpe::BytesMap vocab_;
  bpe::PairMap pairs_;
  uint32_t byte_id_[256];
  std::vector<std::string> id_bytes_;
  std::vector<char> has_id_;
  size_t num_model_ = 0;
  std::vector<BpeAddedToken> added_;
  // The added tokens' contents as a byte trie: matching at a position walks it once, so the cost per text
  // byte is bounded by the longest added token (kMaxAddedTokenBytes), not by how many tokens there are.
  struct AddedTrieNode {
    std::vector<std::pair<uint8_t, uint32_t>> next;  // (byte, child node), sorted by byte
    std::vector<uint32_t> ends;                       // tokens whose content ends here, in added_ order
  };
  // One trie per pass (index: the tokens' normalized flag), as a pass only looks for its own tokens, and a
  // pass with no token is no scan at all. The walk starts only where next_start finds that a token may start
  // by the text's next two bytes (memchr when one byte starts them all, else 16 bytes at a time when few do):
  // matching costs little over plain text where the tokens are rare ('<' tokens) or two bytes tell them from
  // text (Pythia's runs of spaces against the single space before each word).
  struct AddedTrie {
    std::vector<AddedTrieNode> nodes;  // node 0 is the root
    uint32_t first[256] = {};          // the root's child for each byte, 0 for none
    uint64_t pairs[1024] = {};         // bit b0 << 8 | b1: a token starts with b0 b1, or b0 is a token
    // The tokens' first bytes and their second bytes (any byte when one is a whole token), up to 4 of each,
    // repeated to fill; vector_scan is false when there are more. one_lead: they all start with lead[0].
    uint8_t lead[4] = {}, follow[4] = {};
    bool any_follow = false, vector_scan = false, one_lead = false;
    void finish();  // fills the tables above from nodes
    // The first q in [p, e) where a token of this trie may start (no false negative), or e.
    size_t next_start(const uint8_t* s, size_t p, size_t e) const;
  };
  AddedTrie added_trie_[2];
  std::vector<size_t> added_len_;  // bytes a match of each token spans: its content, NFC'd when normalized
  uint64_t uid_;
};

}  // namespace nextlong
