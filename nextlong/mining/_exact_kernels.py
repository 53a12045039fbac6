"""The numba loops of exact.py, in a module of their own: numba caches a function on disk only when the
jitted functions it calls are module-level names (closures in a factory were recompiled in every
process, ~1 s each). Imported only when a search runs, so numba stays an optional dependency."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def before(s, c, slot_sim, slot_id):
    # (s, c) comes before a slot: higher similarity, or equal and a lower id, or the slot is unused (-1)
    return s > slot_sim or (s == slot_sim and (c < slot_id or slot_id < 0))


@njit(cache=True, nogil=True, inline="always")
def insert(row, c, s, out_ids, out_sims):
    # into a sorted row of k (unused slots -inf): one comparison for most candidates, which fall
    # below its k-th
    k = out_ids.shape[1]
    if not before(s, c, out_sims[row, k - 1], out_ids[row, k - 1]):
        return
    pos = k - 1
    while pos > 0 and before(s, c, out_sims[row, pos - 1], out_ids[row, pos - 1]):
        out_sims[row, pos] = out_sims[row, pos - 1]
        out_ids[row, pos] = out_ids[row, pos - 1]
        pos -= 1
    out_sims[row, pos] = s
    out_ids[row, pos] = c


@njit(cache=True, nogil=True)
def select(s, queries, vectors, bound, floor, kth, k, out_ids, out_sims):
    # per row: the columns at or above the floor (less the rounding bound), compacted in one
    # branch-free scan; their k-th largest float32 score (given in kth, else by a min-heap of k);
    # then those within the bound of it rescored in float64, summed in index order, into the top k.
    # A score that overflowed float32 (inf, or NaN from inf - inf) says nothing: always rescored.
    m, n = s.shape
    d = vectors.shape[1]
    heap = np.empty(k, np.float32)
    cols = np.empty(n, np.int64)
    for i in range(m):
        low = floor[i] - bound[i]
        given = not np.isnan(kth[i])
        if given:
            low = max(low, np.float64(kth[i]) - bound[i])
        found = 0
        for j in range(n):
            x = s[i, j]
            cols[found] = j
            found += (x >= low) | (not (abs(x) < np.inf))
        if found > k and not given:
            filled = 0
            for e in range(found):
                x = s[i, cols[e]]
                if not (abs(x) < np.inf):
                    continue
                if filled < k:  # sift up
                    pos = filled
                    filled += 1
                    while pos > 0 and heap[(pos - 1) // 2] > x:
                        heap[pos] = heap[(pos - 1) // 2]
                        pos = (pos - 1) // 2
                    heap[pos] = x
                elif x > heap[0]:  # replace the smallest, sift down
                    pos = 0
                    while True:
                        child = 2 * pos + 1
                        if child >= k:
                            break
                        if child + 1 < k and heap[child + 1] < heap[child]:
                            child += 1
                        if heap[child] >= x:
                            break
                        heap[pos] = heap[child]
                        pos = child
                    heap[pos] = x
            if filled == k:
                low = max(low, np.float64(heap[0]) - bound[i])
        q = queries[i]
        for e in range(found):
            j = cols[e]
            x = s[i, j]
            if not (x >= low or not (abs(x) < np.inf)):
                continue
            v = vectors[j]
            exact = 0.0
            for t in range(d):
                exact += np.float64(v[t]) * np.float64(q[t])
            if exact >= floor[i]:
                insert(i, j, exact, out_ids, out_sims)


@njit(cache=True, nogil=True)
def insert_all(rows, ids, sims, out_ids, out_sims):
    for e in range(rows.shape[0]):
        insert(rows[e], ids[e], sims[e], out_ids, out_sims)
