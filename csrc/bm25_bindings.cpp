// Python face of the BM25 top-k search (nextlong._native.bm25_search), used by nextlong/bm25.py.
#include <pybind11/numpy.h>

#include <stdexcept>
#include <string>

#include "bindings.h"
#include "bm25.h"

namespace py = pybind11;

namespace nextlong {
namespace {

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <class T>
void check_1d(const Arr<T>& a, const char* name) {
  if (a.ndim() != 1) throw py::value_error(std::string(name) + " must be 1-D");
}

void check_offsets(const Arr<int64_t>& off, int64_t n, int64_t items, const char* name) {
  if (off.shape(0) != n + 1) throw py::value_error(std::string(name) + " must have one entry per query plus one");
  const int64_t* o = off.data();
  if (o[0] != 0 || o[n] != items) throw py::value_error(std::string(name) + " must run from 0 to the item count");
  for (int64_t i = 0; i < n; ++i)
    if (o[i + 1] < o[i]) throw py::value_error(std::string(name) + " must not decrease");
}

}  // namespace

void bind_bm25(py::module_& m) {
  m.def(
      "bm25_search",
      [](Arr<int64_t> indptr, Arr<int32_t> postings, Arr<float> weights, int64_t num_rows, Arr<int64_t> offsets,
         Arr<int64_t> terms, Arr<float> mult, int64_t k, Arr<int64_t> ex_offsets, Arr<int64_t> ex_rows,
         int threads) {
        check_1d(indptr, "indptr");
        check_1d(postings, "postings");
        check_1d(weights, "weights");
        check_1d(offsets, "offsets");
        check_1d(terms, "terms");
        check_1d(mult, "mult");
        check_1d(ex_offsets, "ex_offsets");
        check_1d(ex_rows, "ex_rows");
        if (indptr.shape(0) < 1) throw py::value_error("indptr must have at least one entry");
        if (postings.shape(0) != weights.shape(0)) throw py::value_error("postings and weights differ in length");
        if (terms.shape(0) != mult.shape(0)) throw py::value_error("terms and mult differ in length");
        if (k < 0) throw py::value_error("k must be >= 0");
        if (num_rows < 0 || num_rows >= (int64_t(1) << 31)) throw py::value_error("num_rows out of range");
        int64_t nq = offsets.shape(0) - 1;
        if (nq < 0) throw py::value_error("offsets must have one entry per query plus one");
        check_offsets(offsets, nq, terms.shape(0), "offsets");
        check_offsets(ex_offsets, nq, ex_rows.shape(0), "ex_offsets");
        Arr<int64_t> ids({py::ssize_t(nq), py::ssize_t(k)});
        Arr<float> scores({py::ssize_t(nq), py::ssize_t(k)});
        Bm25Matrix mat{indptr.data(), postings.data(), weights.data(), int64_t(indptr.shape(0)) - 1,
                       int64_t(postings.shape(0)), num_rows};
        Bm25Queries qs{offsets.data(), terms.data(), mult.data(), ex_offsets.data(), ex_rows.data(), nq};
        int64_t* out_ids = ids.mutable_data();
        float* out_scores = scores.mutable_data();
        {
          py::gil_scoped_release release;
          bm25_search(mat, qs, k, threads < 1 ? 1 : threads, out_ids, out_scores);
        }
        return py::make_tuple(ids, scores);
      },
      py::arg("indptr"), py::arg("postings"), py::arg("weights"), py::arg("num_rows"), py::arg("offsets"),
      py::arg("terms"), py::arg("mult"), py::arg("k"), py::arg("ex_offsets"), py::arg("ex_rows"),
      py::arg("threads"),
      "Top-k BM25 rows per query: (ids int64 (Q, k) padded -1, scores float32 (Q, k) padded NaN). "
      "Terms of each query ascending and distinct; rows ranked by float32 score descending, then row.");
}

}  // namespace nextlong
