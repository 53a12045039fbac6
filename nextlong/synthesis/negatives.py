"""Hard-negative selection for NExtLong (method §1.3–1.6).

For an anchor document with meta-chunks m_1..m_p, each m_i gets distractors: the chunks of the
corpus most similar to it, in rank order, never from the anchor's own document, never an exact
duplicate (same text hash) of one of the anchor's chunks or of an already chosen negative, and
never a chunk used twice in the long document. How many:

* ``fixed-k`` (the paper): ``k = (T·E·w − S) / (p·s)`` per meta-chunk, rounded up by default;
* ``fill``: negatives are added layer by layer (rank 1 of every m_i, then rank 2, ...) until the
  document reaches exactly L tokens, using the exact token counts we have.

A document that cannot reach L (index too small, chunks too short) is dropped and counted; one that
reaches L on its own gets no negatives and is counted as `already_long` (kept, or dropped with
``long_docs="drop"``). With a `NearDupFilter`, a candidate whose word 5-gram Jaccard with a meta-chunk
or an already chosen negative reaches the threshold is skipped too (neardup.py).

Planning one anchor costs the same whatever the corpus size: corpus-wide quantities (chunk token
counts, their mean) are computed once per store (`ChunkStore.token_counts`), never per anchor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .assemble import ROLE_ANCHOR, ROLE_NEGATIVE


def negatives_per_meta_chunk(target_length: int, chars_per_token: float, doc_chars: int,
                             num_meta_chunks: int, granularity: int, overshoot: float = 1.5,
                             rounding: str = "ceil", granularity_unit: str = "chars") -> int:
    """The paper's k = (T·E·w − S)/(p·s), at least 0.

    The formula measures S and s in characters; with token-unit chunking, s is converted with E."""
    if num_meta_chunks <= 0:
        return 0
    s_chars = granularity if granularity_unit == "chars" else granularity * chars_per_token
    k = (target_length * chars_per_token * overshoot - doc_chars) / (num_meta_chunks * s_chars)
    k = math.ceil(k) if rounding == "ceil" else math.floor(k)
    return max(0, int(k))


# --- search backends ---------------------------------------------------------------------------


class ExactSearcher:
    """Brute-force cosine search over L2-normalised vectors: the reference, and the small-corpus path.

    Results do not depend on how queries are batched (nextlong.mining.exact.exact_top_k: float32
    candidates, float64 rescoring, similarity descending then chunk id ascending). So a search for many
    queries at once (`PrefetchedRows`) answers each anchor exactly as a search of its own would, and the
    top k is a prefix of the top K."""

    def __init__(self, vectors: np.ndarray):
        from ..mining.exact import max_norm_of

        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._max_norm = max_norm_of(self.vectors)

    def __len__(self):
        return self.vectors.shape[0]

    def search(self, queries: np.ndarray, k: int):
        """Top-k by cosine. It takes no exclusions (passing them is a TypeError, never silently ignored):
        plan_anchor filters the exact results itself."""
        from ..mining.exact import exact_top_k

        return exact_top_k(queries, self.vectors, k, max_norm=self._max_norm)


class PrefetchedRows:
    """One anchor's rows of a search made beforehand, as a searcher: a request up to their width is
    answered from them, a wider one (an anchor whose candidates ran out) goes to `wider`, and
    `searched_again` says whether that happened.

    Two sources: a batched exact search of a block's anchors (one (256 x corpus) product per 256
    queries instead of a thin product per anchor: 1.4-1.9x per anchor at 20k-60k chunks, docs/scale.md;
    ExactSearcher's results do not depend on batching, so the answer is the same either way), and the
    neighbour lists of `--mining partitioned` (mining/partitioned.py), whose wider search probes the
    same partitions."""

    def __init__(self, wider, ids: np.ndarray, sims: np.ndarray):
        self.wider, self.ids, self.sims = wider, ids, sims
        self.searched_again = False

    def __len__(self):
        return len(self.wider)

    def search(self, queries: np.ndarray, k: int):
        if k <= self.ids.shape[1]:
            return self.ids[:, :k], self.sims[:, :k]
        self.searched_again = True
        return self.wider.search(queries, k)


class IndexSearcher:
    """Adapter over nextlong.mining.index.ChunkIndex (usearch HNSW), keys = chunk ids."""

    def __init__(self, index, size: int):
        self.index = index
        self.size = size

    def __len__(self):
        return self.size

    def search(self, queries, k: int, exclude_doc_ids=None, exclude_hashes=None):
        ids, sims = self.index.search(queries, k, exclude_doc_ids=exclude_doc_ids, exclude_hashes=exclude_hashes)
        return np.asarray(ids, np.int64), np.nan_to_num(np.asarray(sims, np.float32), nan=-np.inf)


# --- selection ---------------------------------------------------------------------------------


@dataclass
class AnchorResult:
    """The pieces of one long document, or why it could not be built."""

    chunks: list = field(default_factory=list)
    roles: list = field(default_factory=list)
    negative_sims: list = field(default_factory=list)  # similarity of each chosen negative to its m_i
    negatives_per_meta_chunk: list = field(default_factory=list)
    total_tokens: int = 0
    ok: bool = False
    reason: str = ""
    near_dup_rejected: int = 0  # distinct candidates skipped as near-copies of a piece of this document
    already_long: bool = False  # the anchor document alone reaches L: no negatives


ALREADY_LONG_REASON = "already long: the document alone reaches the target length (--long-docs drop)"


def anchor_tokens(store, anchor_doc: int, sep_len: int) -> tuple[np.ndarray, int]:
    """The anchor's chunk ids and its length with separators, in tokens."""
    own = store.doc_chunks(anchor_doc)
    return own, int(store.token_counts[own].sum()) + own.size * sep_len


def initial_width(store, own_tokens: int, p: int, *, rule: str, k_fixed: int | None, target_length: int,
                  sep_len: int, max_candidates: int) -> int:
    """How many ranked candidates per meta-chunk the first search asks for (widened x4 if they run out)."""
    if rule == "fixed-k":
        return min(max(2 * (k_fixed or 0) + 8, 16), max_candidates)
    need = max(0.0, target_length - own_tokens) / max(store.mean_token_count + sep_len, 1.0)
    return min(max(int(2 * need / max(p, 1)) + 16, 16), max_candidates)


def plan_anchor(store, searcher, anchor_doc: int, *, target_length: int, sep_len: int, rule: str,
                k_fixed: int | None, anchor_vectors: np.ndarray, exclude_duplicates: bool = True,
                max_candidates: int = 4096, exclude_doc_label=None, near_dup=None,
                long_docs: str = "keep", empty=None) -> AnchorResult:
    """Choose the negatives of one anchor and lay out m_1, n_1^1..n_1^k, m_2, ... (head position)."""
    own, own_tokens = anchor_tokens(store, anchor_doc, sep_len)
    p = own.size
    lengths = store.token_counts  # computed once per store: planning cost must not grow with the corpus
    if own_tokens >= target_length:
        res = AnchorResult(chunks=own.tolist(), roles=[ROLE_ANCHOR] * p, negatives_per_meta_chunk=[0] * p,
                           total_tokens=own_tokens, already_long=True, ok=long_docs == "keep")
        res.reason = "" if res.ok else ALREADY_LONG_REASON
        return res
    n_index = len(searcher)
    banned_hashes = set(store.text_hash[own].tolist()) if exclude_duplicates else set()
    want = (k_fixed or 0) if rule == "fixed-k" else None
    width = initial_width(store, own_tokens, p, rule=rule, k_fixed=k_fixed, target_length=target_length,
                          sep_len=sep_len, max_candidates=max_candidates)

    while True:
        if exclude_doc_label is None:
            ids, sims = searcher.search(anchor_vectors, width)
        else:  # an ANN index filters inside the search, so fewer candidates are wasted
            ids, sims = searcher.search(anchor_vectors, width, exclude_doc_ids=exclude_doc_label,
                                        exclude_hashes=banned_hashes or None)
        result, exhausted = _select(store, lengths, own, ids, sims, rule, want, target_length, sep_len,
                                    own_tokens, anchor_doc, banned_hashes, exclude_duplicates, near_dup, empty)
        widened = min(width * 4, max_candidates, n_index)
        if not exhausted or widened <= width:
            break
        width = widened
    if result.total_tokens < target_length:
        result.ok = False
        found = sum(result.negatives_per_meta_chunk)
        if rule == "fixed-k" and found == want * p:
            result.reason = (f"fixed-k: k = {want} negatives per meta-chunk stay short of the target length "
                             "(chunks shorter than the granularity s the formula assumes; --negatives fill "
                             "reaches it exactly)")
        else:
            result.reason = "too few eligible chunks in the index to reach the target length"
    else:
        result.ok = True
    return result


def _select(store, lengths, own, ids, sims, rule, want, target_length, sep_len, own_tokens, anchor_doc,
            banned_hashes, exclude_duplicates, near_dup=None, empty=None):
    """Greedy selection from ranked candidate lists; returns (result, ran_out_of_candidates). `empty`: one
    byte per chunk, non-zero for a chunk that is never a negative (whitespace only)."""
    p = own.size
    used: set[int] = set()
    used_hashes = set(banned_hashes)
    near_copies: set[int] = set()
    cursor = [0] * p
    chosen: list[list[tuple[int, float]]] = [[] for _ in range(p)]
    exhausted_rows = [False] * p
    widen_helps = [False] * p  # the row was used up but the index holds more candidates
    # Near-copies: when a piece joins the document, its near-copies (from the once-per-corpus graph)
    # join `used`, so the candidate loop pays nothing for them; they are counted when skipped.
    near_banned: set[int] = set()
    has_copies = near_dup.has_copies if near_dup is not None else None
    removed = near_dup.removed if near_dup is not None else None  # --dedup-corpus: never a negative
    family = near_dup.family if near_dup is not None else None
    banned_families: set[int] = set()  # a family of near-copies too large to list its pairs: banned by number

    def ban_near_copies(c):
        for o in near_dup.graph.neighbours(c).tolist():
            if o not in used:
                used.add(o)
                near_banned.add(o)
        if family is not None and family[c] >= 0:
            banned_families.add(int(family[c]))

    def in_banned_family(c) -> bool:
        return bool(banned_families) and bool(has_copies[c]) and int(family[c]) in banned_families

    if has_copies is not None:
        for c in own.tolist():
            if has_copies[c]:
                ban_near_copies(c)

    def peek(i):
        """The next eligible candidate of row i (the cursor stays on it), or None when the row is used up."""
        row = ids[i]
        if exhausted_rows[i]:
            return None
        while cursor[i] < row.shape[0]:
            c = int(row[cursor[i]])
            if c < 0:
                exhausted_rows[i] = True
                return None
            if (store.chunk_doc[c] == anchor_doc or c in used
                    or (exclude_duplicates and int(store.text_hash[c]) in used_hashes)
                    or (removed is not None and removed[c]) or (empty is not None and empty[c])
                    or in_banned_family(c)):
                if c in near_banned or (removed is not None and removed[c]) or in_banned_family(c):
                    near_copies.add(c)
                cursor[i] += 1
                continue
            return c
        exhausted_rows[i] = True
        widen_helps[i] = row.shape[0] > 0 and int(row[-1]) >= 0
        return None

    def take(i, c) -> int:
        """Choose the candidate `peek(i)` returned; its tokens in the document."""
        chosen[i].append((c, float(sims[i, cursor[i]])))
        cursor[i] += 1
        used.add(c)
        if exclude_duplicates:
            used_hashes.add(int(store.text_hash[c]))
        if has_copies is not None and has_copies[c]:
            ban_near_copies(c)
        return int(lengths[c]) + sep_len

    total = own_tokens
    if rule == "fixed-k":
        for i in range(p):
            for _ in range(want):
                c = peek(i)
                if c is None:
                    break
                total += take(i, c)
        exhausted = any(widen_helps[i] and len(chosen[i]) < want for i in range(p))
    else:
        # Layer by layer. The cut at L removes the document's last (total - L) tokens, so a negative
        # placed before a later meta-chunk may only overshoot by what follows the last meta-chunk (its
        # negatives, `tail`): otherwise it would push a meta-chunk past L. A row whose best remaining
        # candidate does not fit is closed; the last meta-chunk's negatives may overshoot freely.
        exhausted = False
        tail = 0
        closed = [False] * p
        while total < target_length:
            progressed = False
            for i in range(p):
                if total >= target_length:
                    break
                if closed[i]:
                    continue
                c = peek(i)
                if c is None:
                    continue
                add = int(lengths[c]) + sep_len
                if i < p - 1 and total + add - target_length > tail:
                    closed[i] = True
                    continue
                total += take(i, c)
                if i == p - 1:
                    tail += add
                progressed = True
            if not progressed:
                # every list ran out: widening the search may still help, if the index is larger
                exhausted = any(widen_helps)
                break

    res = AnchorResult(total_tokens=total, near_dup_rejected=len(near_copies))
    for i in range(p):
        res.chunks.append(int(own[i]))
        res.roles.append(ROLE_ANCHOR)
        for c, s in chosen[i]:
            res.chunks.append(c)
            res.roles.append(ROLE_NEGATIVE)
            res.negative_sims.append(s)
        res.negatives_per_meta_chunk.append(len(chosen[i]))
    return res, exhausted
