"""An HNSW index cut into shards: each built on one thread, all built at once, searched together.

Why: a multi-threaded usearch build is not reproducible (the graph depends on which thread inserted
what first), and a one-thread build of a whole corpus is slow. Shards of contiguous rows, each built
on one thread, give the same graphs on every run and still use every core. A search asks every shard
for the top `count` and merges: the best `count` of the union, by distance, ties broken by the smaller
key, so the merged answer is as deterministic as the shards. An exact search of every shard merged
this way is the exact search of the whole. The cost: each query searches every shard, with twice the
efSearch to keep one graph's recall (SHARD_EF_FACTOR), so searching takes longer as shards are added.

`ShardedUsearch` offers what `ChunkIndex` uses of a usearch Index: `search`, `expansion_search`,
`serialized_length`, and the shards for saving.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class Matches:
    """The merged top of a batch of queries: keys (n, count) uint64, distances (n, count), counts (n,)."""

    keys: np.ndarray
    distances: np.ndarray
    counts: np.ndarray


# Each shard is searched with twice the index's efSearch. Measured (bench_index_shards.py on 200k
# hashed-tfidf vectors of 64 dims, top-11 against exact search, docs/scale.md): one graph at ef 32
# found 0.859; two shards merged 0.788 at ef 32 and 0.873 at ef 64; four shards 0.807 and 0.915. So
# with the same ef a sharded index loses recall (a shard is also searched for queries far from most
# of its points), and doubling it gives one graph's recall back, at 2.6-3.9x the search time.
SHARD_EF_FACTOR = 2


class ShardedUsearch:
    """Several usearch Indexes searched as one (see the module docstring)."""

    def __init__(self, shards: list):
        self.shards = list(shards)
        self.expansion_search = self.shards[0].expansion_search  # the ef the shards were made with

    @property
    def expansion_search(self) -> int:
        """The efSearch a one-graph index would use; each shard gets SHARD_EF_FACTOR times it."""
        return self._ef

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        self._ef = int(value)
        for shard in self.shards:
            shard.expansion_search = self._ef * (SHARD_EF_FACTOR if len(self.shards) > 1 else 1)

    @property
    def serialized_length(self) -> int:
        return sum(int(s.serialized_length) for s in self.shards)

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def search(self, queries: np.ndarray, count: int, *, threads: int = 0, exact: bool = False) -> Matches:
        n = len(queries)
        keys, dists = [], []
        for shard in self.shards:
            want = min(count, len(shard))
            if want == 0:
                continue
            found = shard.search(queries, want, threads=threads, exact=exact)
            k = np.asarray(found.keys).reshape(n, -1)
            d = np.asarray(found.distances, dtype=np.float64).reshape(n, -1)
            got = getattr(found, "counts", None)
            got = np.full(n, len(found.keys)) if got is None else np.asarray(got).reshape(-1)
            d = np.where(np.arange(k.shape[1])[None, :] < got[:, None], d, np.inf)  # padding sorts last
            keys.append(k.astype(np.uint64))
            dists.append(d)
        if not keys:
            return Matches(np.zeros((n, 0), np.uint64), np.zeros((n, 0), np.float32), np.zeros(n, np.int64))
        k, d = np.concatenate(keys, axis=1), np.concatenate(dists, axis=1)
        order = np.lexsort((k, d), axis=-1)[:, :count]  # by distance, then key: the same on every run
        k, d = np.take_along_axis(k, order, axis=1), np.take_along_axis(d, order, axis=1)
        counts = np.isfinite(d).sum(axis=1)
        return Matches(k, d.astype(np.float32), counts)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Row ranges of `shards` nearly equal contiguous shards of n rows (none empty)."""
    shards = max(1, min(shards, n)) if n else 1
    edges = np.linspace(0, n, shards + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def build_shards(make_index, add_rows, n: int, shards: int, threads: int) -> ShardedUsearch:
    """Build `shards` indexes over contiguous row ranges, each on one thread, `threads` at a time.

    `make_index()` returns an empty usearch Index; `add_rows(index, lo, hi, threads=1)` adds rows lo..hi
    (usearch releases the GIL while adding, so Python threads build in parallel)."""
    bounds = shard_bounds(n, shards)

    def build(bound):
        index = make_index()
        add_rows(index, *bound, threads=1)
        return index

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(bounds)))) as pool:
        return ShardedUsearch(list(pool.map(build, bounds)))
