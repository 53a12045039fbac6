"""The near-copy graph on the synthetic cases docs/method.md quotes: how many near-copy pairs it misses.

Each case is built from a fixed seed and the graph is built as the `neardup` stage builds it
(`NearDupGraph.build(store, load_tokenizer(None), 0.5)`, the stage's default tokenizer and threshold,
the sketch phase on all CPUs). A pair is *true* when its word 5-gram Jaccard reaches 0.5, and *missed*
when it is neither an edge of the graph nor inside one family (planning would let one be a negative of
the other). True pairs are every pair's exact Jaccard (tests.helpers.near_copy_pairs)
up to a few thousand chunks; for the 100,000-chunk cases they follow from the construction (checked on
a sample of pairs against the exact Jaccard). Reported per case: chunks, true pairs, missed pairs,
chunks counted unexamined (`large_group_members_unexamined`), families, graph edges, and the build's
CPU seconds (all threads of the process) and wall seconds, with the load average.

    python3 -m benchmarks.bench_neardup [--case NAME] [--seed 0]   (from the repository root)

Cases (docs/method.md, "near-copy"): chain600, chain600-shuffled, chain3000 (one-word shifts of a
300-word window), tree (3,000 versions of a 150-word text, each 3 words away from a random earlier
one), headers (100,000 chunks, each one of 50 40-word headers beside 0 to 30 words of its own),
paragraph (100,000 chunks sharing one 60-word paragraph beside 60 words of their own: boilerplate, no
near-copies), header200 (600 chunks holding one 200-word header whole plus 0 to 19 words of their own,
behind 29 12-word quotes of it), license (one license text with another year in 600 documents; also
the documents `--dedup-corpus` removes), license-beside-text (8,000 documents of a license chunk beside
300 words of their own: what `--dedup-corpus` costs on a large family).
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
import pytest

from tests.helpers import missed_near_copy_pairs, near_copy_pairs, store_of, version_tree

THRESHOLD = 0.5


def _words(rng, prefix: str, k: int) -> list[str]:
    return [f"{prefix}{rng.randrange(10 ** 7)}" for _ in range(k)]


def chain(seed: int, n: int = 600, shuffle: bool = False) -> dict:
    """`n` one-word shifts of a 300-word window over a stream of random words."""
    rng = random.Random(seed)
    stream = _words(rng, "s", n + 299)
    texts = [" ".join(stream[i:i + 300]) for i in range(n)]
    if shuffle:
        rng.shuffle(texts)
    return {"texts": texts, "documents": 1 if n <= 600 else 0}


def tree(seed: int, versions: int = 3000, words: int = 150, edits: int = 3) -> dict:
    return {"texts": version_tree(random.Random(seed), versions=versions, words=words, edits=edits)}


def headers(seed: int, n: int = 100_000, kinds: int = 50, header_words: int = 40, own: int = 30) -> dict:
    """Chunk i: header h[i] (one of `kinds` texts of `header_words` words) beside k[i] in 0..`own` words of its
    own. Two chunks of one header share its header_words - 4 5-grams and nothing else (the words are drawn
    from 10^7), so their Jaccard is (hw - 4) / (hw - 4 + k_a + k_b) (a chunk's set: hw - 4 + k 5-grams)."""
    rng = random.Random(seed)
    heads = [" ".join(_words(rng, "h", header_words)) for _ in range(kinds)]
    h = np.array([rng.randrange(kinds) for _ in range(n)])
    k = np.array([rng.randrange(own + 1) for _ in range(n)])
    texts = [" ".join([heads[h[i]]] + _words(rng, "w", int(k[i]))) for i in range(n)]
    return {"texts": texts, "class": h, "own": k, "shared": header_words - 4}


def paragraph(seed: int, n: int = 100_000, shared_words: int = 60, own: int = 60) -> dict:
    """One paragraph beside text of each chunk's own: Jaccard (sw - 4) / (sw - 4 + 2 own) = 0.32, no pair."""
    rng = random.Random(seed)
    para = " ".join(_words(rng, "p", shared_words))
    return {"texts": [para + " " + " ".join(_words(rng, "w", own)) for _ in range(n)], "no_pairs": True}


def header200(seed: int, n: int = 600) -> dict:
    rng = random.Random(seed)
    header = _words(rng, "h", 200)
    quotes = [" ".join(header[i:i + 12]) for i in range(0, 200, 7)]
    full = [" ".join(header + _words(rng, "w", rng.randrange(0, 20))) for _ in range(n)]
    return {"texts": quotes + full}


def license_case(seed: int, n: int = 600) -> dict:
    rng = random.Random(seed)
    text = " ".join(_words(rng, "l", 160))
    return {"texts": [f"{text} Copyright {1400 + i}" for i in range(n)], "documents": 1}


def license_beside_text(seed: int, n: int = 8000) -> dict:
    """`n` documents of two chunks: one license text with another word in its middle (each a near-copy of
    all), then 300 words of the document's own; no two documents are near-copies (what --dedup-corpus costs
    on a large family)."""
    rng = random.Random(seed)
    words = _words(rng, "l", 150)
    texts = []
    for d in range(n):
        texts.append(" ".join(words[:75] + [f"y{d}"] + words[75:]))
        texts.append(" ".join(_words(rng, "w", 300)))
    # a license chunk: 151 words, 147 5-grams, of which the 5 holding its own word are its own
    return {"texts": texts, "class": np.tile([0, -1], n), "own": np.tile([5, 0], n), "shared": 142, "documents": 2}


CASES = {
    "chain600": lambda s: chain(s, 600), "chain600-shuffled": lambda s: chain(s, 600, shuffle=True),
    "chain3000": lambda s: chain(s, 3000), "tree": tree, "headers": headers, "paragraph": paragraph,
    "header200": header200, "license": license_case, "license-beside-text": license_beside_text,
}


def construction_truth(case: dict, graph, store, tok, sample: int = 3000, seed: int = 0) -> tuple[int, int]:
    """(true pairs, missed) of a case built as classes of chunks (`class`, -1: a near-copy of none), chunk i
    holding its class's `shared` 5-grams beside `own[i]` of its own: two chunks of one class are near-copies
    when shared >= 0.5 (shared + own_a + own_b). The rule is checked first on pairs drawn at random (half
    within a class) against the exact Jaccard."""
    from nextlong.synthesis.neardup import chunk_shingles, jaccard

    h, k, s = case["class"], case["own"], case["shared"]
    n = h.size
    rng = np.random.default_rng(seed)
    xs = rng.choice(np.flatnonzero(h >= 0), sample)
    ys = np.array([rng.choice(np.flatnonzero(h == h[x])) if i % 2 else rng.integers(0, n) for i, x in enumerate(xs)])
    for x, y in zip(xs.tolist(), ys.tolist()):
        if x != y:
            rule = h[x] == h[y] and s >= THRESHOLD * (s + k[x] + k[y])
            assert rule == (jaccard(chunk_shingles(store, tok, x), chunk_shingles(store, tok, y)) >= THRESHOLD), (x, y)
    bins = int(k.max()) + 1
    ok = (np.arange(bins)[:, None] + np.arange(bins)[None, :]) * THRESHOLD <= s * (1 - THRESHOLD)  # J >= 0.5

    def pairs(members):  # pairs at the threshold among these chunks of one class
        hist = np.bincount(k[members], minlength=bins)
        return int((hist @ ok @ hist - (np.diag(ok) * hist).sum()) // 2)

    fam = graph.family if graph.family is not None else np.full(n, -1, np.int32)
    label = np.where(fam >= 0, fam.astype(np.int64), n + np.arange(n))  # a chunk in no family: its own label

    def split(*keys):  # the chunks of a class (-1 left out), grouped by the keys
        idx = np.flatnonzero(h >= 0)
        order = idx[np.lexsort(tuple(x[idx] for x in reversed(keys)))]
        cut = np.flatnonzero((np.diff(np.stack([x[order] for x in keys]), axis=1) != 0).any(0)) + 1
        return np.split(order, cut)

    true = sum(pairs(g) for g in split(h))
    inside = sum(pairs(g) for g in split(h, label) if g.size > 1)
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(graph.indptr))
    dst = graph.indices
    across = (src < dst) & (label[src] != label[dst])
    a, b = src[across], dst[across]
    edge_true = int(((h[a] == h[b]) & (h[a] >= 0) & (s >= THRESHOLD * (s + k[a] + k[b]))).sum())
    return true, true - inside - edge_true


def run_case(name: str, seed: int = 0) -> dict:
    from nextlong.corpus.tokenizer import load_tokenizer
    from nextlong.synthesis import neardup

    tok = load_tokenizer(None)
    warm = store_of([f"numba compiles or loads its cache before the clock {i} starts" for i in range(4)], tok)
    neardup.NearDupGraph.build(warm, tok, THRESHOLD, max_group=2)
    case = CASES[name](seed)
    store = store_of(case["texts"], tok)
    t0, c0 = time.perf_counter(), time.process_time()
    graph = neardup.NearDupGraph.build(store, tok, THRESHOLD)  # as NearDupStage.build
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    load = os.getloadavg()[0]
    a = b = None
    if "class" in case:
        true, missed = construction_truth(case, graph, store, tok, seed=seed)
    elif case.get("no_pairs"):  # checked on a sample: no pair reaches the threshold
        rng = np.random.default_rng(seed)
        pick = rng.integers(0, store.num_chunks, (2000, 2))
        sets = {int(c): neardup.chunk_shingles(store, tok, int(c)) for c in np.unique(pick)}
        assert max(neardup.jaccard(sets[int(x)], sets[int(y)]) for x, y in pick if x != y) < THRESHOLD
        true, missed = 0, 0
    else:
        a, b = near_copy_pairs(store, tok, THRESHOLD)
        true, missed = int(a.size), missed_near_copy_pairs(graph, a, b)
    fam = graph.family if graph.family is not None else np.zeros(0, np.int32)
    r = {"case": name, "chunks": store.num_chunks, "true_pairs": true, "missed": missed,
         "unexamined": graph.unexamined, "families": int(np.unique(fam[fam >= 0]).size),
         "in_families": int((fam >= 0).sum()), "edges": graph.num_pairs, "cpu_s": round(cpu, 2),
         "wall_s": round(wall, 2), "load": round(load, 2)}
    if case.get("documents"):  # what --dedup-corpus removes, and the near-copy pairs among the kept documents
        per_doc = case["documents"]
        n = store.num_chunks // per_doc
        store.chunk_doc, store.num_docs = np.repeat(np.arange(n), per_doc), n
        store.doc_first_chunk, store.doc_num_chunks = np.arange(0, n * per_doc, per_doc), np.full(n, per_doc)
        c0 = time.process_time()
        removed = neardup.duplicate_documents(store, tok, graph, THRESHOLD)
        r["dedup_cpu_s"] = round(time.process_time() - c0, 2)
        r["dedup_removed"] = int(removed.sum())
        if a is not None and per_doc == 1:
            r["kept_pairs"] = int((~removed[a] & ~removed[b]).sum())
    return r


COLUMNS = ("case", "chunks", "true_pairs", "missed", "unexamined", "families", "in_families", "edges", "cpu_s",
           "wall_s", "load")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=sorted(CASES), action="append", help="run this case only (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(" ".join(f"{c:>19s}" if i == 0 else f"{c:>10s}" for i, c in enumerate(COLUMNS)), flush=True)
    results = []
    for name in args.case or list(CASES):
        r = run_case(name, args.seed)
        results.append(r)
        extra = "".join(f"  {k} {r[k]}" for k in ("dedup_removed", "kept_pairs", "dedup_cpu_s") if k in r)
        print(" ".join(f"{r[c]!s:>19s}" if i == 0 else f"{r[c]!s:>10s}" for i, c in enumerate(COLUMNS)) + extra,
              flush=True)
    return results


@pytest.mark.parametrize("name", ["chain600-shuffled", "header200", "license"])
def test_cases_the_page_says_are_whole(name):
    """The cases docs/method.md says the graph covers: no pair missed, nothing left unexamined (about a second each)."""
    r = run_case(name)
    assert r["true_pairs"] > 50_000 and r["missed"] == 0 and r["unexamined"] == 0
    if name == "license":
        assert r["dedup_removed"] == 599


if __name__ == "__main__":
    main()
