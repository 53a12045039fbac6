"""The corpus engine: reading documents (JSONL, Parquet, text; native and streaming), splitting a corpus
into byte ranges for parallel readers, meta-chunking, and byte-level BPE tokenization with exact HF /
tiktoken ids. Everything before mining reads the corpus through this package."""

from .reader import CorpusReader, Document, detect_format, list_corpus_files, read_corpus

__all__ = ["CorpusReader", "Document", "detect_format", "list_corpus_files", "read_corpus"]
