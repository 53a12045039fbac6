// A small backtracking regex engine (leftmost-first, like Oniguruma and fancy-regex) for the
// pre-tokenization patterns of byte-level BPE tokenizers (GPT-2, cl100k, o200k, Llama-3, Qwen2).
// Why our own: the exact semantics of HuggingFace tokenizers (Oniguruma) and tiktoken (fancy-regex)
// must both be reproduced, without linking either. Constructs outside the supported subset raise
// RegexError naming the construct, so nothing is ever tokenized differently in silence.
//
// Patterns come from tokenizer files, which may be hostile: whatever exceeds a bound below is
// refused with a one-line RegexError naming the pattern (and, while matching, the input position)
// instead of overflowing the stack or backtracking for hours.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace nextlong::regex {

// Oniguruma (Ruby syntax, as in HF tokenizers): `X{m,n}+` means `(?:X{m,n})+`, `X{n}?` means
// `(?:X{n})?`, `$` is end of line. fancy-regex (tiktoken): `X{m,n}+` is possessive, `$` is end of text.
enum class Dialect { kOniguruma, kFancyRegex };

class RegexError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A set of code points. ASCII membership is a bitmap; outside ASCII, membership usually depends
// only on (general category, White_Space), stored as a bitmask over "keys"; sets with explicit
// non-ASCII ranges fall back to evaluating their item list.
struct CharSet {
  struct Item {
    enum Kind { kRange, kCategories, kSpace, kNested } kind;
    uint32_t lo = 0, hi = 0;     // kRange
    uint32_t cat_mask = 0;       // kCategories: bit per unicode::Category
    bool negated = false;        // kSpace / kCategories / kNested
    std::shared_ptr<CharSet> nested;
    Item(Kind k, uint32_t l = 0, uint32_t h = 0) : kind(k), lo(l), hi(h) {}
  };
  std::vector<Item> items;
  bool negated = false;

  // Compiled form.
  uint64_t ascii[2] = {0, 0};
  uint32_t key_mask = 0;
  bool by_key = true;
  // What eval() reads: the ranges sorted and merged (binary search), the category items folded into
  // two masks, so one test costs O(log ranges + nested sets), not O(items) (a class of 1,000,000
  // items made each character test walk all of them, which the step budget did not count).
  std::vector<std::pair<uint32_t, uint32_t>> ranges;
  uint32_t cats_any = 0;      // hit when the category is in it (\p items)
  uint32_t cats_all_neg = 0;  // hit when the category is not in it (\P items), if has_neg_cats
  bool has_neg_cats = false, space_pos = false, space_neg = false;
  std::vector<uint32_t> nested_items;  // indices into items

  void compile();
  bool eval(uint32_t cp) const;  // from the compiled form above
  inline bool contains_nonascii(uint32_t cp, uint8_t cat) const;
};

struct Node {
  enum Kind { kSet, kSeq, kAlt, kRepeat, kAtomic, kLook, kAssert } kind;
  enum Greed { kGreedy, kLazy, kPossessive } greed = kGreedy;
  enum Anchor { kLineStart, kLineEnd, kTextStart, kTextEnd, kTextEndNewline } anchor = kTextStart;
  int set = -1;                 // kSet: index into Regex::sets_
  std::vector<Node*> kids;      // kSeq / kAlt; kRepeat, kAtomic, kLook use kids[0]
  int min = 0, max = -1;        // kRepeat; max -1 = unbounded
  bool negative = false;        // kLook
};

class Regex {
 public:
  // Compile-time bounds: the parser and the matcher recurse once per level of group/class nesting,
  // and one pass over a pattern recurses at most once per element, which kMaxNodes keeps well
  // inside kMaxDepth.
  static constexpr int kMaxNesting = 100;
  static constexpr int kMaxDepth = 5000;  // matcher recursion; enough for any pattern of kMaxNodes
  static constexpr size_t kMaxNodes = kMaxDepth / 2;
  // Class items (ranges, \p{..}, nested classes and case variants) in the whole pattern, and nested
  // classes: the standard patterns use under 100 items and no nesting.
  static constexpr size_t kMaxClassItems = 10000;
  static constexpr size_t kMaxNestedClasses = 32;
  // Match-time bound: one pre-tokenization pass over n bytes (or one encode of an n-byte text, its
  // segments between added tokens sharing it) may take step_budget(n) steps: 256 per byte, plus 2 per
  // byte and pattern element. The standard GPT-2/cl100k/o200k/Llama-3/Qwen2 patterns take at most 38
  // steps per byte on the hardest text measured (" \t'" repeated; long runs of spaces, digits,
  // punctuation, marks, mixed scripts: tests/test_tokenizer_safety.py), well inside the first term; a
  // legitimate pattern with many alternatives (a code tokenizer splitting 120 keywords first) costs about
  // 2 steps per byte for each, which the second term covers. It was 8 per byte and element, so a
  // pattern padded to kMaxNodes ran 20,000 steps per byte (~2 minutes per MB) before failing; now about
  // 5,000 (a pattern with nothing but 256 per byte refused that keyword tokenizer's digits at 28 KB).
  // A step is a node visit or a character test, O(log class size) since classes are compiled to sorted
  // ranges.
  static constexpr int64_t kBaseSteps = 1 << 16;
  static constexpr int64_t kStepsPerByte = 256;
  static constexpr int64_t kStepsPerNodeByte = 2;
  int64_t step_budget(size_t n) const {
    return kBaseSteps + (kStepsPerByte + kStepsPerNodeByte * static_cast<int64_t>(nodes_.size())) *
                            static_cast<int64_t>(n);
  }
  size_t num_nodes() const { return nodes_.size(); }

  Regex(std::string_view pattern, Dialect dialect);
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Leftmost-first match starting the search at `from`; returns false when none. The steps taken
  // come off *steps_left (share one budget over a whole text); when it runs out, throws RegexError.
  bool find(std::string_view text, size_t from, size_t* match_start, size_t* match_end,
            int64_t* steps_left) const;

  const std::string& pattern() const { return pattern_; }
  Dialect dialect() const { return dialect_; }

 private:
  friend class Parser;
  friend class Matcher;
  Node* new_node(Node::Kind kind);
  std::string pattern_;
  Dialect dialect_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<CharSet> sets_;
  Node* root_ = nullptr;
};

}  // namespace nextlong::regex
