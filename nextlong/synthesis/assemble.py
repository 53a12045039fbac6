"""Assembly: gather the token ranges a plan names into long documents of exactly L tokens.

A *plan* lists, for each long document, its pieces in order: a chunk id and a role (anchor or
negative). Every piece contributes its chunk's token ids followed by `sep_ids`: the separator
belongs to the **trailing side** of the piece before it, so a segment `[start, end)` decodes to
`chunk text + separator` and the segments tile the document with no gaps. The synthesis pipeline
tokenizes each chunk together with its separator (batches.chunk_batch) and passes no `sep_ids`, so
the ids where two pieces meet are those of the assembled text; `sep_ids` serves chunk stores whose
ids are the text alone. The document is cut at exactly L tokens; pieces after the cut are dropped,
the piece across it keeps its head.

Three implementations of the same step: numba (parallel over documents, the default), numpy (a
fallback when numba is absent) and plain Python (the reference for tests and the benchmark).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

ROLE_ANCHOR = 0
ROLE_NEGATIVE = 1
ROLE_NAMES = ("anchor", "negative")

SEGMENT_TYPE = pa.struct(
    [
        pa.field("start", pa.int64()),
        pa.field("end", pa.int64()),
        pa.field("doc_id", pa.string()),
        pa.field("chunk_index", pa.int32()),
        pa.field("role", pa.string()),
    ]
)

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.uint32()), nullable=False),
        pa.field("segments", pa.list_(SEGMENT_TYPE), nullable=False),
        pa.field("anchor_doc_id", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("group_key", pa.string()),  # quest: the key every document of the sample shares; else null
    ]
)


@dataclass
class Plan:
    """Pieces of many long documents, flattened: document d owns pieces offsets[d]:offsets[d+1]."""

    chunks: np.ndarray  # int64 chunk id per piece
    roles: np.ndarray  # int8 role per piece
    offsets: np.ndarray  # int64 (n_docs + 1)
    anchor_docs: np.ndarray  # int64 dense document number of each long document's anchor

    @property
    def num_docs(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @classmethod
    def from_lists(cls, docs: list[tuple[list[int], list[int]]], anchor_docs: list[int]) -> "Plan":
        lengths = [len(c) for c, _ in docs]
        offsets = np.zeros(len(docs) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        chunks = np.fromiter((c for cs, _ in docs for c in cs), np.int64, count=int(offsets[-1]))
        roles = np.fromiter((r for _, rs in docs for r in rs), np.int8, count=int(offsets[-1]))
        return cls(chunks, roles, offsets, np.asarray(anchor_docs, np.int64))


def piece_lengths(tok_offsets: np.ndarray, chunks: np.ndarray, sep_len: int) -> np.ndarray:
    return (tok_offsets[chunks + 1] - tok_offsets[chunks]) + sep_len


# --- implementations ---------------------------------------------------------------------------


def assemble_python(tokens, tok_offsets, plan: Plan, sep_ids, target_length: int):
    """Reference: lists and slices, one document at a time."""
    sep = [int(t) for t in sep_ids]
    out = np.zeros((plan.num_docs, target_length), np.uint32)
    seg_start = np.zeros(plan.chunks.shape[0], np.int64)
    seg_end = np.zeros(plan.chunks.shape[0], np.int64)
    for d in range(plan.num_docs):
        ids: list[int] = []
        for p in range(int(plan.offsets[d]), int(plan.offsets[d + 1])):
            c = int(plan.chunks[p])
            start = min(len(ids), target_length)
            ids.extend(tokens[int(tok_offsets[c]):int(tok_offsets[c + 1])].tolist())
            ids.extend(sep)
            seg_start[p] = start
            seg_end[p] = min(len(ids), target_length)
        ids = ids[:target_length]
        out[d, : len(ids)] = ids
    return out, seg_start, seg_end


def assemble_numpy(tokens, tok_offsets, plan: Plan, sep_ids, target_length: int):
    """Vectorised within a document: one concatenate per document."""
    sep = np.asarray(sep_ids, np.uint32)
    out = np.zeros((plan.num_docs, target_length), np.uint32)
    lengths = piece_lengths(tok_offsets, plan.chunks, sep.size)
    seg_start = np.zeros(plan.chunks.shape[0], np.int64)
    seg_end = np.zeros(plan.chunks.shape[0], np.int64)
    for d in range(plan.num_docs):
        a, b = int(plan.offsets[d]), int(plan.offsets[d + 1])
        ends = np.cumsum(lengths[a:b])
        starts = ends - lengths[a:b]
        seg_start[a:b] = np.minimum(starts, target_length)
        seg_end[a:b] = np.minimum(ends, target_length)
        need = int(np.searchsorted(ends, target_length, side="left")) + 1  # pieces touching [0, L)
        parts = []
        for c in plan.chunks[a : a + min(need, b - a)].tolist():
            parts.append(tokens[tok_offsets[c]:tok_offsets[c + 1]])
            parts.append(sep)
        if parts:
            row = np.concatenate(parts)[:target_length]
            out[d, : row.size] = row
    return out, seg_start, seg_end


_numba_kernel = None
_kernel_lock = threading.Lock()  # numba's workqueue layer must not be entered by two threads at once


def use_workqueue_threading_layer(numba) -> None:
    """Run numba's parallel kernels on its own 'workqueue' thread pool, not OpenMP, unless the user
    chose a layer (NUMBA_THREADING_LAYER). With numba's default, the first parallel kernel loads the
    system's libgomp; torch, imported later, then shares that runtime, and MiniLM embedded ~3-9x slower
    in the same process (benchmarks/bench_embedding.py checks this). Takes effect only before the
    process's first parallel launch."""
    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"


def _get_numba_kernel():
    global _numba_kernel
    if _numba_kernel is None:
        import numba

        use_workqueue_threading_layer(numba)

        @numba.njit(parallel=True, cache=True, nogil=True)
        def kernel(tokens, tok_offsets, chunks, offsets, sep, target_length, out, seg_start, seg_end):
            n_docs = offsets.shape[0] - 1
            for d in numba.prange(n_docs):
                pos = 0
                for p in range(offsets[d], offsets[d + 1]):
                    c = chunks[p]
                    seg_start[p] = pos
                    if pos < target_length:
                        a = tok_offsets[c]
                        n = min(tok_offsets[c + 1] - a, target_length - pos)
                        for i in range(n):
                            out[d, pos + i] = tokens[a + i]
                        pos += n
                        n = min(sep.shape[0], target_length - pos)
                        for i in range(n):
                            out[d, pos + i] = sep[i]
                        pos += n
                    seg_end[p] = pos

        _numba_kernel = kernel
    return _numba_kernel


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def assemble_numba(tokens, tok_offsets, plan: Plan, sep_ids, target_length: int):
    """Parallel over documents, the GIL released; copies token ranges straight into the output."""
    kernel = _get_numba_kernel()
    out = np.zeros((plan.num_docs, target_length), np.uint32)
    seg_start = np.zeros(plan.chunks.shape[0], np.int64)
    seg_end = np.zeros(plan.chunks.shape[0], np.int64)
    with _kernel_lock:
        kernel(np.asarray(tokens), np.asarray(tok_offsets, np.int64), plan.chunks, plan.offsets,
               np.asarray(sep_ids, np.uint32), int(target_length), out, seg_start, seg_end)
    return out, seg_start, seg_end


def check_plan(plan: Plan, tok_offsets, num_tokens: int) -> None:
    """What the compiled kernel indexes, checked before it runs (a damaged plan part of a resumed run would
    read out of bounds): document offsets rising from 0 to the pieces, chunk ids of the store, their token
    ranges inside the token array, roles anchor or negative."""
    from ..errors import CorruptFileError

    n_chunks = len(tok_offsets) - 1
    off, chunks = plan.offsets, plan.chunks
    problem = None
    if off.size == 0 or off[0] != 0 or off[-1] != chunks.size or bool((np.diff(off) < 0).any()):
        problem = "its document offsets do not rise from 0 to its pieces"
    elif chunks.size and (int(chunks.min()) < 0 or int(chunks.max()) >= n_chunks):
        problem = f"chunk ids must lie in 0..{n_chunks - 1} (the chunk store's), got {int(chunks.min())}..{int(chunks.max())}"
    elif plan.roles.shape != chunks.shape or (plan.roles.size and not bool(np.isin(plan.roles, (0, 1)).all())):
        problem = "roles must be 0 (anchor) or 1 (negative), one per piece"
    elif chunks.size:
        a, b = np.asarray(tok_offsets[chunks]), np.asarray(tok_offsets[chunks + 1])
        if bool((a < 0).any() | (b < a).any() | (b > num_tokens).any()):
            problem = "its chunks' token ranges fall outside the chunk store's tokens"
    if problem:
        raise CorruptFileError(f"a plan block does not fit the chunk store: {problem}; the work folder's plan or "
                               "chunks stage is damaged: delete it (or run into a fresh --out)")


def assemble(tokens, tok_offsets, plan: Plan, sep_ids, target_length: int, impl: str = "auto"):
    """Gather a plan into an (n_docs, L) uint32 array and each piece's [start, end) in it."""
    check_plan(plan, tok_offsets, len(tokens))
    if impl == "auto":
        impl = "numba" if numba_available() else "numpy"
    fn = {"numba": assemble_numba, "numpy": assemble_numpy, "python": assemble_python}[impl]
    return fn(tokens, tok_offsets, plan, sep_ids, target_length)


# --- Arrow output ------------------------------------------------------------------------------


def to_output_table(store, plan: Plan, input_ids: np.ndarray, seg_start, seg_end, method: str,
                    group_keys=None) -> pa.Table:
    """One row per long document (OUTPUT_SCHEMA); empty pieces (after the cut) are left out.
    `group_keys`: quest's key of each long document (None: a null column)."""
    n_docs, length = input_ids.shape
    flat = pa.array(input_ids.reshape(-1), type=pa.uint32())
    ids_col = pa.ListArray.from_arrays(pa.array(np.arange(n_docs + 1, dtype=np.int32) * length), flat)
    keep = seg_end > seg_start
    kept_doc = np.repeat(np.arange(n_docs), np.diff(plan.offsets))[keep]
    seg_offsets = np.zeros(n_docs + 1, np.int32)
    np.cumsum(np.bincount(kept_doc, minlength=n_docs), out=seg_offsets[1:])
    chunks = plan.chunks[keep]
    doc_numbers = np.asarray(store.chunk_doc[chunks])
    doc_ids = pa.array([store.doc_ids[i] for i in doc_numbers.tolist()], pa.string())
    roles = pa.DictionaryArray.from_arrays(pa.array(plan.roles[keep].astype(np.int32)),
                                           pa.array(list(ROLE_NAMES))).cast(pa.string())
    structs = pa.StructArray.from_arrays(
        [pa.array(seg_start[keep], pa.int64()), pa.array(seg_end[keep], pa.int64()), doc_ids,
         pa.array(np.asarray(store.chunk_index[chunks]), pa.int32()), roles],
        fields=list(SEGMENT_TYPE),
    )
    seg_col = pa.ListArray.from_arrays(pa.array(seg_offsets), structs)
    anchors = pa.array([store.doc_ids[i] for i in plan.anchor_docs.tolist()], pa.string())
    return pa.Table.from_arrays(
        [ids_col, seg_col, anchors, pa.array([method] * n_docs, pa.string()),
         pa.array(list(group_keys) if group_keys is not None else [None] * n_docs, pa.string())],
        schema=OUTPUT_SCHEMA
    )
