#include "bpe_tokenizer.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <queue>
#include <stdexcept>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "unicode_nfc.h"
#include "unicode_props.h"

namespace nextlong {

namespace {
std::atomic<uint64_t> g_next_uid{1};

// Per-thread memo of piece -> ids for multi-token pieces, so frequent words cost one hash lookup.
// Keyed by tokenizer uid; a thread that switches tokenizer starts a fresh memo.
struct PieceCache {
  uint64_t owner = 0;
  bpe::BytesMap index;       // piece -> offset into ids (ids[off] = count, then the ids)
  std::vector<uint32_t> ids;
  void reset(uint64_t uid) {
    owner = uid;
    index.clear();
    ids.clear();
  }
};
thread_local PieceCache t_cache;
thread_local std::string t_prefixed;

constexpr size_t kCacheMaxEntries = 1 << 16;
constexpr size_t kCacheMaxPiece = 256;
constexpr size_t kSmallPiece = 128;

// Unicode \w as Rust's regex crate defines it (HF checks single_word tokens with it): Alphabetic,
// marks, Nd, Pc, Join_Control. Alphabetic outside L/Nl/M is approximated by the circled letters.
bool is_word_char(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  if (cp == 0x200C || cp == 0x200D || (cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F189)) return true;
  uint8_t c = unicode::category(cp);
  return (c >= unicode::kCatLu && c <= unicode::kCatLo) || (c >= unicode::kCatMn && c <= unicode::kCatMe) ||
         c == unicode::kCatNd || c == unicode::kCatNl || c == unicode::kCatPc;
}
}  // namespace

BpeTokenizer::BpeTokenizer(const std::vector<std::pair<uint32_t, std::string>>& model,
                           const std::vector<std::pair<uint32_t, uint32_t>>* merges, BpeOptions options,
                           std::vector<BpeAddedToken> added,
                           const std::vector<std::pair<uint32_t, std::string>>& decode_only)
    : opt_(std::move(options)), added_(std::move(added)), uid_(g_next_uid.fetch_add(1)) {
  if (!opt_.pattern.empty()) {
    regex_ = std::make_unique<regex::Regex>(opt_.pattern, opt_.dialect);
    regex::Cl100kScanner::Variant v;
    if (!opt_.generic_regex_only && regex::Cl100kScanner::recognise(opt_.pattern, opt_.dialect, &v))
      scanner_ = std::make_unique<regex::Cl100kScanner>(v);
    else if (!opt_.generic_regex_only && regex::O200kScanner::recognise(opt_.pattern))
      o200k_ = std::make_unique<regex::O200kScanner>();
  }
  uint32_t max_id = 0;
  for (const auto& [id, b] : model) max_id = std::max(max_id, id);
  for (const auto& t : added_) max_id = std::max(max_id, t.id);
  for (const auto& [id, b] : decode_only) max_id = std::max(max_id, id);
  id_bytes_.assign(size_t{max_id} + 1, std::string());
  has_id_.assign(size_t{max_id} + 1, 0);
  vocab_.reserve(model.size());
  for (const auto& [id, b] : model) {
    if (b.empty()) throw std::invalid_argument("empty token in vocabulary (id " + std::to_string(id) + ")");
    vocab_.insert(b, id);
    id_bytes_[id] = b;
    has_id_[id] = 1;
  }
  num_model_ = model.size();
  for (const auto& [id, b] : decode_only) {
    if (!has_id_[id]) { id_bytes_[id] = b; has_id_[id] = 1; }
  }
  for (const auto& t : added_) {
    id_bytes_[t.id] = t.content;
    has_id_[t.id] = 1;
  }
  for (int b = 0; b < 256; ++b) {
    uint8_t c = static_cast<uint8_t>(b);
    byte_id_[b] = vocab_.find(&c, 1);
  }
  if (opt_.unk_id >= 0 && (uint64_t(opt_.unk_id) >= id_bytes_.size() || !has_id_[opt_.unk_id]))
    throw std::invalid_argument("unk id " + std::to_string(opt_.unk_id) + " is not a token of the vocabulary");
  // A vocabulary may lack byte tokens (HF's BpeTrainer keeps only the bytes its corpus held): it loads,
  // and a text that holds such a byte is refused when it is encoded (byte_symbols), unless there is an
  // unk id.
  if (merges) {
    pairs_.reserve(merges->size());
    uint32_t rank = 0;
    for (const auto& [a, b] : *merges) {
      if (a >= id_bytes_.size() || b >= id_bytes_.size() || !has_id_[a] || !has_id_[b])
        throw std::invalid_argument("merge references an unknown token id");
      std::string joined = id_bytes_[a] + id_bytes_[b];
      uint32_t id = vocab_.find(reinterpret_cast<const uint8_t*>(joined.data()), joined.size());
      if (id == bpe::BytesMap::kMissing)
        throw std::invalid_argument("merge result is not in the vocabulary (merge #" + std::to_string(rank) + ")");
      pairs_.insert(a, b, rank, id);
      ++rank;
    }
  } else {
    // tiktoken: merging two adjacent parts is allowed when their concatenation is a token; its rank
    // is that token's rank (= id). Each split of a token hashes both halves, so a token of n bytes
    // costs O(n^2): bound the total (a 1 MB token took minutes; o200k's total is 1.3e7).
    constexpr uint64_t kMaxSplitWork = uint64_t(1) << 30;
    uint64_t work = 0;
    for (const auto& [id, b] : model) work += uint64_t(b.size()) * b.size();
    if (work > kMaxSplitWork)
      throw std::invalid_argument("the tokens are too long to build the merge table from (their squared lengths sum to " +
                                  std::to_string(work) + ", over 2^30; o200k's sum to 1.3e7)");
    pairs_.reserve(model.size() * 4);
    for (const auto& [id, b] : model) {
      const uint8_t* s = reinterpret_cast<const uint8_t*>(b.data());
      for (size_t k = 1; k < b.size(); ++k) {
        uint32_t l = vocab_.find(s, k), r = vocab_.find(s + k, b.size() - k);
        if (l != bpe::BytesMap::kMissing && r != bpe::BytesMap::kMissing) pairs_.insert(l, r, id, id);
      }
    }
  }
  if (!opt_.ordinary_added.empty() && opt_.ordinary_added.size() != added_.size())
    throw std::invalid_argument("ordinary_added must have one flag per added token");
  for (char flag : opt_.ordinary_added) any_ordinary_added_ = any_ordinary_added_ || flag;
  for (AddedTrie& trie : added_trie_) trie.nodes.assign(1, {});
  added_len_.assign(added_.size(), 0);
  for (size_t i = 0; i < added_.size(); ++i) {
    if (added_[i].content.size() > kMaxAddedTokenBytes)
      throw std::invalid_argument("an added token of " + std::to_string(added_[i].content.size()) +
                                  " bytes, over the " + std::to_string(kMaxAddedTokenBytes) +
                                  " nextlong accepts (matching it at every position of a text would cost its "
                                  "length each time)");
    // As HF: a normalized token is looked for in the normalized text by its normalized content.
    std::string c = added_[i].content;
    if (opt_.nfc && added_[i].normalized && !unicode::nfc_quick_check(c)) {
      c.clear();
      unicode::nfc_normalize(added_[i].content, c);
    }
    if (c.empty()) continue;
    added_len_[i] = c.size();
    std::vector<AddedTrieNode>& trie = added_trie_[added_[i].normalized].nodes;
    uint32_t node = 0;
    for (unsigned char byte : c) {
      auto& next = trie[node].next;
      auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(static_cast<uint8_t>(byte), uint32_t(0)));
      if (it == next.end() || it->first != byte) {
        uint32_t child = static_cast<uint32_t>(trie.size());
        it = next.insert(it, {static_cast<uint8_t>(byte), child});
        trie.emplace_back();  // invalidates `next`, not `child`
      }
      node = it->second;
    }
    trie[node].ends.push_back(static_cast<uint32_t>(i));
  }
  for (AddedTrie& trie : added_trie_) trie.finish();
}

void BpeTokenizer::AddedTrie::finish() {
  std::vector<uint8_t> leads, follows;
  for (const auto& [byte, child] : nodes[0].next) {
    first[byte] = child;
    leads.push_back(byte);
    bool whole = !nodes[child].ends.empty();  // a one-byte token: any second byte
    any_follow = any_follow || whole;
    for (const auto& [b1, grandchild] : nodes[child].next)
      if (std::find(follows.begin(), follows.end(), b1) == follows.end()) follows.push_back(b1);
    for (uint32_t b1 = 0; b1 < 256; ++b1) {
      uint32_t bit = uint32_t{byte} << 8 | b1;
      bool second = std::any_of(nodes[child].next.begin(), nodes[child].next.end(),
                                [&](const auto& edge) { return edge.first == b1; });
      if (whole || second) pairs[bit >> 6] |= uint64_t{1} << (bit & 63);
    }
  }
  one_lead = leads.size() == 1;
  if (one_lead) lead[0] = leads[0];
  vector_scan = !leads.empty() && leads.size() <= 4 && (any_follow || follows.size() <= 4);
  if (!vector_scan) return;
  for (size_t k = 0; k < 4; ++k) {
    lead[k] = leads[k % leads.size()];
    if (!any_follow) follow[k] = follows[k % follows.size()];
  }
}

size_t BpeTokenizer::AddedTrie::next_start(const uint8_t* s, size_t p, size_t e) const {
  auto pair = [&](size_t q) {
    uint32_t bit = uint32_t{s[q]} << 8 | s[q + 1];
    return pairs[bit >> 6] >> (bit & 63) & 1;
  };
  if (one_lead) {  // most files: every token starts with '<', found by memchr
    for (; p < e; ++p) {
      const void* f = std::memchr(s + p, lead[0], e - p);
      if (!f) return e;
      p = static_cast<const uint8_t*>(f) - s;
      if (p + 1 == e || pair(p)) return p;
    }
    return e;
  }
#if defined(__SSE2__)
  if (vector_scan) {  // 16 positions at a time: a lead byte followed by a follow byte, then the exact pair
    __m128i leads[4], follows[4];
    for (int k = 0; k < 4; ++k) {
      leads[k] = _mm_set1_epi8(static_cast<char>(lead[k]));
      follows[k] = _mm_set1_epi8(static_cast<char>(follow[k]));
    }
    auto in = [](__m128i v, const __m128i* set) {
      return _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, set[0]), _mm_cmpeq_epi8(v, set[1])),
                          _mm_or_si128(_mm_cmpeq_epi8(v, set[2]), _mm_cmpeq_epi8(v, set[3])));
    };
    for (; p + 17 <= e; p += 16) {
      __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + p));
      __m128i m = in(a, leads);
      if (!any_follow) m = _mm_and_si128(m, in(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + p + 1)), follows));
      for (unsigned bits = static_cast<unsigned>(_mm_movemask_epi8(m)); bits; bits &= bits - 1) {
        size_t q = p + static_cast<size_t>(__builtin_ctz(bits));
        if (pair(q)) return q;
      }
    }
  }
#endif
  for (; p + 1 < e; ++p)
    if (pair(p)) return p;
  return p < e && first[s[p]] ? p : e;  // the last byte: only a one-byte token may start there
}

int64_t BpeTokenizer::model_id(std::string_view bytes) const {
  uint32_t v = vocab_.find(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  return v == bpe::BytesMap::kMissing ? -1 : static_cast<int64_t>(v);
}

template <class Push>
void BpeTokenizer::byte_symbols(const uint8_t* s, size_t n, Push&& push) const {
  bool after_unk = false;  // the last symbol pushed is an unk (for fuse_unk)
  for (size_t i = 0; i < n; ++i) {
    uint32_t b = byte_id_[s[i]];
    if (b != bpe::BytesMap::kMissing) {
      push(b);
      after_unk = false;
    } else if (opt_.unk_id >= 0) {
      if (!(after_unk && opt_.fuse_unk)) push(static_cast<uint32_t>(opt_.unk_id));
      after_unk = true;
    } else {
      // HF tokenizers drops such a byte from the ids and tiktoken panics; dropped, it would leave ids that
      // decode to other text than the corpus holds, in silence
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02X", s[i]);
      throw EncodeError(std::string("text holds byte ") + hex + ", for which the tokenizer's vocabulary has no "
                        "token and no unk_token (HF tokenizers would drop it from the ids, changing the text)");
    }
  }
}

// Lowest rank first, leftmost on ties; O(n^2) on a small stack array, which beats a heap for the
// short pieces that make up nearly all text.
void BpeTokenizer::merge_small(const uint8_t* s, size_t n, std::vector<uint32_t>& out) const {
  uint32_t ids[kSmallPiece];
  bpe::PairMap::Merge mg[kSmallPiece];
  size_t m = 0;
  byte_symbols(s, n, [&](uint32_t id) { ids[m++] = id; });
  if (m == 0) return;
  for (size_t i = 0; i + 1 < m; ++i) mg[i] = pairs_.find(ids[i], ids[i + 1]);
  while (m > 1) {
    uint32_t best = bpe::PairMap::kNoRank;
    size_t bi = 0;
    for (size_t i = 0; i + 1 < m; ++i)
      if (mg[i].rank < best) { best = mg[i].rank; bi = i; }
    if (best == bpe::PairMap::kNoRank) break;
    ids[bi] = mg[bi].id;
    for (size_t i = bi + 1; i + 1 < m; ++i) ids[i] = ids[i + 1];
    for (size_t i = bi + 1; i + 2 < m; ++i) mg[i] = mg[i + 1];
    --m;
    if (bi > 0) mg[bi - 1] = pairs_.find(ids[bi - 1], ids[bi]);
    if (bi + 1 < m) mg[bi] = pairs_.find(ids[bi], ids[bi + 1]);
  }
  out.insert(out.end(), ids, ids + m);
}

// Same result as merge_small, with a heap of candidate pairs and a linked list of parts: for long
// pieces (minified code, long runs) where O(n^2) would hurt. About 21 bytes per input byte (ids,
// links, one 8-byte heap key per candidate; the merged id is looked up again when a key is popped),
// and encode_piece refuses pieces over kMaxPieceBytes, so one piece costs at most ~340 MiB.
void BpeTokenizer::merge_large(const uint8_t* s, size_t n, std::vector<uint32_t>& out) const {
  std::vector<uint32_t> ids;
  ids.reserve(n);
  byte_symbols(s, n, [&](uint32_t id) { ids.push_back(id); });
  size_t m = ids.size();
  if (m == 0) return;
  constexpr uint32_t kEnd = 0xFFFFFFFFu;
  std::vector<uint32_t> next(m), prev(m);
  for (size_t i = 0; i < m; ++i) {
    next[i] = i + 1 < m ? static_cast<uint32_t>(i + 1) : kEnd;
    prev[i] = i > 0 ? static_cast<uint32_t>(i - 1) : kEnd;
  }
  constexpr uint32_t kDead = kEnd - 1;  // prev[] of a part merged into its left neighbour
  std::vector<uint64_t> keys;            // rank << 32 | position: lowest rank, then leftmost
  keys.reserve(m);
  std::priority_queue<uint64_t, std::vector<uint64_t>, std::greater<uint64_t>> heap(std::greater<uint64_t>(),
                                                                                   std::move(keys));
  auto push = [&](uint32_t i) {
    if (i == kEnd || next[i] == kEnd) return;
    bpe::PairMap::Merge mg = pairs_.find(ids[i], ids[next[i]]);
    if (mg.rank != bpe::PairMap::kNoRank) heap.push((uint64_t{mg.rank} << 32) | i);
  };
  for (size_t i = 0; i + 1 < m; ++i) push(static_cast<uint32_t>(i));
  while (!heap.empty()) {
    uint64_t key = heap.top();
    heap.pop();
    uint32_t i = static_cast<uint32_t>(key & 0xFFFFFFFFu);
    uint32_t rank = static_cast<uint32_t>(key >> 32);
    if (prev[i] == kDead || next[i] == kEnd) continue;
    bpe::PairMap::Merge mg = pairs_.find(ids[i], ids[next[i]]);
    if (mg.rank != rank) continue;  // stale: the pair at i changed since it was pushed
    uint32_t j = next[i];
    ids[i] = mg.id;
    prev[j] = kDead;
    next[i] = next[j];
    if (next[j] != kEnd) prev[next[j]] = i;
    if (prev[i] != kEnd) push(prev[i]);
    push(i);
  }
  for (uint32_t i = 0; i != kEnd; i = next[i]) out.push_back(ids[i]);
}

void BpeTokenizer::encode_piece(const uint8_t* s, size_t n, std::vector<uint32_t>& out) const {
  if (n == 0) return;
  if (n > kMaxPieceBytes)  // merge_large's memory grows with the piece; no real word comes near this
    throw EncodeError("a piece of " + std::to_string(n) + " bytes after pre-tokenization is longer than the " +
                      std::to_string(kMaxPieceBytes >> 20) + " MiB nextlong encodes in one piece (a run of "
                      "letters or a text that the pattern does not split)");
  if (n == 1) {
    byte_symbols(s, 1, [&](uint32_t id) { out.push_back(id); });
    return;
  }
  if (opt_.ignore_merges) {
    uint32_t id = vocab_.find(s, n);
    if (id != bpe::BytesMap::kMissing) { out.push_back(id); return; }
  }
  if (n > kCacheMaxPiece) {
    if (n <= kSmallPiece) merge_small(s, n, out);
    else merge_large(s, n, out);
    return;
  }
  PieceCache& cache = t_cache;
  if (cache.owner != uid_ || cache.index.size() >= kCacheMaxEntries) cache.reset(uid_);
  uint32_t off = cache.index.find(s, n);
  if (off != bpe::BytesMap::kMissing) {
    const uint32_t* p = cache.ids.data() + off;
    out.insert(out.end(), p + 1, p + 1 + p[0]);
    return;
  }
  size_t before = out.size();
  if (n <= kSmallPiece) merge_small(s, n, out);
  else merge_large(s, n, out);
  size_t cnt = out.size() - before;
  off = static_cast<uint32_t>(cache.ids.size());
  cache.ids.push_back(static_cast<uint32_t>(cnt));
  cache.ids.insert(cache.ids.end(), out.begin() + before, out.end());
  cache.index.insert(std::string_view(reinterpret_cast<const char*>(s), n), off);
}

template <class Fn>
void BpeTokenizer::for_each_piece(std::string_view text, bool generic, Fn&& fn, int64_t* steps_used,
                                  int64_t* shared_steps) const {
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t n = text.size();
  if (steps_used) *steps_used = 0;
  if (!regex_) {
    if (n) fn(size_t{0}, n);
    return;
  }
  if (scanner_ && !generic) {
    for (size_t p = 0; p < n;) {
      size_t e = scanner_->next(s, n, p);
      fn(p, e);
      p = e;
    }
    return;
  }
  if (o200k_ && !generic) {
    for (size_t p = 0; p < n;) {
      size_t e = o200k_->next(s, n, p);
      fn(p, e);
      p = e;
    }
    return;
  }
  size_t pos = 0, from = 0;
  // Linear work over the whole text, or RegexError. encode() shares one budget over the segments
  // between added tokens, so splitting a text there does not grant a fresh base per segment.
  int64_t own_steps = regex_->step_budget(n);
  int64_t& steps_left = shared_steps ? *shared_steps : own_steps;
  const int64_t steps_at_start = steps_left;
  while (from < n) {  // a match starting at n is empty: it yields nothing, so it is not looked for
    size_t ms, me;
    if (!regex_->find(text, from, &ms, &me, &steps_left)) break;
    if (me == ms) {  // empty match: yields no piece; search again one character later
      if (ms >= n) break;
      size_t len;
      unicode::decode_utf8(s, n, ms, &len);
      from = ms + len;
      continue;
    }
    if (opt_.keep_gaps && pos < ms) fn(pos, ms);
    fn(ms, me);
    pos = from = me;
  }
  if (opt_.keep_gaps && pos < n) fn(pos, n);
  if (steps_used) *steps_used = steps_at_start - steps_left;
}

void BpeTokenizer::split_pieces(std::string_view text, bool generic,
                                std::vector<std::pair<size_t, size_t>>& out, int64_t* steps_used) const {
  for_each_piece(text, generic, [&](size_t b, size_t e) { out.emplace_back(b, e); }, steps_used);
}

void BpeTokenizer::encode_text(std::string_view text, std::vector<uint32_t>& out, int64_t* steps) const {
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  for_each_piece(text, false, [&](size_t b, size_t e) {
    if (opt_.prefix_space == kPrefixPiece && s[b] != ' ') {
      std::string& buf = t_prefixed;
      buf.assign(1, ' ');
      buf.append(text.data() + b, e - b);
      encode_piece(reinterpret_cast<const uint8_t*>(buf.data()), buf.size(), out);
    } else {
      encode_piece(s + b, e - b, out);
    }
  }, nullptr, steps);
}

void BpeTokenizer::encode_ordinary(std::string_view text, std::vector<uint32_t>& out) const {
  if (any_ordinary_added_) {
    encode_added(text, opt_.ordinary_added, true, out);
    return;
  }
  encode_plain(text, out);
}

void BpeTokenizer::encode_plain(std::string_view text, std::vector<uint32_t>& out) const {
  if (opt_.nfc && !unicode::nfc_quick_check(text)) {
    std::string normalized;
    unicode::nfc_normalize(text, normalized);
    encode_normalized(normalized, out);
    return;
  }
  encode_normalized(text, out);
}

void BpeTokenizer::encode_normalized(std::string_view text, std::vector<uint32_t>& out, int64_t* steps) const {
  if (opt_.prefix_space == kPrefixText && !text.empty() && text[0] != ' ') {
    std::string buf;
    buf.reserve(text.size() + 1);
    buf.push_back(' ');
    buf.append(text);
    encode_text(buf, out, steps);
    return;
  }
  encode_text(text, out, steps);
}

size_t BpeTokenizer::count_ordinary(std::string_view text) const {
  thread_local std::vector<uint32_t> scratch;
  scratch.clear();
  encode_ordinary(text, scratch);
  size_t n = scratch.size();
  if (scratch.capacity() > (1u << 22)) std::vector<uint32_t>().swap(scratch);
  return n;
}

// HF tokenizers' AddedVocabulary::find_matches, rule for rule: the matches are the leftmost-longest ones
// of the token contents, found without overlap on the text as it is (a match's strip does not move where
// the next search starts). `seg`, the end of what the previous match claimed, only decides where text
// segments lie: lstrip takes the whitespace before a match back to `seg` at most, rstrip the whitespace
// after it, and a later match that starts inside what an rstrip took still gives its id, covering
// [max(its start, seg), its end) (so "\t\t>" with '\t' rstrip is '\t' '\t' '>'), and `seg` becomes its end,
// even if that goes back. A token whose span is empty gives nothing (HF drops empty splits); one whose
// span is reversed (an lstrip match wholly inside the previous span) gives nothing and leaves `seg` as it
// is: HF panics there ("AddedVocabulary bad split"), so there is no reference to follow.
void BpeTokenizer::split_added(std::string_view text, size_t b, size_t e, bool normalized_pass,
                               const std::vector<char>& allowed, bool skip_disallowed,
                               std::vector<Segment>& out) const {
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t seg = b, p = b;
  // [ws_lo, ws_hi): whitespace the last rstrip walked, ending at a non-space or e. Matches inside it
  // (a run of '\t' with '\t' rstrip) reuse its end, so rstrip costs O(1) per byte, not the run's length.
  size_t ws_lo = 1, ws_hi = 0;
  auto char_before = [&](size_t q) {  // code point ending at q (q > b)
    size_t st = unicode::prev_char(s, b, q), len;
    return unicode::decode_utf8(s, e, st, &len);
  };
  const AddedTrie& trie = added_trie_[normalized_pass];
  if (trie.nodes.size() == 1) p = e;  // no token of this pass: the span is text
  while (p < e) {
    p = trie.next_start(s, p, e);
    if (p == e) break;
    int64_t hit = -1;  // the longest allowed token of this pass starting at p; the first in added_ order on a tie
    uint32_t node = trie.first[s[p]];
    for (size_t q = p + 1;; ++q) {
      for (uint32_t idx : trie.nodes[node].ends) {
        if (skip_disallowed || allowed[idx]) { hit = idx; break; }
      }
      if (q == e) break;
      const auto& next = trie.nodes[node].next;
      auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(s[q], uint32_t(0)));
      if (it == next.end() || it->first != s[q]) break;
      node = it->second;
    }
    if (hit < 0) { ++p; continue; }
    const BpeAddedToken& t = added_[hit];
    size_t ms = p, me = p + added_len_[hit];
    p = me;  // the next search starts after the match itself, whatever the strips below take
    if (!allowed[hit]) continue;  // (skip_disallowed) a special token's match in ordinary text: its text is text
    if (t.single_word) {
      size_t len;
      bool start_ok = ms == b || !is_word_char(char_before(ms));
      bool stop_ok = me == e || !is_word_char(unicode::decode_utf8(s, e, me, &len));
      if (!start_ok || !stop_ok) continue;
    }
    if (t.lstrip) {  // back over whitespace, but not into what an earlier match took (HF: max(start, seg))
      while (ms > seg) {
        size_t st = unicode::prev_char(s, seg, ms), len;
        if (!unicode::is_space(unicode::decode_utf8(s, e, st, &len))) break;
        ms = st;
      }
      ms = std::max(ms, seg);
    }
    if (t.rstrip) {
      if (me >= ws_lo && me <= ws_hi) {
        me = ws_hi;  // inside the run the last rstrip walked: the same end, without walking it again
      } else {
        ws_lo = me;
        while (me < e) {
          size_t len;
          if (!unicode::is_space(unicode::decode_utf8(s, e, me, &len))) break;
          me += len;
        }
        ws_hi = me;
      }
    }
    if (ms > me) continue;  // an lstrip match wholly inside the previous span: HF panics; nothing here
    if (seg < ms) out.push_back({seg, ms, -1});
    if (ms < me) out.push_back({ms, me, static_cast<int64_t>(t.id)});  // HF drops an empty split
    seg = me;
  }
  if (seg < e) out.push_back({seg, e, -1});
}

void BpeTokenizer::encode(std::string_view text, const std::vector<char>& allowed,
                          std::vector<uint32_t>& out) const {
  encode_added(text, allowed, false, out);
}

void BpeTokenizer::encode_added(std::string_view text, const std::vector<char>& allowed, bool skip_disallowed,
                                std::vector<uint32_t>& out) const {
  if (added_.empty()) { encode_plain(text, out); return; }
  std::vector<Segment> first, second;
  int64_t steps = step_budget(text.size());  // one regex budget for the whole text, not one per segment
  int64_t* shared = regex_ ? &steps : nullptr;
  split_added(text, 0, text.size(), false, allowed, skip_disallowed, first);
  std::string normalized;
  for (const Segment& sg : first) {
    if (sg.token >= 0) { out.push_back(static_cast<uint32_t>(sg.token)); continue; }
    // As HF: the text between the non-normalized tokens is normalized, the normalized tokens are
    // split out of it, and the rest is pre-tokenized as it is (already normalized).
    std::string_view seg = text.substr(sg.begin, sg.end - sg.begin);
    if (opt_.nfc && !unicode::nfc_quick_check(seg)) {
      normalized.clear();
      unicode::nfc_normalize(seg, normalized);
      seg = normalized;
    }
    second.clear();
    split_added(seg, 0, seg.size(), true, allowed, skip_disallowed, second);
    for (const Segment& piece : second) {
      if (piece.token >= 0) out.push_back(static_cast<uint32_t>(piece.token));
      else encode_normalized(seg.substr(piece.begin, piece.end - piece.begin), out, shared);
    }
  }
}

bool BpeTokenizer::decode_bytes(const uint32_t* ids, size_t n, std::string& out) const {
  for (size_t i = 0; i < n; ++i) {
    uint32_t id = ids[i];
    if (id >= id_bytes_.size() || !has_id_[id]) return false;
    out += id_bytes_[id];
  }
  return true;
}

}  // namespace nextlong
