// Python face of the byte-level BPE tokenizer (nextlong._native.BpeTokenizer). The Python loader
// (nextlong/tokenizer.py) parses tokenizer.json / .tiktoken files and passes plain lists here.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>

#include "bindings.h"
#include "bpe_tokenizer.h"
#include "thread_pool.h"
#include "unicode_nfc.h"

namespace py = pybind11;

namespace nextlong {
namespace {

std::string_view utf8_view(const py::handle& obj) {
  if (!PyUnicode_Check(obj.ptr())) throw py::type_error("expected str, got " + std::string(py::str(py::type::handle_of(obj))));
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(obj.ptr(), &size);
  if (!data) throw py::error_already_set();
  return std::string_view(data, static_cast<size_t>(size));
}

py::array_t<uint32_t> to_array(const std::vector<uint32_t>& ids) {
  py::array_t<uint32_t> arr(static_cast<py::ssize_t>(ids.size()));
  if (!ids.empty()) std::memcpy(arr.mutable_data(), ids.data(), ids.size() * sizeof(uint32_t));
  return arr;
}

// Runs fn(i) for i in [0, n) on up to `threads` workers of the persistent pool (thread_pool.h),
// whose thread-local piece caches stay warm across calls.
template <class Fn>
void parallel_for(size_t n, size_t threads, Fn fn) {
  if (n == 0) return;
  pool_run(n, int(std::min<size_t>(threads, n)), [&](size_t i) { fn(i); });
}

size_t resolve_threads(py::object num_threads) {
  if (num_threads.is_none()) return std::max(1u, std::thread::hardware_concurrency());
  long v = num_threads.cast<long>();
  if (v < 1) throw py::value_error("num_threads must be >= 1");
  return static_cast<size_t>(v);
}

std::vector<char> allowed_mask(const BpeTokenizer& tok, py::object allowed) {
  std::vector<char> mask(tok.added().size(), 1);
  if (allowed.is_none()) return mask;
  auto v = allowed.cast<std::vector<bool>>();
  if (v.size() != mask.size()) throw py::value_error("allowed mask has the wrong length");
  for (size_t i = 0; i < v.size(); ++i) mask[i] = v[i];
  return mask;
}

constexpr size_t kReleaseGilBytes = 4096;

}  // namespace

void bind_tokenizer(py::module_& m) {
  // A RegexError while encoding (a pattern that backtracks too much or recurses too deep on some
  // input) is the tokenizer file's fault: nextlong.errors.TokenizerError, whichever way it came
  // (encode, encode_batch's worker threads, the corpus engine), so the CLI prints it as one line.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const regex::RegexError& e) {
      py::object error = py::module_::import("nextlong.errors").attr("TokenizerError");
      PyErr_SetString(error.ptr(), e.what());
    } catch (const EncodeError& e) {
      py::object error = py::module_::import("nextlong.errors").attr("TokenizerError");
      PyErr_SetString(error.ptr(), e.what());
    }
  });
  m.def(
      "nfc",
      [](py::handle text) {
        std::string_view sv = utf8_view(text);
        std::string out;
        if (unicode::nfc_quick_check(sv)) out.assign(sv);
        else unicode::nfc_normalize(sv, out);
        return py::str(out);
      },
      "Unicode NFC of a str, as the tokenizer applies it (exposed for tests).");
  py::class_<BpeTokenizer, TextEncoder>(m, "BpeTokenizer",
                                        "Byte-level BPE tokenizer core; build it with nextlong.Tokenizer.")
      .def(py::init([](const std::vector<std::pair<uint32_t, py::bytes>>& model, py::object merges,
                       const std::string& pattern, const std::string& dialect, bool keep_gaps, int prefix_space,
                       bool ignore_merges, const std::vector<std::tuple<std::string, uint32_t, bool, bool, bool, bool>>& added,
                       const std::vector<std::pair<uint32_t, py::bytes>>& decode_only, bool generic_regex_only,
                       bool nfc, int64_t unk_id, bool fuse_unk, const std::vector<bool>& ordinary_added) {
             std::vector<std::pair<uint32_t, std::string>> mv, dv;
             mv.reserve(model.size());
             for (const auto& [id, b] : model) mv.emplace_back(id, std::string(b));
             for (const auto& [id, b] : decode_only) dv.emplace_back(id, std::string(b));
             std::vector<std::pair<uint32_t, uint32_t>> mg;
             bool has_merges = !merges.is_none();
             if (has_merges) mg = merges.cast<std::vector<std::pair<uint32_t, uint32_t>>>();
             BpeOptions opt;
             opt.pattern = pattern;
             if (dialect == "oniguruma") opt.dialect = regex::Dialect::kOniguruma;
             else if (dialect == "fancy-regex") opt.dialect = regex::Dialect::kFancyRegex;
             else throw py::value_error("unknown regex dialect " + dialect);
             opt.keep_gaps = keep_gaps;
             opt.prefix_space = prefix_space;
             opt.ignore_merges = ignore_merges;
             opt.generic_regex_only = generic_regex_only;
             opt.nfc = nfc;
             opt.unk_id = unk_id;
             opt.fuse_unk = fuse_unk;
             opt.ordinary_added.assign(ordinary_added.begin(), ordinary_added.end());
             std::vector<BpeAddedToken> av;
             for (const auto& [content, id, l, r, sw, norm] : added) av.push_back({content, id, l, r, sw, norm});
             py::gil_scoped_release release;
             try {
               return std::make_unique<BpeTokenizer>(mv, has_merges ? &mg : nullptr, std::move(opt), std::move(av), dv);
             } catch (const regex::RegexError& e) {
               throw py::value_error(e.what());
             } catch (const std::invalid_argument& e) {
               throw py::value_error(e.what());
             }
           }),
           py::arg("model"), py::arg("merges"), py::arg("pattern"), py::arg("dialect"), py::arg("keep_gaps"),
           py::arg("prefix_space"), py::arg("ignore_merges"), py::arg("added"), py::arg("decode_only"),
           py::arg("generic_regex_only") = false, py::arg("nfc") = false,
           py::arg("unk_id") = -1, py::arg("fuse_unk") = false,
           py::arg("ordinary_added") = std::vector<bool>())
      .def("encode_ordinary",
           [](const BpeTokenizer& t, py::handle text) {
             std::string_view sv = utf8_view(text);
             std::vector<uint32_t> ids;
             if (sv.size() >= kReleaseGilBytes) {
               py::gil_scoped_release release;
               t.encode_ordinary(sv, ids);
             } else {
               t.encode_ordinary(sv, ids);
             }
             return to_array(ids);
           })
      .def("encode",
           [](const BpeTokenizer& t, py::handle text, py::object allowed) {
             std::string_view sv = utf8_view(text);
             std::vector<char> mask = allowed_mask(t, allowed);
             std::vector<uint32_t> ids;
             if (sv.size() >= kReleaseGilBytes) {
               py::gil_scoped_release release;
               t.encode(sv, mask, ids);
             } else {
               t.encode(sv, mask, ids);
             }
             return to_array(ids);
           },
           py::arg("text"), py::arg("allowed") = py::none())
      .def("count_ordinary",
           [](const BpeTokenizer& t, py::handle text) {
             std::string_view sv = utf8_view(text);
             py::gil_scoped_release release;
             return t.count_ordinary(sv);
           })
      .def("encode_batch",
           [](const BpeTokenizer& t, py::sequence texts, py::object allowed, py::object num_threads, bool ordinary) {
             size_t n = py::len(texts);
             std::vector<py::object> keep;
             std::vector<std::string_view> views;
             keep.reserve(n);
             views.reserve(n);
             for (size_t i = 0; i < n; ++i) {
               keep.push_back(texts[i]);
               views.push_back(utf8_view(keep.back()));
             }
             std::vector<char> mask = allowed_mask(t, allowed);
             size_t threads = resolve_threads(num_threads);
             std::vector<std::vector<uint32_t>> out(n);
             {
               py::gil_scoped_release release;
               parallel_for(n, threads, [&](size_t i) {
                 if (ordinary) t.encode_ordinary(views[i], out[i]);
                 else t.encode(views[i], mask, out[i]);
               });
             }
             py::list result(n);
             for (size_t i = 0; i < n; ++i) {
               result[i] = to_array(out[i]);
               std::vector<uint32_t>().swap(out[i]);
             }
             return result;
           },
           py::arg("texts"), py::arg("allowed") = py::none(), py::arg("num_threads") = py::none(),
           py::arg("ordinary") = false)
      .def("decode_bytes",
           [](const BpeTokenizer& t, py::array_t<uint32_t, py::array::c_style | py::array::forcecast> ids) {
             std::string out;
             if (!t.decode_bytes(ids.data(), static_cast<size_t>(ids.size()), out)) {
               for (py::ssize_t i = 0; i < ids.size(); ++i)
                 if (!t.has_id(ids.data()[i]))
                   throw py::value_error("token id " + std::to_string(ids.data()[i]) + " is not in the vocabulary");
             }
             return py::bytes(out);
           })
      .def("token_bytes",
           [](const BpeTokenizer& t, uint32_t id) -> py::object {
             if (!t.has_id(id)) return py::none();
             return py::bytes(t.id_bytes(id));
           })
      .def("model_id", [](const BpeTokenizer& t, py::bytes b) { return t.model_id(std::string(b)); })
      .def("pretokenize",
           [](const BpeTokenizer& t, py::handle text, bool generic) {
             // The pieces pre-tokenization produces (for tests and debugging), as str.
             std::string_view sv = utf8_view(text);
             std::vector<std::pair<size_t, size_t>> spans;
             t.split_pieces(sv, generic, spans);
             py::list out;
             for (const auto& [b, e] : spans) out.append(py::str(sv.data() + b, e - b));
             return out;
           },
           py::arg("text"), py::arg("generic") = false)
      .def("regex_steps",
           [](const BpeTokenizer& t, py::handle text) {
             // Steps the generic regex engine takes to pre-tokenize `text` (how the budget is sized).
             std::string_view sv = utf8_view(text);
             std::vector<std::pair<size_t, size_t>> spans;
             int64_t steps = 0;
             t.split_pieces(sv, true, spans, &steps);
             return steps;
           })
      .def("step_budget", [](const BpeTokenizer& t, size_t n) { return t.step_budget(n); })
      .def_property_readonly("regex_nodes", &BpeTokenizer::regex_nodes)
      .def_property_readonly("has_fast_scanner", &BpeTokenizer::has_fast_scanner)
      .def_property_readonly("max_id", &BpeTokenizer::max_id)
      .def_property_readonly("num_model_tokens", &BpeTokenizer::num_model_tokens)
      .def_property_readonly("num_added_tokens", [](const BpeTokenizer& t) { return t.added().size(); });
}

}  // namespace nextlong
