#include "bm25.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "thread_pool.h"

namespace nextlong {
namespace {

struct Candidate {
  float score;
  int32_t row;
};

inline bool better(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.row < b.row);
}

// Scratch of one worker: a dense float64 accumulator, all zero between queries. Weights are positive
// (non-positive or NaN ones, possible only in a damaged file, are skipped), so a row has matched
// exactly when its sum is above zero.
// A query whose postings are few next to the rows keeps a list of the rows it touched and visits only
// those; one with many adds without that bookkeeping and scans every row.
// calloc: the OS hands out zero pages lazily, so a worker costs only the pages its queries touch.
struct Worker {
  std::unique_ptr<double, decltype(&std::free)> acc_mem;
  double* acc;
  std::vector<int32_t> touched;
  std::vector<Candidate> cand;  // rows that may still be in the top k
  float bar = 0.0f;
  double bar_sum = 0.0;  // a cheap pre-test: only sums above it are offered
  bool has_bar = false;
  explicit Worker(size_t rows)
      : acc_mem(static_cast<double*>(std::calloc(rows + 1, sizeof(double))), &std::free), acc(acc_mem.get()) {
    if (!acc) throw std::bad_alloc();
  }

  template <bool kTrack>
  bool accumulate(const Bm25Matrix& m, const Bm25Queries& q, int64_t qi) {
    const int64_t rows = m.num_rows;
    for (int64_t j = q.offsets[qi]; j < q.offsets[qi + 1]; ++j) {
      int64_t t = q.terms[j];
      if (t < 0 || t >= m.num_terms) continue;  // unknown term: matches nothing
      int64_t lo = m.indptr[t], hi = m.indptr[t + 1];
      if (lo < 0 || lo > hi || hi > m.num_postings) return false;
      const double mult = q.mult[j];
      if (!(mult > 0.0)) continue;
      for (int64_t p = lo; p < hi; ++p) {
        int32_t r = m.postings[p];
        float w = m.weights[p];
        if (static_cast<uint32_t>(r) >= static_cast<uint64_t>(rows)) return false;
        if (!(w > 0.0f)) continue;
        if (kTrack && acc[r] == 0.0) touched.push_back(r);
        acc[r] += double(w) * mult;
      }
    }
    return true;
  }

  // Top-k by buffering: rows are visited in ascending order, so a row enters the top k only with a
  // score strictly above the k-th best kept so far (the bar; an equal score loses on the row). Rows
  // above the bar are appended; when the buffer is full, nth_element keeps the best k and raises the
  // bar. O(rows + k log k) per query, where a heap would pay log k for every row that enters it.
  void offer(double sum, int32_t r, size_t k) {
    // rank on the float32 score returned, so ties in the output are ties in the ranking
    Candidate c{static_cast<float>(sum), r};
    if (has_bar && !(c.score > bar)) return;
    cand.push_back(c);
    if (cand.size() >= 2 * k + 64) {
      std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), better);
      cand.resize(k);
      bar = cand[k - 1].score;
      bar_sum = std::max(0.0, double(bar));  // sums at or below it cannot round to above it
      has_bar = true;
    }
  }

  void run(const Bm25Matrix& m, const Bm25Queries& q, int64_t qi, int64_t k, int64_t* ids, float* scores) {
    const int64_t rows = m.num_rows;
    int64_t postings = 0;
    for (int64_t j = q.offsets[qi]; j < q.offsets[qi + 1]; ++j) {
      int64_t t = q.terms[j];
      if (t >= 0 && t < m.num_terms) postings += std::max<int64_t>(0, m.indptr[t + 1] - m.indptr[t]);
    }
    const bool track = postings * 8 < rows;
    touched.clear();
    bool ok = track ? accumulate<true>(m, q, qi) : accumulate<false>(m, q, qi);
    const int64_t* ex_begin = q.ex_rows + q.ex_offsets[qi];
    const int64_t* ex_end = q.ex_rows + q.ex_offsets[qi + 1];
    cand.clear();
    has_bar = false;
    bar_sum = 0.0;
    if (track) {
      for (const int64_t* e = ex_begin; e != ex_end; ++e)
        if (*e >= 0 && *e < rows) acc[*e] = -acc[*e];  // excluded: below zero, never offered
      std::sort(touched.begin(), touched.end());  // rows ascending, as the bar needs
      if (ok)
        for (int32_t r : touched)
          if (acc[r] > bar_sum) offer(acc[r], r, size_t(k));
      for (int32_t r : touched) acc[r] = 0.0;
      for (const int64_t* e = ex_begin; e != ex_end; ++e)
        if (*e >= 0 && *e < rows) acc[*e] = 0.0;
    } else {
      for (const int64_t* e = ex_begin; e != ex_end; ++e)
        if (*e >= 0 && *e < rows) acc[*e] = 0.0;
      if (ok)
        for (int64_t r = 0; r < rows; ++r)
          if (acc[r] > bar_sum) offer(acc[r], int32_t(r), size_t(k));
      std::memset(acc, 0, size_t(rows) * sizeof(double));
    }
    if (!ok) throw std::out_of_range("BM25 index offsets or postings point outside its arrays (corrupt index)");
    size_t take = std::min(cand.size(), size_t(k));
    if (cand.size() > take) std::nth_element(cand.begin(), cand.begin() + take, cand.end(), better);
    std::sort(cand.begin(), cand.begin() + take, better);
    for (size_t i = 0; i < take; ++i) {
      ids[i] = cand[i].row;
      scores[i] = cand[i].score;
    }
    for (size_t i = take; i < size_t(k); ++i) {
      ids[i] = -1;
      scores[i] = std::numeric_limits<float>::quiet_NaN();
    }
  }
};

}  // namespace

void bm25_search(const Bm25Matrix& m, const Bm25Queries& q, int64_t k, int threads, int64_t* out_ids,
                 float* out_scores) {
  if (q.num_queries <= 0 || k <= 0) return;
  std::atomic<int64_t> next{0};
  int workers = int(std::max<int64_t>(1, std::min<int64_t>(threads, q.num_queries)));
  pool_run(size_t(workers), workers, [&](size_t) {
    Worker w(size_t(m.num_rows));
    for (int64_t qi; (qi = next.fetch_add(1)) < q.num_queries;)
      w.run(m, q, qi, k, out_ids + qi * k, out_scores + qi * k);
  });
}

}  // namespace nextlong
