"""`--mining partitioned`: every chunk's neighbour list from a partitioned batch self-search, as stages.

The steps of nextlong/mining/partitioned.py, each as many tasks as the layout has blocks, so mining
spreads over a cluster like every other stage:

    embeddings --centroids-->  spherical k-means on a seeded sample, numbered in spatial order (depends
                               on nothing else, so other nprobe, K or block sizes reuse it)
               --layout-->     K, and the blocks: block j = chunks [lo, hi) and partitions [p_lo, p_hi),
                               enough blocks that no task holds more than TASK_CANDIDATES candidates
               --route-->      (partition, chunk, home) for each chunk's nprobe nearest centroids,
                               each block sorted by partition
               --home-->       block j searches partitions [p_lo, p_hi) for their own members only: each
                               chunk's K-th similarity in its home partition (the threshold)
               --thresholds--> the thresholds gathered, one per chunk (memory-mapped by search)
               --search-->     block j searches partitions [p_lo, p_hi): the members (home rows) against
                               every chunk routed there, keeping what enters the chunk's running
                               top K in the task; rows (chunk, partition, home, ids, sims) by chunk
               --merge-->      block j merges the candidates of chunks [lo, hi) into their top K, one
                               search part at a time
               --neighbour_lists--> memory-mapped (chunks x K) arrays, members by partition, centroids
                               (mining/partitioned.py: NeighbourLists), each with its CRC32

route -> search and search -> merge are the shuffles: a block reads, from every part of the step before,
only the row groups whose statistics overlap its range (each part is sorted by the column it is read
by), so no task reads the whole corpus. What the search -> merge shuffle carries is at most K
candidates per chunk from each search task, the task's running top K of the chunk (anything below its
K-th cannot enter the chunk's top K), instead of nprobe x K; a partition's search already leaves out
what falls below the larger of the home partition's K-th similarity and that running K-th. Parts carry
page checksums: a damaged one is named, with its partitions or chunks, and how to recompute it.
"""

from __future__ import annotations

import dataclasses as _dc
import math
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import checked_parquet
from ..errors import IndexFileError
from ..mining import partitioned as P
from .framework import MapStage, WholeStage, input_blocks, read_done

THRESHOLDS_FILE = "thresholds.npy"
BLOCK_ROWS = 1 << 16  # chunks per block at most: the tasks of route and merge
TASK_CANDIDATES = 1 << 27  # candidates one search task may hold (x 16 bytes: 2 GiB); more blocks otherwise


def _embeddings(ctx, name):
    from .artifacts import open_vectors

    return open_vectors(ctx.input(name), record=ctx.input_record(name))


def _record(ctx, name) -> dict:
    return read_done(ctx.input(name) / "_done.json")["counts"]


def _checked_array(ctx, name: str, filename: str, shape: tuple, *, mmap: bool = False) -> np.ndarray:
    """A .npy file an input stage wrote, after its CRC32 matches the one that stage's record holds, of the
    float `shape` its readers index it with (the record beside a file proves nothing against whoever
    rewrote both)."""
    from ..untrusted import load_array, recorded_crc

    path = ctx.input(name) / filename
    return load_array(path, IndexFileError, remedy=f"remove {path.parent} and run again",
                      crc32=recorded_crc(_record(ctx, name)), kind="f", shape=tuple(shape), mmap=mmap)


def _finite(vectors: np.ndarray, chunks: np.ndarray, where) -> None:
    """A NaN or infinite embedding would be routed nowhere: refuse it by name before any search.
    `chunks`: the chunk id of each row."""
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise IndexFileError(f"{where}: the embedding of chunk {int(chunks[np.flatnonzero(bad)[0]])} is not finite "
                             "(NaN or infinity): re-embed the corpus (remove the embed and embeddings folders)")


@_dc.dataclass
class CentroidsStage(WholeStage):
    """k-means centroids on a seeded sample of the embeddings. inputs: (embeddings,). The seed is its own
    (not --seed): a new --seed draws other documents from the same mined lists."""

    recorded_counts: ClassVar[frozenset] = frozenset({"chunks", "partitions"})
    partitions: int = 0  # 0: default_partitions(chunks)
    seed: int = 0
    iterations: int = 20
    points_per_centroid: int = 64

    def build(self, ctx):
        from ..atomic import atomic_path, file_crc32
        from ..mining.kmeans import sample_rows, spatial_order, spherical_kmeans

        vectors = _embeddings(ctx, self.inputs[0])
        n = vectors.shape[0]
        partitions = min(self.partitions or P.default_partitions(n), max(n, 1))
        rows = sample_rows(n, min(n, partitions * self.points_per_centroid), self.seed)
        sample = np.asarray(vectors[rows], np.float32)
        _finite(sample, rows, ctx.input(self.inputs[0]))
        ctx.log(f"centroids: k-means of {partitions} partitions on {rows.size} of {n} chunks")
        from tqdm.auto import tqdm

        # one step of the bar per k-means iteration (an assignment of the whole sample): minutes at millions of
        # chunks; k-means that settles early ends the bar where it stopped
        with tqdm(total=self.iterations if n else 0, desc="centroids (k-means)", unit="iteration",
                  disable=not ctx.progress) as bar:
            centroids = (spherical_kmeans(sample, partitions, seed=self.seed, iterations=self.iterations,
                                          on_iteration=lambda _: bar.update(1)) if n
                         else np.zeros((1, vectors.shape[1]), np.float32))
            bar.total = bar.n
            bar.refresh()
        centroids = centroids[spatial_order(centroids)]  # a search task's range of partitions: one region
        with atomic_path(ctx.out_dir / P.CENTROIDS_FILE) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, centroids)
        return {"partitions": int(centroids.shape[0]), "chunks": n, "sample": int(rows.size),
                "crc32": file_crc32(ctx.out_dir / P.CENTROIDS_FILE)}


@_dc.dataclass
class LayoutStage(WholeStage):
    """K and the blocks every later step maps over. inputs: (centroids, chunks). Block j covers chunks
    [lo, hi) for route and merge and partitions [p_lo, p_hi) for search; there are enough blocks that a
    search task's candidates (its share of chunks x nprobe x K) stay under `task_candidates`."""

    recorded_counts: ClassVar[frozenset] = frozenset({"chunks", "partitions", "neighbours", "nprobe", "blocks"})
    nprobe: int = P.DEFAULT_NPROBE
    neighbours: int = 0  # K; 0: what planning asks for at the 90th percentile of anchors
    plan: dict = _dc.field(default_factory=dict)  # the planner's settings, to size K when it is 0
    block_rows: int = BLOCK_ROWS
    task_candidates: int = TASK_CANDIDATES

    def build(self, ctx):
        from .framework import block_path
        from .writers import write_parquet_atomic

        centroids = _record(ctx, self.inputs[0])
        n, partitions = int(centroids["chunks"]), int(centroids["partitions"])
        nprobe = min(self.nprobe, partitions)
        k = self.neighbours or neighbours_for_planning(ctx.input(self.inputs[1]), self.plan)
        blocks = max(1, math.ceil(n / self.block_rows), math.ceil(n * nprobe * k / self.task_candidates))
        for j in range(blocks):
            write_parquet_atomic(pa.table({"lo": [j * n // blocks], "hi": [(j + 1) * n // blocks],
                                           "p_lo": [j * partitions // blocks],
                                           "p_hi": [(j + 1) * partitions // blocks]}), block_path(ctx.out_dir, j))
        return {"partitions": partitions, "nprobe": nprobe, "neighbours": int(k), "chunks": n, "blocks": blocks}


def neighbours_for_planning(chunks_dir, plan: dict, quantile: float = 0.9, sample: int = 100_000) -> int:
    """K such that the first search of `quantile` of the anchors fits in the lists: the planner's own
    initial width (negatives.initial_width) over a sample of documents, rounded up to a multiple of 8."""
    from .negatives import anchor_tokens, initial_width, negatives_per_meta_chunk
    from .artifacts import NO_SEPARATOR, load_store

    store = load_store(chunks_dir)
    if store.num_docs == 0:
        return 16
    sep_len = NO_SEPARATOR.size
    cpt = plan.get("chars_per_token") or store.chars_per_token()
    docs = np.random.default_rng(0).permutation(store.num_docs)[:sample]
    widths = []
    for d in docs.tolist():
        own, own_tokens = anchor_tokens(store, d, sep_len)
        if own_tokens >= plan["target_length"] or own.size == 0:
            continue
        k_fixed = negatives_per_meta_chunk(plan["target_length"], cpt, int(store.doc_chars[d]), own.size,
                                           plan["chunk_size"], plan["overshoot"], plan["k_rounding"],
                                           granularity_unit=plan["chunk_unit"])
        widths.append(initial_width(store, own_tokens, own.size, rule=plan["negatives"], k_fixed=k_fixed,
                                    target_length=plan["target_length"], sep_len=sep_len,
                                    max_candidates=plan["max_candidates"]))
    if not widths:
        return 16
    return int(min(plan["max_candidates"], 8 * math.ceil(np.quantile(widths, quantile) / 8)))


def _unreadable(path, what: str, exc) -> IndexFileError:
    return IndexFileError(f"{path}: {what}: unreadable ({str(exc).splitlines()[0][:200]}); delete it and "
                          f"{path.parent / '_done.json'} (if present), then run again: only that part is recomputed")


def read_part_range(path, column: str, lo: int, hi: int, what: str, columns=None) -> pa.Table | None:
    """The rows of one part whose `column` (its first column, the part sorted by it) lies in [lo, hi): only
    row groups whose statistics overlap are read, every page's checksum verified."""
    try:
        f = checked_parquet.open_file(path)
        groups = []
        for g in range(f.metadata.num_row_groups):
            stats = f.metadata.row_group(g).column(0).statistics
            if stats is None or not stats.has_min_max or (stats.max >= lo and stats.min < hi):
                groups.append(g)
        if not groups:
            return None
        table = f.read_row_groups(groups, columns=columns)
        values = table.column(column).to_numpy()
        return table.take(np.flatnonzero((values >= lo) & (values < hi)))
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, what, exc) from None


def read_range(folder, column: str, lo: int, hi: int, what: str, columns=None) -> pa.Table | None:
    """`read_part_range` over every part of a map stage's folder, concatenated (None: no rows)."""
    tables = [t for t in (read_part_range(p, column, lo, hi, what, columns) for p in input_blocks(folder))
              if t is not None]
    return pa.concat_tables(tables) if tables else None


class _Blocks(MapStage):
    """A step mapped over the layout stage's blocks (one row: lo, hi, p_lo, p_hi)."""

    # write_parquet_atomic's parts carry page checksums (checked_parquet), statistics (read_part_range) and zstd
    parquet_options = {"row_group_size": 4096}
    progress_unit = "block"

    def _layout(self, ctx) -> dict:
        """The layout stage's record: partitions, nprobe, neighbours (K), chunks, blocks."""
        return _record(ctx, self.inputs[0])


@_dc.dataclass
class RouteStage(_Blocks):
    """Block -> (partition, chunk, home) for each of its chunks' nprobe nearest centroids, by partition.
    inputs: (layout, centroids, embeddings)."""

    def setup(self, ctx):
        self._nprobe = self._layout(ctx)["nprobe"]
        self._where = ctx.input(self.inputs[2])
        self._vectors = _embeddings(ctx, self.inputs[2])
        self._centroids = _checked_array(ctx, self.inputs[1], P.CENTROIDS_FILE,
                                         (self._layout(ctx)["partitions"], self._vectors.shape[1]))

    def __call__(self, block):
        lo, hi = int(block.column("lo")[0].as_py()), int(block.column("hi")[0].as_py())
        vectors = np.asarray(self._vectors[lo:hi], np.float32)
        _finite(vectors, np.arange(lo, hi), self._where)
        probes = P.route(vectors, self._centroids, self._nprobe)
        chunk = np.repeat(np.arange(lo, hi, dtype=np.int64), probes.shape[1])
        partition = probes.reshape(-1)
        home = np.tile(np.arange(probes.shape[1]) == 0, hi - lo)
        order = np.lexsort((chunk, partition))
        return pa.table({"partition": partition[order], "chunk": chunk[order], "home": home[order]})


@_dc.dataclass
class HomeStage(_Blocks):
    """Block -> for partitions [p_lo, p_hi): each member's K-th similarity among its own partition's members
    (-inf when the partition has fewer than K), rows (chunk, threshold) sorted by chunk. No candidate
    from another partition below it can enter the chunk's top K. inputs: (layout, route, embeddings)."""

    def setup(self, ctx):
        self._k = self._layout(ctx)["neighbours"]
        self._route = ctx.input(self.inputs[1])
        self._vectors = _embeddings(ctx, self.inputs[2])

    def __call__(self, block):
        chunks, thresholds = [], []
        for p, members, _, _ in _routed_partitions(self._route, block):
            if members.size == 0:
                continue
            vectors = np.asarray(self._vectors[members], np.float32)
            _, sims = P.search_partition(members, vectors, vectors, self._k)
            chunks.append(members)
            thresholds.append(sims[:, -1] if sims.shape[1] == self._k else np.full(members.size, -np.inf))
        chunk = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        order = np.argsort(chunk, kind="stable")
        return pa.table({"chunk": chunk[order].astype(np.int64),
                         "threshold": (np.concatenate(thresholds)[order] if chunks else np.zeros(0)).astype(np.float64)})


@_dc.dataclass
class ThresholdsStage(WholeStage):
    """Home blocks -> thresholds.npy: one float64 per chunk (its home partition's K-th similarity), its
    CRC32 in the record. inputs: (home, layout)."""

    def build(self, ctx):
        from ..atomic import atomic_path, file_crc32

        n = int(_record(ctx, self.inputs[1])["chunks"])
        thresholds = np.full(n, np.nan)
        for path in input_blocks(ctx.input(self.inputs[0])):
            try:
                table = pq.read_table(path, page_checksum_verification=True)
            except (OSError, pa.ArrowException) as exc:
                raise _unreadable(path, "home thresholds", exc) from None
            thresholds[table.column("chunk").to_numpy()] = table.column("threshold").to_numpy()
        if np.isnan(thresholds).any():
            raise IndexFileError(f"{ctx.input(self.inputs[0])}: no threshold for chunk "
                                 f"{int(np.flatnonzero(np.isnan(thresholds))[0])}: remove the home folder and run again")
        with atomic_path(ctx.out_dir / THRESHOLDS_FILE) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, thresholds)
        return {"chunks": n, "crc32": file_crc32(ctx.out_dir / THRESHOLDS_FILE)}


def _routed_partitions(route_dir, block):
    """(partition, members, routed chunks, their home flags) for the partitions of a layout block that
    have routed chunks, from every route part."""
    p_lo, p_hi = int(block.column("p_lo")[0].as_py()), int(block.column("p_hi")[0].as_py())
    routed = (read_range(route_dir, "partition", p_lo, p_hi, f"routes of partitions {p_lo}..{p_hi - 1}")
              if p_hi > p_lo else None)
    if routed is None:
        return
    partition = routed.column("partition").to_numpy()
    chunk = routed.column("chunk").to_numpy()
    home = routed.column("home").to_numpy(zero_copy_only=False)
    order = np.lexsort((chunk, partition))
    partition, chunk, home = partition[order], chunk[order], home[order]
    bounds = np.searchsorted(partition, np.arange(p_lo, p_hi + 1))
    for p in range(p_lo, p_hi):
        a, b = bounds[p - p_lo], bounds[p - p_lo + 1]
        if b > a:
            yield p, chunk[a:b][home[a:b]], chunk[a:b], home[a:b]


@_dc.dataclass
class SearchStage(_Blocks):
    """Block -> for partitions [p_lo, p_hi): each member list searched, exactly, for every chunk routed
    there (home partitions first), keeping what enters the chunk's running top K in this task: elsewhere
    than its home only candidates at or above its threshold and its running K-th. Rows (chunk, partition,
    home, ids, sims) sorted by chunk, sims in float64 (the merge orders by them). inputs: (layout,
    route, embeddings, thresholds)."""

    parquet_options = {"row_group_size": 1024}

    def setup(self, ctx):
        self._k = self._layout(ctx)["neighbours"]
        self._route = ctx.input(self.inputs[1])
        self._vectors = _embeddings(ctx, self.inputs[2])
        self._thresholds = _checked_array(ctx, self.inputs[3], THRESHOLDS_FILE, (self._vectors.shape[0],),
                                          mmap=True)

    def __call__(self, block):
        routed = [r for r in _routed_partitions(self._route, block) if r[1].size]
        if not routed:
            return pa.table({"chunk": pa.array([], pa.int64()), "partition": pa.array([], pa.int32()),
                             "home": pa.array([], pa.bool_()), "ids": pa.array([], pa.large_list(pa.int64())),
                             "sims": pa.array([], pa.large_list(pa.float64()))})
        # The task's own running top K of each chunk it sees: nothing below its K-th can enter the chunk's
        # final top K (those K are real candidates), so it is a floor for the chunk's later partitions, on
        # top of the home threshold; home partitions go first, as in partitioned.self_search.
        chunks = np.unique(np.concatenate([queries for _, _, queries, _ in routed]))
        best_ids = np.full((chunks.size, self._k), -1, np.int64)
        best_sims = np.full((chunks.size, self._k), -np.inf, np.float64)
        found = {"row": [], "partition": [], "home": [], "count": [], "ids": [], "sims": []}  # row: of `chunks`
        for visitors in (False, True):
            for p, members, queries, home in routed:
                queries, home = queries[home != visitors], home[home != visitors]
                if queries.size == 0:
                    continue
                rows = np.searchsorted(chunks, queries)
                floor = (np.maximum(np.asarray(self._thresholds[queries]), best_sims[rows, -1]) if visitors
                         else None)
                ids, sims = P.search_partition(members, np.asarray(self._vectors[members], np.float32),
                                               np.asarray(self._vectors[queries], np.float32), self._k, floor=floor)
                keep = ids >= 0
                count = keep.sum(axis=1)
                P.merge_into(np.repeat(rows, count), ids[keep], sims[keep], best_ids, best_sims)
                for key, value in (("row", rows), ("partition", np.full(rows.size, p, np.int32)), ("home", home),
                                   ("count", count), ("ids", ids[keep]), ("sims", sims[keep])):
                    found[key].append(value)  # row-major: each row's candidates, in order
        cols = {key: np.concatenate(value) for key, value in found.items()}
        del found
        # only what is still in its chunk's running top K goes on: the rest cannot enter the final top K
        owner = np.repeat(np.arange(cols["row"].size), cols["count"])  # each candidate's search row
        row = cols["row"][owner]
        kth_sim, kth_id = best_sims[row, -1], best_ids[row, -1]
        keep = (cols["sims"] > kth_sim) | ((cols["sims"] == kth_sim) & (cols["ids"] <= kth_id))
        ids, sims = cols["ids"][keep], cols["sims"][keep]
        cols["count"] = np.bincount(owner[keep], minlength=cols["row"].size)
        cols["chunk"] = chunks[cols.pop("row")]
        count = cols["count"].astype(np.int64)
        starts = np.cumsum(count) - count
        order = np.lexsort((cols["partition"], cols["chunk"]))
        counts = count[order]  # each row's list, rows in the new order
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        take = np.repeat(starts[order] - offsets[:-1], counts) + np.arange(offsets[-1])
        list_offsets = pa.array(offsets, pa.int64())  # int64: a task's lists may pass 2**31 values
        return pa.table({"chunk": cols["chunk"][order].astype(np.int64),
                         "partition": cols["partition"][order].astype(np.int32),
                         "home": cols["home"][order].astype(bool),
                         "ids": pa.LargeListArray.from_arrays(list_offsets, pa.array(ids[take], pa.int64())),
                         "sims": pa.LargeListArray.from_arrays(list_offsets, pa.array(sims[take], pa.float64()))})

    def count(self, output):
        lists = output.column("ids")
        values = int(sum(len(chunk.values) for chunk in lists.chunks)) if output.num_rows else 0
        return {"rows": output.num_rows, "candidates": values}


@_dc.dataclass
class MergeStage(_Blocks):
    """Block -> chunks [lo, hi) with their top-K neighbours and their home partition, merged one search
    part at a time into a running top K (memory: the block's chunks x K). inputs: (layout, search)."""

    parquet_options = {"compression": "none", "use_dictionary": False, "row_group_size": 1 << 16}

    def setup(self, ctx):
        self._k = self._layout(ctx)["neighbours"]
        self._search = ctx.input(self.inputs[1])

    def __call__(self, block):
        lo, hi = int(block.column("lo")[0].as_py()), int(block.column("hi")[0].as_py())
        n, k = hi - lo, self._k
        home = np.full(n, -1, np.int32)
        best_ids = np.full((n, k), -1, np.int64)
        best_sims = np.full((n, k), -np.inf, np.float64)
        for path in input_blocks(self._search):
            found = read_part_range(path, "chunk", lo, hi, f"candidates of chunks {lo}..{hi - 1}")
            if found is None or found.num_rows == 0:
                continue
            chunk = found.column("chunk").to_numpy() - lo
            is_home = found.column("home").to_numpy(zero_copy_only=False)
            home[chunk[is_home]] = found.column("partition").to_numpy()[is_home]
            id_lists, sim_lists = found.column("ids").combine_chunks(), found.column("sims").combine_chunks()
            rows = np.repeat(chunk, np.diff(id_lists.offsets.to_numpy()))
            P.merge_into(rows, id_lists.flatten().to_numpy(), sim_lists.flatten().to_numpy(), best_ids, best_sims)
        if (home < 0).any():
            missing = lo + int(np.flatnonzero(home < 0)[0])
            raise IndexFileError(f"{self._search}: chunk {missing} has no row from its home partition: the search "
                                 "parts are incomplete (remove the search folder and run again)")
        return pa.table({"chunk": np.arange(lo, hi, dtype=np.int64), "home": home,
                         "ids": pa.FixedSizeListArray.from_arrays(pa.array(best_ids.reshape(-1)), k),
                         "sims": pa.FixedSizeListArray.from_arrays(pa.array(best_sims.astype(np.float32).reshape(-1)),
                                                                   k)})


@_dc.dataclass
class NeighbourListsStage(WholeStage):
    """Merge blocks -> the folder NeighbourLists opens: ids and sims (chunks x K), members by home
    partition and their offsets, the centroids, and neighbours.json (sizes, CRC32s) written last.
    inputs: (merge, layout, centroids)."""

    def build(self, ctx):
        import shutil

        from ..atomic import atomic_path
        from ..mining.embed_store import _reserve
        from .framework import block_path

        src = ctx.input(self.inputs[0])
        layout = _record(ctx, self.inputs[1])
        n, partitions, k = int(layout["chunks"]), int(layout["partitions"]), int(layout["neighbours"])
        home = np.zeros(n, np.int32)
        covered = 0
        with atomic_path(ctx.out_dir / P.IDS_FILE) as ids_tmp, atomic_path(ctx.out_dir / P.SIMS_FILE) as sims_tmp:
            ids = np.lib.format.open_memmap(ids_tmp, mode="w+", dtype=np.int64, shape=(n, k))
            sims = np.lib.format.open_memmap(sims_tmp, mode="w+", dtype=np.float32, shape=(n, k))
            _reserve(ids_tmp)
            _reserve(sims_tmp)
            for j in range(int(layout["blocks"])):
                part = block_path(src, j)
                if not part.exists():
                    continue  # a block of no chunks (more blocks than chunks)
                try:
                    table = pq.read_table(part, page_checksum_verification=True)
                except (OSError, pa.ArrowException) as exc:
                    raise _unreadable(part, f"neighbour lists of block {j}", exc) from None
                chunk = table.column("chunk").to_numpy()
                if chunk.size:
                    rows = slice(int(chunk[0]), int(chunk[-1]) + 1)
                    ids[rows] = table.column("ids").combine_chunks().flatten().to_numpy().reshape(-1, k)
                    sims[rows] = table.column("sims").combine_chunks().flatten().to_numpy().reshape(-1, k)
                    home[rows] = table.column("home").to_numpy()
                    covered += chunk.size
            ids.flush()
            sims.flush()
            del ids, sims
            if covered != n:
                raise IndexFileError(f"{src}: the merge parts hold {covered} of {n} chunks: remove the merge folder "
                                     "and run again")
        members, offsets = P.members_by_partition(home, partitions)
        for name, array in ((P.MEMBERS_FILE, members), (P.OFFSETS_FILE, offsets)):
            with atomic_path(ctx.out_dir / name) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, array)
        with atomic_path(ctx.out_dir / P.CENTROIDS_FILE) as tmp:
            shutil.copyfile(ctx.input(self.inputs[2]) / P.CENTROIDS_FILE, tmp)
        info = P.write_info(ctx.out_dir, neighbours=k, partitions=partitions, nprobe=int(layout["nprobe"]), chunks=n)
        sizes = np.diff(offsets)
        return {"chunks": n, "neighbours": k, "partitions": partitions, "nprobe": int(layout["nprobe"]),
                "partition_size_min": int(sizes.min(initial=0)), "partition_size_max": int(sizes.max(initial=0)),
                "empty_partitions": int((sizes == 0).sum()), "files": info["files"]}
