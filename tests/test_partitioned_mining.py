"""`--mining partitioned`: exact top-k, k-means, the partitioned self-search against exact search, and the
stages end to end (equal to the exact route when every partition is probed, resume after a killed
partition task, a damaged partition named)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from nextlong.errors import IndexFileError, UsageError
from nextlong.mining.exact import exact_top_k
from nextlong.mining.kmeans import spherical_kmeans
from nextlong.mining.partitioned import (NeighbourLists, default_partitions, merge_into, recall_at, route,
                                         self_search)
from tests.helpers import (corpus_head, lexical_vectors, search_one_query_at_a_time, stdlib_source_documents,
                           write_jsonl)


def unit_vectors(n, d, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def reference_top_k(queries, vectors, k):
    """float64 products, then similarity descending and column ascending: the slow, obvious answer."""
    s = queries.astype(np.float64) @ vectors.astype(np.float64).T
    return np.stack([np.lexsort((np.arange(len(vectors)), -row))[:k] for row in s])


@pytest.mark.parametrize("k", [12, 5])  # the k-th found by numpy's partition (k a large share), by the heap
def test_exact_top_k_equals_the_float64_reference_with_ties_and_padding(k):
    v = unit_vectors(700, 32)
    v[5] = v[9] = v[300]  # three identical vectors: the tie goes to the lower id
    ids, sims = exact_top_k(v[:300], v, k, rows=64)
    assert np.array_equal(ids, reference_top_k(v[:300], v, k))
    assert ids[5, :3].tolist() == [5, 9, 300] and ids[300 - 300 + 9, :3].tolist() == [5, 9, 300]
    assert np.allclose(sims, np.sort(v[:300].astype(np.float64) @ v.T.astype(np.float64), axis=1)[:, ::-1][:, :k],
                       atol=1e-6)
    small, small_sims = exact_top_k(v[:2], v[:3], 5)  # fewer vectors than k: padded
    assert (small[:, 3:] == -1).all() and np.isinf(small_sims[:, 3:]).all() and (small[:, :3] >= 0).all()


def test_exact_top_k_does_not_depend_on_the_batch():
    v = unit_vectors(2000, 64, seed=1)
    batch_ids, batch_sims = exact_top_k(v[:500], v, 20, rows=128)
    for i in (0, 77, 499):
        ids, sims = exact_top_k(v[i:i + 1], v, 20)
        assert np.array_equal(ids[0], batch_ids[i]) and sims[0].tobytes() == batch_sims[i].tobytes()
    ids, _ = exact_top_k(v[:500], v, 7, rows=500)
    assert np.array_equal(ids, batch_ids[:, :7])  # the top k is a prefix of the top K


def test_exact_top_k_at_the_edges_of_float32():
    """Similarities below float32's normal range (absolute, not relative, rounding), products that
    overflow to inf or NaN (inf - inf), a zero query against huge vectors: still the float64 order."""
    def check(q, v, k, **kw):
        ids, _ = exact_top_k(np.asarray(q, np.float32), np.asarray(v, np.float32), k, **kw)
        assert np.array_equal(ids, reference_top_k(np.asarray(q, np.float32), np.asarray(v, np.float32), k)), (q, v)

    check([[1e-45, 1e-45]], [[1.45, 1.45], [2.6, 0.0]], 1)  # subnormal products
    check([[-3.2926106e-21, -1.7368760e-20]], [[1.5171485e-21, -3.5991368e-21], [1.5172132e-21, -3.5991416e-21]], 1)
    check([[0.0, 0.0]], [[2e19, 0.0], [0.0, 1.0]], 2)  # a float32 norm would overflow
    check([[1e20, 1e20]], [[1e20, -1e20], [-1.0, 0.0]], 1)  # the float32 product is NaN
    check([[2e19, 2e19]], [[2e19, 2e19], [1.0, 0.0], [2e19, 1.9e19]], 2)  # inf products, 64*k > n path
    check([[2e19, 2e19]], [[2e19, 2e19], [1.0, 0.0], [2e19, 1.9e19]] + [[0.0, 1.0]] * 300, 2)  # the heap path
    q = np.array([[1e-45]], np.float32)
    exact = reference_top_k(q, np.array([[1.0000001]], np.float32), 1)
    ids, _ = exact_top_k(q, np.array([[1.0000001]], np.float32), 1, floor=np.array([1.4012986313726115e-45]))
    assert ids.tolist() == exact.tolist() == [[0]]  # a floor equal to a subnormal similarity keeps it
    with pytest.raises(ValueError, match="NaN or infinite"):
        exact_top_k(np.ones((1, 2), np.float32), np.array([[np.nan, 0.0]], np.float32), 1)
    best_ids, best_sims = np.full((1, 2), -1, np.int64), np.full((1, 2), -np.inf)
    merge_into(np.array([0]), np.array([5]), np.array([-np.inf]), best_ids, best_sims)
    assert best_ids.tolist() == [[5, -1]]  # an unused slot takes any candidate


def test_spherical_kmeans_is_deterministic_and_reseeds_empty_clusters():
    v = unit_vectors(600, 16, seed=2)
    a = spherical_kmeans(v, 12, seed=3)
    b = spherical_kmeans(v, 12, seed=3)
    assert a.tobytes() == b.tobytes()
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(a, spherical_kmeans(v, 12, seed=4))
    # 10 distinct points, 4 copies each, asked for 10 clusters: every cluster keeps a member
    base = unit_vectors(10, 8, seed=5)
    c = spherical_kmeans(np.repeat(base, 4, axis=0), 10, seed=0)
    labels = route(np.repeat(base, 4, axis=0), c, 1)[:, 0]
    assert np.bincount(labels, minlength=10).min() > 0



def test_spatial_order_puts_neighbouring_centroids_in_the_same_ranges():
    """Centroids along an arc, shuffled: every aligned range of 2^j consecutive ids after spatial_order is a
    run of neighbours on the arc (what makes a search task's range of partitions one region)."""
    from nextlong.mining.kmeans import spatial_order

    rng = np.random.default_rng(3)
    angles = rng.permutation(np.linspace(0.0, 1.5, 64))
    arc = np.zeros((64, 8))
    arc[:, 0], arc[:, 1] = np.cos(angles), np.sin(angles)
    arc[:, 2:] = 1e-3 * rng.standard_normal((64, 6))
    order = spatial_order(arc)
    assert sorted(order.tolist()) == list(range(64)) and np.array_equal(order, spatial_order(arc))
    rank = np.argsort(np.argsort(angles))[order]  # each position's place along the arc
    for width in (2, 4, 8, 16, 32):
        for lo in range(0, 64, width):
            block = np.sort(rank[lo:lo + width])
            assert block[-1] - block[0] == width - 1, (width, lo, block)


def test_merge_orders_by_similarity_then_id_and_pads():
    ids, sims = np.full((3, 3), -1, np.int64), np.full((3, 3), -np.inf)  # empty running best
    merge_into(np.array([0, 0, 0, 1]), np.array([7, 3, 5, 2]), np.array([0.5, 0.9, 0.9, 0.1]), ids, sims)
    assert ids.tolist() == [[3, 5, 7], [2, -1, -1], [-1, -1, -1]]
    assert sims[0].tolist() == pytest.approx([0.9, 0.9, 0.5]) and np.isinf(sims[1, 1:]).all()
    # into a running best: a tie goes to the lower id, a worse candidate and padding (-1) change nothing
    merge_into(np.array([0, 0, 1, 2]), np.array([4, 1, -1, 8]), np.array([0.5, 0.1, 0.7, 0.3]), ids, sims)
    assert ids.tolist() == [[3, 5, 4], [2, -1, -1], [8, -1, -1]]


def test_merging_candidates_in_any_order_and_split_gives_one_searchs_top_k():
    rng = np.random.default_rng(0)
    n, k, m = 40, 6, 2000
    rows, ids = rng.integers(0, n, m), rng.permutation(m)  # distinct ids
    sims = rng.integers(0, 50, m) / 50.0  # many ties
    expected = np.full((n, k), -1, np.int64)
    for r in range(n):
        mine = np.flatnonzero(rows == r)
        best = mine[np.lexsort((ids[mine], -sims[mine]))][:k]
        expected[r, :best.size] = ids[best]
    got_ids, got_sims = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf)
    for part in np.array_split(rng.permutation(m), 7):
        merge_into(rows[part], ids[part], sims[part], got_ids, got_sims)
    assert np.array_equal(got_ids, expected)


def test_a_floor_leaves_out_only_what_is_below_it():
    v = unit_vectors(800, 16, seed=9)
    full_ids, full_sims = exact_top_k(v[:200], v, 15, sims_dtype=np.float64)
    floor = np.where(np.arange(200) % 3 == 0, -np.inf, full_sims[:, 7])  # some rows without a floor
    floor[1] = full_sims[1, 0] + 1.0  # nothing reaches it
    floor[2] = full_sims[2, 7] + 1e-9  # the 8th is within float32 rounding of it, but below: left out
    ids, sims = exact_top_k(v[:200], v, 15, sims_dtype=np.float64, floor=floor, rows=32)
    keep = full_sims >= floor[:, None]
    assert np.array_equal(np.where(keep, full_ids, -1), ids)
    assert np.array_equal(np.where(keep, full_sims, -np.inf), sims)
    assert (ids[1] == -1).all() and (ids[0] >= 0).all() and (ids[2, 7:] == -1).all() and ids[2, 6] >= 0


def test_probing_every_partition_gives_the_exact_lists():
    v = unit_vectors(900, 24, seed=6)
    v[100:110] = v[50]  # ten copies of one vector: ties across partitions go by id
    centroids = spherical_kmeans(v, 15, seed=0)
    ids, sims, home = self_search(v, centroids, nprobe=15, k=20)
    exact_ids, exact_sims = exact_top_k(v, v, 20)
    assert np.array_equal(ids, exact_ids) and sims.tobytes() == exact_sims.tobytes()
    assert np.bincount(home, minlength=15).sum() == 900
    fewer, _, _ = self_search(v, centroids, nprobe=3, k=20)
    assert 0.5 < recall_at(fewer, exact_ids, 10) < 1.0  # fewer probes miss some: the parameter does something


def lists_folder(folder, vectors, partitions, nprobe, k=4):
    """A neighbour-lists folder over `vectors` (its lists left empty: only the partitions are read)."""
    from nextlong.mining.partitioned import members_by_partition, write_info

    folder.mkdir(parents=True, exist_ok=True)
    centroids = spherical_kmeans(vectors, partitions, seed=0)
    members, offsets = members_by_partition(route(vectors, centroids, 1)[:, 0], partitions)
    arrays = {"neighbour_ids.npy": np.full((len(vectors), k), -1, np.int64),
              "neighbour_sims.npy": np.full((len(vectors), k), -np.inf, np.float32),
              "members.npy": members, "member_offsets.npy": offsets, "centroids.npy": centroids}
    for name, array in arrays.items():
        np.save(folder / name, array)
    write_info(folder, neighbours=k, partitions=partitions, nprobe=nprobe, chunks=len(vectors))
    return NeighbourLists(folder, vectors)


@pytest.mark.parametrize("k,held", [(1, None), (7, None), (64, None), (1000, None), (64, 1)])
def test_wide_search_batched_by_partition_equals_one_query_at_a_time(tmp_path, monkeypatch, k, held):
    """NeighbourLists.search (an anchor whose lists ran out) reads each probed partition once for all its
    queries (or once per batch of queries, `held`: SEARCH_BYTES); the answer must be the per-query search's,
    byte for byte: vectors of few distinct values and exact copies across partitions (ties go by id),
    queries that repeat, k past the probed members (padding)."""
    from nextlong.mining import partitioned

    if held is not None:
        monkeypatch.setattr(partitioned, "SEARCH_BYTES", held)
    rng = np.random.default_rng(11)
    v = rng.integers(-2, 3, (700, 6)).astype(np.float32)
    v[rng.choice(700, 60, replace=False)] = v[3]  # copies of one vector, in many partitions
    lists = lists_folder(tmp_path / "lists", v, partitions=25, nprobe=4)
    queries = np.concatenate([v[rng.choice(700, 30)], v[[3, 3]], rng.standard_normal((8, 6)).astype(np.float32)])
    ids, sims = lists.search(queries, k)
    ref_ids, ref_sims = search_one_query_at_a_time(lists, queries, k)
    assert np.array_equal(ids, ref_ids) and sims.tobytes() == ref_sims.tobytes()
    assert (ids[30, :k] == ids[31, :k]).all()
    again_ids, again_sims = lists.search(queries[::-1], k)  # the partitions' norms now come from the cache
    assert np.array_equal(again_ids, ref_ids[::-1]) and again_sims.tobytes() == ref_sims[::-1].tobytes()
    assert lists.search(queries[:0], k)[0].shape == (0, k)


def test_wide_search_keeps_every_candidate_within_the_float32_rounding_of_the_kth_score(tmp_path):
    """Fractional vectors, where float32 products are rounded (the test above uses small integers, exact in
    float32): 300 permutations of one vector tie exactly against a constant query, and their float32 scores
    differ in the last bits, so the top k by id are found only if every column within the rounding bound of
    the k-th float32 score is searched exactly; the bound must use the largest norm of the probed partitions
    (a partition of vectors 1000 times shorter is probed too)."""
    rng = np.random.default_rng(0)
    d = 48
    w = (rng.standard_normal(d) * 10.0 ** rng.uniform(-3, 3, d)).astype(np.float32)
    v = np.concatenate([np.stack([rng.permutation(w) for _ in range(300)]),
                        -np.abs(rng.standard_normal((100, d))).astype(np.float32) * 1e-3])
    lists = lists_folder(tmp_path / "lists", v, partitions=6, nprobe=6)
    queries = np.full((3, d), 0.37, np.float32)
    queries[1], queries[2] = 1.3, 1e-3
    for k in (1, 5, 20):
        ids, sims = lists.search(queries, k)
        ref_ids, ref_sims = search_one_query_at_a_time(lists, queries, k)
        assert np.array_equal(ids, ref_ids) and sims.tobytes() == ref_sims.tobytes()


def test_recall_at_the_default_nprobe_on_real_text_vectors():
    """Stdlib sources chunked, embedded by the lexical embedder: recall@10 of the lists against exact search
    at the default partitions and nprobe (the benchmark measures it on MiniLM / static vectors at scale)."""
    from nextlong.mining.kmeans import sample_rows
    from nextlong.mining.partitioned import DEFAULT_NPROBE

    texts = [text[i:i + 1024] for _, text in stdlib_source_documents()[:400] for i in range(0, len(text), 1024)]
    v = lexical_vectors(texts[:6000], dim=64)
    p = default_partitions(len(v))
    centroids = spherical_kmeans(v[sample_rows(len(v), 64 * p, 0)], p, seed=0)
    ids, _, _ = self_search(v, centroids, DEFAULT_NPROBE, 11)
    queries = np.arange(0, len(v), 7)
    exact, _ = exact_top_k(v[queries], v, 11)
    assert recall_at(ids[queries], exact, 11) >= 0.95


# --- the stages ----------------------------------------------------------------------------------


FAST = dict(embedder="hashed-tfidf:64", chunk_size=512, target_length=2048, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", corpus_head(250_000))


def folder_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".json")}


def test_probing_every_partition_reproduces_the_exact_route(corpus, tmp_path):
    from nextlong.synthesis import synthesize
    from nextlong.synthesis.negatives import ExactSearcher
    from nextlong.synthesis.artifacts import open_vectors

    exact = synthesize(corpus, tmp_path / "exact", **FAST)
    part = synthesize(corpus, tmp_path / "part", mining="partitioned", partitions=12, nprobe=12, mining_block_rows=100,
                      **FAST)
    assert exact["settings"]["search"] == "exact" and part["settings"]["search"] == "partitioned"
    mining = part["statistics"]["mining"]
    assert mining["route"] == "partitioned" and mining["partitions"] == 12 and mining["nprobe"] == 12
    assert folder_bytes(tmp_path / "exact" / "data") == folder_bytes(tmp_path / "part" / "data")
    vectors = open_vectors(tmp_path / "part" / "embeddings")
    lists = NeighbourLists(tmp_path / "part" / "neighbour_lists", vectors)
    ids, sims = ExactSearcher(vectors).search(vectors, lists.k)
    assert np.array_equal(np.asarray(lists.ids), ids) and np.asarray(lists.sims).tobytes() == sims.tobytes()
    parts = sorted((tmp_path / "part" / "search").glob("part-*.parquet"))
    assert len(parts) > 1  # several partition tasks
    for path in parts:  # a task passes on at most K candidates per chunk: its running top K, not all it scored
        table = pq.read_table(path)
        counts = np.bincount(table.column("chunk").to_numpy(), weights=[len(x) for x in table.column("ids").to_pylist()])
        assert counts.max() <= lists.k < counts.sum()


def test_partitioned_lists_equal_exact_lists_when_similarities_tie_at_the_home_threshold(corpus, tmp_path,
                                                                                        monkeypatch):
    """The search stage leaves out what falls below a chunk's home K-th similarity: only strictly below, since a
    member of another partition at exactly that similarity and with a lower id belongs in the list. Real-text
    vectors almost never tie there (an audit raised that floor by 1e-3: 34 of 30,207 lists changed, no test
    noticed), so the stages run on vectors of few distinct small integers, where most lists end in a tie
    across partitions; probing every partition must give the exact lists, ids and tie order included."""
    from nextlong.synthesis import neighbours, synthesize

    real = neighbours._embeddings

    def tied(ctx, name):
        shape = real(ctx, name).shape
        return np.random.default_rng(5).integers(0, 3, shape).astype(np.float32)

    monkeypatch.setattr(neighbours, "_embeddings", tied)
    synthesize(corpus, tmp_path / "part", mining="partitioned", partitions=4, nprobe=4, neighbours=8,
               mining_block_rows=100, **FAST)
    from nextlong.synthesis.artifacts import open_vectors

    vectors = np.random.default_rng(5).integers(0, 3, open_vectors(tmp_path / "part" / "embeddings").shape)
    vectors = vectors.astype(np.float32)
    lists = NeighbourLists(tmp_path / "part" / "neighbour_lists", vectors)
    assert lists.k == 8 and lists.partitions == 4
    ids, sims = exact_top_k(vectors, vectors, lists.k)
    assert np.array_equal(np.asarray(lists.ids), ids) and np.asarray(lists.sims).tobytes() == sims.tobytes()


def test_default_partitioned_run_finds_hard_negatives_and_counts_wide_searches(corpus, tmp_path):
    from nextlong.synthesis import synthesize

    m = synthesize(corpus, tmp_path / "p", mining="partitioned", neighbours=8, **FAST)
    s = m["statistics"]
    assert s["documents_built"] > 0
    assert s["anchor_negative_similarity_mean"] > 2 * s["random_chunk_pair_similarity_mean"]
    assert s["mining"]["neighbours"] == 8 and s["mining"]["anchors_searched_again"] > 0  # k = 8 is too few here
    # outside its home partition a chunk keeps only what reaches its home's K-th similarity
    layout = json.loads((tmp_path / "p" / "layout" / "_done.json").read_text())["counts"]
    kept = json.loads((tmp_path / "p" / "search" / "_done.json").read_text())["counts"]["candidates"]
    assert layout["chunks"] * 8 <= kept < 0.5 * layout["chunks"] * layout["nprobe"] * 8, (kept, layout)
    synthesize(corpus, tmp_path / "p2", mining="partitioned", neighbours=8, **FAST)
    assert folder_bytes(tmp_path / "p" / "data") == folder_bytes(tmp_path / "p2" / "data")


def test_resume_after_a_killed_partition_task_redoes_only_that_task(corpus, tmp_path, monkeypatch):
    from nextlong.synthesis import neighbours, synthesize

    settings = dict(mining="partitioned", partitions=12, mining_block_rows=64, **FAST)
    real = neighbours.SearchStage.__call__
    calls = []

    def dies_on_the_fourth(self, block):
        calls.append(int(block.column("p_lo")[0].as_py()))
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return real(self, block)

    monkeypatch.setattr(neighbours.SearchStage, "__call__", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        synthesize(corpus, tmp_path / "out", **settings)
    done = sorted((tmp_path / "out" / "search" / "_done").glob("part-*.json"))
    assert len(done) == 3
    calls.clear()
    monkeypatch.setattr(neighbours.SearchStage, "__call__", lambda self, block: (calls.append(1), real(self, block))[1])
    synthesize(corpus, tmp_path / "out", **settings)
    blocks = len(list((tmp_path / "out" / "layout").glob("part-*.parquet")))
    assert len(calls) == blocks - 3  # the three finished tasks were not redone
    synthesize(corpus, tmp_path / "clean", **settings)
    for stage in ("search", "merge", "neighbour_lists", "data"):
        assert folder_bytes(tmp_path / "out" / stage) == folder_bytes(tmp_path / "clean" / stage), stage


def test_a_damaged_partition_is_named(corpus, tmp_path):
    import shutil

    from nextlong.synthesis import synthesize
    from nextlong.synthesis.artifacts import open_vectors

    out = tmp_path / "out"
    synthesize(corpus, out, mining="partitioned", partitions=12, mining_block_rows=100, **FAST)
    merged = out / "merge" / "part-00000.parquet"
    kept = merged.read_bytes()
    merged.unlink()  # a finished stage's part gone: refused, not read as zeros
    shutil.rmtree(out / "neighbour_lists")
    with pytest.raises(IndexFileError, match=r"merge parts hold \d+ of \d+ chunks"):
        synthesize(corpus, out, mining="partitioned", partitions=12, mining_block_rows=100, **FAST)
    merged.write_bytes(kept)
    synthesize(corpus, out, mining="partitioned", partitions=12, mining_block_rows=100, **FAST)
    part = out / "search" / "part-00001.parquet"
    first = pq.ParquetFile(part).metadata.row_group(0).column(3)  # the ids lists of the first row group
    data = bytearray(part.read_bytes())
    at = first.data_page_offset + first.total_compressed_size // 2
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    part.write_bytes(bytes(data))
    shutil.rmtree(out / "merge")
    with pytest.raises(IndexFileError, match=r"part-00001\.parquet: candidates of chunks .*delete it"):
        synthesize(corpus, out, mining="partitioned", partitions=12, mining_block_rows=100, **FAST)
    lists = out / "neighbour_lists" / "neighbour_ids.npy"
    raw = bytearray(lists.read_bytes())
    raw[-3] ^= 1
    lists.write_bytes(bytes(raw))
    with pytest.raises(IndexFileError, match="neighbour_ids.npy: CRC32"):
        NeighbourLists(out / "neighbour_lists", open_vectors(out / "embeddings"))
    info = json.loads((out / "neighbour_lists" / "neighbours.json").read_text())
    assert set(info["files"]) >= {"neighbour_ids.npy", "neighbour_sims.npy", "members.npy", "centroids.npy"}
    centroids = out / "centroids" / "centroids.npy"
    raw = bytearray(centroids.read_bytes())
    raw[-5] ^= 1
    centroids.write_bytes(bytes(raw))
    shutil.rmtree(out / "route")
    with pytest.raises(IndexFileError, match="centroids.npy: CRC32"):
        synthesize(corpus, out, mining="partitioned", partitions=12, mining_block_rows=100, **FAST)


def test_a_small_task_budget_cuts_more_blocks_and_changes_nothing(corpus, tmp_path, monkeypatch):
    """The layout adds blocks until a search task holds at most task_candidates candidates; the lists do not
    depend on it, and k-means is not redone for it."""
    from nextlong.synthesis import pipeline, synthesize

    settings = dict(mining="partitioned", partitions=12, neighbours=16, **FAST)
    synthesize(corpus, tmp_path / "few", **settings)
    real = pipeline.partitioned_steps

    def small_tasks(cfg, chunks):
        steps = real(cfg, chunks)
        steps[1].task_candidates = 4_000  # the layout stage
        return steps

    monkeypatch.setattr(pipeline, "partitioned_steps", small_tasks)
    synthesize(corpus, tmp_path / "many", **settings)
    blocks = len(list((tmp_path / "many" / "layout").glob("part-*.parquet")))
    chunks = json.loads((tmp_path / "many" / "layout" / "_done.json").read_text())["counts"]["chunks"]
    assert blocks >= chunks * 12 * 16 // 4_000 > 1
    for stage in ("centroids", "neighbour_lists", "data"):
        assert folder_bytes(tmp_path / "few" / stage) == folder_bytes(tmp_path / "many" / stage), stage


def test_a_non_finite_embedding_is_named_before_any_search(corpus, tmp_path):
    from nextlong.atomic import file_crc32
    from nextlong.synthesis import synthesize

    out = tmp_path / "out"
    synthesize(corpus, out, **FAST)  # the exact route: chunks and embeddings cached
    path = out / "embeddings" / "embeddings.npy"
    vectors = np.load(path, mmap_mode="r+")
    vectors[7, 3] = np.nan
    vectors.flush()
    del vectors
    record = json.loads((out / "embeddings" / "_done.json").read_text())
    record["counts"]["crc32"] = file_crc32(path)  # damage that the checksum does not see: a NaN from the embedder
    (out / "embeddings" / "_done.json").write_text(json.dumps(record))
    shutil.rmtree(out / "data")  # the output discarded, so another mining route may remake it (README)
    with pytest.raises(IndexFileError, match="chunk 7 is not finite"):
        synthesize(corpus, out, mining="partitioned", partitions=4, **FAST)


@pytest.mark.parametrize("extra, message", [
    (dict(method="standard"), "works with --method nextlong"),
    (dict(index_shards=2), "HNSW settings"),
    (dict(nprobe=0), "--nprobe positive"),
])
def test_partitioned_settings_are_checked_before_any_work(corpus, tmp_path, extra, message):
    from nextlong.synthesis import synthesize

    with pytest.raises(UsageError, match=message):
        synthesize(corpus, tmp_path / "o", **dict(FAST, mining="partitioned", **extra))
    assert not (tmp_path / "o" / "chunk").exists()
