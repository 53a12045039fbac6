// Each concept of the native core registers its own Python bindings; module.cpp only calls them.
#pragma once
#include <pybind11/pybind11.h>

namespace nextlong {
void bind_tokenizer(pybind11::module_& m);  // tokenizer_bindings.cpp
void bind_corpus(pybind11::module_& m);     // corpus_bindings.cpp
void bind_wordpiece(pybind11::module_& m);  // wordpiece_bindings.cpp
void bind_bm25(pybind11::module_& m);       // bm25_bindings.cpp
}  // namespace nextlong
