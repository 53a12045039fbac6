"""Scale-out figures for `nextlong synthesize`: the local and the Ray executor side by side, the mining
stages at 1M+ chunks, and a projection to the paper's 644M chunks from measured per-chunk costs.

1. Stages, local vs Ray (same run, same corpus, same settings): a generated corpus of `--chunks`
   meta-chunks of real-looking text (documents of 1..8 chunks of ~2048 characters, words drawn with
   their frequencies from the stdlib docstrings, so no two chunks are near-copies), synthesized with
   the hashed-tfidf embedder, L = 8192, fixed-k negatives. Per stage: wall seconds, chunks/s, and
   the peak RSS of the whole process tree (the driver and, for Ray, every Ray process; RSS counts
   pages shared between processes, such as the memory-mapped chunk store, once per process). The
   output shards of the two runs are compared byte for byte. Ray's start-up is timed on its own.
2. Mining at scale (random vectors; the planning stub of bench_planning.py): the usearch HNSW build
   per chunk at `--index-sizes`, and planning time per anchor at `--plan-sizes` (it must stay flat).
3. Projection to 644M chunks: per-chunk core-seconds of each CPU stage measured in (1) and (2), an
   assumed GPU embedding rate (default: the paper's 644M chunks in ~928 GPU-hours, ~193 chunks/s per
   GPU), `--nodes` nodes of `--cores` cores and `--gpus-per-node` GPUs, and assumed prices. Printed
   again with `--embedder static` on CPUs (its measured rate, `--static-chunks-per-s`) in place of the
   GPUs, and, with `--partitioned-from bench_mining.json`, with the partitioned mining route (spread
   over every core, scaled from its largest measured size by sqrt(n)) in place of the HNSW index.

    python3 -m benchmarks.bench_scale [--quick] [--chunks 20000] [--index-sizes 100000,1000000]
        [--plan-sizes 100000,1000000,10000000] [--nodes 16 --cores 32 --gpus-per-node 8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

PAPER_CHUNKS = 644_000_000
PAPER_GPU_HOURS = 928.0


# --- a generated corpus ----------------------------------------------------------------------------


def word_distribution(max_bytes: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Words of the stdlib docstrings and their frequencies."""
    from nextlong.synthesis.demo import iter_stdlib_documents

    counts: Counter = Counter()
    for _, text in iter_stdlib_documents(max_bytes=max_bytes):
        counts.update(text.split())
    words, freq = zip(*counts.most_common())
    p = np.asarray(freq, np.float64)
    return np.asarray(words, dtype=object), p / p.sum()


def write_corpus(path: Path, n_chunks: int, seed: int = 0, chunk_chars: int = 2048) -> dict:
    """JSONL documents of 1..8 paragraphs of ~chunk_chars characters: ~n_chunks meta-chunks."""
    words, p = word_distribution()
    mean_len = float(sum(len(w) * q for w, q in zip(words[:5000], p[:5000])) / p[:5000].sum()) + 1
    per_para = int(chunk_chars * 0.9 / mean_len)
    rng = np.random.default_rng(seed)
    docs, paras = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while paras < n_chunks:
            k = int(min(rng.integers(1, 9), n_chunks - paras))
            drawn = words[rng.choice(words.size, size=k * per_para, p=p)]
            text = "\n".join(" ".join(drawn[i * per_para:(i + 1) * per_para]) for i in range(k))
            f.write(json.dumps({"id": f"gen-{docs}", "text": text}) + "\n")
            docs += 1
            paras += k
    return {"documents": docs, "bytes": path.stat().st_size}


# --- memory of the process tree --------------------------------------------------------------------


class TreeMemory:
    """Samples the summed RSS of this process and all its descendants every `interval` seconds."""

    def __init__(self, interval: float = 0.25):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for p in [self.proc] + self.proc.children(recursive=True):
            try:
                total += p.memory_info().rss
            except Exception:  # a process that ended between the listing and the read
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._rss()))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak(self, t0: float, t1: float) -> int:
        inside = [rss for t, rss in self.samples if t0 <= t <= t1]
        return max(inside) if inside else 0


def stage_windows(t_start: float, seconds: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Executors run steps one after another and record each step's seconds in order."""
    out, t = {}, t_start
    for name, s in seconds.items():
        out[name] = (t, t + s)
        t += s
    return out


# --- 1. stages, local vs Ray -----------------------------------------------------------------------


def run_synthesis(corpus: Path, out: Path, executor: str, settings: dict, memory: TreeMemory) -> dict:
    from nextlong.synthesis import executors as executors_module
    from nextlong.synthesis import synthesize

    made = {}
    make = executors_module.executor_for

    def capture(name, **options):  # keep the executor (its per-stage seconds) and when its run starts
        executor = made["executor"] = make(name, **options)
        inner = executor.run

        def run(*a, **k):
            made["t_run"] = time.perf_counter()
            return inner(*a, **k)

        executor.run = run
        return executor

    import nextlong.synthesis.pipeline as pipeline_module

    pipeline_module.executor_for = capture
    try:
        t0 = time.perf_counter()
        manifest = synthesize(corpus, out, executor=executor, **settings)
        total = time.perf_counter() - t0
    finally:
        pipeline_module.executor_for = make
    seconds = dict(made["executor"].seconds)
    windows = stage_windows(made["t_run"], seconds)
    stages = {name: {"seconds": round(s, 3), "peak_rss_mib": round(memory.peak(*windows[name]) / 2 ** 20)}
              for name, s in seconds.items()}
    return {"manifest": manifest, "total_s": total, "stages": stages}


def shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def planned_anchors(out: Path) -> int:
    """Plan rows (anchors or units tried) over every block the run computed, cut or not."""
    from nextlong.synthesis.framework import block_counts

    plan = out / "plan"
    return sum(int(c.get("rows", 0)) for c in block_counts(plan)) if plan.exists() else 0


def stage_seconds(run: dict, names) -> float:
    """Seconds of a run_synthesis result's stages `names`, summed (a stage it did not run counts 0)."""
    return sum(run["stages"].get(k, {}).get("seconds", 0) for k in names)


def compare_executors(n_chunks: int, work: Path, target_length: int, ray_cpus: int, order_check: bool = True,
                      dim: int = 256, num_samples: int | None = None, reproducible_index: bool = False,
                      index_shards: int = 1) -> dict:
    from nextlong.synthesis.executors import ray as executor_ray

    corpus = work / "corpus.jsonl"
    t0 = time.perf_counter()
    info = write_corpus(corpus, n_chunks)
    print(f"corpus: {info['documents']} documents, {info['bytes'] / 1e6:.1f} MB, ~{n_chunks} chunks "
          f"(generated in {time.perf_counter() - t0:.1f} s)")
    settings = dict(embedder=f"hashed-tfidf:{dim}", target_length=target_length, progress=False, shard_size=64,
                    num_samples=num_samples, reproducible_index=reproducible_index, index_shards=index_shards)
    results = {"corpus": info}
    with TreeMemory() as memory:
        load = os.getloadavg()[0]
        local = run_synthesis(corpus, work / "local", "local", settings, memory)
        results["local"] = dict(local, load_before=load)
        t0 = time.perf_counter()
        executor_ray.connect(None, num_cpus=ray_cpus, object_store_memory=512 * 2 ** 20)
        results["ray_start_s"] = time.perf_counter() - t0
        load = os.getloadavg()[0]
        ray = run_synthesis(corpus, work / "ray", "ray", settings, memory)
        results["ray"] = dict(ray, load_before=load)
    results["ray_other_order_plan_assemble_s"] = None
    runs = ["local", "ray"]
    if order_check:
        runs.append("ray-other-order")
        with TreeMemory() as memory:
            # the other setting of preserve_order (the default is off: files are named by block)
            default_order = executor_ray.RayExecutor.preserve_order
            executor_ray.RayExecutor.preserve_order = not default_order
            shutil.rmtree(work / "ray-other-order", ignore_errors=True)
            shutil.copytree(work / "ray", work / "ray-other-order",
                            ignore=shutil.ignore_patterns("plan", "assemble", "data", "manifest.json", ".lock*"))
            other = run_synthesis(corpus, work / "ray-other-order", "ray", settings, memory)
            executor_ray.RayExecutor.preserve_order = default_order
            results["ray_other_order_plan_assemble_s"] = stage_seconds(other, ("plan", "assemble"))
    hashes = [shard_hashes(work / run / "data") for run in runs]
    results["identical"] = bool(hashes[0]) and all(h == hashes[0] for h in hashes)
    chunks = results["local"]["manifest"]["statistics"]["corpus_chunks"]
    results["chunks"] = chunks
    for run in ("local", "ray"):  # the cut may stop planning early: per-anchor cost from what was planned
        results[run]["planned_anchors"] = planned_anchors(work / run)
    print(f"\nstages on {os.cpu_count()} cores ({chunks} chunks; load {results['local']['load_before']:.2f} before "
          f"the local run, {results['ray']['load_before']:.2f} before the Ray run; Ray start-up "
          f"{results['ray_start_s']:.1f} s, not in the table)")
    print(f"{'stage':<12} {'local s':>9} {'chunks/s':>10} {'peak MiB':>9} | {'ray s':>9} {'chunks/s':>10} {'peak MiB':>9}")
    for name in results["local"]["stages"]:
        a = results["local"]["stages"][name]
        b = results["ray"]["stages"].get(name, {"seconds": float("nan"), "peak_rss_mib": 0})
        print(f"{name:<12} {a['seconds']:>9.2f} {chunks / max(a['seconds'], 1e-9):>10.0f} {a['peak_rss_mib']:>9} | "
              f"{b['seconds']:>9.2f} {chunks / max(b['seconds'], 1e-9):>10.0f} {b['peak_rss_mib']:>9}")
    print(f"{'total':<12} {results['local']['total_s']:>9.2f} {'':>10} {'':>9} | {results['ray']['total_s']:>9.2f}")
    for run in ("local", "ray"):
        n = results[run]["planned_anchors"]
        s = stage_seconds(results[run], ("plan", "assemble"))
        print(f"plan + assemble ({run}): {n} anchors planned, {1e3 * s / max(n, 1):.2f} ms wall per anchor")
    print("(a chain of map stages is timed as one step, booked to its last stage: assemble = plan + assemble;\n"
          " peak 0 = a step shorter than the 0.25 s sampling interval)")
    default = stage_seconds(results["ray"], ("plan", "assemble"))
    on = executor_ray.RayExecutor.preserve_order
    if results["ray_other_order_plan_assemble_s"] is not None:
        print(f"plan -> assemble on Ray: {default:.2f} s with preserve_order {on} (the default), "
              f"{results['ray_other_order_plan_assemble_s']:.2f} s with {not on}")
    print(f"output shards byte-identical ({', '.join(runs)}): {results['identical']}")
    return results


def read_rate(corpus: Path, block_bytes: int = 4 << 20) -> dict:
    """The native reader alone on one core (what each chunk actor spends reading its splits; the
    chunk stage's measured time already includes it). Timed alone, for reference."""
    from nextlong.corpus.reader import CorpusReader

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    reader = CorpusReader(corpus, batch_size=1024, batch_bytes=block_bytes)
    blocks = sum(1 for _ in reader.batches())
    s = time.perf_counter() - t0
    size = corpus.stat().st_size
    out = {"seconds": s, "bytes": size, "mb_per_s": size / 1e6 / s, "blocks": blocks, "load": load}
    print(f"corpus read: {size / 1e6:.0f} MB in {s:.1f} s = {out['mb_per_s']:.0f} MB/s, {blocks} blocks "
          f"(native reader, one core; load {load:.2f})")
    return out


# --- 2. mining at scale ------------------------------------------------------------------------------


def index_build(sizes: list[int], dim: int = 384, threads: int = 0) -> dict:
    """usearch HNSW build (f16, cosine; ChunkIndex's defaults) over random unit vectors."""
    from nextlong.mining.index import ChunkIndex

    out = {}
    for n in sizes:
        rng = np.random.default_rng(0)
        vecs = rng.standard_normal((n, dim), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        ChunkIndex.build(vecs, np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64) // 4,
                         threads=threads, progress=False)
        s = time.perf_counter() - t0
        cores = threads or os.cpu_count()
        out[n] = {"seconds": s, "core_us_per_chunk": 1e6 * s * cores / n, "load": load}
        print(f"index build {n:>10,} chunks x {dim}: {s:.1f} s, {out[n]['core_us_per_chunk']:.0f} core-us/chunk "
              f"({cores} threads; load {load:.2f})")
        del vecs
    return out


def planning(sizes: list[int], anchors: int) -> dict:
    from benchmarks import bench_planning

    r = bench_planning.main(["--sizes", ",".join(map(str, sizes)), "--anchors", str(anchors), "--repeats", "2"])
    return r


# --- 3. projection -------------------------------------------------------------------------------------


def project(per_chunk_core_s: dict[str, float], plan_ms_per_anchor: float, chunks_per_doc: float, args,
            read: dict | None = None, embedder: str = "minilm") -> dict:
    """Hours and cost for PAPER_CHUNKS chunks on args.nodes nodes (CPU stages spread over every core,
    embedding over every GPU at the assumed rate, or with `embedder="static"` over every core at the
    measured static rate; whole stages as they scale: see docs/scale.md)."""
    n = PAPER_CHUNKS
    cores = args.nodes * args.cores
    gpus = args.nodes * args.gpus_per_node
    rows = {}
    for name, core_s in per_chunk_core_s.items():
        rows[name] = {"core_hours": core_s * n / 3600, "wall_hours": core_s * n / 3600 / cores}
    if "index (HNSW)" in rows:  # one build on one node today (docs/scale.md, limits)
        one_node = rows["index (HNSW)"]["core_hours"] / args.cores
        rows["index (HNSW)"]["note"] = f"if it could spread; one {args.cores}-core node today: {one_node:.0f} h"
    anchors = n / chunks_per_doc
    # planning measured end to end above (exact search, small corpus); the stub-search figure at the
    # largest size is shown for comparison, not added (flat per anchor: see the planning section)
    planning_note = (f"  planning alone at scale (stub search): {plan_ms_per_anchor:.1f} ms/anchor x {anchors / 1e6:.0f}M "
                     f"anchors = {plan_ms_per_anchor / 1e3 * anchors / 3600:.0f} core-h (inside 'plan + assemble + write')")
    if read is not None:  # in the chunk actors, each on its own splits: inside the chunk stage's core time
        paper_bytes = n * read["bytes_per_chunk"]
        hours = paper_bytes / (read["mb_per_s"] * 1e6) / 3600
        planning_note += (f"\n  corpus read: {paper_bytes / 1e12:.1f} TB at {read['mb_per_s']:.0f} MB/s per core = "
                          f"{hours:.1f} core-h, spread over the chunk actors (inside 'chunk + tokenize')")
    if embedder == "static":  # CPU only: the static embedder's measured rate per core
        core_h = n / (args.static_chunks_per_s / args.static_cores) / 3600
        rows["embed (static, CPU)"] = {"core_hours": core_h, "wall_hours": core_h / cores}
    else:
        rows["embed (GPU)"] = {"gpu_hours": n / args.gpu_chunks_per_s / 3600,
                               "wall_hours": n / args.gpu_chunks_per_s / 3600 / gpus}
    cpu_hours = sum(r.get("core_hours", 0) for r in rows.values())
    gpu_hours = sum(r.get("gpu_hours", 0) for r in rows.values())
    wall = sum(r["wall_hours"] for r in rows.values())
    cost = cpu_hours * args.core_hour_usd + gpu_hours * args.gpu_hour_usd
    print(f"\nprojection ({embedder} embedder) to {n / 1e6:.0f}M chunks on {args.nodes} nodes x {args.cores} cores + "
          f"{args.gpus_per_node} GPUs ({cores} cores, {gpus} GPUs); GPU embedding at {args.gpu_chunks_per_s:.0f} "
          f"chunks/s per GPU; ${args.core_hour_usd}/core-hour, ${args.gpu_hour_usd}/GPU-hour; "
          f"{chunks_per_doc:.2f} chunks per document (one anchor each)")
    print(planning_note)
    for name, r in rows.items():
        amount = f"{r['gpu_hours']:.0f} GPU-h" if "gpu_hours" in r else f"{r['core_hours']:.0f} core-h"
        print(f"  {name:<24} {amount:>14}  {r['wall_hours']:8.2f} h wall" + (f"  ({r['note']})" if "note" in r else ""))
    print(f"  {'total':<24} {cpu_hours:>8.0f} core-h + {gpu_hours:.0f} GPU-h, {wall:.1f} h wall if stages run "
          f"one after another, ${cost:,.0f}")
    return {"rows": rows, "cpu_hours": cpu_hours, "gpu_hours": gpu_hours, "wall_hours": wall, "usd": cost}


def partitioned_core_s(mining: list[dict]) -> float:
    """Core-seconds per chunk of the partitioned route at 644M chunks, from bench_mining.py's largest
    measured size: with sqrt(n) partitions a chunk's search scans nprobe * sqrt(n) members, so its cost
    per chunk grows as sqrt(n) (k-means and routing grow slower; scaling all of it by sqrt(n) is an upper
    bound)."""
    runs = [r for r in mining if r["route"] == "partitioned"]
    largest = max(runs, key=lambda r: r["chunks"])
    return largest["core_us_per_chunk"] / 1e6 * (PAPER_CHUNKS / largest["chunks"]) ** 0.5


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2k chunks, index at 20k, planning at 100k (a minute or two)")
    ap.add_argument("--chunks", type=int, default=20_000, help="chunks of the generated corpus for local vs Ray")
    ap.add_argument("--target-length", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=256, help="hashed-tfidf dimension of the local-vs-Ray runs")
    ap.add_argument("--num-samples", type=int, help="cut the local-vs-Ray runs at this many samples (default: every anchor)")
    ap.add_argument("--ray-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--reproducible-index", action="store_true",
                    help="one-thread HNSW build in both runs (above 50k chunks the output is then byte-identical)")
    ap.add_argument("--index-shards", type=int, default=1,
                    help="HNSW shards, each built on one thread, in parallel (byte-identical output too)")
    ap.add_argument("--index-sizes", default="100000,1000000")
    ap.add_argument("--plan-sizes", default="100000,1000000,10000000")
    ap.add_argument("--anchors", type=int, default=20)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--cores", type=int, default=32)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--gpu-chunks-per-s", type=float, default=PAPER_CHUNKS / (PAPER_GPU_HOURS * 3600))
    ap.add_argument("--gpu-hour-usd", type=float, default=2.5)
    ap.add_argument("--static-chunks-per-s", type=float, default=50_445.0,
                    help="--embedder static's measured rate (docs/scale.md: 2-core machine, see --static-cores)")
    ap.add_argument("--static-cores", type=int, default=2)
    ap.add_argument("--partitioned-from", help="bench_mining.py --json output: add the partitioned route (spread "
                                                "over the nodes) beside the HNSW line, scaled to 644M chunks")
    ap.add_argument("--core-hour-usd", type=float, default=0.04)
    ap.add_argument("--no-order-check", action="store_true", help="skip the third run (Ray, other preserve_order)")
    ap.add_argument("--stages-only", action="store_true", help="only part 1 (local vs Ray), no mining, no projection")
    ap.add_argument("--stages-from", help="take part 1 from this earlier --json output instead of running it")
    ap.add_argument("--mining-from", help="take part 2 (and the read rate) from this earlier --json output")
    ap.add_argument("--work", help="folder for the corpus and outputs (default: a temporary one)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.chunks, args.index_sizes, args.plan_sizes, args.anchors = 2000, "20000", "100000", 10
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average) on {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')} UTC")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"args": vars(args)}
    try:
        if args.stages_from:  # part 1 from an earlier run's --json (a 1M-chunk run takes over an hour)
            results["stages"] = json.loads(Path(args.stages_from).read_text())["stages"]
        else:
            results["stages"] = compare_executors(args.chunks, work, args.target_length, args.ray_cpus,
                                                  order_check=not args.no_order_check, dim=args.dim,
                                                  num_samples=args.num_samples,
                                                  reproducible_index=args.reproducible_index,
                                                  index_shards=args.index_shards)
        if args.stages_only:
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1, default=str))
            return results
        corpus = work / "corpus.jsonl"
        if args.mining_from:  # parts 2 and the read rate from an earlier --json: only the projection again
            earlier = json.loads(Path(args.mining_from).read_text())
            results.update({k: earlier[k] for k in ("read", "index", "planning") if k in earlier})
            for k in ("index", "planning"):  # JSON turned the sizes into strings
                results[k] = {int(n) if str(n).isdigit() else n: v for n, v in results[k].items()}
        else:
            if corpus.exists():
                results["read"] = read_rate(corpus)
            results["index"] = index_build([int(x) for x in args.index_sizes.split(",")])
            results["planning"] = planning([int(x) for x in args.plan_sizes.split(",")], args.anchors)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    local = results["stages"]["local"]
    chunks = results["stages"]["chunks"]
    stats = local["manifest"]["statistics"]
    cores_here = os.cpu_count()
    per_chunk = {}  # core-seconds per chunk of the local run's CPU stages (threads use every core)
    for name, group in (("chunk + tokenize", ("chunk", "chunks")), ("near-copy graph", ("neardup",)),
                        ("units", ("units",))):
        per_chunk[name] = stage_seconds(local, group) * cores_here / chunks
    # planning runs per anchor (a cut run plans only some): core-seconds per planned anchor, spread per chunk
    anchors_here = max(local["planned_anchors"], 1)
    per_chunk["plan + assemble + write"] = (stage_seconds(local, ("plan", "assemble", "data")) * cores_here
                                            / anchors_here * stats["corpus_documents"] / chunks)
    biggest = max(results["index"])
    per_chunk["index (HNSW)"] = results["index"][biggest]["core_us_per_chunk"] / 1e6
    sizes = sorted(k for k in results["planning"] if isinstance(k, int))
    plan_ms = max(results["planning"][s]["ms_per_anchor"] for s in sizes)
    read = results.get("read")
    if read is not None:
        read = dict(read, bytes_per_chunk=read["bytes"] / chunks)
    per_doc = chunks / stats["corpus_documents"]
    results["projection"] = project(per_chunk, plan_ms, per_doc, args, read)
    routes = {"hnsw": per_chunk}
    if args.partitioned_from:  # the same run with the partitioned route in place of the HNSW index
        partitioned = {k: v for k, v in per_chunk.items() if k != "index (HNSW)"}
        partitioned["mining (partitioned, tasks)"] = partitioned_core_s(
            json.loads(Path(args.partitioned_from).read_text()))
        results["projection_partitioned"] = project(partitioned, plan_ms, per_doc, args, read)
        routes["partitioned"] = partitioned
    for route, costs in routes.items():  # CPU only: --embedder static instead of MiniLM on GPUs
        results[f"projection_static_{route}"] = project(costs, plan_ms, per_doc, args, read, embedder="static")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
