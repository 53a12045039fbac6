"""Mining: finding the chunks related to a chunk. Embedders (MiniLM, a static distillation, a hashed
lexical one), the embedding store, and the search structures over it: one usearch HNSW index or its
reproducible shards, the partitioned (IVF-style) batch self-search that gives every chunk its neighbour
list, and BM25 for ACER's lexical retrieval. The synthesis stages call these; nothing here knows about
stages or executors."""
