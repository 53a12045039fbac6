"""`--mining partitioned`: every chunk's neighbour list from a partitioned batch self-search, as stages.

The steps of nextlong/mining/partitioned.py, each as many tasks as the corpus has blocks of
`block_rows` chunks, so mining spreads over a cluster like every other stage:

    embeddings --centroids-->  k-means on a sample; block j = chunks [lo, hi) and partitions [p_lo, p_hi)
               --route-->      (partition, chunk, home) for each chunk's nprobe nearest centroids,
                               each block sorted by partition
               --search-->     block j searches partitions [p_lo, p_hi): the members (home rows) against
                               every chunk routed there; rows (chunk, partition, ids, sims) sorted by chunk
               --merge-->      block j merges the candidates of chunks [lo, hi) into their top K
               --neighbour_lists--> memory-mapped (chunks x K) arrays, members by partition, centroids
                               (mining/partitioned.py: NeighbourLists), each with its CRC32

route -> search and search -> merge are the shuffles: a block reads, from every part of the step before,
only the row groups whose statistics overlap its range (each part is sorted by the column it is read
by), so no task reads the whole corpus. Parts carry page checksums: a damaged one is named, with its
partitions or chunks, and how to recompute it.
"""

from __future__ import annotations

import dataclasses as _dc
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import IndexFileError
from ..mining import partitioned as P
from .framework import WholeStage, MapStage, input_blocks

BLOCK_ROWS = 1 << 16  # chunks per block: the tasks of route and merge, and the partition groups of search
CHECKED_PARTS = {"write_page_checksum": True, "write_statistics": True, "compression": "zstd"}


def _embeddings(ctx, name):
    from .stages import open_vectors

    return open_vectors(ctx.input(name), record=ctx.input_record(name))


@_dc.dataclass
class CentroidsStage(WholeStage):
    """k-means centroids on a seeded sample of the embeddings, and the block layout every later step
    maps over. inputs: (embeddings,). Its record holds the resolved partitions and nprobe. The seed is
    its own (not --seed): a new --seed draws other documents from the same mined lists."""

    partitions: int = 0  # 0: default_partitions(chunks)
    nprobe: int = P.DEFAULT_NPROBE
    seed: int = 0
    iterations: int = 20
    points_per_centroid: int = 64
    block_rows: int = BLOCK_ROWS

    def build(self, ctx):
        from ..atomic import atomic_path, file_crc32
        from ..mining.kmeans import spherical_kmeans, sample_rows
        from .framework import block_path
        from .writers import write_parquet_atomic

        vectors = _embeddings(ctx, self.inputs[0])
        n = vectors.shape[0]
        partitions = min(self.partitions or P.default_partitions(n), max(n, 1))
        rows = sample_rows(n, min(n, partitions * self.points_per_centroid), self.seed)
        ctx.log(f"centroids: k-means of {partitions} partitions on {rows.size} of {n} chunks")
        centroids = (spherical_kmeans(np.asarray(vectors[rows], np.float32), partitions, seed=self.seed,
                                      iterations=self.iterations) if n else
                     np.zeros((1, vectors.shape[1]), np.float32))
        with atomic_path(ctx.out_dir / P.CENTROIDS_FILE) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, centroids)
        blocks = max(1, math.ceil(n / self.block_rows))
        for j in range(blocks):
            lo, hi = j * self.block_rows, min(n, (j + 1) * self.block_rows)
            write_parquet_atomic(pa.table({"lo": [lo], "hi": [hi], "p_lo": [j * partitions // blocks],
                                           "p_hi": [(j + 1) * partitions // blocks]}), block_path(ctx.out_dir, j))
        return {"partitions": partitions, "nprobe": min(self.nprobe, partitions), "chunks": n, "blocks": blocks, "sample": int(rows.size),
                "crc32": file_crc32(ctx.out_dir / P.CENTROIDS_FILE)}


def neighbours_for_planning(chunks_dir, plan: dict, quantile: float = 0.9, sample: int = 100_000) -> int:
    """K such that the first search of `quantile` of the anchors fits in the lists: the planner's own
    initial width (negatives.initial_width) over a sample of documents, rounded up to a multiple of 8."""
    from .negatives import anchor_tokens, initial_width, negatives_per_meta_chunk
    from .stages import _separator_ids, load_store

    store = load_store(chunks_dir)
    if store.num_docs == 0:
        return 16
    sep_len = int(_separator_ids(plan.get("tokenizer"), plan.get("separator", "\n")).size)
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


def read_range(folder, column: str, lo: int, hi: int, what: str, columns=None) -> pa.Table:
    """The rows of every part in `folder` whose `column` (the first column, each part sorted by it) lies
    in [lo, hi): only row groups whose statistics overlap are read, every page's checksum verified."""
    tables = []
    for path in input_blocks(folder):
        try:
            f = pq.ParquetFile(path, page_checksum_verification=True)
            groups = []
            for g in range(f.metadata.num_row_groups):
                stats = f.metadata.row_group(g).column(0).statistics
                if stats is None or not stats.has_min_max or (stats.max >= lo and stats.min < hi):
                    groups.append(g)
            if groups:
                table = f.read_row_groups(groups, columns=columns)
                keep = np.flatnonzero((table.column(column).to_numpy() >= lo) & (table.column(column).to_numpy() < hi))
                tables.append(table.take(keep))
        except (OSError, pa.ArrowException) as exc:
            raise IndexFileError(f"{path}: {what}: unreadable ({str(exc).splitlines()[0][:200]}); delete it and "
                                 f"{path.parent / '_done.json'} (if present), then run again: only that part is "
                                 "recomputed") from None
    return pa.concat_tables(tables) if tables else None


class _Blocks(MapStage):
    """A step mapped over the centroids stage's blocks (one row: lo, hi, p_lo, p_hi)."""

    parquet_options = {**CHECKED_PARTS, "row_group_size": 4096}

    def _settings(self, ctx):
        from .framework import read_done

        record = read_done(ctx.input(self.inputs[0]) / "_done.json")["counts"]
        return record["partitions"], record["nprobe"]


@_dc.dataclass
class _ListsOfK(_Blocks):
    """A step that knows K: `neighbours`, or (0) what the planner's settings `plan` ask for on the chunks
    (the last input)."""

    neighbours: int = 0
    plan: dict = _dc.field(default_factory=dict)

    def _width(self, ctx) -> int:
        return self.neighbours or neighbours_for_planning(ctx.input(self.inputs[-1]), self.plan)


@_dc.dataclass
class RouteStage(_Blocks):
    """Block -> (partition, chunk, home) for each of its chunks' nprobe nearest centroids, by partition.
    inputs: (centroids, embeddings)."""

    progress_unit = "block"

    def setup(self, ctx):
        from ..atomic import file_crc32
        from .framework import read_done

        self._partitions, self._nprobe = self._settings(ctx)
        path = ctx.input(self.inputs[0]) / P.CENTROIDS_FILE
        if file_crc32(path) != read_done(ctx.input(self.inputs[0]) / "_done.json")["counts"].get("crc32"):
            raise IndexFileError(f"{path}: CRC32 does not match the centroids stage's record: the file is damaged; "
                                 f"remove {path.parent} and run again")
        self._centroids = np.load(path, allow_pickle=False)
        self._vectors = _embeddings(ctx, self.inputs[1])

    def __call__(self, block):
        lo, hi = int(block.column("lo")[0].as_py()), int(block.column("hi")[0].as_py())
        probes = P.route(np.asarray(self._vectors[lo:hi], np.float32), self._centroids, self._nprobe)
        chunk = np.repeat(np.arange(lo, hi, dtype=np.int64), probes.shape[1])
        partition = probes.reshape(-1)
        home = np.tile(np.arange(probes.shape[1]) == 0, hi - lo)
        order = np.lexsort((chunk, partition))
        return pa.table({"partition": partition[order], "chunk": chunk[order], "home": home[order]})


@_dc.dataclass
class SearchStage(_ListsOfK):
    """Block -> for partitions [p_lo, p_hi): each member list searched, exactly, for every chunk routed
    there; rows (chunk, partition, home, ids, sims) sorted by chunk. inputs: (centroids, route, embeddings,
    chunks)."""

    progress_unit = "block"
    parquet_options = {**CHECKED_PARTS, "row_group_size": 1024}

    def setup(self, ctx):
        self._partitions, self._nprobe = self._settings(ctx)
        self._k = self._width(ctx)
        self._route = ctx.input(self.inputs[1])
        self._vectors = _embeddings(ctx, self.inputs[2])

    def __call__(self, block):
        p_lo, p_hi = int(block.column("p_lo")[0].as_py()), int(block.column("p_hi")[0].as_py())
        empty = pa.table({"chunk": pa.array([], pa.int64()), "partition": pa.array([], pa.int32()),
                          "home": pa.array([], pa.bool_()), "ids": pa.array([], pa.list_(pa.int64())), "sims": pa.array([], pa.list_(pa.float64()))})
        if p_hi <= p_lo:
            return empty
        routed = read_range(self._route, "partition", p_lo, p_hi, f"routes of partitions {p_lo}..{p_hi - 1}")
        if routed is None:
            return empty
        partition = routed.column("partition").to_numpy()
        chunk = routed.column("chunk").to_numpy()
        home = routed.column("home").to_numpy(zero_copy_only=False)
        order = np.lexsort((chunk, partition))
        partition, chunk, home = partition[order], chunk[order], home[order]
        bounds = np.searchsorted(partition, np.arange(p_lo, p_hi + 1))
        out = {"chunk": [], "partition": [], "home": [], "ids": [], "sims": [], "length": []}
        for p in range(p_lo, p_hi):
            a, b = bounds[p - p_lo], bounds[p - p_lo + 1]
            queries, members = chunk[a:b], chunk[a:b][home[a:b]]
            if queries.size == 0 or members.size == 0:
                continue
            ids, sims = P.search_partition(members, np.asarray(self._vectors[members], np.float32),
                                           np.asarray(self._vectors[queries], np.float32), self._k)
            out["chunk"].append(queries)
            out["partition"].append(np.full(queries.size, p, np.int32))
            out["home"].append(home[a:b])
            out["ids"].append(ids.reshape(-1))
            out["sims"].append(sims.reshape(-1))
            out["length"].append(np.full(queries.size, ids.shape[1], np.int64))
        if not out["chunk"]:
            return empty
        cols = {key: np.concatenate(value) for key, value in out.items()}
        length = cols["length"]
        starts = np.cumsum(length) - length
        order = np.lexsort((cols["partition"], cols["chunk"]))
        # the flat positions of each row's list, rows in the new order
        lengths = length[order]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        take = np.repeat(starts[order] - offsets[:-1], lengths) + np.arange(offsets[-1])
        list_offsets = pa.array(offsets.astype(np.int32))
        return pa.table({"chunk": cols["chunk"][order], "partition": cols["partition"][order],
                         "home": cols["home"][order],
                         "ids": pa.ListArray.from_arrays(list_offsets, pa.array(cols["ids"][take])),
                         "sims": pa.ListArray.from_arrays(list_offsets, pa.array(cols["sims"][take]))})


@_dc.dataclass
class MergeStage(_ListsOfK):
    """Block -> chunks [lo, hi) with their top-K neighbours merged from their probes' candidates, and
    their home partition. inputs: (centroids, search, chunks)."""

    progress_unit = "block"
    parquet_options = {**CHECKED_PARTS, "compression": "none", "use_dictionary": False, "row_group_size": 1 << 16}

    def setup(self, ctx):
        self._partitions, self._nprobe = self._settings(ctx)
        self._k = self._width(ctx)
        self._search = ctx.input(self.inputs[1])

    def __call__(self, block):
        lo, hi = int(block.column("lo")[0].as_py()), int(block.column("hi")[0].as_py())
        found = read_range(self._search, "chunk", lo, hi, f"candidates of chunks {lo}..{hi - 1}")
        n = hi - lo
        home = np.full(n, -1, np.int32)
        if found is None:
            ids = np.full((n, self._k), -1, np.int64)
            sims = np.full((n, self._k), -np.inf, np.float32)
        else:
            chunk = found.column("chunk").to_numpy() - lo
            id_lists, sim_lists = found.column("ids").combine_chunks(), found.column("sims").combine_chunks()
            counts = np.diff(id_lists.offsets.to_numpy())
            cand = id_lists.flatten().to_numpy()
            ids, sims = P.merge(np.repeat(chunk, counts), cand, sim_lists.flatten().to_numpy(), n, self._k)
            is_home = found.column("home").to_numpy(zero_copy_only=False)
            home[chunk[is_home]] = found.column("partition").to_numpy()[is_home]
        if (home < 0).any():
            missing = lo + int(np.flatnonzero(home < 0)[0])
            raise IndexFileError(f"{self._search}: chunk {missing} has no candidates from its home partition: "
                                 "the search parts are incomplete (remove the search folder and run again)")
        k = ids.shape[1]
        return pa.table({"chunk": np.arange(lo, hi, dtype=np.int64), "home": home,
                         "ids": pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), k),
                         "sims": pa.FixedSizeListArray.from_arrays(pa.array(sims.reshape(-1)), k)})


@_dc.dataclass
class NeighbourListsStage(WholeStage):
    """Merge blocks -> the folder NeighbourLists opens: ids and sims (chunks x K), members by home
    partition and their offsets, the centroids, and neighbours.json (sizes, CRC32s) written last.
    inputs: (merge, centroids)."""

    def build(self, ctx):
        import shutil

        from ..atomic import atomic_path
        from ..mining.embed_store import _reserve
        from .framework import block_path, read_done

        src = ctx.input(self.inputs[0])
        record = read_done(ctx.input(self.inputs[1]) / "_done.json")["counts"]
        n, partitions = int(record["chunks"]), int(record["partitions"])
        parts = [block_path(src, j) for j in range(int(record["blocks"])) if block_path(src, j).exists()]
        k = pq.read_schema(parts[0]).field("ids").type.list_size if parts else 0
        home = np.zeros(n, np.int32)
        with atomic_path(ctx.out_dir / P.IDS_FILE) as ids_tmp, atomic_path(ctx.out_dir / P.SIMS_FILE) as sims_tmp:
            ids = np.lib.format.open_memmap(ids_tmp, mode="w+", dtype=np.int64, shape=(n, k))
            sims = np.lib.format.open_memmap(sims_tmp, mode="w+", dtype=np.float32, shape=(n, k))
            _reserve(ids_tmp)
            _reserve(sims_tmp)
            for part in parts:
                table = pq.read_table(part)
                chunk = table.column("chunk").to_numpy()
                if chunk.size:
                    rows = slice(int(chunk[0]), int(chunk[-1]) + 1)
                    ids[rows] = table.column("ids").combine_chunks().flatten().to_numpy().reshape(-1, k)
                    sims[rows] = table.column("sims").combine_chunks().flatten().to_numpy().reshape(-1, k)
                    home[rows] = table.column("home").to_numpy()
            ids.flush()
            sims.flush()
            del ids, sims
        members, offsets = P.members_by_partition(home, partitions)
        for name, array in ((P.MEMBERS_FILE, members), (P.OFFSETS_FILE, offsets)):
            with atomic_path(ctx.out_dir / name) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, array)
        with atomic_path(ctx.out_dir / P.CENTROIDS_FILE) as tmp:
            shutil.copyfile(ctx.input(self.inputs[1]) / P.CENTROIDS_FILE, tmp)
        info = P.write_info(ctx.out_dir, neighbours=k, partitions=partitions, nprobe=int(record["nprobe"]), chunks=n)
        sizes = np.diff(offsets)
        return {"chunks": n, "neighbours": k, "partitions": partitions, "nprobe": int(record["nprobe"]),
                "partition_size_min": int(sizes.min(initial=0)), "partition_size_max": int(sizes.max(initial=0)),
                "empty_partitions": int((sizes == 0).sum()), "files": info["files"]}
