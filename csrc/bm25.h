// Top-k BM25 search over a term-major (CSR) matrix of precomputed weights (nextlong/bm25.py builds it).
// Each query adds up the weights of its terms' postings into a dense per-worker accumulator, then
// selects the k best rows (score descending, row ascending on ties). Queries run independently on the
// native thread pool, each summed in the same order, so results never depend on the thread count.
#pragma once
#include <cstddef>
#include <cstdint>

namespace nextlong {

struct Bm25Matrix {
  const int64_t* indptr;  // num_terms + 1 offsets into postings / weights
  const int32_t* postings;  // row of each posting, ascending within a term
  const float* weights;     // BM25 weight of each posting
  int64_t num_terms, num_postings, num_rows;
};

struct Bm25Queries {
  const int64_t* offsets;  // num_queries + 1 offsets into terms / mult
  const int64_t* terms;    // distinct term ids of each query (ascending: the order they are summed in)
  const float* mult;       // how often each term occurs in its query
  const int64_t* ex_offsets;  // num_queries + 1 offsets into ex_rows
  const int64_t* ex_rows;     // rows each query skips
  int64_t num_queries;
};

// Writes k ids (-1 padded) and scores (NaN padded) per query into out_ids / out_scores (row-major).
// Throws std::out_of_range when an offset or posting points outside the arrays (a corrupt index).
void bm25_search(const Bm25Matrix& m, const Bm25Queries& q, int64_t k, int threads, int64_t* out_ids,
                 float* out_scores);

}  // namespace nextlong
