"""The mining routes side by side on the same real-text vectors: every chunk's top-K neighbours from

* `partitioned`: our k-means + route + per-partition exact search + merge (nextlong.mining.partitioned,
  the steps the `--mining partitioned` stages run as tasks), in one process;
* `hnsw`: the usearch HNSW index `--mining hnsw` builds (ChunkIndex, f16, all threads), then one batch
  search of every chunk;
* `faiss-ivf` (the peer, `pip install faiss-cpu`): FAISS IndexIVFFlat, inner product, trained on the same
  sample size with the same partitions, searched with the same nprobe.

Per route and size: build and self-search seconds, core-microseconds per chunk, recall@10 of the lists
against exact search (2,000 sampled chunks, the chunk itself excluded), and the peak RSS of the process
that ran it (each route runs in its own process; measured before the recall check, with the vectors
loaded: `rss_before_mib` is the process with only the vectors). For the partitioned route, the working set of its
largest task (a search task: its partitions' members and the chunks routed to them) is computed from
the partition sizes: what one task needs, whatever the corpus size.

Vectors: a .npy of L2-normalised rows (`--vectors`), its first N rows at each `--sizes`; `--pca D`
projects them to D dimensions first (PCA fitted on 100k rows, renormalised).

    python3 -m benchmarks.bench_mining --vectors static.npy --pca 64 --sizes 100000,420000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

QUERIES = 2000


def load(path: str, n: int, pca: int | None) -> np.ndarray:
    source = np.load(path, mmap_mode="r")[:n]
    if not pca or pca >= source.shape[1]:
        return np.ascontiguousarray(source, np.float32)
    rows = np.sort(np.random.default_rng(0).choice(len(source), min(len(source), 20_000), replace=False))
    sample = np.asarray(source[rows], np.float64)
    mean = sample.mean(axis=0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    basis = vt[:pca].T.astype(np.float32)
    v = np.empty((len(source), pca), np.float32)
    for lo in range(0, len(source), 50_000):  # in slices: the harness must not set the process's peak memory
        v[lo:lo + 50_000] = (np.asarray(source[lo:lo + 50_000], np.float32) - mean.astype(np.float32)) @ basis
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v


def run_route(route: str, path: str, n: int, pca: int | None, k: int, nprobe: int, threads: int) -> dict:
    """One route on the first n vectors, in this process."""
    from nextlong.mining.exact import exact_top_k
    from nextlong.mining.kmeans import sample_rows, spherical_kmeans
    from nextlong.mining.partitioned import default_partitions, recall_at, self_search

    v = load(path, n, pca)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    partitions = default_partitions(n)
    sample = sample_rows(n, min(n, 64 * partitions), 0)
    load_avg = os.getloadavg()[0]
    out = {"route": route, "chunks": n, "dim": int(v.shape[1]), "k": k, "threads": threads, "load": load_avg}
    t0 = time.perf_counter()
    if route == "partitioned":
        centroids = spherical_kmeans(v[sample], partitions, seed=0)
        t1 = time.perf_counter()
        ids, _, home = self_search(v, centroids, nprobe, k + 1)
        sizes = np.bincount(home, minlength=partitions)
        # the largest search task at BLOCK_ROWS-chunk blocks: its partitions' members and routed queries
        per_block = max(1, partitions // max(1, -(-n // (1 << 16))))
        groups = [sizes[i:i + per_block] for i in range(0, partitions, per_block)]
        biggest = max(g.sum() * (1 + nprobe) for g in groups)
        out.update(partitions=partitions, nprobe=nprobe, largest_partition=int(sizes.max()),
                   largest_search_task_mib=round(biggest * v.shape[1] * 4 / 2**20, 1))
    elif route == "hnsw":
        from nextlong.mining.index import ChunkIndex

        index = ChunkIndex.build(v, np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64), threads=threads,
                                 progress=False)
        t1 = time.perf_counter()
        ids, _ = index.search(v, k + 1)
        ids = np.asarray(ids, np.int64)
    elif route == "faiss-ivf":
        import faiss

        faiss.omp_set_num_threads(threads)
        quantizer = faiss.IndexFlatIP(v.shape[1])
        index = faiss.IndexIVFFlat(quantizer, v.shape[1], partitions, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 20
        index.train(v[sample])
        index.add(v)
        t1 = time.perf_counter()
        index.nprobe = nprobe
        _, ids = index.search(v, k + 1)
        out.update(partitions=partitions, nprobe=nprobe)
    else:
        raise SystemExit(f"unknown route {route}")
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queries = np.sort(np.random.default_rng(1).choice(n, min(QUERIES, n), replace=False))
    exact, _ = exact_top_k(v[queries], v, k + 1)

    def without_self(rows, own):
        return np.stack([np.array([c for c in r if c != o][:10] + [-1] * 10)[:10] for r, o in zip(rows, own)])

    out.update(build_s=t1 - t0, search_s=t2 - t1, total_s=t2 - t0,
               core_us_per_chunk=1e6 * (t2 - t0) * threads / n,
               recall_at_10=recall_at(without_self(np.asarray(ids)[queries], queries), without_self(exact, queries), 10),
               rss_before_mib=before, peak_rss_mib=peak)
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", required=True)
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--pca", type=int)
    ap.add_argument("--k", type=int, default=32, help="neighbours per chunk (the chunk itself aside)")
    ap.add_argument("--nprobe", type=int, default=None, help="default: nextlong's DEFAULT_NPROBE")
    ap.add_argument("--routes", default="partitioned,faiss-ivf,hnsw")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # route:n, run in a child process
    args = ap.parse_args(argv)
    from nextlong.mining.partitioned import DEFAULT_NPROBE

    nprobe = args.nprobe or DEFAULT_NPROBE
    if args.one:
        route, n = args.one.split(":")
        print(json.dumps(run_route(route, args.vectors, int(n), args.pca, args.k, nprobe, args.threads)))
        return []
    print(f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')} UTC", flush=True)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        for route in args.routes.split(","):
            cmd = [sys.executable, "-m", "benchmarks.bench_mining", "--vectors", args.vectors, "--k", str(args.k),
                   "--nprobe", str(nprobe), "--threads", str(args.threads), "--one", f"{route}:{n}"]
            if args.pca:
                cmd += ["--pca", str(args.pca)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{route} at {n}: failed\n{done.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(r)
            extra = (f", {r['partitions']} partitions, nprobe {r['nprobe']}" if "partitions" in r else "")
            task = f", largest search task {r['largest_search_task_mib']} MiB" if "largest_search_task_mib" in r else ""
            print(f"{route:<12} {n:>9,} x {r['dim']}: build {r['build_s']:7.1f} s + self-search {r['search_s']:7.1f} s "
                  f"= {r['core_us_per_chunk']:7.0f} core-us/chunk; recall@10 {r['recall_at_10']:.3f}; peak RSS "
                  f"{r['peak_rss_mib']:.0f} MiB ({r['rss_before_mib']:.0f} with only the vectors){task}{extra} "
                  f"(load {r['load']:.2f})", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
