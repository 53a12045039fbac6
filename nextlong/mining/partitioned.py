"""Partitioned batch self-search: every chunk's top-K neighbours, computed partition by partition.

FAISS's offline recipe for billion-scale mining, on our stack: train a coarse quantizer (spherical
k-means, kmeans.py) on a sample of the embeddings; route every chunk to its `nprobe` nearest centroids
(the first is its home partition, where it is a member); then search each partition once, exactly,
for all the chunks routed to it, and merge each chunk's `nprobe` candidate lists. No step holds the
whole corpus, and each step is many independent tasks (synthesis/neighbours.py runs them as stages).

Exactness: with nprobe = partitions every chunk meets every member, and the merge orders candidates by
their float64 similarity, then chunk id, exactly as `exact_top_k` orders one search over the whole
corpus: the lists are then the exact search's, byte for byte. (The stored sims are float32: two that
differ only in float64 may print equal, in float64 order.) With fewer probes a neighbour in an
unprobed partition is missed; recall is measured in benchmarks/bench_scale.py.

`NeighbourLists` is what the planner opens: the lists as memory-mapped (chunks x K) arrays, and, for
an anchor that needs more than K candidates, a partitioned search with a larger k over the same
partitions (the planner counts those anchors: `searched_again`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import IndexFileError
from .exact import exact_top_k, max_norm_of, rounding_bound

# recall@10 against exact search, 100k real-text chunks (static MiniLM, 256-d), sqrt(n) partitions:
# 0.90 at nprobe 8, 0.95 at 16, 0.98 at 32 (docs/scale.md); recall falls as partitions grow, so 32
DEFAULT_NPROBE = 32
SEARCH_BYTES = 256 << 20  # vectors one wide search (NeighbourLists.search) holds at once, beyond one query's

# files of a neighbour-lists folder
INFO_FILE = "neighbours.json"
IDS_FILE = "neighbour_ids.npy"
SIMS_FILE = "neighbour_sims.npy"
MEMBERS_FILE = "members.npy"  # chunk ids by home partition, then id
OFFSETS_FILE = "member_offsets.npy"  # partition p's members: members[offsets[p]:offsets[p + 1]]
CENTROIDS_FILE = "centroids.npy"
ARRAY_FILES = (IDS_FILE, SIMS_FILE, MEMBERS_FILE, OFFSETS_FILE, CENTROIDS_FILE)


def default_partitions(n_chunks: int) -> int:
    """sqrt(n) partitions of about sqrt(n) chunks: a chunk's search then scans nprobe * sqrt(n) others
    (FAISS's rule of thumb is 1-16 sqrt(n); more partitions are cheaper per probe but need more probes
    for the same recall)."""
    return max(1, round(math.sqrt(max(n_chunks, 0))))


def route(vectors: np.ndarray, centroids: np.ndarray, nprobe: int) -> np.ndarray:
    """(n, nprobe) int32: each row's nearest centroids, nearest first (ties to the lower centroid)."""
    ids, _ = exact_top_k(vectors, centroids, min(nprobe, centroids.shape[0]))
    return ids.astype(np.int32)


def search_partition(member_ids: np.ndarray, member_vectors: np.ndarray, query_vectors: np.ndarray,
                     k: int, floor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-min(k, members) members of one partition for each query: (chunk ids int64, float64 sims).
    `member_ids` ascending, so ties fall to the lower chunk id as in one search of the whole corpus.
    With `floor` (float64 per query), members below it are left out (ids -1, sims -inf)."""
    k = min(k, len(member_ids))
    cols, sims = exact_top_k(query_vectors, member_vectors, k, sims_dtype=np.float64, floor=floor)
    return np.where(cols >= 0, np.asarray(member_ids, np.int64)[cols], -1), sims


def merge_into(rows: np.ndarray, ids: np.ndarray, sims: np.ndarray, best_ids: np.ndarray,
               best_sims: np.ndarray) -> None:
    """Candidates (row, chunk id, float64 sim) merged into each row's running top k (best_ids / best_sims,
    rows x k, float64 sims; -1 / -inf where a row has fewer than k), in place: by similarity descending,
    then id ascending. A chunk is a member of one partition only, so no candidate comes twice."""
    from .exact import insert_into

    keep = ids >= 0
    insert_into(rows[keep], ids[keep], sims[keep], best_ids, best_sims)


def self_search(vectors: np.ndarray, centroids: np.ndarray, nprobe: int, k: int,
                rows: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, sims, home) of every row of `vectors`, in one process: the steps the stages run as tasks
    (route, search each partition for the chunks routed to it, merge), for benchmarks and tests. Each
    partition's candidates are merged into the running top k at once, so memory stays (rows x k), and a
    partition's search leaves out what falls below a query's running k-th (it could not enter)."""
    n = vectors.shape[0]
    probes = np.concatenate([route(np.asarray(vectors[lo:lo + rows], np.float32), centroids, nprobe)
                             for lo in range(0, n, rows)]) if n else np.zeros((0, nprobe), np.int32)
    home = probes[:, 0] if n else np.zeros(0, np.int32)
    members, offsets = members_by_partition(home, centroids.shape[0])
    flat = probes.reshape(-1)
    order = np.argsort(flat, kind="stable")
    by_partition, is_home = order // probes.shape[1], order % probes.shape[1] == 0  # query rows, by partition
    q_offsets = np.zeros(centroids.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(flat, minlength=centroids.shape[0]), out=q_offsets[1:])
    best_ids = np.full((n, k), -1, np.int64)
    best_sims = np.full((n, k), -np.inf, np.float64)
    for visitors in (False, True):  # home partitions first: their k-th is a high floor for the others
        for p in range(centroids.shape[0]):
            member_ids = members[offsets[p]:offsets[p + 1]]
            queries = by_partition[q_offsets[p]:q_offsets[p + 1]]
            queries = queries[is_home[q_offsets[p]:q_offsets[p + 1]] != visitors]
            if member_ids.size == 0 or queries.size == 0:
                continue
            found, found_sims = search_partition(member_ids, np.asarray(vectors[member_ids], np.float32),
                                                 np.asarray(vectors[queries], np.float32), k,
                                                 floor=best_sims[queries, k - 1] if visitors and k else None)
            merge_into(np.repeat(queries, found.shape[1]), found.reshape(-1), found_sims.reshape(-1),
                       best_ids, best_sims)
    return best_ids, best_sims.astype(np.float32), home


def members_by_partition(home: np.ndarray, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """(members, offsets): chunk ids grouped by home partition (ascending within one), and where each
    partition's group starts."""
    members = np.argsort(home, kind="stable").astype(np.int64)
    offsets = np.zeros(partitions + 1, np.int64)
    np.cumsum(np.bincount(home, minlength=partitions), out=offsets[1:])
    return members, offsets


class NeighbourLists:
    """A neighbour-lists folder (written by synthesis/neighbours.py), opened for planning.

    `rows(chunks)` gives the searcher of one anchor: its chunks' lists, and a partitioned search with a
    larger k when planning needs more than K candidates. Every array is checked against neighbours.json
    (shape, dtype, size and, with verify, CRC32) before use: a damaged file is named, never trusted."""

    def __init__(self, folder, vectors: np.ndarray, verify: bool = True):
        from ..untrusted import read_json

        self.folder = Path(folder)
        info = read_json(self.folder / INFO_FILE, IndexFileError, expect=dict)
        try:
            self.k, self.partitions, self.nprobe, n = (int(info[key]) for key in ("neighbours", "partitions",
                                                                                 "nprobe", "chunks"))
            files = dict(info["files"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFileError(f"{self.folder / INFO_FILE}: expected neighbours, partitions, nprobe, chunks and "
                                 f"files ({exc})") from None
        expected = {IDS_FILE: ((n, self.k), np.int64), SIMS_FILE: ((n, self.k), np.float32),
                    MEMBERS_FILE: ((n,), np.int64), OFFSETS_FILE: ((self.partitions + 1,), np.int64),
                    CENTROIDS_FILE: ((self.partitions, vectors.shape[1]), np.float32)}
        arrays = {}
        for name, (shape, dtype) in expected.items():
            arrays[name] = open_array(self.folder / name, shape, dtype, files.get(name), verify)
        if vectors.shape[0] != n:
            raise IndexFileError(f"{self.folder}: neighbour lists of {n} chunks, but the embeddings hold "
                                 f"{vectors.shape[0]}")
        self.ids, self.sims = arrays[IDS_FILE], arrays[SIMS_FILE]
        self.members, self.offsets = arrays[MEMBERS_FILE], arrays[OFFSETS_FILE]
        self.centroids = np.asarray(arrays[CENTROIDS_FILE])
        self.vectors = vectors
        self._max_norms: dict[int, float] = {}  # per partition, its members' largest norm (search)

    def __len__(self):
        return self.ids.shape[0]

    def rows(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lists of `chunks`: (ids, sims), each (len(chunks), K)."""
        chunks = np.asarray(chunks, np.int64)
        ids = np.asarray(self.ids[chunks])
        if ids.size and (int(ids.min()) < -1 or int(ids.max()) >= self.ids.shape[0]):  # -1 pads a short list
            raise IndexFileError(f"{self.folder / IDS_FILE}: a neighbour id outside 0..{self.ids.shape[0] - 1}: the "
                                 "file is damaged; rebuild the neighbour lists (remove the folder and run again)")
        return ids, np.asarray(self.sims[chunks])

    def search(self, queries: np.ndarray, k: int):
        """Top-k over the members of each query's nprobe nearest partitions (the lists' own route), by one
        exact search of those members per query, as before 2026-12-07; but the vectors of every partition
        probed are read from the embeddings once per call (an anchor's meta-chunks share most partitions),
        each partition's largest norm is computed once per NeighbourLists, and queries probing the same
        partitions are searched together (exact_top_k's answer does not depend on the batch, nor on a
        max_norm at or above the true one). Re-reading and re-norming per query was 2/3 of planning time
        at 99k chunks (an anchor whose copies fill the lists is searched again with k x 4, then x 16)."""
        queries = np.asarray(queries, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        sims = np.full((len(queries), k), -np.inf, np.float32)
        if len(queries) == 0:
            return ids, sims
        probes = np.sort(route(queries, self.centroids, self.nprobe), axis=1)
        sets, which = np.unique(probes, axis=0, return_inverse=True)
        which = which.reshape(-1)
        sizes = np.diff(np.asarray(self.offsets, np.int64))
        row_bytes = 4 * max(self.centroids.shape[1], 1)
        batch: list[int] = []
        held: set[int] = set()
        for g in range(len(sets)):  # sets of probes in order (neighbours share partitions), a batch's vectors bounded
            more = held | set(sets[g].tolist())
            held_rows = int(sizes[sorted(more)].sum())  # its vectors, and one float32 score per query and vector
            if batch and held_rows * (row_bytes + 4 * int(np.isin(which, batch + [g]).sum())) > SEARCH_BYTES:
                self._search_sets(queries, sets, which, batch, k, ids, sims)
                batch, more = [], set(sets[g].tolist())
            batch.append(g)
            held = more
        self._search_sets(queries, sets, which, batch, k, ids, sims)
        return ids, sims

    def _search_sets(self, queries, sets, which, batch, k, ids, sims) -> None:
        """search() for the queries whose probe sets are sets[batch]: the vectors of their partitions read once,
        one float32 product of all those queries with all those vectors, then per query the columns of its
        own partitions that can reach its top k (within exact_top_k's rounding bound of its k-th float32
        score: the same rule as its kernel) searched exactly, in ascending id order."""
        parts = np.unique(sets[batch])
        lo, hi = np.asarray(self.offsets[parts], np.int64), np.asarray(self.offsets[parts + 1], np.int64)
        start = np.r_[0, np.cumsum(hi - lo)]
        members = np.concatenate([np.asarray(self.members[a:b], np.int64) for a, b in zip(lo.tolist(), hi.tolist())])
        vectors = np.asarray(self.vectors[members], np.float32)  # partition by partition
        for j, p in enumerate(parts.tolist()):
            if p not in self._max_norms:
                self._max_norms[p] = max_norm_of(vectors[start[j]:start[j + 1]])
        rows_of = [np.flatnonzero(which == g) for g in batch]
        rows = np.concatenate(rows_of)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowed score is always a candidate
            scores = queries[rows] @ vectors.T
        at = dict(zip(rows.tolist(), range(rows.size)))
        for g, grows in zip(batch, rows_of):
            block = np.searchsorted(parts, sets[g])
            positions = np.concatenate([np.arange(start[j], start[j + 1]) for j in block.tolist()])
            positions = positions[np.argsort(members[positions], kind="stable")]  # ascending ids: ties by id
            max_norm = max(self._max_norms[p] for p in sets[g].tolist())
            bound = rounding_bound(queries[grows], max_norm)
            for r, b in zip(grows.tolist(), bound.tolist()):
                s = scores[at[r], positions]
                keep = positions
                if positions.size > k > 0 and np.isfinite(s).all():
                    kth = float(np.partition(s, positions.size - k)[positions.size - k])
                    keep = positions[s >= kth - b]
                cols, found = exact_top_k(queries[r:r + 1], vectors[keep], k, max_norm=max_norm)
                ids[r] = np.where(cols[0] >= 0, members[keep][np.maximum(cols[0], 0)] if keep.size else -1, -1)
                sims[r] = found[0]


def open_array(path: Path, shape: tuple, dtype, recorded: dict | None, verify: bool) -> np.ndarray:
    """A .npy file of a neighbour-lists folder, memory-mapped after its size (and CRC32) match the record."""
    from ..untrusted import load_array, recorded_crc

    if not isinstance(recorded, dict) or not isinstance(recorded.get("bytes"), int):
        raise IndexFileError(f"{path}: not recorded in {INFO_FILE}")
    return load_array(path, IndexFileError, remedy="rebuild the neighbour lists (remove the folder and run again)",
                      size=recorded["bytes"], crc32=recorded_crc(recorded) if verify else None, dtype=dtype,
                      shape=tuple(shape))


def write_info(folder: Path, *, neighbours: int, partitions: int, nprobe: int, chunks: int) -> dict:
    """neighbours.json, written last: the settings and each array's size and CRC32."""
    from ..atomic import file_crc32, write_json_atomic

    files = {name: {"bytes": (folder / name).stat().st_size, "crc32": file_crc32(folder / name)}
             for name in ARRAY_FILES}
    info = {"neighbours": neighbours, "partitions": partitions, "nprobe": nprobe, "chunks": chunks, "files": files}
    write_json_atomic(folder / INFO_FILE, info)
    return info


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean fraction of each row's exact top-k found in its top-k."""
    hits = [len(set(f[:k].tolist()) & set(e[:k].tolist()) - {-1}) for f, e in zip(found, exact)]
    total = sum(min(k, int((e[:k] >= 0).sum())) for e in exact)
    return sum(hits) / total if total else 1.0
