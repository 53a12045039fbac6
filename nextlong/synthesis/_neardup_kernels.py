"""The numba loops of neardup.py, in a module of their own: numba caches a function on disk only when the
jitted functions it calls are module-level names (as closures of a factory, sketch_batch and sketch_tokens,
which call shingles, were compiled afresh in every process, ~2 s each). The hashing constants come in as
arguments. Imported only when a sketch or an intersection is computed, so numba stays optional."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def shingles(b, n, ws_table, mix, hash_base):
    words = np.empty(b.size // 2 + 1, np.uint64)
    nw = 0
    h = np.uint64(0)
    pw = np.uint64(1)
    inside = False
    for i in range(b.size):
        if ws_table[b[i]]:
            if inside:
                words[nw] = h
                nw += 1
                inside = False
        else:
            if not inside:
                h = np.uint64(0)
                pw = np.uint64(1)
                inside = True
            h += (np.uint64(b[i]) + np.uint64(1)) * pw
            pw *= hash_base
    if inside:
        words[nw] = h
        nw += 1
    if nw == 0:
        return np.empty(0, np.uint64)
    if nw < n:
        out = np.empty(1, np.uint64)
        x = np.uint64(nw)
        for j in range(nw):
            x += words[j] * mix[j]
        out[0] = x
        m = 1
    else:
        m = nw - n + 1
        out = np.empty(m, np.uint64)
        for i in range(m):
            x = np.uint64(0)
            for j in range(n):
                x += words[i + j] * mix[j]
            out[i] = x
    for i in range(m):
        x = out[i]
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out[i] = x ^ (x >> np.uint64(31))
    out.sort()
    k = 1
    for i in range(1, m):
        if out[i] != out[k - 1]:
            out[k] = out[i]
            k += 1
    return out[:k].copy()


@njit(cache=True, nogil=True)
def sketch_batch(data, byte_offsets, n, sketch, sizes, ws_table, mix, hash_base):
    # the texts of a batch of chunks back to back: row i of `sketch` gets the smallest hashes
    # of text i (the rest of the row is left as it was: the padding), sizes[i] its set size
    m = sketch.shape[1]
    for i in range(byte_offsets.size - 1):
        full = shingles(data[byte_offsets[i]:byte_offsets[i + 1]], n, ws_table, mix, hash_base)
        k = min(m, full.size)
        sketch[i, :k] = full[:k]
        sizes[i] = full.size


@njit(cache=True, nogil=True)
def sketch_tokens(tokens, tok_offsets, vocab_bytes, vocab_offsets, vocab_known, n, sketch, sizes, ws_table, mix,
                  hash_base):
    # as sketch_batch, decoding the token ids with the vocabulary's byte table itself (no GIL);
    # returns the first chunk holding an id outside the vocabulary, or -1
    m = sketch.shape[1]
    buf = np.empty(0, np.uint8)
    start = tok_offsets[0]
    for i in range(tok_offsets.size - 1):
        t0, t1 = tok_offsets[i] - start, tok_offsets[i + 1] - start
        size = 0
        for t in range(t0, t1):
            tid = tokens[t]
            if tid >= vocab_known.size or not vocab_known[tid]:
                return i
            size += vocab_offsets[tid + 1] - vocab_offsets[tid]
        if buf.size < size:
            buf = np.empty(max(size, 2 * buf.size), np.uint8)
        pos = 0
        for t in range(t0, t1):
            tid = tokens[t]
            for k in range(vocab_offsets[tid], vocab_offsets[tid + 1]):
                buf[pos] = vocab_bytes[k]
                pos += 1
        full = shingles(buf[:size], n, ws_table, mix, hash_base)
        k = min(m, full.size)
        sketch[i, :k] = full[:k]
        sizes[i] = full.size
    return -1


@njit(cache=True, nogil=True)
def intersection_size(x, y):
    # |x ∩ y| of two sorted unique arrays: one merge walk
    i = j = n = 0
    while i < x.size and j < y.size:
        if x[i] < y[j]:
            i += 1
        elif x[i] > y[j]:
            j += 1
        else:
            n += 1
            i += 1
            j += 1
    return n


@njit(cache=True, nogil=True)
def pair_intersections(flat, offsets, left, right):
    # |S_l ∩ S_r| for each pair, the sets back to back in flat (set i = flat[offsets[i]:offsets[i + 1]])
    out = np.zeros(left.size, np.int64)
    for e in range(left.size):
        out[e] = intersection_size(flat[offsets[left[e]]:offsets[left[e] + 1]],
                                   flat[offsets[right[e]]:offsets[right[e] + 1]])
    return out
