"""The planner's wide search of partitioned neighbour lists (NeighbourLists.search), against the first
version that searched one query at a time.

An anchor next to heavily duplicated text (its copies fill the K = 32 lists and the x4 widenings) is
searched again with k = 128, then 512, for all its meta-chunks at once. The first version concatenated
the member ids of each query's nprobe partitions, gathered their vectors from the memmap and computed
their largest norm, query by query; the current one searches each probed partition once for all the
queries probing it. Synthetic corpus: N unit vectors (d = 256, memory-mapped from a .npy as the
planner's embeddings are), sqrt(N) partitions (k-means on a 20k sample), `--copies` exact copies of one
vector and the anchor's meta-chunks near it. Both versions' answers are checked equal (ids and float32
sims, byte for byte) before the times are printed: best of `--repeat` CPU seconds per anchor.

    python3 -m benchmarks.bench_wide_search --chunks 100000 --meta-chunks 24
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def build(folder: Path, n: int, d: int, copies: int, meta: int, nprobe: int, seed: int = 0):
    from nextlong.mining.kmeans import spherical_kmeans
    from nextlong.mining.partitioned import (NeighbourLists, default_partitions, members_by_partition, route,
                                             write_info)

    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)).astype(np.float32)
    v[rng.choice(n, copies, replace=False)] = v[0]  # the duplicated paragraph
    anchor = v[0] + 0.3 * rng.standard_normal((meta, d)).astype(np.float32)  # meta-chunks near it
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    anchor /= np.linalg.norm(anchor, axis=1, keepdims=True)
    np.save(folder / "vectors.npy", v)
    partitions = default_partitions(n)
    centroids = spherical_kmeans(v[rng.choice(n, min(n, 20000), replace=False)], partitions, seed=0, iterations=5)
    home = np.concatenate([route(v[lo:lo + 65536], centroids, 1)[:, 0] for lo in range(0, n, 65536)])
    members, offsets = members_by_partition(home, partitions)
    lists_dir = folder / "lists"
    lists_dir.mkdir()
    for name, array in {"neighbour_ids.npy": np.full((n, 1), -1, np.int64),
                        "neighbour_sims.npy": np.full((n, 1), -np.inf, np.float32), "members.npy": members,
                        "member_offsets.npy": offsets, "centroids.npy": centroids}.items():
        np.save(lists_dir / name, array)
    write_info(lists_dir, neighbours=1, partitions=partitions, nprobe=nprobe, chunks=n)
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    return (lambda: NeighbourLists(lists_dir, vectors, verify=False)), anchor, partitions


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--copies", type=int, default=400)
    ap.add_argument("--meta-chunks", type=int, default=24, help="queries of one anchor")
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from tests.helpers import search_one_query_at_a_time

    with tempfile.TemporaryDirectory() as tmp:
        opener, anchor, partitions = build(Path(tmp), args.chunks, args.dim, args.copies, args.meta_chunks,
                                           args.nprobe)
        result = {"chunks": args.chunks, "partitions": partitions, "nprobe": args.nprobe,
                  "meta_chunks": args.meta_chunks, "load": os.getloadavg()[0]}
        for name, fn in (("one_query_at_a_time", search_one_query_at_a_time), ("batched", None)):
            best = float("inf")
            for _ in range(args.repeat):
                lists = opener()  # a fresh NeighbourLists: the planner opens one per task
                t = time.process_time()
                answers = [(fn(lists, anchor, k) if fn else lists.search(anchor, k)) for k in (128, 512)]
                best = min(best, time.process_time() - t)
            result[f"{name}_cpu_s"] = round(best, 3)
            if fn:
                reference = answers
            else:
                assert all(np.array_equal(a[0], b[0]) and a[1].tobytes() == b[1].tobytes()
                           for a, b in zip(answers, reference)), "the two searches differ"
        result["speedup"] = round(result["one_query_at_a_time_cpu_s"] / max(result["batched_cpu_s"], 1e-9), 1)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
