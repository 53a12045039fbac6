"""Exact top-k by inner product whose answer does not depend on how the queries are batched.

Every search that must give the same bytes on every executor goes through `exact_top_k`: the brute-force
search of small corpora, routing chunks to k-means partitions, the search inside a partition, and the
k-means assignment itself. A float32 product finds the candidates (every column within the product's
rounding bound of the k-th best), then each candidate's similarity is recomputed in float64 by one
fixed reduction per (query, column) pair, and the order is total: similarity descending, then column
ascending. So a query's answer is the same alone or in a batch of thousands, whatever BLAS does with
its threads, and the top k is a prefix of the top K.
"""

from __future__ import annotations

import numpy as np

ROWS = 256  # query rows per float32 product at least: bounds the (rows x n) block to 200 MB at 200k columns
BLOCK_ELEMENTS = 1 << 22  # against few columns (a partition), more rows per product: 16 MB blocks, less overhead


def rounding_bound(queries: np.ndarray, max_norm: float) -> np.ndarray:
    """Per query, how far a float32 product of length d can be from the exact one (twice: for the k-th
    and for the candidate), about d * eps * |q| * |v|."""
    return 2.0 * queries.shape[1] * np.finfo(np.float32).eps * np.linalg.norm(queries, axis=1) * max_norm


_KERNELS = None


def _kernels():
    """The numba loops (compiled once per process, cached on disk)."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _compile()
    return _KERNELS


def pair_dots(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float64 dot products of queries[rows[i]] and vectors[cols[i]], each summed in index order: a
    pair's value depends on that pair alone (no gather copies, no BLAS)."""
    out = np.empty(rows.shape[0], np.float64)
    _kernels()[0](vectors, queries, rows.astype(np.int64, copy=False), cols.astype(np.int64, copy=False), out)
    return out


def segment_top_k(starts: np.ndarray, ids: np.ndarray, sims: np.ndarray, k: int, out_ids: np.ndarray,
                  out_sims: np.ndarray) -> None:
    """For each segment i (entries starts[i]:starts[i + 1]), its k best entries, similarity descending then
    id ascending, into row i of out_ids / out_sims (float64; left as they are beyond the segment's length)."""
    if k > 0:
        _kernels()[1](starts.astype(np.int64, copy=False), ids.astype(np.int64, copy=False),
                      sims.astype(np.float64, copy=False), k, out_ids, out_sims)


def group_rows(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): a counting sort of row numbers in [0, n), stable, and where each row's run starts."""
    counts = np.bincount(rows, minlength=n)
    starts = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    order = np.empty(rows.shape[0], np.int64)
    _kernels()[2](rows.astype(np.int64, copy=False), starts[:-1].copy(), order)
    return order, starts


def _compile():
    try:
        from numba import njit
    except ImportError:
        from ..errors import missing_extra

        raise missing_extra("numba", "ml", "exact search") from None

    @njit(cache=True, nogil=True)
    def dots(vectors, queries, rows, cols, out):
        d = vectors.shape[1]
        for i in range(rows.shape[0]):
            a = vectors[cols[i]]
            b = queries[rows[i]]
            s = 0.0
            for j in range(d):
                s += np.float64(a[j]) * np.float64(b[j])
            out[i] = s

    @njit(cache=True, nogil=True)
    def top_k(starts, ids, sims, k, out_ids, out_sims):
        # insertion into a sorted buffer of the best k: one comparison for most entries
        for i in range(starts.shape[0] - 1):
            filled = 0
            for e in range(starts[i], starts[i + 1]):
                s, c = sims[e], ids[e]
                if filled == k and not (s > out_sims[i, k - 1] or (s == out_sims[i, k - 1] and c < out_ids[i, k - 1])):
                    continue
                pos = filled if filled < k else k - 1
                while pos > 0 and (s > out_sims[i, pos - 1] or (s == out_sims[i, pos - 1] and c < out_ids[i, pos - 1])):
                    if pos < k:
                        out_sims[i, pos] = out_sims[i, pos - 1]
                        out_ids[i, pos] = out_ids[i, pos - 1]
                    pos -= 1
                out_sims[i, pos] = s
                out_ids[i, pos] = c
                if filled < k:
                    filled += 1

    @njit(cache=True, nogil=True)
    def scatter(rows, next_slot, order):
        for i in range(rows.shape[0]):
            order[next_slot[rows[i]]] = i
            next_slot[rows[i]] += 1

    return dots, top_k, scatter


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int, *, max_norm: float | None = None,
                rows: int | None = None, sims_dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(ids, sims) of shape (len(queries), k): the columns of `vectors` with the largest inner product,
    similarity descending then column ascending, padded with -1 / -inf when `vectors` has fewer than k
    rows. Similarities are the float64 values, rounded to `sims_dtype` (float64 keeps them exact, for a
    merge that must order candidates from several searches as one search would)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, m = vectors.shape[0], queries.shape[0]
    ids = np.full((m, k), -1, np.int64)
    sims = np.full((m, k), -np.inf, sims_dtype)
    k_eff = min(k, n)
    if k_eff == 0 or m == 0:
        return ids, sims
    if max_norm is None:
        max_norm = float(np.linalg.norm(vectors, axis=1).max(initial=0.0))
    rows = rows or max(ROWS, BLOCK_ELEMENTS // max(n, 1))
    for lo in range(0, m, rows):
        q = queries[lo:lo + rows]
        s = q @ vectors.T
        if k_eff < n:
            kth = -np.partition(-s, k_eff - 1, axis=1)[:, k_eff - 1]
            r, c = np.nonzero(s >= (kth - rounding_bound(q, max_norm))[:, None])
        else:
            r, c = np.divmod(np.arange(len(q) * n, dtype=np.int64), n)
        exact = pair_dots(vectors, q, r, c)
        starts = np.zeros(len(q) + 1, np.int64)  # nonzero lists pairs by row, columns ascending within one
        np.cumsum(np.bincount(r, minlength=len(q)), out=starts[1:])
        block_sims = np.full((len(q), k), -np.inf, np.float64)
        block_ids = np.full((len(q), k_eff), -1, np.int64)
        segment_top_k(starts, c, exact, k_eff, block_ids, block_sims[:, :k_eff])
        ids[lo:lo + len(q), :k_eff] = block_ids
        sims[lo:lo + len(q)] = block_sims
    return ids, sims
