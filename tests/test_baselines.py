"""Baselines' document orderings (spec §2) on real text: standard, knn, iclm, quest."""

from __future__ import annotations

import numpy as np
import pytest

from nextlong.synthesis.baselines import (doc_lengths, document_keywords, document_vectors, iclm_order,
                                          knn_anchor, knn_graph, pack_stream, plan_pieces, quest_order,
                                          standard_order)
from nextlong.synthesis.negatives import ExactSearcher
from nextlong.synthesis.store import ChunkStore
from test_synthesis_support import chunk_table, lexical_vectors, stdlib_texts


@pytest.fixture(scope="module")
def setup():
    docs = stdlib_texts(250_000)
    table = chunk_table(docs, chunk_size=512)
    store = ChunkStore.from_table(table)
    vecs = lexical_vectors(table.column("text").to_pylist())
    return docs, table, store, vecs


def test_document_vectors_mean_and_first(setup):
    _, _, store, vecs = setup
    mean = document_vectors(store, vecs, "mean")
    first = document_vectors(store, vecs, "first")
    for d in (0, 3, store.num_docs - 1):
        chunks = store.doc_chunks(d)
        m = vecs[chunks].mean(0)
        np.testing.assert_allclose(mean[d], m / np.linalg.norm(m), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(first[d], vecs[chunks[0]] / np.linalg.norm(vecs[chunks[0]]), rtol=1e-5, atol=1e-6)


def test_pack_stream_cuts_at_target_and_reports_leftover():
    lengths = np.array([5, 7, 3, 10, 1, 1])
    groups, left = pack_stream([0, 1, 2, 3, 4, 5], lengths, 12)
    assert groups == [[0, 1], [2, 3]] and left == [4, 5]


def test_standard_is_a_seeded_permutation():
    a, b, c = standard_order(50, 0), standard_order(50, 0), standard_order(50, 1)
    assert sorted(a.tolist()) == list(range(50))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_iclm_path_uses_each_document_once_and_follows_neighbours(setup):
    _, _, store, vecs = setup
    dvec = document_vectors(store, vecs)
    graph = knn_graph(dvec, 5)
    # graph rows: the 5 most similar other documents, by similarity
    sims = dvec @ dvec.T
    np.fill_diagonal(sims, -np.inf)
    for i in range(0, store.num_docs, 11):
        np.testing.assert_allclose(sims[i, graph[i]], np.sort(sims[i])[::-1][:5], rtol=1e-5)
    order = iclm_order(graph, seed=0)
    assert sorted(order.tolist()) == list(range(store.num_docs))
    seen = set()
    for a, b in zip(order[:-1], order[1:]):
        seen.add(int(a))
        unvisited = [n for n in graph[a].tolist() if n >= 0 and n not in seen]
        if unvisited:  # greedy: step to the most similar unvisited neighbour
            assert b == unvisited[0]
    np.testing.assert_array_equal(order, iclm_order(graph, seed=0))


def test_quest_groups_documents_by_keyword():
    texts = ["tokenizer merges bytes", "the tokenizer splits text", "tokenizer vocab file",
             "socket server listens", "socket client connects", "socket timeout value", "lonely words here only"]
    kws = document_keywords(texts)
    assert kws[:3] == ["tokenizer"] * 3 and kws[3:6] == ["socket"] * 3
    order = quest_order(kws, seed=3).tolist()
    assert sorted(order) == list(range(7))
    pos = {d: i for i, d in enumerate(order)}
    for group in ([0, 1, 2], [3, 4, 5]):  # each keyword group is contiguous
        idx = sorted(pos[d] for d in group)
        assert idx[-1] - idx[0] == 2


def test_knn_anchor_takes_neighbours_in_rank_order(setup):
    _, _, store, vecs = setup
    dvec = document_vectors(store, vecs)
    lengths = doc_lengths(store, 1)
    target = 5000
    for anchor in (0, 7, 20):
        docs = knn_anchor(store, ExactSearcher(dvec), dvec, anchor, lengths, target)
        assert docs[0] == anchor and len(set(docs)) == len(docs)
        assert lengths[docs].sum() >= target and lengths[docs[:-1]].sum() < target
        sims = dvec[docs[1:]] @ dvec[anchor]
        assert np.all(np.diff(sims) <= 1e-6)
    # cannot reach: None, not a short document
    assert knn_anchor(store, ExactSearcher(dvec), dvec, 0, lengths, int(lengths.sum()) + 1) is None


def test_plan_pieces_lays_out_whole_documents(setup):
    _, _, store, _ = setup
    chunks, roles = plan_pieces(store, [3, 1])
    assert chunks == store.doc_chunks(3).tolist() + store.doc_chunks(1).tolist()
    assert set(roles) == {0}


def test_knn_graph_approximate_path_agrees_with_exact(setup, monkeypatch):
    from nextlong.synthesis import baselines

    _, _, store, vecs = setup
    dvec = document_vectors(store, vecs)
    exact = knn_graph(dvec, 5)
    monkeypatch.setattr(baselines, "EXACT_GRAPH_MAX_DOCS", 0)
    approx = baselines.knn_graph(dvec, 5)
    assert (approx != np.arange(len(approx))[:, None]).all()
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx.tolist(), exact.tolist())])
    assert recall > 0.9, recall
