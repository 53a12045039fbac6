"""Exact top-k by inner product whose answer does not depend on how the queries are batched.

Every search that must give the same bytes on every executor goes through `exact_top_k`: the brute-force
search of small corpora, routing chunks to k-means partitions, the search inside a partition, and the
k-means assignment itself. A float32 product finds the candidates (every column within the product's
rounding bound of the k-th best), then each candidate's similarity is recomputed in float64 by one
fixed reduction per (query, column) pair, and the order is total: similarity descending, then column
ascending. So a query's answer is the same alone or in a batch of thousands, whatever BLAS does with
its threads, and the top k is a prefix of the top K.

The selection after the product is one numba pass per row (no (rows x n) temporaries besides the
product): the columns at or above an optional floor, their k-th float32 score (numpy's introselect or a
min-heap), then the float64 rescoring and an insertion into the row's sorted top k. A floor (a caller's
running k-th) is what makes the partitioned self-search cheap: most of a visited partition falls below
it and is never rescored.
"""

from __future__ import annotations

import numpy as np

ROWS = 256  # query rows per float32 product at least: bounds the (rows x n) block to 200 MB at 200k columns
BLOCK_ELEMENTS = 1 << 22  # against few columns (a partition), more rows per product: 16 MB blocks, less overhead


def rounding_bound(queries: np.ndarray, max_norm: float) -> np.ndarray:
    """Per query (float64), how far a float32 product of length d can be from the exact one (twice: for
    the k-th and for the candidate): about d * eps * |q| * |v|, plus d subnormal steps, since products
    below float32's normal range lose absolute, not relative, precision. Norms in float64, which neither
    underflow nor overflow for float32 data."""
    d = queries.shape[1]
    return 2.0 * d * float(np.finfo(np.float32).eps) * row_norms(queries) * max_norm + 4.0 * d * 2.0 ** -149


def row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row, summed in float64 (buffered: no float64 copy of x)."""
    return np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))


def max_norm_of(vectors: np.ndarray) -> float:
    """The largest row norm: the `max_norm` of exact_top_k, for a caller that searches the same vectors often."""
    return float(row_norms(np.asarray(vectors, np.float32)).max(initial=0.0))


def _kernels():
    """The numba loops (module _exact_kernels), imported on first use (cached on disk by numba)."""
    try:
        from . import _exact_kernels
    except ImportError as exc:
        if getattr(exc, "name", None) != "numba":
            raise
        from ..errors import missing_extra

        raise missing_extra("numba", "ml", "exact search") from None
    return _exact_kernels


def insert_into(rows: np.ndarray, ids: np.ndarray, sims: np.ndarray, best_ids: np.ndarray,
                best_sims: np.ndarray) -> None:
    """Insert candidates (row, id, float64 sim) into each row's running top k (best_ids / best_sims, kept
    sorted: similarity descending, then id ascending; -1 / -inf in unused slots), in place. The result
    is the top k of the running best and the candidates together whatever their order, as long as no
    id comes twice to one row."""
    if rows.size and (rows.min() < 0 or rows.max() >= best_ids.shape[0]):  # the loop does not check bounds
        raise ValueError(f"candidate rows must lie in [0, {best_ids.shape[0]}), got {rows.min()}..{rows.max()}")
    if best_ids.shape[1] > 0 and rows.size:
        _kernels().insert_all(rows.astype(np.int64, copy=False), ids.astype(np.int64, copy=False),
                      sims.astype(np.float64, copy=False), best_ids, best_sims)


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int, *, max_norm: float | None = None,
                rows: int | None = None, sims_dtype=np.float32, floor: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, sims) of shape (len(queries), k): the columns of `vectors` with the largest inner product,
    similarity descending then column ascending, padded with -1 / -inf when `vectors` has fewer than k
    rows. Similarities are the float64 values, rounded to `sims_dtype` (float64 keeps them exact, for a
    merge that must order candidates from several searches as one search would).

    `floor` (float64 per query) leaves out every column whose similarity is below it: the answer is the
    top k of the rest, so a caller that already holds k candidates at or above a value (a running top k,
    a threshold) skips rescoring what could not enter it. The answer does not depend on the batch either."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, m = vectors.shape[0], queries.shape[0]
    ids = np.full((m, k), -1, np.int64)
    sims = np.full((m, k), -np.inf, sims_dtype)
    k_eff = min(k, n)
    if k_eff == 0 or m == 0:
        return ids, sims
    if max_norm is None:
        max_norm = max_norm_of(vectors)
    unfloored = floor is None
    floor = (np.full(m, -np.inf) if floor is None
             else np.ascontiguousarray(np.broadcast_to(np.asarray(floor, np.float64), (m,))))
    bound = rounding_bound(queries, max_norm)
    if not (np.isfinite(max_norm) and np.isfinite(bound).all()):  # norms of finite float32 data are finite
        raise ValueError("exact_top_k: the vectors or queries hold NaN or infinite values")
    select = _kernels().select
    rows = rows or max(ROWS, BLOCK_ELEMENTS // max(n, 1))
    for lo in range(0, m, rows):
        q = queries[lo:lo + rows]
        with np.errstate(over="ignore", invalid="ignore"):  # overflowed products are rescored (the kernel)
            s = q @ vectors.T
        block_ids = np.full((len(q), k_eff), -1, np.int64)
        block_sims = np.full((len(q), k_eff), -np.inf, np.float64)
        # without a floor every column is a candidate: numpy's introselect finds the k-th faster than
        # the heap when k is a large share of the row (routing: 32 of ~1000 centroids), where most
        # columns would pass through the heap (measured: 0.8 vs 0.5 s routing 100k rows to 316)
        # (a product that overflowed float32 leaves inf or NaN: the kernel's heap handles those rows)
        kth = (np.ascontiguousarray(-np.partition(-s, k_eff - 1, axis=1)[:, k_eff - 1])
               if unfloored and k_eff < n < 64 * k_eff and np.isfinite(s).all()
               else np.full(len(q), np.nan, np.float32))
        select(s, q, vectors, bound[lo:lo + rows], floor[lo:lo + rows], kth, k_eff, block_ids, block_sims)
        ids[lo:lo + len(q), :k_eff] = block_ids
        with np.errstate(over="ignore"):  # beyond float32's range: inf, in the requested dtype
            sims[lo:lo + len(q), :k_eff] = block_sims
    return ids, sims
