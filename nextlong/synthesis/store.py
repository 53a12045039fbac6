"""The chunk store: every chunk's token ids in one flat array, plus the per-chunk and per-document
metadata that negative mining, the baselines and assembly need, as plain numpy arrays.

Built once from a chunk table (CHUNK_SCHEMA + input_ids) and saved as .npy files so a later run
memory-maps it instead of re-reading Parquet. Chunk ids are row numbers, so chunk `c` owns
`tokens[tok_offsets[c]:tok_offsets[c+1]]`. A document's chunks are contiguous (corpus order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import checked_parquet
from ..atomic import atomic_path

_CHECKED: set = set()  # (folder, mtime) of stores whose structure this process has checked

_ARRAYS = ("tokens", "tok_offsets", "chunk_doc", "chunk_index", "text_hash", "char_len",
           "doc_first_chunk", "doc_num_chunks", "doc_chars", "doc_index")


@dataclass
class ChunkStore:
    tokens: np.ndarray  # uint32, all chunks' ids back to back
    tok_offsets: np.ndarray  # int64 (n_chunks + 1)
    chunk_doc: np.ndarray  # int64: dense document number 0..n_docs-1 of each chunk
    chunk_index: np.ndarray  # int32: position of the chunk in its document
    text_hash: np.ndarray  # uint64
    char_len: np.ndarray  # int64: chunk length in code points
    doc_first_chunk: np.ndarray  # int64 (n_docs)
    doc_num_chunks: np.ndarray  # int64 (n_docs)
    doc_chars: np.ndarray  # int64: document length in code points (chunks + the "\n" between them)
    doc_index: np.ndarray  # int64: the document's ordinal in the corpus stream (doc_index column)
    doc_ids: list  # str per document

    @property
    def num_chunks(self) -> int:
        return int(self.chunk_doc.shape[0])

    @property
    def num_docs(self) -> int:
        return int(self.doc_first_chunk.shape[0])

    @cached_property
    def token_counts(self) -> np.ndarray:
        """Tokens of each chunk (int64), computed once: planning reads it for every anchor."""
        return np.diff(np.asarray(self.tok_offsets, np.int64))

    @cached_property
    def mean_token_count(self) -> float:
        """Mean tokens per chunk (1.0 for an empty store), computed once."""
        return float(self.token_counts.mean()) if self.token_counts.size else 1.0

    def chunk_tokens(self, c: int) -> np.ndarray:
        return self.tokens[self.tok_offsets[c]:self.tok_offsets[c + 1]]

    def doc_chunks(self, d: int) -> np.ndarray:
        first = int(self.doc_first_chunk[d])
        return np.arange(first, first + int(self.doc_num_chunks[d]), dtype=np.int64)

    def doc_tokens(self) -> np.ndarray:
        """Tokens of each document's chunks (without separators)."""
        ends = self.doc_first_chunk + self.doc_num_chunks
        return self.tok_offsets[ends] - self.tok_offsets[self.doc_first_chunk]

    def chars_per_token(self) -> float:
        """E of the k formula: mean characters per token, measured on the corpus."""
        total_tokens = int(self.tok_offsets[-1])
        return float(self.char_len.sum()) / total_tokens if total_tokens else 1.0

    def repeated_ids(self) -> tuple[int, object, int | None]:
        """(documents whose id repeats an earlier document's, the first such id in corpus order and its document
        number in the store, or None, None): a corpus
        may repeat `--id-field` values, and segments' `doc_id` then names more than one document. Memory about
        24 bytes per document (a 64-bit hash of each id, its sort order and the sorted hashes; the ids are
        the store's own), not a set of every id; only ids whose hashes meet are compared, exactly, so a hash
        collision counts nothing."""
        ids = self.doc_ids
        if len(ids) < 2:
            return 0, None, None
        hashes = np.fromiter(map(hash, ids), np.int64, count=len(ids))
        order = np.argsort(hashes, kind="stable")
        hashes = hashes[order]
        meet = hashes[1:] == hashes[:-1]
        if not meet.any():
            return 0, None, None
        shared = np.zeros(len(ids), bool)
        shared[1:] |= meet
        shared[:-1] |= meet
        seen, repeats, first = set(), 0, None
        for d in np.sort(order[shared]).tolist():  # corpus order: the first repeat met is the earliest
            if ids[d] in seen:
                repeats += 1
                first = d if first is None else first
            else:
                seen.add(ids[d])
        return repeats, (None if first is None else ids[first]), first

    # --- building and persistence -------------------------------------------------------------

    @classmethod
    def from_table(cls, table: pa.Table) -> "ChunkStore":
        """From a chunk table with an `input_ids` column, rows in corpus order (chunk_id = row)."""
        if "input_ids" not in table.column_names:
            raise ValueError("chunk table has no input_ids column: chunk with a tokenizer (with_ids=True)")
        n = table.num_rows
        import pyarrow.compute as pc

        ids = table.column("input_ids")
        lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
        tok_offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=tok_offsets[1:])
        tokens = pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
        doc_index = table.column("doc_index").to_numpy()
        # dense document numbers in order of appearance
        if n:
            starts = np.flatnonzero(np.r_[True, doc_index[1:] != doc_index[:-1]])
        else:
            starts = np.zeros(0, np.int64)
        num = np.diff(np.r_[starts, n]).astype(np.int64)
        chunk_doc = np.repeat(np.arange(starts.size, dtype=np.int64), num)
        char_start = table.column("char_start").to_numpy().astype(np.int64)
        char_end = table.column("char_end").to_numpy().astype(np.int64)
        last = starts + num - 1
        doc_chars = char_end[last] if n else np.zeros(0, np.int64)
        doc_id_col = table.column("doc_id").to_pylist()
        return cls(
            tokens=tokens,
            tok_offsets=tok_offsets,
            chunk_doc=chunk_doc,
            chunk_index=table.column("chunk_index").to_numpy().astype(np.int32),
            text_hash=table.column("text_hash").to_numpy().astype(np.uint64),
            char_len=char_end - char_start,
            doc_first_chunk=starts.astype(np.int64),
            doc_num_chunks=num,
            doc_chars=doc_chars.astype(np.int64),
            doc_index=doc_index[starts].astype(np.int64) if n else np.zeros(0, np.int64),
            doc_ids=[doc_id_col[i] for i in starts.tolist()],
        )

    @classmethod
    def from_parquet(cls, path) -> "ChunkStore":
        cols = ["doc_index", "doc_id", "chunk_index", "char_start", "char_end", "text_hash", "input_ids"]
        return cls.from_table(checked_parquet.read_table(path, columns=cols))

    def save(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            with atomic_path(directory / f"{name}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, getattr(self, name))
        with atomic_path(directory / "doc_ids.json") as tmp:
            tmp.write_text(json.dumps(self.doc_ids))

    @classmethod
    def load(cls, directory) -> "ChunkStore":
        """The store saved in `directory`, memory-mapped, its structure checked (once per process): a resumed
        run reads it as it is, and the compiled kernels index the token array through its offsets."""
        from ..errors import CorruptFileError
        from ..untrusted import load_array

        directory = Path(directory)
        arrays = {name: load_array(directory / f"{name}.npy", CorruptFileError,
                                   remedy=f"delete {directory.parent} to build the chunk store again")
                  for name in _ARRAYS}
        try:
            doc_ids = json.loads((directory / "doc_ids.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CorruptFileError(f"{directory / 'doc_ids.json'}: not readable JSON ({exc})") from None
        store = cls(doc_ids=doc_ids, **arrays)
        key = (str(directory.resolve()), (directory / "tok_offsets.npy").stat().st_mtime_ns)
        if key not in _CHECKED:
            store._check(directory)
            _CHECKED.add(key)
        return store

    def _check(self, directory: Path) -> None:
        """Shapes, dtypes and the offsets every reader trusts, or one CorruptFileError naming the file."""
        from ..errors import CorruptFileError

        def bad(name, what):
            raise CorruptFileError(f"{directory / name}: {what}; the chunk store is damaged: delete "
                                   f"{directory.parent} to build it again")

        kinds = {"tokens": "u", "text_hash": "u"}
        for name in _ARRAYS:
            a = getattr(self, name)
            if a.ndim != 1 or a.dtype.kind != kinds.get(name, "i"):
                bad(f"{name}.npy", f"expected a 1-d {'unsigned ' if name in kinds else ''}integer array, got "
                                   f"{a.dtype} of shape {a.shape}")
        n, docs = self.num_chunks, self.num_docs
        for name, size in (("tok_offsets", n + 1), ("chunk_index", n), ("text_hash", n), ("char_len", n),
                           ("doc_num_chunks", docs), ("doc_chars", docs), ("doc_index", docs)):
            if getattr(self, name).shape[0] != size:
                bad(f"{name}.npy", f"{getattr(self, name).shape[0]} entries, expected {size}")
        off = np.asarray(self.tok_offsets)
        if off[0] != 0 or off[-1] != self.tokens.shape[0] or bool((np.diff(off) < 0).any()):
            bad("tok_offsets.npy", f"offsets must rise from 0 to the {self.tokens.shape[0]} tokens")
        if n and (int(self.chunk_doc.min()) < 0 or int(self.chunk_doc.max()) >= docs):
            bad("chunk_doc.npy", f"document numbers must lie in 0..{docs - 1}")
        first, count = np.asarray(self.doc_first_chunk), np.asarray(self.doc_num_chunks)
        if docs and (int(first[0]) != 0 or bool((count < 1).any()) or bool((first[1:] != (first + count)[:-1]).any())
                     or int(first[-1] + count[-1]) != n):
            bad("doc_first_chunk.npy", "each document's chunks must follow the previous document's, covering every chunk")
        if not isinstance(self.doc_ids, list) or len(self.doc_ids) != docs or \
                not all(isinstance(x, str) for x in self.doc_ids):
            bad("doc_ids.json", f"expected a list of {docs} strings")
