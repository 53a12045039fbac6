"""The corpus read + chunk + consolidate stages of `nextlong synthesize` under the local and the Ray
executor, and what the driver process spends: its CPU seconds and peak RSS (under Ray the actors read
the corpus, each its own splits, so the driver should read nothing).

Both executors run the same three stages as the pipeline's start (cl100k tokenizer, meta-chunks of
2,048 characters) on the same corpus, one after the other, from empty folders; their chunk parts and
tables are compared byte for byte. `--compare-with T` also compares the consolidated table, column by
column, with a chunks.parquet written earlier (e.g. by another nextlong version).

    python3 -m benchmarks.bench_read --corpus CORPUS --work DIR [--ray-cpus 2] [--compare-with chunks.parquet]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_one(corpus: str, out: str, executor: str, ray_cpus: int) -> dict:
    """One executor's run, in this (fresh) process: stage seconds, driver CPU and peak RSS."""
    from nextlong.synthesis import stages as S
    from nextlong.synthesis.framework import Pipeline, ReadCorpus

    pipeline = Pipeline(Path(out), [ReadCorpus(name="corpus", path=corpus),
                                    S.ChunkStage(name="chunk", inputs=("corpus",), chunk_size=2048),
                                    S.Consolidate(name="chunks", inputs=("chunk",))])
    if executor == "ray":
        from nextlong.synthesis.executors.ray import RayExecutor

        ex = RayExecutor(num_cpus=ray_cpus)
    else:
        from nextlong.synthesis.executors.local import LocalExecutor

        ex = LocalExecutor()
    load = os.getloadavg()[0]
    cpu0, t0 = time.process_time(), time.perf_counter()
    results = ex.run(pipeline, progress=False)
    return {"executor": executor, "load_before": load, "seconds": ex.seconds, "wall": time.perf_counter() - t0,
            "driver_cpu_s": time.process_time() - cpu0,
            "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "splits": results["chunk"].get("splits"), "blocks": results["chunk"]["blocks"],
            "chunks": results["chunks"]["chunks"]}


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.parquet"))}


def columns_equal(a: Path, b: Path) -> dict[str, bool]:
    """Column by column: the row groups of two chunk tables follow their blocks, their rows need not."""
    import pyarrow.parquet as pq

    names = pq.ParquetFile(a).schema_arrow.names
    if names != pq.ParquetFile(b).schema_arrow.names:
        return {"schema": False}
    return {n: pq.read_table(a, columns=[n]).column(0).equals(pq.read_table(b, columns=[n]).column(0)) for n in names}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--work", required=True, help="folder for the two runs' outputs (emptied first)")
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--ray-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--compare-with", help="a chunks.parquet to compare the consolidated table with")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--one", nargs=2, metavar=("EXECUTOR", "OUT"), help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.corpus, args.one[1], args.one[0], args.ray_cpus)))
        return {}
    work = Path(args.work)
    runs = {}
    for executor in args.executors.split(","):
        out = work / executor
        shutil.rmtree(out, ignore_errors=True)
        # a process per executor: the driver's CPU time and peak RSS are its own
        child = subprocess.run([sys.executable, "-m", "benchmarks.bench_read", "--corpus", args.corpus, "--work",
                                args.work, "--ray-cpus", str(args.ray_cpus), "--one", executor, str(out)],
                               check=True, capture_output=True, text=True)
        runs[executor] = json.loads(child.stdout.strip().splitlines()[-1])
        r = runs[executor]
        print(f"{executor:>5}: chunk {r['seconds']['chunk']:.1f} s, consolidate {r['seconds']['chunks']:.1f} s; "
              f"driver {r['driver_cpu_s']:.1f} CPU s, peak RSS {r['driver_peak_rss_mib']:.0f} MiB; "
              f"{r['splits']} splits, {r['blocks']} blocks, {r['chunks']:,} chunks (load before {r['load_before']:.2f})")
    names = list(runs)
    if len(names) == 2:
        a, b = (file_hashes(work / n) for n in names)
        runs["identical"] = bool(a) and a == b
        print(f"chunk parts and table byte-identical ({len(a)} files): {runs['identical']}")
    if args.compare_with:
        runs["columns_equal"] = {n: columns_equal(work / n / "chunks" / "chunks.parquet", Path(args.compare_with))
                                 for n in names}
        print(f"columns equal to {args.compare_with}: {runs['columns_equal']}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return runs


if __name__ == "__main__":
    main()
