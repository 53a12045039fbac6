"""The baselines NExtLong is compared with (spec §2), as plans over whole documents.

Every baseline lays out whole documents (all their chunks, in order, role "anchor") until the long
document reaches L tokens, then assembly cuts it at exactly L. They differ only in which documents
go together:

* ``standard``: a seeded shuffle of the corpus, packed in that order;
* ``knn``: an anchor document followed by its nearest-neighbour documents, in rank order;
* ``iclm``: a greedy traveling-salesman path through the document kNN graph (start at a seeded
  random unvisited document, always step to the most similar unvisited neighbour, jump to the next
  unvisited document of a seeded permutation when none is left), packed in path order, each
  document used once;
* ``quest``: documents grouped by a shared keyword, packed group by group. The paper predicts
  queries with a generative model; as its stand-in each document's keyword is its highest TF-IDF
  word (lowercased words of 3+ letters, kept when 2 or more documents and at most half of them
  contain it). Groups are visited in a seeded random order, documents within a group shuffled.

Document vectors (knn, iclm) are the normalised mean of the document's chunk vectors ("mean",
default) or its first chunk's vector ("first").
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from .assemble import ROLE_ANCHOR

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]{2,}")


def document_vectors(store, chunk_vectors: np.ndarray, how: str = "mean") -> np.ndarray:
    first = np.asarray(store.doc_first_chunk)
    if how == "first":
        vecs = np.asarray(chunk_vectors[first], np.float32)
    else:
        vecs = np.add.reduceat(np.asarray(chunk_vectors, np.float32), first, axis=0)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.maximum(norms, 1e-12)


def doc_lengths(store, sep_len: int) -> np.ndarray:
    """Tokens a whole document contributes: its chunks plus one separator after each."""
    return np.asarray(store.doc_tokens()) + np.asarray(store.doc_num_chunks) * sep_len


def pack_stream(order, lengths: np.ndarray, target_length: int):
    """Cut a stream of documents into groups of at least L tokens; returns (groups, leftover docs)."""
    groups, current, total = [], [], 0
    for d in order:
        current.append(int(d))
        total += int(lengths[d])
        if total >= target_length:
            groups.append(current)
            current, total = [], 0
    return groups, current


def plan_pieces(store, docs) -> tuple[list[int], list[int]]:
    chunks: list[int] = []
    for d in docs:
        first = int(store.doc_first_chunk[d])
        chunks.extend(range(first, first + int(store.doc_num_chunks[d])))
    return chunks, [ROLE_ANCHOR] * len(chunks)


def standard_order(num_docs: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(num_docs)


def iclm_order(neighbors: np.ndarray, seed: int) -> np.ndarray:
    """Greedy path through a kNN graph (neighbors: (n, k) doc ids by similarity, -1 padded)."""
    n = neighbors.shape[0]
    rng = np.random.default_rng(seed)
    jumps = rng.permutation(n)
    visited = np.zeros(n, bool)
    order = np.empty(n, np.int64)
    j = 0
    cur = int(jumps[0]) if n else -1
    for pos in range(n):
        visited[cur] = True
        order[pos] = cur
        nxt = -1
        for cand in neighbors[cur]:
            if cand >= 0 and not visited[cand]:
                nxt = int(cand)
                break
        if nxt < 0:
            while j < n and visited[jumps[j]]:
                j += 1
            if j >= n:
                break
            nxt = int(jumps[j])
        cur = nxt
    return order


EXACT_GRAPH_MAX_DOCS = 50_000  # beyond this the document kNN graph comes from a usearch HNSW index


def knn_graph(doc_vectors: np.ndarray, k: int) -> np.ndarray:
    """Each document's k most similar other documents: exact blocked matrix products for up to
    EXACT_GRAPH_MAX_DOCS documents, else an approximate usearch HNSW search (cosine)."""
    n = doc_vectors.shape[0]
    if n <= EXACT_GRAPH_MAX_DOCS:
        from .negatives import ExactSearcher

        ids, _ = ExactSearcher(doc_vectors).search(doc_vectors, k + 1)
    else:
        from usearch.index import Index

        index = Index(ndim=doc_vectors.shape[1], metric="cos", dtype="f16")
        index.add(np.arange(n, dtype=np.int64), np.asarray(doc_vectors, np.float32))
        ids = np.asarray(index.search(np.asarray(doc_vectors, np.float32), min(k + 1, n)).keys, np.int64)
        ids[ids >= n] = -1  # usearch pads missing results with a sentinel key
    out = np.full((n, k), -1, np.int64)
    for i in range(n):
        row = ids[i][(ids[i] != i) & (ids[i] >= 0)][:k]
        out[i, : row.size] = row
    return out


def document_keywords(texts: list[str]) -> list[str | None]:
    """Each document's highest TF-IDF word (the Quest stand-in); None when it has no shared word."""
    counts = [Counter(w.lower() for w in _WORD.findall(t)) for t in texts]
    df: Counter = Counter()
    for c in counts:
        df.update(c.keys())
    n = len(texts)
    out: list[str | None] = []
    for c in counts:
        best, best_score = None, 0.0
        total = sum(c.values()) or 1
        for w, tf in c.items():
            f = df[w]
            if f < 2 or f > n / 2:
                continue
            score = tf / total * math.log(n / f)
            if score > best_score or (score == best_score and best is not None and w < best):
                best, best_score = w, score
        out.append(best)
    return out


def quest_order(keywords: list[str | None], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    loners = []
    for d, kw in enumerate(keywords):
        (groups.setdefault(kw, []) if kw is not None else loners).append(d)
    names = sorted(groups)
    order = []
    for g in rng.permutation(len(names)):
        members = np.asarray(groups[names[g]])
        order.extend(members[rng.permutation(members.size)].tolist())
    order.extend(np.asarray(loners)[rng.permutation(len(loners))].tolist() if loners else [])
    return np.asarray(order, np.int64)


def knn_anchor(store, doc_searcher, doc_vectors, anchor: int, lengths: np.ndarray, target_length: int,
               first_width: int = 32):
    """Anchor document then its nearest documents in rank order until L; None if it cannot reach L."""
    width = first_width
    n = store.num_docs
    while True:
        ids, _ = doc_searcher.search(doc_vectors[anchor : anchor + 1], min(width, n))
        docs, total = [anchor], int(lengths[anchor])
        for d in ids[0].tolist():
            if total >= target_length:
                break
            if d < 0 or d == anchor:
                continue
            docs.append(d)
            total += int(lengths[d])
        if total >= target_length:
            return docs
        if width >= n:
            return None
        width = min(width * 4, n)
