// Python face of the corpus engine: the streaming JSONL reader, the meta-chunker and the batch
// tokenizer. Columns cross the boundary as numpy arrays in Arrow layout (offsets + bytes), which
// nextlong/corpus.py and nextlong/chunking.py wrap into pyarrow arrays without copying.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "bindings.h"
#include "chunker.h"
#include "corpus_reader.h"
#include "hash64.h"
#include "jsonl_parser.h"
#include "text_encoder.h"

namespace py = pybind11;

namespace nextlong {
namespace {

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  static T empty_slot{};
  T* ptr = owned->empty() ? &empty_slot : owned->data();
  return py::array_t<T>({py::ssize_t(owned->size())}, {py::ssize_t(sizeof(T))}, ptr, owner);
}

using Offsets = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using Bytes = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// Checks the offsets describe strings inside `data`, so C++ never reads out of bounds.
size_t check_string_layout(const Offsets& offsets, const Bytes& data) {
  if (offsets.ndim() != 1 || offsets.shape(0) < 1) throw std::invalid_argument("offsets must be 1-D with n + 1 entries");
  const size_t n = size_t(offsets.shape(0) - 1);
  const int32_t* o = offsets.data();
  for (size_t i = 0; i < n; ++i)
    if (o[i] < 0 || o[i + 1] < o[i]) throw std::invalid_argument("offsets must be non-negative and non-decreasing");
  if (size_t(o[n]) > size_t(data.size())) throw std::invalid_argument("offsets point past the end of data");
  return n;
}

py::object batch_to_python(TextBatch&& b) {
  return py::make_tuple(to_numpy(std::move(b.text.offsets)), to_numpy(std::move(b.text.data)),
                        to_numpy(std::move(b.doc_id.offsets)), to_numpy(std::move(b.doc_id.data)),
                        to_numpy(std::move(b.line)));
}

}  // namespace

void bind_corpus(py::module_& m) {
  static py::exception<CorpusFormatError> format_error(m, "CorpusFormatError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const CorpusFormatError& e) {
      py::tuple args = py::make_tuple(e.what(), e.line);
      PyErr_SetObject(format_error.ptr(), args.ptr());
    }
  });

  py::class_<JsonlReader>(m, "JsonlReader",
                          "Streaming JSON-lines reader (plain/gzip via zlib, or fed blocks). "
                          "Errors raise CorpusFormatError(message, line).")
      .def(py::init<std::string, std::string, std::string, std::string, bool, bool>(), py::arg("path"),
           py::arg("name"), py::arg("text_field"), py::arg("id_field"), py::arg("skip_errors"), py::arg("fed"))
      .def(
          "next_batch",
          [](JsonlReader& r, size_t max_records, size_t max_bytes) -> py::object {
            TextBatch batch;
            bool got;
            {
              py::gil_scoped_release release;
              got = r.next_batch(max_records, max_bytes, batch);
            }
            if (!got) return py::none();
            return batch_to_python(std::move(batch));
          },
          py::arg("max_records"), py::arg("max_bytes"),
          "(text_offsets, text_data, id_offsets, id_data, lines) or None when nothing is pending.")
      .def("feed",
           [](JsonlReader& r, py::buffer data) {
             py::buffer_info info = data.request();
             const char* p = static_cast<const char*>(info.ptr);
             size_t n = size_t(info.size * info.itemsize);
             py::gil_scoped_release release;
             r.feed(p, n);
           })
      .def("finish_input", &JsonlReader::finish_input)
      .def("set_part_of_file", &JsonlReader::set_part_of_file, py::arg("starts_file"),
           "The input is one byte range of a file cut into several: no whole-file checks; a BOM is stripped "
           "only when the range starts the file.")
      .def_property_readonly("lines", &JsonlReader::lines)
      .def_property_readonly("nonblank_lines", &JsonlReader::nonblank_lines)
      .def_property_readonly("records", &JsonlReader::records)
      .def_property_readonly("skipped", &JsonlReader::skipped)
      .def_property_readonly("bytes_consumed", &JsonlReader::bytes_consumed)
      .def_property_readonly("skipped_examples", &JsonlReader::skipped_examples);

  m.def(
      "chunk_batch",
      [](const Offsets& offsets, const Bytes& data, size_t max_len, const TextEncoder* length_encoder,
         bool count_newlines, const TextEncoder* token_encoder, bool with_ids, int num_threads) {
        const size_t n = check_string_layout(offsets, data);
        ChunkerOptions options;
        options.max_len = max_len;
        options.length_encoder = length_encoder;
        options.count_newlines = count_newlines;
        ChunkColumns cols;
        {
          py::gil_scoped_release release;
          cols = chunk_batch(offsets.data(), data.data(), n, options, token_encoder, with_ids, num_threads);
        }
        py::dict out;
        out["doc_row"] = to_numpy(std::move(cols.doc_row));
        out["chunk_index"] = to_numpy(std::move(cols.chunk_index));
        out["char_start"] = to_numpy(std::move(cols.char_start));
        out["char_end"] = to_numpy(std::move(cols.char_end));
        out["num_tokens"] = token_encoder ? py::object(to_numpy(std::move(cols.num_tokens))) : py::object(py::none());
        out["text_hash"] = to_numpy(std::move(cols.text_hash));
        out["text_offsets"] = to_numpy(std::move(cols.text.offsets));
        out["text_data"] = to_numpy(std::move(cols.text.data));
        if (with_ids) {
          out["ids_offsets"] = to_numpy(std::move(cols.ids_offsets));
          out["ids"] = to_numpy(std::move(cols.ids));
        }
        return out;
      },
      py::arg("offsets"), py::arg("data"), py::arg("max_len"), py::arg("length_encoder"), py::arg("count_newlines"),
      py::arg("token_encoder"), py::arg("with_ids"), py::arg("num_threads"),
      "Meta-chunks a batch of UTF-8 documents given in Arrow string layout; returns a dict of columns.");

  m.def(
      "tokenize_batch",
      [](const Offsets& offsets, const Bytes& data, const TextEncoder& encoder, int num_threads) {
        const size_t n = check_string_layout(offsets, data);
        std::vector<int32_t> ids_offsets;
        std::vector<uint32_t> ids;
        {
          py::gil_scoped_release release;
          tokenize_batch(offsets.data(), data.data(), n, encoder, num_threads, ids_offsets, ids);
        }
        return py::make_tuple(to_numpy(std::move(ids_offsets)), to_numpy(std::move(ids)));
      },
      py::arg("offsets"), py::arg("data"), py::arg("encoder"), py::arg("num_threads"),
      "Token ids of each document, as Arrow list layout (offsets, values).");

  m.def(
      "hash64", [](py::bytes b) {
        std::string_view s = b;
        return hash64(s.data(), s.size());
      },
      py::arg("data"), "XXH64 (seed 0) of the bytes: the chunk table's text_hash.");

  m.def(
      "find_invalid_utf8",
      [](py::bytes b) -> py::object {
        std::string_view s = b;
        size_t at = find_invalid_utf8(s);
        if (at == std::string_view::npos) return py::none();
        return py::int_(at);
      },
      py::arg("data"), "Byte offset of the first invalid UTF-8 sequence, or None.");
}

}  // namespace nextlong
