#include "regex_engine.h"

#include <algorithm>
#include <cstring>

#if defined(__linux__)
#include <pthread.h>
#endif

#include "unicode_props.h"

namespace nextlong::regex {

using unicode::category;
using unicode::decode_utf8;
using unicode::is_space;

namespace {
// Non-ASCII membership key: the general category, or kKeyCcSpace for U+0085 (the only non-ASCII
// White_Space character whose category is not Z*).
constexpr int kKeyCcSpace = unicode::kNumCategories;
constexpr uint32_t kAllCats = (1u << unicode::kNumCategories) - 1;

uint32_t cat_bit(int c) { return 1u << c; }

// `s` in single quotes for a one-line error message: control characters escaped, cut after about
// max_bytes (at a character boundary) with "...". Patterns and inputs can be megabytes long.
std::string quoted(std::string_view s, size_t max_bytes = 80) {
  std::string out = "'";
  size_t i = 0;
  for (; i < s.size() && i < max_bytes; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7F) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) out += s[i++];  // finish the character
  if (i < s.size()) out += "...";
  return out + "'";
}

// Evaluates a set on an abstract non-ASCII character described by its key. Returns false and sets
// *exact=false when the answer depends on the concrete code point (explicit non-ASCII ranges).
bool eval_key(const CharSet& set, int key, bool* exact) {
  uint8_t cat = key == kKeyCcSpace ? static_cast<uint8_t>(unicode::kCatCc) : static_cast<uint8_t>(key);
  bool space = key == kKeyCcSpace || cat == unicode::kCatZs || cat == unicode::kCatZl ||
               cat == unicode::kCatZp;
  bool hit = false;
  for (const auto& it : set.items) {
    bool r = false;
    switch (it.kind) {
      case CharSet::Item::kRange:
        if (it.hi >= 0x80) *exact = false;
        break;
      case CharSet::Item::kCategories:
        r = ((it.cat_mask >> cat) & 1) != it.negated;
        break;
      case CharSet::Item::kSpace:
        r = space != it.negated;
        break;
      case CharSet::Item::kNested:
        r = eval_key(*it.nested, key, exact) != it.negated;
        break;
    }
    if (r) { hit = true; }
  }
  return hit != set.negated;
}
}  // namespace

bool CharSet::eval(uint32_t cp) const {
  bool hit = false;
  auto r = std::upper_bound(ranges.begin(), ranges.end(), std::make_pair(cp, UINT32_MAX));
  if (r != ranges.begin() && std::prev(r)->second >= cp) hit = true;
  if (!hit && (cats_any || has_neg_cats)) {
    uint8_t cat = category(cp);
    hit = ((cats_any >> cat) & 1) || (has_neg_cats && !((cats_all_neg >> cat) & 1));
  }
  if (!hit && (space_pos || space_neg)) hit = is_space(cp) ? space_pos : space_neg;
  for (size_t k = 0; !hit && k < nested_items.size(); ++k)
    hit = items[nested_items[k]].nested->eval(cp) != items[nested_items[k]].negated;
  return hit != negated;
}

void CharSet::compile() {
  ranges.clear();
  nested_items.clear();
  cats_any = 0;
  cats_all_neg = ~0u;
  has_neg_cats = space_pos = space_neg = false;
  for (size_t k = 0; k < items.size(); ++k) {
    Item& it = items[k];
    switch (it.kind) {
      case Item::kRange: ranges.emplace_back(it.lo, it.hi); break;
      case Item::kCategories:
        if (it.negated) { cats_all_neg &= it.cat_mask; has_neg_cats = true; }
        else cats_any |= it.cat_mask;
        break;
      case Item::kSpace: (it.negated ? space_neg : space_pos) = true; break;
      case Item::kNested: it.nested->compile(); nested_items.push_back(static_cast<uint32_t>(k)); break;
    }
  }
  std::sort(ranges.begin(), ranges.end());
  size_t m = 0;
  for (const auto& r : ranges) {
    if (m > 0 && r.first <= ranges[m - 1].second + uint64_t{1}) ranges[m - 1].second = std::max(ranges[m - 1].second, r.second);
    else ranges[m++] = r;
  }
  ranges.resize(m);
  ascii[0] = ascii[1] = 0;
  for (uint32_t c = 0; c < 128; ++c)
    if (eval(c)) ascii[c >> 6] |= uint64_t{1} << (c & 63);
  bool exact = true;
  key_mask = 0;
  for (int k = 0; k <= kKeyCcSpace; ++k)
    if (eval_key(*this, k, &exact)) key_mask |= 1u << k;
  by_key = exact;
}

inline bool CharSet::contains_nonascii(uint32_t cp, uint8_t cat) const {
  if (by_key) {
    int key = (cp == 0x85) ? kKeyCcSpace : cat;
    return (key_mask >> key) & 1;
  }
  return eval(cp);
}

Node* Regex::new_node(Node::Kind kind) {
  nodes_.push_back(std::make_unique<Node>());
  nodes_.back()->kind = kind;
  return nodes_.back().get();
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------
class Parser {
 public:
  Parser(Regex& re) : re_(re), p_(re.pattern_) {}

  Node* parse() {
    Node* n = parse_alt();
    if (i_ < p_.size()) fail("unbalanced ')'");
    return n;
  }

 private:
  Regex& re_;
  size_t class_items_ = 0, nested_classes_ = 0;  // over the whole pattern (count_items)
  std::string_view p_;
  size_t i_ = 0;
  bool icase_ = false;
  int nesting_ = 0;  // groups and classes open at i_

  [[noreturn]] void fail(const std::string& what) {
    throw RegexError("unsupported or invalid regex construct: " + what + " (at offset " +
                     std::to_string(i_) + " of pattern " + quoted(p_) + ")");
  }

  // One level of group or class nesting, refused past Regex::kMaxNesting (the parser, CharSet and
  // the matcher recurse once per level).
  struct Nest {
    Parser& parser;
    explicit Nest(Parser& p) : parser(p) {
      if (++parser.nesting_ > Regex::kMaxNesting)
        parser.fail("groups or classes nested more than " + std::to_string(Regex::kMaxNesting) + " deep");
    }
    ~Nest() { --parser.nesting_; }
  };

  Node* new_node(Node::Kind kind) {
    if (re_.nodes_.size() >= Regex::kMaxNodes)
      fail("pattern too large (more than " + std::to_string(Regex::kMaxNodes) + " elements)");
    return re_.new_node(kind);
  }
  bool eof() const { return i_ >= p_.size(); }
  char peek() const { return eof() ? '\0' : p_[i_]; }
  bool accept(char c) {
    if (peek() == c && !eof()) { ++i_; return true; }
    return false;
  }

  uint32_t next_cp() {
    size_t len;
    uint32_t cp = decode_utf8(reinterpret_cast<const uint8_t*>(p_.data()), p_.size(), i_, &len);
    i_ += len;
    return cp;
  }

  Node* set_node(CharSet set) {
    count_items(set);
    set.compile();
    re_.sets_.push_back(std::move(set));
    Node* n = new_node(Node::kSet);
    n->set = static_cast<int>(re_.sets_.size() - 1);
    return n;
  }

  // Adds the ASCII case variants of [lo, hi] (plus the two non-ASCII simple case folds of ASCII
  // letters: U+017F LONG S ~ s, U+212A KELVIN SIGN ~ k) when case-insensitive.
  void add_range(CharSet& set, uint32_t lo, uint32_t hi) {
    if (set.items.size() > Regex::kMaxClassItems)  // stop early; set_node counts the pattern's total
      fail("character class too large (more than " + std::to_string(Regex::kMaxClassItems) + " items)");
    set.items.push_back({CharSet::Item::kRange, lo, hi});
    if (!icase_) return;
    for (uint32_t c = lo; c <= hi && c < 0x80; ++c) {
      uint32_t other = 0;
      if (c >= 'a' && c <= 'z') other = c - 32;
      else if (c >= 'A' && c <= 'Z') other = c + 32;
      if (other) set.items.push_back({CharSet::Item::kRange, other, other});
      if (c == 's' || c == 'S') set.items.push_back({CharSet::Item::kRange, 0x17F, 0x17F});
      if (c == 'k' || c == 'K') set.items.push_back({CharSet::Item::kRange, 0x212A, 0x212A});
    }
    if (hi >= 0x80 && has_cased_letter(lo < 0x80 ? 0x80 : lo, hi))
      fail("case-insensitive matching of a non-ASCII cased letter");
  }

  // Whether [lo, hi] holds a cased letter (Lu, Ll, Lt): a binary search in a table built once, where
  // scanning the range cost up to 65,536 lookups per range (millions of ranges: over an hour).
  static bool has_cased_letter(uint32_t lo, uint32_t hi) {
    static const std::vector<uint32_t> cased = [] {
      std::vector<uint32_t> v;
      for (uint32_t c = 0x80; c <= 0x10FFFF; ++c) {
        uint8_t cat = category(c);
        if (cat == unicode::kCatLu || cat == unicode::kCatLl || cat == unicode::kCatLt) v.push_back(c);
      }
      return v;
    }();
    auto it = std::lower_bound(cased.begin(), cased.end(), lo);
    return it != cased.end() && *it <= hi;
  }

  void count_items(const CharSet& set) {
    for (const auto& it : set.items) {
      if (++class_items_ > Regex::kMaxClassItems)
        fail("character classes too large (more than " + std::to_string(Regex::kMaxClassItems) + " items in all)");
      if (it.kind == CharSet::Item::kNested) {
        if (++nested_classes_ > Regex::kMaxNestedClasses)
          fail("more than " + std::to_string(Regex::kMaxNestedClasses) + " nested character classes");
        count_items(*it.nested);
      }
    }
  }

  uint32_t parse_hex(size_t max_digits, bool braces) {
    uint32_t v = 0;
    size_t n = 0;
    if (braces) {
      while (!eof() && peek() != '}') {
        char c = p_[i_++];
        int d = hexval(c);
        if (d < 0) fail("bad hex escape");
        v = v * 16 + d;
        if (++n > 8) fail("bad hex escape");
      }
      if (!accept('}') || n == 0) fail("bad hex escape");
    } else {
      while (n < max_digits && !eof() && hexval(peek()) >= 0) { v = v * 16 + hexval(p_[i_++]); ++n; }
      if (n == 0) fail("bad hex escape");
    }
    if (v >= 0x110000) fail("code point out of range");
    return v;
  }
  static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  uint32_t category_mask(const std::string& name) {
    using namespace unicode;
    struct Entry { const char* name; uint32_t mask; };
    static const uint32_t L = cat_bit(kCatLu) | cat_bit(kCatLl) | cat_bit(kCatLt) | cat_bit(kCatLm) | cat_bit(kCatLo);
    static const uint32_t M = cat_bit(kCatMn) | cat_bit(kCatMc) | cat_bit(kCatMe);
    static const uint32_t N = cat_bit(kCatNd) | cat_bit(kCatNl) | cat_bit(kCatNo);
    static const uint32_t P = cat_bit(kCatPc) | cat_bit(kCatPd) | cat_bit(kCatPs) | cat_bit(kCatPe) |
                              cat_bit(kCatPi) | cat_bit(kCatPf) | cat_bit(kCatPo);
    static const uint32_t S = cat_bit(kCatSm) | cat_bit(kCatSc) | cat_bit(kCatSk) | cat_bit(kCatSo);
    static const uint32_t Z = cat_bit(kCatZs) | cat_bit(kCatZl) | cat_bit(kCatZp);
    static const uint32_t C = cat_bit(kCatCc) | cat_bit(kCatCf) | cat_bit(kCatCs) | cat_bit(kCatCo) | cat_bit(kCatCn);
    static const Entry table[] = {
        {"L", L}, {"Letter", L}, {"M", M}, {"Mark", M}, {"Combining_Mark", M}, {"N", N}, {"Number", N},
        {"P", P}, {"Punctuation", P}, {"S", S}, {"Symbol", S}, {"Z", Z}, {"Separator", Z},
        {"C", C}, {"Other", C}, {"LC", cat_bit(kCatLu) | cat_bit(kCatLl) | cat_bit(kCatLt)},
        {"L&", cat_bit(kCatLu) | cat_bit(kCatLl) | cat_bit(kCatLt)},
        {"Cased_Letter", cat_bit(kCatLu) | cat_bit(kCatLl) | cat_bit(kCatLt)},
        {"Uppercase_Letter", cat_bit(kCatLu)}, {"Lowercase_Letter", cat_bit(kCatLl)},
        {"Titlecase_Letter", cat_bit(kCatLt)}, {"Modifier_Letter", cat_bit(kCatLm)},
        {"Other_Letter", cat_bit(kCatLo)}, {"Nonspacing_Mark", cat_bit(kCatMn)},
        {"Spacing_Mark", cat_bit(kCatMc)}, {"Enclosing_Mark", cat_bit(kCatMe)},
        {"Decimal_Number", cat_bit(kCatNd)}, {"Letter_Number", cat_bit(kCatNl)},
        {"Other_Number", cat_bit(kCatNo)}, {"Space_Separator", cat_bit(kCatZs)},
        {"Control", cat_bit(kCatCc)}, {"Format", cat_bit(kCatCf)}, {"Unassigned", cat_bit(kCatCn)},
        {"Private_Use", cat_bit(kCatCo)}, {"Surrogate", cat_bit(kCatCs)},
        {"Math_Symbol", cat_bit(kCatSm)}, {"Currency_Symbol", cat_bit(kCatSc)},
        {"Modifier_Symbol", cat_bit(kCatSk)}, {"Other_Symbol", cat_bit(kCatSo)},
        {"Connector_Punctuation", cat_bit(kCatPc)}, {"Dash_Punctuation", cat_bit(kCatPd)},
        {"Open_Punctuation", cat_bit(kCatPs)}, {"Close_Punctuation", cat_bit(kCatPe)},
        {"Initial_Punctuation", cat_bit(kCatPi)}, {"Final_Punctuation", cat_bit(kCatPf)},
        {"Other_Punctuation", cat_bit(kCatPo)},
    };
    for (const auto& e : table)
      if (name == e.name) return e.mask;
    for (int c = 0; c < kNumCategories; ++c)
      if (name == kCategoryNames[c]) return cat_bit(c);
    fail("unicode property \\p{" + name + "}");
  }

  // Parses the body of \p / \P (after the letter). Adds to set.
  void parse_property(CharSet& set, bool negated) {
    std::string name;
    if (accept('{')) {
      while (!eof() && peek() != '}') name += p_[i_++];
      if (!accept('}')) fail("unterminated \\p{");
    } else {
      if (eof()) fail("bad \\p");
      name = std::string(1, p_[i_++]);
    }
    if (!name.empty() && name[0] == '^') { negated = !negated; name = name.substr(1); }
    uint32_t mask = category_mask(name);
    if (icase_ && (mask & (cat_bit(unicode::kCatLu) | cat_bit(unicode::kCatLl) | cat_bit(unicode::kCatLt))) &&
        (mask & L_all()) != L_all())
      fail("case-insensitive \\p{" + name + "}");
    CharSet::Item it{CharSet::Item::kCategories};
    it.cat_mask = mask;
    it.negated = negated;
    set.items.push_back(it);
  }
  static uint32_t L_all() {
    using namespace unicode;
    return cat_bit(kCatLu) | cat_bit(kCatLl) | cat_bit(kCatLt);
  }

  // Class escapes shared by both contexts: \s \S \d \D \w \W \p \P. Returns false if `c` is none.
  bool class_escape(char c, CharSet& set) {
    using namespace unicode;
    switch (c) {
      case 's': case 'S': {
        CharSet::Item it{CharSet::Item::kSpace};
        it.negated = (c == 'S');
        set.items.push_back(it);
        return true;
      }
      case 'd': case 'D': {
        CharSet::Item it{CharSet::Item::kCategories};
        it.cat_mask = cat_bit(kCatNd);
        it.negated = (c == 'D');
        set.items.push_back(it);
        return true;
      }
      case 'w': case 'W': {
        // Approximation of Unicode \w (Alphabetic, M, Nd, Pc): letters, marks, numbers Nd/Nl, Pc.
        auto inner = std::make_shared<CharSet>();
        CharSet::Item cats{CharSet::Item::kCategories};
        cats.cat_mask = cat_bit(kCatLu) | cat_bit(kCatLl) | cat_bit(kCatLt) | cat_bit(kCatLm) |
                        cat_bit(kCatLo) | cat_bit(kCatMn) | cat_bit(kCatMc) | cat_bit(kCatMe) |
                        cat_bit(kCatNd) | cat_bit(kCatNl) | cat_bit(kCatPc);
        inner->items.push_back(cats);
        CharSet::Item it{CharSet::Item::kNested};
        it.nested = inner;
        it.negated = (c == 'W');
        set.items.push_back(it);
        return true;
      }
      case 'p': case 'P':
        parse_property(set, c == 'P');
        return true;
      case 'h': case 'H':
        fail(std::string("\\") + c + " (means different things in Oniguruma and fancy-regex)");
      default:
        return false;
    }
  }

  // A single-code-point escape (after the backslash and letter `c`); returns the code point.
  uint32_t char_escape(char c) {
    switch (c) {
      case 't': return '\t';
      case 'n': return '\n';
      case 'r': return '\r';
      case 'f': return '\f';
      case 'v': return '\v';
      case 'a': return 0x07;
      case 'e': return 0x1B;
      case 'x':
        if (accept('{')) return parse_hex(8, true);
        return parse_hex(2, false);
      case 'u':
        if (accept('{')) return parse_hex(8, true);
        return parse_hex(4, false);
      default: break;
    }
    if ((c >= '0' && c <= '9')) fail(std::string("backreference or octal escape \\") + c);
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
      if (c == 'b' || c == 'B') fail(std::string("word boundary \\") + c);
      if (c == 'k' || c == 'g') fail(std::string("backreference/subroutine \\") + c);
      fail(std::string("escape \\") + c);
    }
    return static_cast<unsigned char>(c);
  }

  Node* parse_alt() {
    std::vector<Node*> alts;
    alts.push_back(parse_seq());
    while (accept('|')) alts.push_back(parse_seq());
    if (alts.size() == 1) return alts[0];
    Node* n = new_node(Node::kAlt);
    n->kids = std::move(alts);
    return n;
  }

  Node* parse_seq() {
    Node* seq = new_node(Node::kSeq);
    while (!eof() && peek() != '|' && peek() != ')') {
      Node* atom = parse_atom();
      if (!atom) continue;
      seq->kids.push_back(parse_quantifiers(atom));
    }
    if (seq->kids.size() == 1) return seq->kids[0];
    return seq;
  }

  bool parse_interval(int* mn, int* mx) {
    // At '{'. Returns false (consuming nothing) if it is not a valid interval: then '{' is literal.
    size_t save = i_;
    ++i_;
    auto num = [&](int* out) {
      size_t st = i_;
      long v = 0;
      while (!eof() && peek() >= '0' && peek() <= '9') {
        v = v * 10 + (p_[i_++] - '0');
        if (v > 100000) fail("repetition count too large");
      }
      *out = static_cast<int>(v);
      return i_ > st;
    };
    int a = 0, b = -1;
    bool has_a = num(&a);
    if (accept('}')) {
      if (!has_a) { i_ = save; return false; }
      *mn = *mx = a;
      return true;
    }
    if (!accept(',')) { i_ = save; return false; }
    bool has_b = num(&b);
    if (!accept('}') || (!has_a && !has_b)) { i_ = save; return false; }
    if (!has_a) {
      if (re_.dialect_ == Dialect::kFancyRegex) fail("repetition {,n}");
      a = 0;
    }
    if (!has_b) b = -1;
    if (b >= 0 && b < a) fail("repetition with max < min");
    *mn = a;
    *mx = b;
    return true;
  }

  bool at_quantifier() {
    char c = peek();
    if (c == '*' || c == '+' || c == '?') return true;
    if (c == '{') {
      size_t save = i_;
      int a, b;
      bool ok = parse_interval(&a, &b);
      i_ = save;
      return ok;
    }
    return false;
  }

  Node* make_repeat(Node* atom, int mn, int mx, Node::Greed g) {
    // (X{1,b}){c,} with X a single-character set equals X{c,}; keeps `\p{N}{1,3}+` (Oniguruma:
    // a greedy repeat of a repeat) a flat loop instead of deep recursion on long digit runs.
    if (g == Node::kGreedy && mx < 0 && atom->kind == Node::kRepeat && atom->greed == Node::kGreedy &&
        atom->min == 1 && atom->max >= 1 && atom->kids[0]->kind == Node::kSet) {
      atom->min = mn;
      atom->max = -1;
      return atom;
    }
    Node* r = new_node(Node::kRepeat);
    r->kids.push_back(atom);
    r->min = mn;
    r->max = mx;
    r->greed = g;
    return r;
  }

  Node* parse_quantifiers(Node* atom) {
    const bool onig = re_.dialect_ == Dialect::kOniguruma;
    bool quantified = false;
    bool allow_more = false;  // Oniguruma: X{m,n}+ and X{n}? quantify the repeat again
    while (at_quantifier()) {
      if (quantified && !allow_more) fail("nested quantifier");
      if (atom->kind == Node::kAssert || atom->kind == Node::kLook) fail("quantified assertion");
      char c = peek();
      int mn = 0, mx = -1;
      bool interval = false;
      if (c == '{') {
        parse_interval(&mn, &mx);
        interval = true;
      } else {
        ++i_;
        mn = (c == '+') ? 1 : 0;
        mx = (c == '?') ? 1 : -1;
      }
      allow_more = false;
      Node::Greed g = Node::kGreedy;
      if (peek() == '?') {
        if (onig && interval && mn == mx) allow_more = true;  // (?:X{n})?
        else { ++i_; g = Node::kLazy; }
      } else if (peek() == '+') {
        if (onig && interval) allow_more = true;  // (?:X{m,n})+
        else { ++i_; g = Node::kPossessive; }
      }
      atom = make_repeat(atom, mn, mx, g);
      quantified = true;
    }
    return atom;
  }

  Node* parse_group() {
    // After '('.
    Nest nest(*this);
    bool saved = icase_;
    Node* n = nullptr;
    if (accept('?')) {
      char c = peek();
      if (c == ':') { ++i_; n = parse_alt(); }
      else if (c == '=' || c == '!') {
        ++i_;
        Node* inner = parse_alt();
        n = new_node(Node::kLook);
        n->kids.push_back(inner);
        n->negative = (c == '!');
      } else if (c == '>') {
        ++i_;
        Node* inner = parse_alt();
        n = new_node(Node::kAtomic);
        n->kids.push_back(inner);
      } else if (c == '<') {
        char d = (i_ + 1 < p_.size()) ? p_[i_ + 1] : '\0';
        if (d == '=' || d == '!') fail("lookbehind (?<" + std::string(1, d));
        // named capture group: treat as a plain group
        while (!eof() && peek() != '>') ++i_;
        if (!accept('>')) fail("unterminated group name");
        n = parse_alt();
      } else if (c == 'P' && i_ + 1 < p_.size() && p_[i_ + 1] == '<') {
        while (!eof() && peek() != '>') ++i_;
        if (!accept('>')) fail("unterminated group name");
        n = parse_alt();
      } else {
        // inline flags: (?i) (?-i) (?i:...) (?-i:...)
        bool on = true, any = false;
        bool newcase = icase_;
        while (!eof() && peek() != ':' && peek() != ')') {
          char f = p_[i_++];
          if (f == '-') { on = false; continue; }
          if (f == 'i') { newcase = on; any = true; continue; }
          fail(std::string("inline flag (?") + f + ")");
        }
        if (!any && !(on == false)) fail("empty inline flag group");
        if (accept(')')) {
          // (?i) applies to the rest of the enclosing group.
          icase_ = newcase;
          return nullptr;
        }
        if (!accept(':')) fail("bad inline flag group");
        icase_ = newcase;
        n = parse_alt();
      }
    } else {
      n = parse_alt();  // capturing group: captures are not needed, match as a plain group
    }
    if (!accept(')')) fail("missing ')'");
    icase_ = saved;
    return n;
  }

  Node* parse_class() {
    // After '['.
    Nest nest(*this);
    CharSet set;
    if (accept('^')) set.negated = true;
    bool first = true;
    while (true) {
      if (eof()) fail("unterminated character class");
      char c = peek();
      if (c == ']' && !first) { ++i_; break; }
      first = false;
      if (c == '[') {
        if (i_ + 1 < p_.size() && p_[i_ + 1] == ':') fail("POSIX class [:...:]");
        ++i_;
        Node* inner = parse_class();
        CharSet::Item it{CharSet::Item::kNested};
        it.nested = std::make_shared<CharSet>(re_.sets_[inner->set]);
        set.items.push_back(it);
        continue;
      }
      if (c == '&' && i_ + 1 < p_.size() && p_[i_ + 1] == '&') fail("class intersection &&");
      uint32_t lo;
      if (c == '\\') {
        ++i_;
        if (eof()) fail("trailing backslash");
        char e = p_[i_++];
        if (class_escape(e, set)) continue;
        if (e == 'b') lo = 0x08;
        else lo = char_escape(e);
      } else {
        lo = next_cp();
      }
      // range?
      if (peek() == '-' && i_ + 1 < p_.size() && p_[i_ + 1] != ']') {
        ++i_;
        uint32_t hi;
        if (peek() == '\\') {
          ++i_;
          if (eof()) fail("trailing backslash");
          char e = p_[i_++];
          if (e == 's' || e == 'S' || e == 'd' || e == 'D' || e == 'w' || e == 'W' || e == 'p' || e == 'P')
            fail("class escape as range end");
          hi = char_escape(e);
        } else {
          hi = next_cp();
        }
        if (hi < lo) fail("class range out of order");
        add_range(set, lo, hi);
      } else {
        add_range(set, lo, lo);
      }
    }
    return set_node(std::move(set));
  }

  Node* parse_atom() {
    char c = peek();
    switch (c) {
      case '(': ++i_; return parse_group();
      case '[': ++i_; return parse_class();
      case '.': {
        ++i_;
        CharSet set;
        set.negated = true;
        set.items.push_back({CharSet::Item::kRange, '\n', '\n'});
        return set_node(std::move(set));
      }
      case '^': case '$': {
        ++i_;
        Node* n = new_node(Node::kAssert);
        bool onig = re_.dialect_ == Dialect::kOniguruma;
        if (c == '^') n->anchor = onig ? Node::kLineStart : Node::kTextStart;
        else n->anchor = onig ? Node::kLineEnd : Node::kTextEnd;
        return n;
      }
      case '*': case '+': case '?': fail(std::string("quantifier '") + c + "' without a target");
      case '\\': {
        ++i_;
        if (eof()) fail("trailing backslash");
        char e = p_[i_++];
        if (e == 'A' || e == 'z' || e == 'Z') {
          Node* n = new_node(Node::kAssert);
          n->anchor = e == 'A' ? Node::kTextStart : (e == 'z' ? Node::kTextEnd : Node::kTextEndNewline);
          return n;
        }
        if (e == 'G' || e == 'K' || e == 'R' || e == 'X' || e == 'Q' || e == 'E')
          fail(std::string("escape \\") + e);
        CharSet set;
        if (class_escape(e, set)) return set_node(std::move(set));
        uint32_t cp = char_escape(e);
        add_range(set, cp, cp);
        return set_node(std::move(set));
      }
      default: {
        CharSet set;
        uint32_t cp = next_cp();
        add_range(set, cp, cp);
        return set_node(std::move(set));
      }
    }
  }
};

Regex::Regex(std::string_view pattern, Dialect dialect) : pattern_(pattern), dialect_(dialect) {
  sets_.reserve(256);
  Parser parser(*this);
  root_ = parser.parse();
}

// ---------------------------------------------------------------------------------------------
// Matcher: recursive backtracking with explicit continuations (what to match after a node).
// ---------------------------------------------------------------------------------------------
namespace {
constexpr size_t kStackMargin = 128 * 1024;

// Lowest stack address the matcher may reach on this thread (0 where unknown): kMaxDepth bounds
// the recursion the same way everywhere, but a thread with a small stack (a 2 MB thread under
// `ulimit -s unlimited`, or `ulimit -s 1024`) would overflow before reaching it.
uintptr_t stack_floor() {
  thread_local const uintptr_t floor = [] {
    uintptr_t f = 0;
#if defined(__linux__)
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      void* addr;
      size_t size;
      if (pthread_attr_getstack(&attr, &addr, &size) == 0) f = reinterpret_cast<uintptr_t>(addr) + kStackMargin;
      pthread_attr_destroy(&attr);
    }
#endif
    return f;
  }();
  return floor;
}
}  // namespace

class Matcher {
 public:
  Matcher(const Regex& re, std::string_view text, int64_t steps_left)
      : steps_left_(steps_left), re_(re), s_(reinterpret_cast<const uint8_t*>(text.data())), n_(text.size()) {}

  struct Cont {
    enum Kind : uint8_t { kSeqRest, kRepeatMore } kind;
    const Node* node;
    int idx;      // kSeqRest: next kid; kRepeatMore: iterations done
    size_t start; // kRepeatMore: where the current iteration started
    const Cont* next;
  };

  size_t end_ = 0;
  size_t attempt_ = 0;  // where the current match attempt started
  int64_t steps_left_;
  int depth_ = 0;

  // Match-time refusal, naming the pattern and where in the text the attempt started.
  [[noreturn]] __attribute__((cold, noinline)) void fail(const char* what, const char* why) const {
    std::string_view rest(reinterpret_cast<const char*>(s_) + attempt_, n_ - attempt_);
    throw RegexError(std::string(what) + " at byte " + std::to_string(attempt_) + " of the text (near " +
                     quoted(rest, 24) + "): pattern " + quoted(re_.pattern()) + " " + why);
  }

  inline bool set_at(int set, size_t p, size_t* len) const {
    const CharSet& cs = re_.sets_[set];
    uint8_t b = s_[p];
    if (b < 0x80) {
      *len = 1;
      return (cs.ascii[b >> 6] >> (b & 63)) & 1;
    }
    uint32_t cp = decode_utf8(s_, n_, p, len);
    return cs.contains_nonascii(cp, category(cp));
  }

  bool cont(const Cont* k, size_t p) {
    if (!k) { end_ = p; return true; }
    if (k->kind == Cont::kSeqRest) {
      const Node* seq = k->node;
      if (static_cast<size_t>(k->idx) == seq->kids.size()) return cont(k->next, p);
      Cont c{Cont::kSeqRest, seq, k->idx + 1, 0, k->next};
      return m(seq->kids[k->idx], p, &c);
    }
    return repeat(k->node, p, k->idx, k->start, k->next);
  }

  // General (non single-set) repeat after `count` iterations, the last one started at `start`.
  bool repeat(const Node* n, size_t p, int count, size_t start, const Cont* k) {
    if (count > 0 && p == start && count > n->min) return cont(k, p);  // empty iteration: stop
    bool can_more = n->max < 0 || count < n->max;
    if (count < n->min) {
      Cont c{Cont::kRepeatMore, n, count + 1, p, k};
      return m(n->kids[0], p, &c);
    }
    if (n->greed == Node::kLazy) {
      if (cont(k, p)) return true;
      if (!can_more) return false;
      Cont c{Cont::kRepeatMore, n, count + 1, p, k};
      return m(n->kids[0], p, &c);
    }
    if (can_more) {
      Cont c{Cont::kRepeatMore, n, count + 1, p, k};
      if (m(n->kids[0], p, &c)) return true;
    }
    return cont(k, p);
  }

  // Past kCheckDepth levels: refuses recursion beyond kMaxDepth or near the end of the thread's stack.
  static constexpr int kCheckDepth = 64;
  __attribute__((noinline)) void check_depth() const {
    if (depth_ > Regex::kMaxDepth || reinterpret_cast<uintptr_t>(__builtin_frame_address(0)) < stack_floor())
      fail("regex backtracking too deep", "repeats a group over too long a match");
  }

  bool m(const Node* n, size_t p, const Cont* k) {
    if (--steps_left_ < 0) fail("regex step budget exhausted", "backtracks too much on this input");
    // Backtracking recurses once per nested step; a general (non single-character) repeat over a
    // long input could exhaust the thread's stack. Fail loudly instead of crashing.
    struct Depth {
      Matcher& mt;
      explicit Depth(Matcher& x) : mt(x) {
        if (++mt.depth_ > kCheckDepth) mt.check_depth();
      }
      ~Depth() { --mt.depth_; }
    } guard(*this);
    switch (n->kind) {
      case Node::kSet: {
        if (p >= n_) return false;
        size_t len;
        if (!set_at(n->set, p, &len)) return false;
        return cont(k, p + len);
      }
      case Node::kSeq: {
        if (n->kids.empty()) return cont(k, p);
        Cont c{Cont::kSeqRest, n, 1, 0, k};
        return m(n->kids[0], p, &c);
      }
      case Node::kAlt:
        for (const Node* kid : n->kids)
          if (m(kid, p, k)) return true;
        return false;
      case Node::kRepeat: {
        const Node* kid = n->kids[0];
        if (n->greed == Node::kPossessive) {
          // atomic greedy repeat
          size_t e;
          if (kid->kind == Node::kSet) {
            e = p;
            int cnt = 0;
            size_t len;
            while ((n->max < 0 || cnt < n->max) && e < n_ && set_at(kid->set, e, &len)) { e += len; ++cnt; }
            steps_left_ -= cnt;
            if (cnt < n->min) return false;
          } else {
            Node tmp = *n;
            tmp.greed = Node::kGreedy;
            if (!repeat(&tmp, p, 0, p, nullptr)) return false;
            e = end_;
          }
          return cont(k, e);
        }
        if (kid->kind == Node::kSet) {
          size_t len;
          if (n->greed == Node::kGreedy) {
            size_t e = p;
            int cnt = 0;
            while ((n->max < 0 || cnt < n->max) && e < n_ && set_at(kid->set, e, &len)) { e += len; ++cnt; }
            steps_left_ -= cnt;
            if (cnt < n->min) return false;
            while (true) {
              if (cont(k, e)) return true;
              if (cnt == n->min) return false;
              e = unicode::prev_char(s_, p, e);
              --cnt;
            }
          }
          // lazy
          size_t e = p;
          int cnt = 0;
          while (cnt < n->min) {
            if (e >= n_ || !set_at(kid->set, e, &len)) return false;
            e += len;
            ++cnt;
          }
          while (true) {
            if (cont(k, e)) return true;
            if ((n->max >= 0 && cnt >= n->max) || e >= n_ || !set_at(kid->set, e, &len)) return false;
            e += len;
            ++cnt;
          }
        }
        return repeat(n, p, 0, p, k);
      }
      case Node::kAtomic: {
        if (!m(n->kids[0], p, nullptr)) return false;
        return cont(k, end_);
      }
      case Node::kLook: {
        bool r = m(n->kids[0], p, nullptr);
        if (r == n->negative) return false;
        return cont(k, p);
      }
      case Node::kAssert: {
        bool ok = false;
        switch (n->anchor) {
          case Node::kTextStart: ok = p == 0; break;
          case Node::kTextEnd: ok = p == n_; break;
          case Node::kLineStart: ok = p == 0 || s_[p - 1] == '\n'; break;
          case Node::kLineEnd: ok = p == n_ || s_[p] == '\n'; break;
          case Node::kTextEndNewline: ok = p == n_ || (p + 1 == n_ && s_[p] == '\n'); break;
        }
        return ok && cont(k, p);
      }
    }
    return false;
  }

 private:
  const Regex& re_;
  const uint8_t* s_;
  size_t n_;
};

bool Regex::find(std::string_view text, size_t from, size_t* match_start, size_t* match_end,
                 int64_t* steps_left) const {
  Matcher mt(*this, text, *steps_left);
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t n = text.size();
  size_t p = from;
  while (true) {
    mt.attempt_ = p;
    if (mt.m(root_, p, nullptr)) {
      *match_start = p;
      *match_end = mt.end_;
      *steps_left = mt.steps_left_;
      return true;
    }
    if (p >= n) {
      *steps_left = mt.steps_left_;
      return false;
    }
    size_t len;
    decode_utf8(s, n, p, &len);
    p += len;
  }
}

}  // namespace nextlong::regex
