"""Spherical k-means for the partitioned search: the coarse quantizer, trained on a sample.

Deterministic for a seed on any machine count: the sample and the initial centroids are drawn from a
seeded generator, every assignment is `exact_top_k` (batching-independent), and each centroid is the
float64 sum of its members taken in row order, then L2-normalised (the vectors are unit length and
the search is by inner product, so centroids live on the sphere too). An empty cluster takes the
sample point worst served by its centroid (lowest similarity, then lowest row), as FAISS re-seeds
empty clusters by splitting. With fewer distinct vectors than clusters some partitions stay empty
(counted in the neighbour lists' record: empty_partitions).
"""

from __future__ import annotations

import numpy as np

from .exact import exact_top_k

DEFAULT_ITERATIONS = 20
POINTS_PER_CENTROID = 64  # sample size per partition; FAISS warns below 39


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted row numbers of a uniform sample of `size` of `n` rows (all of them when size >= n)."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int64)


def assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid, its similarity) of every row; ties go to the lower centroid."""
    ids, sims = exact_top_k(vectors, centroids, 1)
    return ids[:, 0], sims[:, 0]


def spherical_kmeans(sample: np.ndarray, n_clusters: int, *, seed: int, iterations: int = DEFAULT_ITERATIONS,
                     on_iteration=None) -> np.ndarray:
    """(n_clusters, d) float32 unit centroids from the rows of `sample` (unit vectors)."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    n = sample.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"k-means needs 1 <= clusters <= sample rows, got {n_clusters} clusters for {n} rows")
    rng = np.random.default_rng(seed)
    centroids = sample[np.sort(rng.choice(n, size=n_clusters, replace=False))].copy()
    for it in range(iterations):
        labels, sims = assign(sample, centroids)
        sums = np.zeros((n_clusters, sample.shape[1]), np.float64)
        np.add.at(sums, labels, sample.astype(np.float64))  # sequential: the same sums on every machine
        sizes = np.bincount(labels, minlength=n_clusters)
        empty = np.flatnonzero(sizes == 0)
        if empty.size:
            worst = np.lexsort((np.arange(n), sims))[: empty.size]
            sums[empty] = sample[worst]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        new = (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        moved = not np.array_equal(new, centroids)
        centroids = new
        if on_iteration is not None:
            on_iteration(it)
        if not moved and not empty.size:
            break
    return centroids


def spatial_order(centroids: np.ndarray) -> np.ndarray:
    """A permutation of the centroids that puts neighbours next to each other: halve them at the median of
    their projection on their principal direction, then each half likewise (a k-d tree's leaf order along
    the data's own axes). Any range of consecutive ids is then a compact region, so a search task of the
    partitioned route, which takes a range of partitions, holds more of each chunk's nprobe nearest
    partitions, and its running top K prunes more (synthesis/neighbours.py). Deterministic: float64
    SVD, stable sorts, ties to the lower id."""
    centroids = np.asarray(centroids, np.float64)
    order = np.empty(len(centroids), np.int64)
    pending, filled = [np.arange(len(centroids))], 0  # depth-first, first half first
    while pending:
        ids = pending.pop()
        if ids.size <= 2:
            order[filled:filled + ids.size] = ids
            filled += ids.size
            continue
        x = centroids[ids] - centroids[ids].mean(axis=0)
        direction = np.linalg.svd(x, full_matrices=False)[2][0]
        by = np.argsort(x @ direction, kind="stable")
        half = ids.size // 2
        pending += [ids[by[half:]], ids[by[:half]]]
    return order
