#include "bindings.h"

PYBIND11_MODULE(_native, m) {
  m.doc() = "nextlong native core: byte-level BPE tokenizer, streaming corpus reader, meta-chunker.";
  nextlong::bind_tokenizer(m);
  nextlong::bind_corpus(m);
}
