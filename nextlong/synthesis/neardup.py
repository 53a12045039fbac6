"""Near-duplicate negatives: word 5-gram Jaccard between a candidate and a long document's pieces.

Exact duplicates are excluded by text hash, but corpora hold many near-copies (the same changelog
shipped by several packages, a license with another year): placed right after its own original, such
a "negative" is a false negative the paper guards against by mining from a deduplicated corpus. A
candidate is refused when its word 5-gram Jaccard with any meta-chunk of the anchor document, or with
a negative already chosen for the same long document, reaches the threshold (default 0.5).

Words are the runs of non-whitespace bytes (ASCII whitespace, what `bytes.split()` cuts on) of the
chunk's text, which we get back from its token ids with the tokenizer's byte decoder. A word's hash is
a polynomial hash of its bytes, a 5-gram's hash mixes five word hashes; all in uint64 numpy arithmetic,
deterministic across runs and machines. A chunk of fewer than five words has one shingle, its whole
word sequence. Sets of 64-bit hashes give the exact Jaccard up to hash collisions (~n²/2⁶⁴).

The near-copy relation does not depend on the anchor, so it is computed once per corpus
(`NearDupGraph`, a cached stage of `nextlong synthesize`) and planning only looks it up: one array
read per candidate, which keeps the check within a few percent of planning time at any corpus size.
Candidate pairs share one of their `m` smallest shingle hashes (a bottom-m sketch; the hashes are
mixed, so these are a uniform sample of each set). Each of the m smallest hashes of A ∪ B lies in
A ∩ B with probability J, and one that does is among the m smallest of both A and B, so a pair at
Jaccard J shares fewer than two sketched hashes with probability about (1−J)^m + m·J·(1−J)^(m−1);
`m` keeps that below 1e-6 at the threshold (25 hashes at 0.5). Every pair sharing two or more gets its
exact Jaccard from the full sets (exact from the counts when both sets fit in the sketch). A hash
sketched by more than 256 chunks is not paired whole (its pairs grow with the square of its chunks): such a
group is clustered around a few leaders, each member checked exactly against them (`_family_edges`), and the
connected components of those edges are *families* of near-copies (a license text with another year in
every document, or a chain of drifting versions), which planning bans whole once one member is in the document.

Scale: the (n, m) sketch matrix (200 bytes a chunk at m = 25) is the one array the size of the
corpus; the candidate search takes the hash space one range at a time (`_candidate_pairs`) and the
exact check one batch of pairs at a time, so the rest stays bounded. The sketches are computed in
batches on a thread pool (`chunk_sketches`, `threads`).
"""

from __future__ import annotations

import math
import os

import numpy as np

NGRAM = 5
DEFAULT_THRESHOLD = 0.5
MISS_PROBABILITY = 1e-6
MAX_SKETCH = 512

_WS = np.zeros(256, bool)
_WS[[9, 10, 11, 12, 13, 32]] = True
_BASE = np.uint64(0x100000001B3)  # odd: invertible modulo 2**64
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9),
        np.uint64(0xD6E8FEB86659FD93), np.uint64(0xFF51AFD7ED558CCD))


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE**i and BASE**-i modulo 2**64 for i < n (uint64 arithmetic wraps)."""
    pw = np.ones(n, np.uint64)
    inv = np.ones(n, np.uint64)
    if n > 1:
        pw[1:] = _BASE
        inv[1:] = np.uint64(pow(int(_BASE), -1, 1 << 64))
        pw = np.cumprod(pw, dtype=np.uint64)  # array arithmetic wraps modulo 2**64 without warnings
        inv = np.cumprod(inv, dtype=np.uint64)
    return pw, inv


_POW, _INV = _powers(1 << 14)


def _finalize(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads every input bit over the output (for sampling by hash)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def word_hashes(data: bytes) -> np.ndarray:
    """uint64 hash of every whitespace-separated word of `data`, in order."""
    global _POW, _INV
    b = np.frombuffer(data, np.uint8)
    if b.size == 0:
        return np.zeros(0, np.uint64)
    if b.size + 1 > _POW.size:
        _POW, _INV = _powers(1 << math.ceil(math.log2(b.size + 1)))
    ws = _WS[b]
    inside = np.zeros(b.size + 2, np.int8)
    inside[1:-1] = ~ws
    edges = inside[1:] - inside[:-1]
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return np.zeros(0, np.uint64)
    # prefix[i] = sum_{k<i} (b_k + 1) * BASE**k; a word's hash = its slice of the sum, shifted to 0
    prefix = np.zeros(b.size + 1, np.uint64)
    np.cumsum((b.astype(np.uint64) + np.uint64(1)) * _POW[: b.size], out=prefix[1:])
    return (prefix[ends] - prefix[starts]) * _INV[starts]


def shingle_set(data: bytes, n: int = NGRAM) -> np.ndarray:
    """Sorted unique uint64 hashes of the word n-grams of `data` (one for a text of fewer words)."""
    w = word_hashes(data)
    if w.size == 0:
        return w
    if w.size < n:
        mixed = np.zeros(1, np.uint64)
        for j in range(w.size):
            mixed = mixed + w[j : j + 1] * _MIX[j]
        mixed = mixed + np.uint64(w.size)  # a short text differs from a longer one's first words
    else:
        m = w.size - n + 1
        mixed = w[:m] * _MIX[0]
        for j in range(1, n):
            mixed += w[j : j + m] * _MIX[j]
    return np.unique(_finalize(mixed))


def _numba_kernels():
    """The compiled loops (_neardup_kernels.py); ImportError without numba."""
    from . import _neardup_kernels

    return _neardup_kernels


_MIX_ARRAY = np.asarray(_MIX, np.uint64)
_CONSTANTS = (_WS, _MIX_ARRAY, _BASE)  # the kernels' last arguments: the same hashes as shingle_set


def _vocabulary_bytes(tokenizer):
    """(bytes back to back, offsets, known) of every token id, for decoding inside the compiled
    kernel: a token's bytes do not depend on its neighbours, so a text is its tokens' bytes joined
    (what decode_bytes does). None for a tokenizer without a per-token byte table."""
    native = getattr(tokenizer, "native", None)
    if native is None or not hasattr(native, "token_bytes") or not hasattr(tokenizer, "vocab_size"):
        return None
    size = int(getattr(native, "max_id", tokenizer.vocab_size - 1)) + 1
    parts = [native.token_bytes(i) for i in range(size)]
    known = np.array([x is not None for x in parts], bool)
    offsets = np.zeros(size + 1, np.int64)
    np.cumsum([len(x) if x is not None else 0 for x in parts], out=offsets[1:])
    return np.frombuffer(b"".join(x for x in parts if x is not None), np.uint8), offsets, known


def fast_shingle_set(data: bytes, n: int = NGRAM) -> np.ndarray:
    """`shingle_set`, compiled with numba when it is installed."""
    try:
        kernels = _numba_kernels()
    except ImportError:
        return shingle_set(data, n)
    return kernels.shingles(np.frombuffer(data, np.uint8), n, *_CONSTANTS)


def _intersection_size(a: np.ndarray, b: np.ndarray) -> int:
    """|a ∩ b| of two sorted unique arrays: a merge walk (numba) or numpy's intersect1d."""
    try:
        kernels = _numba_kernels()
    except ImportError:
        return int(np.intersect1d(a, b, assume_unique=True).size)
    return int(kernels.intersection_size(a, b))


def _pair_intersections(flat, offsets, left, right) -> np.ndarray:
    """|S_l ∩ S_r| for many pairs of sorted sets stored back to back (set i = flat[offsets[i]:offsets[i+1]])."""
    left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
    try:
        kernels = _numba_kernels()
    except ImportError:
        return np.array([_intersection_size(flat[offsets[x]:offsets[x + 1]], flat[offsets[y]:offsets[y + 1]])
                         for x, y in zip(left.tolist(), right.tolist())], np.int64)
    return kernels.pair_intersections(flat, offsets, left, right)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted unique hash arrays (0 when both are empty)."""
    if a.size == 0 or b.size == 0:
        return 0.0
    inter = _intersection_size(a, b)
    return inter / (a.size + b.size - inter)


def sketch_size(threshold: float) -> int:
    """Hashes per set in the index: the fewest m such that a pair at the threshold shares at most one
    of them with probability below MISS_PROBABILITY (binomial bound: (1-t)^m + m·t·(1-t)^(m-1))."""
    if threshold >= 1.0:
        return 2
    if threshold <= 0.0:
        return MAX_SKETCH
    t = threshold
    for m in range(2, MAX_SKETCH):
        if (1 - t) ** m + m * t * (1 - t) ** (m - 1) < MISS_PROBABILITY:
            return m
    return MAX_SKETCH


def chunk_shingles(store, tokenizer, c: int) -> np.ndarray:
    """Sorted unique 5-gram hashes of chunk `c`, from its token ids."""
    tokens = store.tokens[store.tok_offsets[c]:store.tok_offsets[c + 1]]
    return fast_shingle_set(tokenizer.decode_bytes(np.asarray(tokens, np.uint32)))


def default_threads() -> int:
    """The CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


SKETCH_BATCH = 2048  # chunks per task: amortises the Python overhead, small enough to balance threads


def _decode_batch(store, tokenizer, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Texts of chunks lo..hi-1 back to back (uint8) and their byte offsets."""
    parts = [tokenizer.decode_bytes(np.asarray(store.tokens[store.tok_offsets[c]:store.tok_offsets[c + 1]], np.uint32))
             for c in range(lo, hi)]
    offsets = np.zeros(hi - lo + 1, np.int64)
    np.cumsum([len(x) for x in parts], out=offsets[1:])
    return np.frombuffer(b"".join(parts), np.uint8), offsets


def chunk_sketches(store, tokenizer, m: int, progress: bool = False, threads: int | None = None):
    """(n, m) uint64 matrix of each chunk's m smallest shingle hashes (rows padded with 2**64-1) and
    each chunk's number of distinct shingles.

    Batches of SKETCH_BATCH chunks run on `threads` threads (default: the CPUs available). With a
    tokenizer that exposes its per-token bytes the compiled kernel decodes too and the batches run
    in parallel without the GIL; otherwise one batch decodes (GIL held) while others hash."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    n = store.num_chunks
    sketch = np.full((n, m), np.iinfo(np.uint64).max, np.uint64)
    sizes = np.zeros(n, np.int64)
    try:
        kernels = _numba_kernels()
        vocabulary = _vocabulary_bytes(tokenizer)
    except ImportError:
        kernels = vocabulary = None

    def run(lo: int) -> int:
        hi = min(n, lo + SKETCH_BATCH)
        if vocabulary is not None:
            offsets = np.asarray(store.tok_offsets[lo:hi + 1], np.int64)
            tokens = np.asarray(store.tokens[offsets[0]:offsets[-1]])
            bad = kernels.sketch_tokens(tokens, offsets, *vocabulary, NGRAM, sketch[lo:hi], sizes[lo:hi], *_CONSTANTS)
            if bad >= 0:  # decode_bytes names the unknown id
                chunk_shingles(store, tokenizer, lo + bad)
                raise ValueError(f"chunk {lo + bad}: a token id outside the tokenizer's vocabulary")
        elif kernels is not None:
            data, offsets = _decode_batch(store, tokenizer, lo, hi)
            kernels.sketch_batch(data, offsets, NGRAM, sketch[lo:hi], sizes[lo:hi], *_CONSTANTS)
        else:
            for c in range(lo, hi):
                full = chunk_shingles(store, tokenizer, c)
                k = min(m, full.size)
                sketch[c, :k] = full[:k]
                sizes[c] = full.size
        return hi - lo

    threads = max(1, int(threads or default_threads()))
    with tqdm(total=n, desc="near-duplicate sketches", unit="chunk", disable=not progress, mininterval=2) as bar:
        if threads == 1:
            for lo in range(0, n, SKETCH_BATCH):
                bar.update(run(lo))
        else:
            with ThreadPoolExecutor(threads) as pool:
                for done in pool.map(run, range(0, n, SKETCH_BATCH)):
                    bar.update(done)
    return sketch, sizes


RANGE_ENTRIES = 1 << 22  # sketched hashes handled at once by the candidate search (~150 MB of work arrays)
_ROW_BLOCK = 1 << 18
CHECK_BATCH = 1 << 16  # candidate pairs whose full shingle sets are held at once in the exact check  # sketch rows scanned at once when gathering a range's hashes


def _groups_to_pairs(keys: np.ndarray, rows: np.ndarray, n: int, max_group: int, big: list | None = None) -> np.ndarray:
    """Pair codes lo * n + hi (lo < hi) of the rows sharing each key; `keys` sorted, `rows` aligned. The rows of
    a group over `max_group` are appended to `big` (sorted), where given, instead of being paired."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, keys.size])
    codes = []
    for g in np.unique(sizes):
        if g < 2:
            continue
        if g > max_group:
            if big is not None:
                big.extend(np.sort(rows[s:s + int(g)].astype(np.int64)) for s in starts[sizes == g].tolist())
            continue
        first = starts[sizes == g]
        i, j = np.triu_indices(int(g), 1)
        a = rows[first[:, None] + i[None, :]].reshape(-1).astype(np.int64)
        b = rows[first[:, None] + j[None, :]].reshape(-1).astype(np.int64)
        codes.append(np.minimum(a, b) * n + np.maximum(a, b))
    return np.concatenate(codes) if codes else np.zeros(0, np.int64)


def _range_bounds(sketch: np.ndarray, ranges: int) -> list:
    """Bounds of `ranges` hash ranges holding about as many sketched hashes each: range r is
    [bounds[r], bounds[r + 1]), the last ends at the padding 2**64-1, which is in no range. The
    sketches hold each set's smallest hashes, so they crowd the low end of the hash space: the bounds
    are quantiles of a strided sample of the sketch (deterministic), not equal splits of 2**64."""
    pad = np.iinfo(np.uint64).max
    flat = sketch.reshape(-1)
    sample = flat[:: max(1, flat.size // (64 * ranges))]
    sample = np.sort(sample[sample != pad])
    inner = [] if sample.size == 0 else sample[(np.arange(1, ranges) * sample.size) // ranges].tolist()
    bounds = sorted(set([0] + [int(x) for x in inner if x > 0]))
    return [np.uint64(x) for x in bounds] + [np.uint64(pad)]


def _candidate_pairs(sketch: np.ndarray, max_group: int, ranges: int | None = None, big: list | None = None):
    """Pairs (a < b) of chunks sharing at least one sketched hash, with how many they share.

    A hash sketched by more than `max_group` chunks (boilerplate, or a large family of near-copies) links no
    pairs by itself: its chunks (sorted row numbers) are appended to `big` where given (_family_edges).

    Memory stays near the sketch itself: the hash space is cut into `ranges` ranges (default: enough
    that each holds about RANGE_ENTRIES sketched hashes; `_range_bounds`) and each range is gathered, sorted and grouped on its own, with int32 row ids. Every hash
    lies in exactly one range and a group (the chunks sketching one hash) is whole within it, so a
    pair's count of shared hashes is the sum of its per-range counts, whether its shared hashes fall
    in one range or several, and the `max_group` rule sees the same groups: the result does not
    depend on `ranges`."""
    n, m = sketch.shape
    if ranges is None:
        ranges = max(1, math.ceil(n * m / RANGE_ENTRIES))
    row_dtype = np.int32 if n < 2 ** 31 else np.int64
    bounds = _range_bounds(sketch, ranges)
    found, counts = [], []
    for r in range(len(bounds) - 1):
        lo, hi = bounds[r], bounds[r + 1]
        keys_parts, rows_parts = [], []
        for b0 in range(0, n, _ROW_BLOCK):
            block = sketch[b0:b0 + _ROW_BLOCK]
            pos = np.flatnonzero((block >= lo) & (block < hi))
            keys_parts.append(block.reshape(-1)[pos])
            rows_parts.append((pos // m).astype(row_dtype) + row_dtype(b0))
        keys = np.concatenate(keys_parts)
        rows = np.concatenate(rows_parts)
        del keys_parts, rows_parts
        if keys.size < 2:
            continue
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        # almost every hash is sketched by one chunk only: keep the entries of shared ones (a few %)
        same = keys[1:] == keys[:-1]
        shared_entry = np.zeros(keys.size, bool)
        shared_entry[1:] = same
        shared_entry[:-1] |= same
        del same
        keys = keys[shared_entry]
        rows = rows[order[shared_entry]]
        del order, shared_entry
        codes = _groups_to_pairs(keys, rows, n, max_group, big) if keys.size else np.zeros(0, np.int64)
        del keys, rows
        if codes.size:
            u, c = np.unique(codes, return_counts=True)
            found.append(u)
            counts.append(c)
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(found) == 1:
        pair_codes, shared = found[0], counts[0].astype(np.int64)
    else:  # a pair may share hashes in several ranges: add its counts up
        pair_codes, inverse = np.unique(np.concatenate(found), return_inverse=True)
        shared = np.bincount(inverse.reshape(-1), weights=np.concatenate(counts),
                             minlength=pair_codes.size).astype(np.int64)
    return pair_codes // n, pair_codes % n, shared


def _exact_keep(store, tokenizer, a: np.ndarray, b: np.ndarray, sizes: np.ndarray, threshold: float) -> np.ndarray:
    """Per pair (a[i], b[i]): their exact word 5-gram Jaccard reaches `threshold`. In batches of pairs, so that
    only one batch's full shingle sets are held at a time."""
    keep = np.zeros(a.size, bool)
    for k0 in range(0, a.size, CHECK_BATCH):
        pa_, pb_ = a[k0:k0 + CHECK_BATCH], b[k0:k0 + CHECK_BATCH]
        involved, local = np.unique(np.concatenate([pa_, pb_]), return_inverse=True)
        sets = [chunk_shingles(store, tokenizer, int(c)) for c in involved]
        offsets = np.zeros(len(sets) + 1, np.int64)
        np.cumsum([x.size for x in sets], out=offsets[1:])
        flat = np.concatenate(sets) if sets else np.zeros(0, np.uint64)
        del sets
        local = local.reshape(-1)
        inter = _pair_intersections(flat, offsets, local[: pa_.size], local[pa_.size:])
        keep[k0:k0 + pa_.size] = inter >= threshold * (sizes[pa_] + sizes[pb_] - inter)
    return keep


CROWDED = 256  # --dedup-corpus: a sketched hash held by more kept documents of a family leads to none of them
DEDUP_CHECKS = 4  # --dedup-corpus: exact comparisons of a family's document beyond the earliest kept one
MAX_LEADERS = 8  # rounds of the leader clustering of one large group: its kinds of near-copies, not its size
REPRESENTATIVES = 2  # members of another family checked against a leader: one link joins the families
FAMILY_BUDGET = 4  # exact member-leader checks in all large groups, per chunk of the corpus
HELD_HASHES = 1 << 21  # shingle hashes _family_edges keeps decoded (16 MiB)
CHECK_BLOCK = 16  # a round checks its members this many at a time, and ends at a block of which none joins


def _roots(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Union-find roots of the chunks `x` (vectorised pointer chasing, with path compression)."""
    r = parent[x]
    while True:
        up = parent[r]
        if np.array_equal(up, r):
            break
        r = up
    parent[x] = r
    return r


def _family_edges(store, tokenizer, big: list, sketch: np.ndarray, sizes: np.ndarray,
                  threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Verified near-copy pairs inside the groups too large to pair whole (chunks sketching one hash shared by
    more than max_group chunks), and how many members were left unexamined when the budget ran out.

    Pairing such a group costs its size squared, yet it is where a large family of near-copies lives (a license
    text with another year in 600 documents shares every sketched hash with the others): skipping it let every
    member through as a negative of every other. Each group, smallest first (a family's groups come before the
    larger ones of boilerplate shared by unrelated texts), is clustered around leaders, its members taken most
    widely shared first (the sizes of the large groups a chunk is in, added up: of a header beside texts of
    various lengths, the chunks with the least text of their own, near-copies of the most members; taken by
    chunk number, 13 million of 69 million pairs were missed on 100,000 chunks of 50 headers). Its first member
    leads; every member at the threshold with it is linked to it; the first member linked to no leader of the
    group leads the next round, up to MAX_LEADERS rounds. A round whose leader, in no family, was checked against
    members and gathered none ends the group (shared boilerplate, not a family); a leader with no member it can
    check hands the group to the next member. A leader is checked against the members of the group not yet in its
    family (union-find over the links so far), those already linked to an earlier leader included: the members
    between two overlapping rounds link their leaders, so a chain of drifting versions (each a near-copy of the
    next, the ends of the chain no longer) is one family instead of one per round, whose cross pairs went through.
    It checks them CHECK_BLOCK at a time, those sharing the most sketched hashes with it first, and the round ends
    at a block of which none joins: in a tree of drifting versions a leader's near-copies are its few neighbours,
    and checking every member of every round spent the budget on the first groups (3,000 versions of 150 words:
    5,152 of 33,394 pairs missed, now 91). A pair is checked as the other pairs are: the size bound, at least two
    shared sketched hashes, then the exact Jaccard; the exact checks in all groups are bounded by FAMILY_BUDGET
    per chunk of the corpus, so the cost stays linear in it (the chunks of groups past it are counted, each once)."""
    n = sketch.shape[0]
    reach = np.bincount(np.concatenate(big), np.repeat([float(g.size) for g in big], [g.size for g in big]),
                        minlength=n) if big else np.zeros(n)
    groups = [g[np.lexsort((g, -reach[g]))] for g in  # most widely shared first; then by chunk number
              sorted({g.tobytes(): g for g in big}.values(), key=lambda g: (g.size, int(g[0])))]
    parent = np.arange(n, dtype=np.int64)  # union-find over the links found so far: the families
    joined = np.zeros(n, bool)
    unexamined_chunks = np.zeros(n, bool)
    budget = FAMILY_BUDGET * n
    pad = np.iinfo(np.uint64).max
    edges_a, edges_b = [], []
    fruitless: set[int] = set()  # leaders nobody joined: boilerplate shares many sketched hashes, one group each
    held: dict[int, np.ndarray] = {}  # shingle sets decoded so far: a member is checked again in later rounds
    held_hashes = 0

    def shingles_of(c: int) -> np.ndarray:
        nonlocal held_hashes
        if c not in held:
            if held_hashes > HELD_HASHES:
                held.clear()
                held_hashes = 0
            held[c] = chunk_shingles(store, tokenizer, c)
            held_hashes += held[c].size
        return held[c]

    for group in groups:
        fresh = ~joined[group]  # in no family yet
        # the group's first chunk leads its first round, in a family or not: it is checked against the members in no
        # family, so a family grows by whole groups. (Led by the first member in no family instead, a group whose
        # first chunks were in the family already gathered only that leader each round, and its other members went
        # unchecked: 32,271 of 100,000 chunks sharing a header beside texts of their own, and near-copies chosen.)
        leader = int(group[0])
        if leader in fruitless:
            continue
        left = fresh & (group != leader)  # in no family and linked to no leader of this group yet
        for round_ in range(MAX_LEADERS):
            roots = _roots(parent, group)
            lroot = roots[group == leader][0]
            sl, sm = sizes[leader], sizes[group]
            ok = (roots != lroot) & (np.minimum(sl, sm) >= threshold * np.maximum(sl, sm))
            idx = np.flatnonzero(ok)
            shared = np.isin(sketch[group[idx]], sketch[leader][sketch[leader] != pad]).sum(1)
            ok[idx] = shared >= 2
            # of a family other than the leader's, its REPRESENTATIVES members sharing the most sketched hashes
            # with the leader are checked (one link joins the families), every member in no family is
            in_family = ok[idx] & joined[group[idx]]
            if in_family.any():
                cand = idx[in_family]
                order = np.lexsort((cand, -shared[in_family], roots[cand]))
                r = roots[cand][order]
                rank = np.arange(r.size) - np.searchsorted(r, r)
                ok[cand[order][rank >= REPRESENTATIVES]] = False
            most = np.zeros(group.size, np.int64)
            most[idx] = shared
            idx = np.flatnonzero(ok)
            idx = idx[np.argsort(-most[idx], kind="stable")]
            ok[:] = False
            spent = False
            leader_set = shingles_of(leader) if idx.size else None
            for k0 in range(0, idx.size, CHECK_BLOCK):
                block = idx[k0:k0 + CHECK_BLOCK]
                if block.size > budget:
                    unexamined_chunks[group[roots != lroot]] = True
                    spent = True
                    break
                budget -= block.size
                inter = np.array([_intersection_size(shingles_of(int(c)), leader_set)
                                  for c in group[block]], np.int64)
                ok[block] = inter >= threshold * (sizes[group[block]] + sizes[leader] - inter)
                if not ok[block].any():
                    break
            if ok.any():
                linked = group[ok]
                edges_a.append(linked)
                edges_b.append(np.full(linked.size, leader, np.int64))
                joined[linked] = True
                joined[leader] = True
                merged = np.unique(_roots(parent, np.r_[linked, leader]))
                parent[merged] = merged[0]
            elif not joined[leader] and idx.size and not spent:  # checked, nobody joins a new leader: shared
                fruitless.add(leader)  # boilerplate, no family
                break
            if spent:
                break
            # (a leader with no member even to check, a short quote of the shared text outside every member's size
            # bound, says nothing of the group: the next member leads; it ended the group, and a family of 600
            # went unchecked behind 29 such quotes, with nothing counted unexamined)
            left &= ~ok
            rest = np.flatnonzero(left)
            if rest.size == 0:
                break
            leader = int(group[rest[0]])
            left[rest[0]] = False
    unexamined = int((unexamined_chunks & ~joined).sum())
    if not edges_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), unexamined
    return np.concatenate(edges_a), np.concatenate(edges_b), unexamined


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """(n,) int32: the family of each chunk, the smallest chunk number of its connected component over the
    edges (a[i], b[i]); -1 for a chunk on no edge. None when there is no edge."""
    if a.size == 0:
        return None
    nodes, local = np.unique(np.concatenate([a, b]), return_inverse=True)
    local = local.reshape(2, -1)
    label = np.arange(nodes.size)
    while True:  # min-label propagation with pointer jumping: a few rounds for stars and short chains
        low = np.minimum(label[local[0]], label[local[1]])
        new = label.copy()
        np.minimum.at(new, local[0], low)
        np.minimum.at(new, local[1], low)
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    family = np.full(n, -1, np.int32)
    family[nodes] = nodes[label].astype(np.int32)
    return family


class NearDupGraph:
    """Which chunks are near-copies of which (word 5-gram Jaccard >= threshold), computed once per corpus.

    Candidate pairs share one of their `m` smallest shingle hashes (`sketch_size`); each is confirmed
    with the exact Jaccard of the full sets (exact from the counts when both sets fit in the sketch).
    Stored as CSR: the near-copies of chunk c are `indices[indptr[c]:indptr[c + 1]]`."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, threshold: float, family: np.ndarray | None = None):
        self.indptr = np.asarray(indptr, np.int64)
        self.indices = np.asarray(indices, np.int64)
        self.threshold = threshold
        # per chunk, its family of near-copies (the smallest chunk number in it) or -1; None: no family at all
        self.family = None if family is None else np.asarray(family, np.int32)
        self.unexamined = 0  # set by build: members of large groups past the clustering's budget

    @property
    def num_pairs(self) -> int:
        return int(self.indices.size // 2)

    def neighbours(self, c: int) -> np.ndarray:
        return self.indices[self.indptr[c]:self.indptr[c + 1]]

    @classmethod
    def build(cls, store, tokenizer, threshold: float = DEFAULT_THRESHOLD, max_group: int = 256,
              progress: bool = False, threads: int | None = None, ranges: int | None = None) -> "NearDupGraph":
        """`threads`: threads of the sketch phase (default: the CPUs available); `ranges`: hash ranges
        of the candidate search (default: sized to bound its memory; the graph does not depend on it)."""
        m = sketch_size(threshold)
        sketch, sizes = chunk_sketches(store, tokenizer, m, progress, threads=threads)
        big: list = []
        a, b, shared = _candidate_pairs(sketch, max_group, ranges, big)
        fa, fb, unexamined = _family_edges(store, tokenizer, big, sketch, sizes, threshold)
        del sketch, big
        sa, sb = sizes[a], sizes[b]
        possible = np.minimum(sa, sb) >= threshold * np.maximum(sa, sb)  # J <= |small| / |large|
        a, b, shared, sa, sb = a[possible], b[possible], shared[possible], sa[possible], sb[possible]
        whole = np.maximum(sa, sb) <= m  # both sets in the sketch: `shared` is the exact intersection
        keep = np.zeros(a.size, bool)
        keep[whole] = shared[whole] >= threshold * (sa[whole] + sb[whole] - shared[whole])
        # a pair at the threshold shares at least two sketched hashes (all but 1e-6 of the time)
        check = np.flatnonzero(~whole & (shared >= 2))
        keep[check] = _exact_keep(store, tokenizer, a[check], b[check], sizes, threshold)
        codes = np.unique(np.concatenate([np.minimum(a[keep], b[keep]) * store.num_chunks + np.maximum(a[keep], b[keep]),
                                          np.minimum(fa, fb) * store.num_chunks + np.maximum(fa, fb)]))
        a, b = codes // max(store.num_chunks, 1), codes % max(store.num_chunks, 1)
        src = np.concatenate([a, b])
        dst = np.concatenate([b, a])
        order = np.lexsort((dst, src))
        indptr = np.zeros(store.num_chunks + 1, np.int64)
        np.cumsum(np.bincount(src, minlength=store.num_chunks), out=indptr[1:])
        graph = cls(indptr, dst[order], threshold, family=_components(store.num_chunks, fa, fb))
        graph.unexamined = unexamined  # members of large groups past FAMILY_BUDGET (a count for the manifest)
        return graph

    def save(self, directory) -> None:
        from pathlib import Path

        from ..atomic import atomic_path

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        family = np.full(self.indptr.size - 1, -1, np.int32) if self.family is None else self.family
        for name, array in (("indptr", self.indptr), ("indices", self.indices), ("family", family)):
            with atomic_path(directory / f"{name}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, array)

    @classmethod
    def load(cls, directory, threshold: float) -> "NearDupGraph":
        from pathlib import Path

        from ..errors import CorruptFileError
        from ..untrusted import load_array

        directory = Path(directory)
        indptr, indices = (load_array(directory / f"{name}.npy", CorruptFileError, mmap=False,
                                      remedy="the near-duplicate graph is damaged: delete its folder to build it again")
                           for name in ("indptr", "indices"))
        n = indptr.shape[0] - 1 if indptr.ndim == 1 else -1
        if n < 0 or indptr.dtype.kind not in "iu" or indices.ndim != 1 or indices.dtype.kind not in "iu" \
                or indptr[0] != 0 or indptr[-1] != indices.shape[0] or bool((np.diff(indptr) < 0).any()) \
                or (indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n)):
            raise CorruptFileError(f"{directory}: the near-duplicate graph (indptr.npy, indices.npy) is not a CSR "
                                   "graph of its chunks; delete the folder to build it again")
        family = load_array(directory / "family.npy", CorruptFileError, mmap=False, kind="i", ndim=1,
                            remedy="the near-duplicate graph is damaged: delete its folder to build it again")
        if family.shape[0] != n or (family.size and (int(family.min()) < -1 or int(family.max()) >= n)):
            raise CorruptFileError(f"{directory / 'family.npy'}: not one family number (-1 or a chunk below {n}) per "
                                   "chunk; delete the folder to build it again")
        return cls(indptr, indices, threshold, family=family if (family >= 0).any() else None)


def document_shingles(store, tokenizer, d: int) -> np.ndarray:
    """Word 5-gram hashes of a whole document (its chunks joined by newlines, as in the corpus)."""
    first, n = int(store.doc_first_chunk[d]), int(store.doc_num_chunks[d])
    tokens = np.asarray(store.tokens[store.tok_offsets[first]:store.tok_offsets[first + n]], np.uint32)
    # chunks are tokenized on their own; decoding them back to back and inserting newlines between
    # them gives the same words as the document (a chunk boundary is a paragraph boundary)
    parts = [tokenizer.decode_bytes(tokens[store.tok_offsets[c] - store.tok_offsets[first]:
                                           store.tok_offsets[c + 1] - store.tok_offsets[first]])
             for c in range(first, first + n)]
    return fast_shingle_set(b"\n".join(parts))


def duplicate_documents(store, tokenizer, graph: NearDupGraph, threshold: float) -> np.ndarray:
    """Documents to drop from a corpus that is not deduplicated: in corpus order, a document is dropped
    when its word 5-gram Jaccard with an earlier document that was kept reaches `threshold`.

    Only documents sharing a near-copy chunk (an edge of `graph`) are compared, each pair exactly."""
    removed = np.zeros(store.num_docs, bool)
    rows = np.repeat(np.arange(graph.indptr.size - 1, dtype=np.int64), np.diff(graph.indptr))
    da, db = np.asarray(store.chunk_doc)[rows], np.asarray(store.chunk_doc)[graph.indices]
    later = da < db
    if not later.any():
        return removed
    pairs = np.unique(db[later] * store.num_docs + da[later])  # sorted by the later document, then the earlier
    cache: dict[int, np.ndarray] = {}

    def sets(d):
        if d not in cache:
            cache[d] = document_shingles(store, tokenizer, d)
        return cache[d]

    for code in pairs.tolist():
        b, a = divmod(code, store.num_docs)
        if removed[b] or removed[a]:
            continue
        if jaccard(sets(a), sets(b)) >= threshold:
            removed[b] = True
    if graph.family is not None:  # a family's members reach each other through its leaders alone, and a family
        # can be a chain of drifting versions: compare each document, in corpus order, with the family's earliest
        # kept one, then with the DEDUP_CHECKS kept ones sharing the most sketched hashes with it (bottom-m of the
        # documents' sets: a pair at the threshold shares two, all but 1e-6 of the time; one where both sets fit
        # in the sketch). Found through an index of the kept documents' sketched hashes in which a hash held by
        # more than CROWDED of them counts no more: the family's own chunk (a license beside each document's
        # own text) puts its hashes in every sketch, and comparing each document with every kept one sharing
        # them was quadratic (8,000 such documents: 201 s, against 0.6 s for the earliest-only rule)
        m = sketch_size(threshold)
        member = np.flatnonzero(graph.family >= 0)
        family, docs = graph.family[member], np.asarray(store.chunk_doc)[member]
        order = np.lexsort((docs, family))  # family by family (a mask per family scanned every member each time)
        for family_docs in np.split(docs[order], np.flatnonzero(np.diff(family[order])) + 1):
            kept: list[int] = []
            small: list[bool] = []  # the kept document's whole set fits in its sketch
            postings: dict[int, list[int]] = {}  # sketched hash -> kept documents (positions in `kept`) holding it
            for d in np.unique(family_docs).tolist():
                if removed[d]:
                    continue
                full = sets(d)
                if kept and jaccard(sets(kept[0]), full) >= threshold:  # most often: a copy of the first one
                    removed[d] = True
                    continue
                sketch = full[:m].tolist()
                held = [p for h in sketch if (p := postings.get(h)) is not None and len(p) <= CROWDED]
                if held:
                    cand, shared = np.unique(np.concatenate(held), return_counts=True)
                    near = (shared >= 2) | ((shared >= 1) & (full.size <= m) & np.asarray(small)[cand])
                    near &= cand > 0  # the earliest kept one is compared above
                    cand, shared = cand[near], shared[near]
                    best = cand[np.lexsort((cand, -shared))][:DEDUP_CHECKS]
                    if any(jaccard(sets(kept[j]), full) >= threshold for j in best.tolist()):
                        removed[d] = True
                        continue
                for h in sketch:
                    holders = postings.setdefault(h, [])
                    if len(holders) <= CROWDED:  # past it the hash leads nowhere: its list stops growing
                        holders.append(len(kept))
                kept.append(d)
                small.append(full.size <= m)
    return removed


class NearDupFilter:
    """What planning needs to refuse near-copies: the graph, one byte per chunk saying whether it has a
    near-copy at all (almost never: then nothing is looked up), and, with --dedup-corpus, one byte per
    chunk whose document was dropped. negatives._select does the per-document bookkeeping."""

    def __init__(self, graph: NearDupGraph, removed_chunks: np.ndarray | None = None):
        self.graph = graph
        copies = np.diff(graph.indptr) > 0
        if graph.family is not None:  # a member whose edge to its leader went with a removed document
            copies |= graph.family >= 0
        self.has_copies = bytearray(copies.astype(np.uint8).tobytes())
        self.family = graph.family  # None, or per chunk its family (-1: none): a chosen member bans them all
        self.removed = (None if removed_chunks is None
                        else bytearray(np.asarray(removed_chunks, bool).astype(np.uint8).tobytes()))
