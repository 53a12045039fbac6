"""The baselines NExtLong is compared with (method §2), as plans over whole documents.

Every baseline lays out whole documents (all their chunks, in order, role "anchor") until the long
document reaches L tokens, then assembly cuts it at exactly L; standard and ICLM, which pack one stream
of documents, by default go on with the rest of the cut document in the next long document (`--overflow
carry`, `pack_chunks`) instead of dropping it (`drop`, `pack_stream`). They differ only in which documents
go together:

* ``standard``: a seeded shuffle of the corpus, packed in that order;
* ``knn``: an anchor document followed by its nearest-neighbour documents, in rank order;
* ``iclm``: a greedy traveling-salesman path through the document kNN graph (start at a seeded
  random unvisited document, always step to the most similar unvisited neighbour, jump to the next
  unvisited document of a seeded permutation when none is left), packed in path order, each
  document used once;
* ``quest``: Quest (Gao et al. 2024) as it defines itself: keywords per document, ONE random key per
  document drawn among its keywords, documents grouped by key, and each long context built from a
  single key group (small groups oversampled, large ones split; see `quest_contexts`). The paper
  extracts keywords with RAKE from queries a generative model predicts; offline, we take each
  document's top TF-IDF words (`document_keywords`; docs/design.md says why);
* ``litelong``: LiteLong (Jia et al. 2025): for each topic of the user's topics file, the documents BM25
  retrieves for it, best first, until L (`litelong_contexts`). The paper's topics come from an LLM debate
  over the BISAC classification, which we cannot run offline: the user brings them (topics.py).

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


def pack_chunks(order, store, sep_len: int, target_length: int):
    """Cut the stream of the documents' chunks, documents in `order`, into groups of at least L tokens:
    the `carry` packing. A document that runs past the end of a group goes on in the next group from its
    next chunk, so every chunk is used once and only the part of the one chunk that crosses L is lost to
    assembly's cut (the `drop` packing, `pack_stream`, loses the rest of that document). Returns (groups,
    leftover docs): each group an array of chunk ids in order; the leftover documents are those left out
    whole, every chunk in the short tail of the stream (one cut at the tail's start was used, and counts
    among the documents used)."""
    order = np.asarray(order, np.int64)
    if order.size == 0:
        return [], []
    first = np.asarray(store.doc_first_chunk, np.int64)[order]
    count = np.asarray(store.doc_num_chunks, np.int64)[order]
    # chunk ids of the stream: each document's first chunk, then consecutive ids (a document's chunks are)
    starts = np.repeat(first - np.concatenate(([0], np.cumsum(count)[:-1])), count)
    stream = starts + np.arange(int(count.sum()), dtype=np.int64)
    ends = np.cumsum(np.asarray(store.token_counts, np.int64)[stream] + sep_len)
    groups, lo, done = [], 0, 0
    while True:  # a group ends at the first chunk whose running total reaches L from the group's start
        hi = int(np.searchsorted(ends, done + target_length, side="left"))
        if hi >= stream.size:
            break
        groups.append(stream[lo:hi + 1])
        lo, done = hi + 1, int(ends[hi])
    tail = stream[lo:]
    left = np.unique(np.asarray(store.chunk_doc, np.int64)[tail[np.asarray(store.chunk_index)[tail] == 0]])
    return groups, left.tolist()


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

        from ..mining.index import interruptible

        index = Index(ndim=doc_vectors.shape[1], metric="cos", dtype="f16")
        with interruptible():
            index.add(np.arange(n, dtype=np.int64), np.asarray(doc_vectors, np.float32))
            ids = np.asarray(index.search(np.asarray(doc_vectors, np.float32), min(k + 1, n)).keys, np.int64)
        ids[ids >= n] = -1  # usearch pads missing results with a sentinel key
    out = np.full((n, k), -1, np.int64)
    for i in range(n):
        row = ids[i][(ids[i] != i) & (ids[i] >= 0)][:k]
        out[i, : row.size] = row
    return out


QUEST_TOP_KEYWORDS = 3  # a document's key is drawn among this many of its best keywords
QUEST_MAX_DOC_FREQUENCY = 0.1  # a keyword in more than this fraction of documents names no topic
QUEST_MAX_REPEATS = 4  # a small group is oversampled up to this many passes to fill one context


def document_keywords(texts: list[str], top_k: int = QUEST_TOP_KEYWORDS,
                      max_doc_frequency: float = QUEST_MAX_DOC_FREQUENCY) -> list[list[str]]:
    """Each document's `top_k` keywords by TF-IDF, best first (ties by the word), the offline stand-in
    for Quest's RAKE-on-predicted-queries. Words are lowercased runs of 3+ letters/digits/underscores
    starting with a letter; a keyword must occur in 2 or more documents (a key no other document
    shares groups nothing) and in at most `max_doc_frequency` of them (common words name no topic)."""
    counts = [Counter(w.lower() for w in _WORD.findall(t)) for t in texts]
    df: Counter = Counter()
    for c in counts:
        df.update(c.keys())
    n = len(texts)
    max_df = max(2, int(max_doc_frequency * n))
    out: list[list[str]] = []
    for c in counts:
        total = sum(c.values()) or 1
        scored = [(-(tf / total) * math.log(n / df[w]), w) for w, tf in c.items() if 2 <= df[w] <= max_df]
        out.append([w for _, w in sorted(scored)[:top_k]])
    return out


def draw_keys(keywords: list[list[str]], seed: int) -> list[str | None]:
    """Quest's one random key per document, uniform among its keywords (None: it has none)."""
    rng = np.random.default_rng(seed)
    return [kws[int(rng.integers(len(kws)))] if kws else None for kws in keywords]


def _top_up(context: list[int], members: np.ndarray, lengths: np.ndarray, total: int, target_length: int,
            rng) -> int:
    """Extend `context` with documents of its group until L tokens, in fresh shuffled passes; a pass
    takes documents not yet in the context first, and repeats documents only when every member is in it
    (oversampling). Never puts a document right after itself."""
    while total < target_length:
        present = set(context)
        shuffled = members[rng.permutation(members.size)].tolist()
        fill = [d for d in shuffled if d not in present] or shuffled
        if fill[0] == context[-1] and len(fill) > 1:
            fill = fill[1:] + fill[:1]
        for d in fill:
            if total >= target_length:
                break
            context.append(int(d))
            total += int(lengths[d])
    return total


def quest_contexts(keys: list[str | None], lengths: np.ndarray, target_length: int, seed: int,
                   max_repeats: int = QUEST_MAX_REPEATS) -> tuple[list[list[int]], list[str], dict]:
    """Quest's long contexts, each from ONE key group: (documents of each context, its key, statistics).

    A group of at least L tokens is split: its documents, shuffled, are cut into consecutive contexts
    of L, and the short tail is topped up with other documents of the same group. A smaller group is
    oversampled: repeated in fresh shuffles until one context of L, if that takes at most `max_repeats`
    passes (else it is left out, counted). A group of one document makes no context (it would repeat one
    text). Contexts come out in a seeded random order, so a sample limit takes a random set of keys."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for d, key in enumerate(keys):
        if key is not None:
            groups.setdefault(key, []).append(d)
    contexts: list[list[int]] = []
    context_keys: list[str] = []
    used_groups = oversampled = split = single = too_small = 0
    for key in sorted(groups):
        members = np.asarray(groups[key], np.int64)
        total_group = int(lengths[members].sum())
        if members.size < 2:
            single += 1
            continue
        if total_group * max_repeats < target_length:
            too_small += 1
            continue
        made, current, total = [], [], 0
        for d in members[rng.permutation(members.size)].tolist():
            current.append(d)
            total += int(lengths[d])
            if total >= target_length:
                made.append(current)
                current, total = [], 0
        if current:
            _top_up(current, members, lengths, total, target_length, rng)
            made.append(current)
        used_groups += 1
        oversampled += total_group < target_length
        split += len(made) > 1
        contexts.extend(made)
        context_keys.extend([key] * len(made))
    order = rng.permutation(len(contexts)).tolist()
    sizes = np.asarray([len(g) for g in groups.values()], np.int64)
    stats = {
        "keywords_per_document": None,  # filled by the caller, which knows top_k
        "documents_without_key": int(sum(k is None for k in keys)),
        "groups": len(groups),
        "group_size_docs": ({"min": int(sizes.min()), "median": float(np.median(sizes)), "mean": float(sizes.mean()),
                             "p90": float(np.percentile(sizes, 90)), "max": int(sizes.max())} if sizes.size else None),
        "groups_of_one_document": single,
        "groups_too_small": too_small,
        "groups_used": used_groups,
        "groups_oversampled": oversampled,
        "groups_split": split,
        "contexts": len(contexts),
        "documents_in_used_groups": int(sum(len(groups[k]) for k in set(context_keys))),
    }
    return [contexts[i] for i in order], [context_keys[i] for i in order], stats


LITELONG_FIRST_WIDTH = 256  # documents retrieved per topic at first; widened 4x for the topics it cannot fill
LITELONG_SEARCH_ENTRIES = 1 << 22  # topics x width searched at once: 48 MB of ids and scores, whatever the topics


def litelong_contexts(texts, topics, lengths: np.ndarray, target_length: int, *,
                      exclude=None, threads: int = 0) -> tuple[list[np.ndarray], list[str], dict]:
    """LiteLong's long contexts, one per topic in the topics' order: (documents of each context, its topic,
    statistics).

    Each topic is a BM25 query over whole documents (`BM25Index`, word terms without English stopwords,
    k1 = 1.2, b = 0.75). Its context is the documents of score > 0 in rank order (ties by the lower
    document index), whole, up to the first that brings it to L tokens (assembly cuts at L). A document
    appears once per context but may serve several topics (each retrieves on its own). A topic whose
    matching documents all together fall short of L makes no context (counted). `texts`: the documents'
    texts, any iterable read once (the index keeps no text). `exclude`: document indices never retrieved
    (the blank documents). Topics are searched LITELONG_SEARCH_ENTRIES // width at a time, so memory is
    the index and the contexts, not topics x width."""
    from ..mining.bm25 import DEFAULT_B, DEFAULT_K1, BM25Index

    index = BM25Index.build(texts, terms="words", stopwords="en", num_threads=threads)
    n = len(index)
    skip = frozenset(int(d) for d in exclude) if exclude is not None and len(exclude) else None
    found: list = [None] * len(topics)
    unmatched = 0
    pending, width = list(range(len(topics))), min(n, LITELONG_FIRST_WIDTH)
    while pending and width:
        wider = []
        step = max(1, LITELONG_SEARCH_ENTRIES // width)
        for lo in range(0, len(pending), step):
            batch = pending[lo:lo + step]
            ids, scores = index.search([topics[t] for t in batch], width, exclude=skip, num_threads=threads)
            for row, t in enumerate(batch):
                docs = ids[row][(ids[row] >= 0) & (scores[row] > 0)]  # padding has id -1 and a NaN score
                reach = np.cumsum(lengths[docs], dtype=np.int64)
                if reach.size and reach[-1] >= target_length:
                    found[t] = docs[: int(np.searchsorted(reach, target_length, side="left")) + 1].copy()
                elif docs.size == width and width < n:  # a full row: more documents may match
                    wider.append(t)
                elif not docs.size:
                    unmatched += 1
            del ids, scores
        pending, width = wider, min(n, width * 4)
    contexts = [docs for docs in found if docs is not None]
    context_topics = [topic for topic, docs in zip(topics, found) if docs is not None]
    sizes = np.asarray([len(c) for c in contexts], np.int64)
    used = np.zeros(n, bool)
    for docs in contexts:
        used[docs] = True
    stats = {
        "topics": len(topics),
        "contexts": len(contexts),
        "topics_short_of_target": len(topics) - len(contexts),  # their matching documents cannot fill L
        "topics_without_match": unmatched,
        "documents_per_context": ({"min": int(sizes.min()), "mean": round(float(sizes.mean()), 3),
                                   "max": int(sizes.max())} if sizes.size else None),
        "documents_distinct": int(used.sum()),
        "retrieval": {"bm25_terms": "words", "stopwords": "en", "k1": DEFAULT_K1, "b": DEFAULT_B},
    }
    return contexts, context_topics, stats


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
