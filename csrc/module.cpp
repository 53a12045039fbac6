#include "bindings.h"
#include "text_encoder.h"

PYBIND11_MODULE(_native, m) {
  m.doc() = "nextlong native core: byte-level BPE tokenizer, streaming corpus reader, meta-chunker, WordPiece, BM25 search.";
  // Base class first, so tokenizer classes can derive from it and corpus functions can accept it.
  pybind11::class_<nextlong::TextEncoder>(m, "TextEncoder");
  nextlong::bind_tokenizer(m);
  nextlong::bind_corpus(m);
  nextlong::bind_wordpiece(m);
  nextlong::bind_bm25(m);
}
