// Python face of the ASCII WordPiece (nextlong._native.WordPiece) and of the static embedder's
// pooling: texts in, L2-normalised mean of table rows out, with no id list crossing into Python.
// nextlong/static_embedding.py builds it from a tokenizer.json and sends the texts it leaves (non-ASCII,
// or holding an added token) to HF `tokenizers`, then pools those ids with mean_pool_ids.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>

#include "bindings.h"
#include "thread_pool.h"
#include "wordpiece.h"

namespace py = pybind11;

namespace nextlong {
namespace {

using Table = py::array_t<float, py::array::c_style | py::array::forcecast>;
using Ids = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
constexpr size_t kTextsPerTask = 16;

// Sets `out` to the text's bytes and returns true when it is a str of ASCII characters only (no copy:
// CPython stores those as bytes); false for any other str, which this path leaves to HF.
bool ascii_view(const py::handle& obj, std::string_view& out) {
  if (!PyUnicode_Check(obj.ptr()))
    throw py::type_error("expected str, got " + std::string(py::str(py::type::handle_of(obj))));
  if (!PyUnicode_IS_ASCII(obj.ptr())) return false;
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(obj.ptr(), &size);
  if (!data) throw py::error_already_set();
  out = std::string_view(data, static_cast<size_t>(size));
  return true;
}

size_t resolve_threads(py::object num_threads) {
  if (num_threads.is_none()) return std::max(1u, std::thread::hardware_concurrency());
  long v = num_threads.cast<long>();
  if (v < 1) throw py::value_error("num_threads must be >= 1");
  return static_cast<size_t>(v);
}

// Runs fn(first, last) over blocks of [0, n) on the persistent pool.
template <class Fn>
void parallel_blocks(size_t n, size_t threads, Fn fn) {
  if (n == 0) return;
  size_t tasks = (n + kTextsPerTask - 1) / kTextsPerTask;
  pool_run(tasks, int(std::min(threads, tasks)), [&](size_t t) {
    fn(t * kTextsPerTask, std::min(n, (t + 1) * kTextsPerTask));
  });
}

// Sum of table rows, written L2-normalised as float32; no rows (or a zero sum) gives the zero vector.
// Rows are added in float32 (4 lanes per SSE instruction) in blocks of kBlock, each block then added
// to a float64 total: the error stays that of a 32-row float sum (~1e-7 relative) however long the
// text, at a third of the cost of converting every row to float64.
struct RowMean {
  static constexpr int kBlock = 32;
  const float* table;
  size_t rows, dim;
  int64_t skip;
  std::vector<double> total;
  std::vector<float> block;
  int in_block = 0;
  bool out_of_range = false;

  RowMean(const float* t, size_t r, size_t d, int64_t s) : table(t), rows(r), dim(d), skip(s), total(d), block(d) {}
  void start() {
    std::fill(total.begin(), total.end(), 0.0);
    std::fill(block.begin(), block.end(), 0.0f);
    in_block = 0;
  }
  void add(int64_t id) {
    if (id == skip) return;
    if (id < 0 || static_cast<size_t>(id) >= rows) {
      out_of_range = true;
      return;
    }
    const float* row = table + static_cast<size_t>(id) * dim;
    float* b = block.data();
    for (size_t c = 0; c < dim; ++c) b[c] += row[c];
    if (++in_block == kBlock) flush();
  }
  // add() over a text's ids, prefetching the rows a few ids ahead: the table (vocabulary x dim floats,
  // ~30 MB for MiniLM at 256 dims) does not fit in cache, and a chunk reads ~400 scattered rows.
  void add_all(const std::vector<uint32_t>& ids) {
    constexpr size_t kAhead = 4;
    size_t n = ids.size();
    for (size_t p = 0; p < n; ++p) {
      if (p + kAhead < n && ids[p + kAhead] < rows) {
        const char* next = reinterpret_cast<const char*>(table + size_t{ids[p + kAhead]} * dim);
        for (size_t b = 0; b < dim * sizeof(float); b += 64) __builtin_prefetch(next + b);
      }
      add(ids[p]);
    }
  }
  void flush() {
    for (size_t c = 0; c < dim; ++c) {
      total[c] += block[c];
      block[c] = 0.0f;
    }
    in_block = 0;
  }
  void finish(float* out) {
    flush();
    double norm = 0.0;
    for (size_t c = 0; c < dim; ++c) norm += total[c] * total[c];
    double inv = norm > 0 ? 1.0 / std::sqrt(norm) : 0.0;
    for (size_t c = 0; c < dim; ++c) out[c] = static_cast<float>(total[c] * inv);
  }
};

void check_table(const Table& table) {
  if (table.ndim() != 2) throw py::value_error("table must be 2-D (vocabulary x dim)");
}

// An (n x dim) float32 array whose row i is written by pool_row(mean, i, row) on `num_threads` threads
// without the GIL (rows it leaves alone stay zero); a token id outside the table is an error.
template <class PoolRow>
py::array_t<float> pool_rows(size_t n, const Table& table, int64_t skip_id, py::object num_threads, PoolRow pool_row) {
  size_t rows = table.shape(0), dim = table.shape(1);
  py::array_t<float> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(dim)});
  float* dst = out.mutable_data();
  std::fill(dst, dst + n * dim, 0.0f);
  const float* tab = table.data();
  std::atomic<bool> bad{false};
  size_t threads = resolve_threads(num_threads);  // needs the GIL
  {
    py::gil_scoped_release release;
    parallel_blocks(n, threads, [&](size_t a, size_t b) {
      RowMean mean(tab, rows, dim, skip_id);
      for (size_t i = a; i < b; ++i) pool_row(mean, i, dst + i * dim);
      if (mean.out_of_range) bad = true;
    });
  }
  if (bad) throw py::value_error("a token id is outside the embedding table");
  return out;
}

}  // namespace

void bind_wordpiece(py::module_& m) {
  py::class_<WordPiece>(m, "WordPiece",
                        "BERT WordPiece for ASCII texts, HF-exact; build it with nextlong.static_embedding.")
      .def(py::init([](const std::vector<std::pair<std::string, uint32_t>>& vocab, uint32_t unk_id,
                       size_t max_input_chars_per_word, const std::string& continuing_prefix, bool lowercase,
                       const std::vector<std::string>& added_tokens) {
             WordPieceOptions opt;
             opt.unk_id = unk_id;
             opt.max_input_chars_per_word = max_input_chars_per_word;
             opt.continuing_prefix = continuing_prefix;
             opt.lowercase = lowercase;
             opt.added_tokens = added_tokens;
             try {
               return std::make_unique<WordPiece>(vocab, std::move(opt));
             } catch (const std::invalid_argument& e) {
               throw py::value_error(e.what());
             }
           }),
           py::arg("vocab"), py::arg("unk_id"), py::arg("max_input_chars_per_word"), py::arg("continuing_prefix"),
           py::arg("lowercase"), py::arg("added_tokens"))
      .def_property_readonly("vocab_size", &WordPiece::vocab_size)
      .def(
          "encode_batch",
          [](const WordPiece& wp, py::sequence texts, py::object num_threads) {
            // Ids of each text (uint32 array), or None for a text left to HF (non-ASCII, added token).
            size_t n = py::len(texts);
            std::vector<py::object> keep(n);
            std::vector<std::string_view> views(n);
            std::vector<char> mine(n, 0);
            for (size_t i = 0; i < n; ++i) {
              keep[i] = texts[i];
              mine[i] = ascii_view(keep[i], views[i]);
            }
            std::vector<std::vector<uint32_t>> ids(n);
            size_t threads = resolve_threads(num_threads);  // needs the GIL
            {
              py::gil_scoped_release release;
              parallel_blocks(n, threads, [&](size_t a, size_t b) {
                for (size_t i = a; i < b; ++i)
                  if (mine[i]) mine[i] = wp.encode_ascii(views[i], [&](uint32_t id) { ids[i].push_back(id); });
              });
            }
            py::list out(n);
            for (size_t i = 0; i < n; ++i) {
              if (!mine[i]) {
                out[i] = py::none();
                continue;
              }
              py::array_t<uint32_t> arr(static_cast<py::ssize_t>(ids[i].size()));
              if (!ids[i].empty()) std::memcpy(arr.mutable_data(), ids[i].data(), ids[i].size() * sizeof(uint32_t));
              out[i] = arr;
            }
            return out;
          },
          py::arg("texts"), py::arg("num_threads") = py::none())
      .def(
          "embed_mean",
          [](const WordPiece& wp, py::sequence texts, Table table, int64_t skip_id, py::object num_threads) {
            // (n x dim float32 L2-normalised mean of the table rows of each text's ids except skip_id,
            //  indices of the texts left to HF: their rows are zero here).
            check_table(table);
            size_t n = py::len(texts);
            std::vector<py::object> keep(n);
            std::vector<std::string_view> views(n);
            std::vector<char> mine(n, 0);
            for (size_t i = 0; i < n; ++i) {
              keep[i] = texts[i];
              mine[i] = ascii_view(keep[i], views[i]);
            }
            py::array_t<float> out = pool_rows(n, table, skip_id, num_threads, [&](RowMean& mean, size_t i, float* row) {
              if (!mine[i]) return;
              thread_local std::vector<uint32_t> ids;
              ids.clear();
              mine[i] = wp.encode_ascii(views[i], [&](uint32_t id) { ids.push_back(id); });
              if (!mine[i]) return;
              mean.start();
              mean.add_all(ids);
              mean.finish(row);
            });
            py::list left;
            for (size_t i = 0; i < n; ++i)
              if (!mine[i]) left.append(i);
            return py::make_tuple(out, left);
          },
          py::arg("texts"), py::arg("table"), py::arg("skip_id") = -1, py::arg("num_threads") = py::none());

  m.def(
      "mean_pool_ids",
      [](Table table, Ids flat, Ids offsets, int64_t skip_id, py::object num_threads) {
        // Row i: the L2-normalised mean of table[flat[offsets[i]:offsets[i+1]]], skipping skip_id.
        check_table(table);
        if (offsets.ndim() != 1 || offsets.shape(0) < 1) throw py::value_error("offsets must be 1-D, length n + 1");
        size_t n = offsets.shape(0) - 1;
        const int64_t* off = offsets.data();
        const int64_t* ids = flat.data();
        for (size_t i = 0; i < n; ++i)
          if (off[i] < 0 || off[i] > off[i + 1] || off[i + 1] > flat.size())
            throw py::value_error("offsets must be non-decreasing within the id array");
        return pool_rows(n, table, skip_id, num_threads, [&](RowMean& mean, size_t i, float* row) {
          mean.start();
          for (int64_t p = off[i]; p < off[i + 1]; ++p) mean.add(ids[p]);
          mean.finish(row);
        });
      },
      py::arg("table"), py::arg("flat"), py::arg("offsets"), py::arg("skip_id") = -1,
      py::arg("num_threads") = py::none(),
      "L2-normalised mean of table rows per id range (the static embedder's pooling).");
}

}  // namespace nextlong
