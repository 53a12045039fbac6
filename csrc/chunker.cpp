#include "chunker.h"

#include <climits>
#include <cstring>
#include <stdexcept>

#include "corpus_parallel.h"
#include "hash64.h"
#include "jsonl_parser.h"

namespace nextlong {

namespace {
// Work handed to one thread at a time: small enough to balance two cores, large enough to be cheap.
constexpr size_t kTaskBytes = 256 << 10;

template <class T>
void append_all(std::vector<T>& dst, const std::vector<T>& src) {
  dst.insert(dst.end(), src.begin(), src.end());
}
}  // namespace

void split_meta_chunks(std::string_view doc, const ChunkerOptions& options, std::vector<ChunkSpan>& out) {
  const char* base = doc.data();
  const size_t n = doc.size();
  size_t para_begin = 0;
  int64_t para_char_begin = 0;
  bool in_group = false;
  size_t group_byte_begin = 0, group_byte_end = 0;
  int64_t group_char_begin = 0, group_char_end = 0;
  size_t running = 0;
  for (;;) {
    const void* nl = para_begin < n ? std::memchr(base + para_begin, '\n', n - para_begin) : nullptr;
    const size_t para_end = nl ? size_t(static_cast<const char*>(nl) - base) : n;
    std::string_view para(base + para_begin, para_end - para_begin);
    const int64_t para_chars = int64_t(count_code_points(para));
    const size_t length = options.length_encoder ? options.length_encoder->count_ordinary(para) : size_t(para_chars);
    const size_t added = length + (in_group && options.count_newlines ? 1 : 0);
    if (in_group && running + added > options.max_len) {
      out.push_back({group_byte_begin, group_byte_end, group_char_begin, group_char_end});
      in_group = false;
    }
    if (!in_group) {
      in_group = true;
      group_byte_begin = para_begin;
      group_char_begin = para_char_begin;
      running = length;
    } else {
      running += added;
    }
    group_byte_end = para_end;
    group_char_end = para_char_begin + para_chars;
    if (!nl) break;
    para_begin = para_end + 1;
    para_char_begin = group_char_end + 1;
  }
  out.push_back({group_byte_begin, group_byte_end, group_char_begin, group_char_end});
}

ChunkColumns chunk_batch(const int32_t* offsets, const uint8_t* data, size_t n_docs, const ChunkerOptions& options,
                         const TextEncoder* token_encoder, bool with_ids, int num_threads) {
  if (options.max_len == 0) throw std::invalid_argument("max_len must be positive");
  if (with_ids && !token_encoder) throw std::invalid_argument("with_ids needs a tokenizer");
  auto ranges = split_by_bytes(offsets, n_docs, kTaskBytes);
  std::vector<ChunkColumns> parts(ranges.size());
  run_tasks(ranges.size(), num_threads, [&](size_t t) {
    ChunkColumns& part = parts[t];
    std::vector<ChunkSpan> spans;
    std::vector<uint32_t> scratch;
    for (size_t d = ranges[t].first; d < ranges[t].second; ++d) {
      const char* doc_base = reinterpret_cast<const char*>(data) + offsets[d];
      std::string_view doc(doc_base, size_t(offsets[d + 1] - offsets[d]));
      spans.clear();
      split_meta_chunks(doc, options, spans);
      for (size_t c = 0; c < spans.size(); ++c) {
        const ChunkSpan& s = spans[c];
        std::string_view text = doc.substr(s.byte_begin, s.byte_end - s.byte_begin);
        part.doc_row.push_back(int64_t(d));
        part.chunk_index.push_back(int32_t(c));
        part.char_start.push_back(s.char_begin);
        part.char_end.push_back(s.char_end);
        part.text_hash.push_back(hash64(text.data(), text.size()));
        part.text.append(text.data(), text.size());
        if (token_encoder) {
          if (with_ids) {
            size_t before = part.ids.size();
            token_encoder->encode_ordinary(text, part.ids);
            part.num_tokens.push_back(int32_t(part.ids.size() - before));
            part.ids_offsets.push_back(int32_t(part.ids.size()));
          } else {
            part.num_tokens.push_back(int32_t(token_encoder->count_ordinary(text)));
          }
        }
      }
    }
  });
  // Concatenate the parts in order, shifting their string and list offsets.
  ChunkColumns out;
  size_t total = 0, text_bytes = 0, n_ids = 0;
  for (auto& p : parts) {
    total += p.doc_row.size();
    text_bytes += p.text.data.size();
    n_ids += p.ids.size();
  }
  if (text_bytes > size_t(INT32_MAX) || n_ids > size_t(INT32_MAX))
    throw std::length_error("batch too large for one Arrow array (over 2^31 bytes or ids): use smaller batches");
  out.doc_row.reserve(total);
  out.text.data.reserve(text_bytes);
  out.text.offsets.reserve(total + 1);
  out.ids.reserve(n_ids);
  for (auto& p : parts) {
    append_all(out.doc_row, p.doc_row);
    append_all(out.chunk_index, p.chunk_index);
    append_all(out.char_start, p.char_start);
    append_all(out.char_end, p.char_end);
    append_all(out.num_tokens, p.num_tokens);
    append_all(out.text_hash, p.text_hash);
    const int32_t text_shift = int32_t(out.text.data.size());
    for (size_t i = 1; i < p.text.offsets.size(); ++i) out.text.offsets.push_back(p.text.offsets[i] + text_shift);
    append_all(out.text.data, p.text.data);
    const int32_t ids_shift = int32_t(out.ids.size());
    for (size_t i = 1; i < p.ids_offsets.size(); ++i) out.ids_offsets.push_back(p.ids_offsets[i] + ids_shift);
    append_all(out.ids, p.ids);
    p = ChunkColumns();  // free as we go
  }
  return out;
}

void tokenize_batch(const int32_t* offsets, const uint8_t* data, size_t n_docs, const TextEncoder& encoder,
                    int num_threads, std::vector<int32_t>& ids_offsets, std::vector<uint32_t>& ids) {
  auto ranges = split_by_bytes(offsets, n_docs, kTaskBytes);
  std::vector<std::vector<uint32_t>> part_ids(ranges.size());
  std::vector<std::vector<int64_t>> part_lens(ranges.size());
  run_tasks(ranges.size(), num_threads, [&](size_t t) {
    for (size_t d = ranges[t].first; d < ranges[t].second; ++d) {
      std::string_view doc(reinterpret_cast<const char*>(data) + offsets[d], size_t(offsets[d + 1] - offsets[d]));
      size_t before = part_ids[t].size();
      encoder.encode_ordinary(doc, part_ids[t]);
      part_lens[t].push_back(int64_t(part_ids[t].size() - before));
    }
  });
  size_t n_ids = 0;
  for (auto& p : part_ids) n_ids += p.size();
  if (n_ids > size_t(INT32_MAX)) throw std::length_error("batch too large for one Arrow list array: use smaller batches");
  ids_offsets.assign(1, 0);
  ids_offsets.reserve(n_docs + 1);
  ids.clear();
  ids.reserve(n_ids);
  for (size_t t = 0; t < ranges.size(); ++t) {
    for (int64_t len : part_lens[t]) ids_offsets.push_back(ids_offsets.back() + int32_t(len));
    append_all(ids, part_ids[t]);
    std::vector<uint32_t>().swap(part_ids[t]);
  }
}

}  // namespace nextlong
