"""What the synthesize and acer drivers share around their stages: the run's thread bound, running the
stages under a "running" manifest, reading a finished stage's counts, the output format, and the tokenizer
entries of the final manifest. Each driver keeps its own statistics and summary."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from .framework import DONE_FILE, check_stage_files, read_done


def thread_limit(threads: int | None):
    """--threads N bounds every pool a run uses: the chunker's and the embedder's (passed on), and the
    BLAS / OpenMP pools of numpy and torch (here)."""
    import contextlib

    if not threads:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(int(threads))


def run_stages(pipeline, executor, *, command: str, cfg, fps: dict | None = None) -> tuple[dict, Callable[[str], dict]]:
    """Fingerprint the stages (unless `fps` has them: a tokenizer setting's identity loads the tokenizer),
    refuse cached ones made with other settings (before the running manifest replaces a finished run's),
    write that manifest, run the stages. Returns (fingerprints, record), where record(name) is a finished
    stage's counts ({} for a stage this pipeline does not have)."""
    from ..manifest import write_running_manifest

    out = cfg.out_dir
    fps = fps or pipeline.fingerprints()
    pipeline.check_cached(fps, cfg.rebuild)
    if getattr(cfg, "verify", True):  # the chunk store and near-copy graph a cached stage left, before use
        check_stage_files(pipeline, fps, skip_option="--no-verify" if hasattr(cfg, "verify") else None)
    for name in discard_stale_formats(out, cfg.format, fps["data"]):
        if cfg.progress:
            print(f"nextlong {command}: removed {out / name}/ (it is derived from OUT/data, and this run "
                  f"{'remakes the data' if name == cfg.format else 'writes --format ' + cfg.format})",
                  file=sys.stderr)
    write_running_manifest(out / "manifest.json", command=command, seed=cfg.seed,
                           settings={**cfg.to_dict(), "output_fingerprint": fps["data"], "stage_fingerprints": fps})
    executor.run(pipeline, rebuild=cfg.rebuild, progress=cfg.progress)

    def record(name: str) -> dict:
        # read_done took a record whose counts are not of the shape its readers use as no record
        return (read_done(out / name / DONE_FILE) or {}).get("counts", {}) if name in fps else {}

    return fps, record


def made_seconds(pipeline, groups: dict, fallback: Callable[[str], float | None] | None = None) -> dict:
    """{timing group (`groups[stage]`, else the stage's name): what its stages took to make, as their records
    keep it (framework.stage_seconds: whichever runs made them), summed}, "chunk" first; a group with a
    stage whose record keeps no seconds (written before records kept them) is None, "not recorded", unless
    `fallback(stage name)` has a number for it."""
    from .framework import stage_seconds

    made: dict = {"chunk": 0.0}
    for stage in pipeline.stages:
        if stage.kind == "read" or stage.name in pipeline.external:
            continue
        group = groups.get(stage.name, stage.name)
        seconds = stage_seconds(pipeline.root / stage.name)
        if seconds is None and fallback is not None:
            seconds = fallback(stage.name)
        made[group] = None if seconds is None or made.get(group, 0.0) is None else made.get(group, 0.0) + seconds
    return made


def made_total(made: dict, write_format: float, outside: float) -> dict:
    """statistics.seconds: `made` (made_seconds) with this run's `write_format`, and the "total" the data took:
    the stages' seconds as recorded plus this run's `outside` them (its statistics and format, which every run
    redoes; write_format included); None when a stage's are not recorded."""
    stages = list(made.values())
    made = dict(made, write_format=write_format, total=None if None in stages else sum(stages) + outside)
    return {k: None if v is None else round(v, 3) for k, v in made.items()}


def seconds_lines(s: dict) -> list[str]:
    """The summary's timing lines: what the data took to make (stages as recorded when made, whichever run made
    them), then this run's own seconds when they differ (a rerun that found its stages done, a resumed one)."""
    made, here = s.get("seconds") or {}, s.get("seconds_this_run") or {}
    if not made:
        return []
    lines = ["  seconds to make the data: " + ", ".join(f"{k} " + ("not recorded" if v is None else f"{v:.1f}")
                                                     for k, v in made.items())]
    total, total_here = made.get("total"), here.get("total")
    if total_here is not None and (total is None or abs(total - total_here) > 0.05 + 0.05 * total_here):
        lines.append(f"  this run: {total_here:.2f} s in all (stages made in earlier runs were reused)")
    return lines


DERIVED_FORMATS = ("jsonl", "mds")  # OUT/<name>, written from OUT/data at the end of a run


def discard_stale_formats(out: Path, fmt: str, data_fingerprint: str) -> list[str]:
    """Remove, before the stages run, each derived format (OUT/jsonl, OUT/mds) this run will not write from
    the data it leaves: every one not asked for (`fmt`), and the asked one too when OUT/data is about to be
    remade with other settings (a later --filter, --num-samples, ...), so that neither a finished run nor a
    killed one leaves a format holding other samples than OUT/data. The asked one is written again at the
    end (`write_format`). Returns the names removed."""
    from .framework import read_done
    from .writers import remove_output

    record = read_done(out / "data" / DONE_FILE)
    data_kept = record is not None and record.get("fingerprint") == data_fingerprint
    removed = []
    for name in DERIVED_FORMATS:
        if os.path.lexists(out / name) and (name != fmt or not data_kept):
            remove_output(out / name)
            removed.append(name)
    return removed


def write_format(fmt: str, out: Path, tokenizer, writers, **mds_options) -> None:
    """OUT/jsonl or OUT/mds from the Parquet rows in OUT/data (parquet: nothing more), with the method's
    own `writers` module (their rows differ), each written beside its place and swapped in whole. A format
    not asked for was removed before the stages ran (`discard_stale_formats`)."""
    if fmt == "jsonl":
        writers.write_jsonl(out / "data", out / "jsonl", tokenizer)
    elif fmt == "mds":
        writers.write_mds(out / "data", out / "mds", **mds_options)


def check_corpus_found(corpus: str, out: Path) -> None:
    """The corpus exists, and the output folder is not inside a corpus folder: every file the run writes there
    (manifest.json, the stages' Parquet parts) would be read as corpus, the first failing with an error that
    blamed OUT/manifest.json as a bad corpus file."""
    from ..errors import NextlongError, UsageError

    root = Path(corpus)
    if not root.exists():
        raise NextlongError(f"{corpus}: corpus not found")
    if root.is_dir() and out.resolve().is_relative_to(root.resolve()):
        raise UsageError(f"{out}: the output folder is inside the corpus folder {corpus}, whose files are all read "
                         "as corpus; choose an output folder outside it")


def keep_tokenizer_file(spec, out: Path) -> dict:
    """The manifest's tokenizer entries (read by `nextlong.manifest.recorded_tokenizer`). A relative
    --tokenizer path is only valid from where synthesize ran, so a file is recorded by its absolute path
    and also copied into OUT/tokenizer/ (`tokenizer_copy`, relative to OUT) for when the output moves.
    A name such as cl100k_base is recorded as it is."""
    import shutil

    from ..atomic import atomic_path

    path = Path(spec) if spec is not None else None
    if path is None or not path.exists():
        return {"tokenizer": spec}
    source = path / "tokenizer.json" if path.is_dir() else path
    with atomic_path(out / "tokenizer" / source.name) as tmp:
        shutil.copyfile(source, tmp)
    return {"tokenizer": str(path.resolve()), "tokenizer_copy": f"tokenizer/{source.name}"}
