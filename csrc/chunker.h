// The NExtLong meta-chunker (spec §1.1): split a document on "\n" into paragraphs and greedily group
// consecutive paragraphs while the running length stays within `max_len`; a paragraph that would
// overflow starts a new group, and an over-long paragraph is a group of its own. Groups are the
// document's byte ranges between chosen "\n"s, so joining a document's chunks with "\n" gives it
// back exactly. An empty document yields one empty chunk (so the round trip holds for it too).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "corpus_reader.h"
#include "text_encoder.h"

namespace nextlong {

struct ChunkerOptions {
  size_t max_len = 2048;
  // Length unit: nullptr = Unicode code points; else tokens of this encoder, counted per paragraph.
  const TextEncoder* length_encoder = nullptr;
  // Count the "\n" joining two paragraphs of a group as one unit. The reference code does not.
  bool count_newlines = false;
};

struct ChunkSpan {
  size_t byte_begin, byte_end;    // in the document's UTF-8
  int64_t char_begin, char_end;   // in code points, end exclusive
};

void split_meta_chunks(std::string_view doc, const ChunkerOptions& options, std::vector<ChunkSpan>& out);

// One row per chunk of a batch of documents, column by column (CHUNK_SCHEMA minus the ids that
// the caller assigns). num_tokens/input_ids are filled when a `token_encoder` is given.
struct ChunkColumns {
  std::vector<int64_t> doc_row;  // row of the chunk's document in the input batch
  std::vector<int32_t> chunk_index;
  std::vector<int64_t> char_start, char_end;
  std::vector<int32_t> num_tokens;
  std::vector<uint64_t> text_hash;
  StringColumn text;
  std::vector<int32_t> ids_offsets{0};
  std::vector<uint32_t> ids;
};

// Chunks documents [offsets[i], offsets[i+1]) of `data` on `num_threads` threads (0 = all cores).
// With a token_encoder each chunk is tokenized on its own (num_tokens; its ids too if with_ids).
ChunkColumns chunk_batch(const int32_t* offsets, const uint8_t* data, size_t n_docs, const ChunkerOptions& options,
                         const TextEncoder* token_encoder, bool with_ids, int num_threads);

// Token ids of each whole document, as an Arrow list<uint32> layout (offsets, values).
void tokenize_batch(const int32_t* offsets, const uint8_t* data, size_t n_docs, const TextEncoder& encoder,
                    int num_threads, std::vector<int32_t>& ids_offsets, std::vector<uint32_t>& ids);

}  // namespace nextlong
