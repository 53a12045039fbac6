"""Stages, the one completion record, and the contract every executor keeps.

A synthesis run is a `Pipeline`: an ordered list of stages (datatrove's shape: the pipeline is a list
of steps; the executor owns partitioning, scheduling and resume). Two kinds of stage exist:

* `MapStage` - block -> block. A callable that turns one pyarrow.Table into another, with a
  `setup(ctx)` for heavy state (a tokenizer, an embedder, a memory-mapped chunk store, a searcher)
  that an executor calls ONCE per worker / actor before the first block. A plain function with its
  keyword settings bound is a map stage too (`map_stage(name, fn, **settings)`). A map stage keeps no
  state between blocks that changes its output: any partition of its input, in any order, on any number
  of workers, gives the same rows for the same block.
* `WholeStage` - needs the whole previous output at once (consolidating chunk blocks into one id space,
  the near-copy graph, the dedup filter, gathering embeddings, the index build, the synthesis units -
  anchors or quest groups -, the `--num-samples` cut). `build(ctx)` runs exactly once and writes into
  its folder.

Settings and fingerprints: every stage is a dataclass; its fields ARE the settings it depends on, so
the fingerprint is derived from them (`Stage.settings()`), never listed by hand. A field whose value
stands for something outside the run (the corpus path, a tokenizer spec) names a function in its
metadata (`field(metadata={"identity": fn})`) that turns the value into what identifies it (size and
mtime of the corpus files, the tokenizer's vocabulary hash). A stage's fingerprint also covers the
fingerprints of the stages it reads (`inputs`), so changing an early setting invalidates every stage
after it. Executor options that do not change outputs (block size, threads, number of actors) are
never fields. A setting added to a stage later is declared with `added_setting(default)`: at its default
it stays out of the fingerprint, so folders recorded before it existed are not redone.

The one completion record (`_done.json`, see `write_done` / `is_done`):
    {"stage", "fingerprint", "settings", "counts", "finished", "seconds"}
written atomically and LAST, after every file it vouches for. Nothing else in a work folder says "done"
(outside synthesis, a run's end is its manifest's last write, nextlong.manifest; a checkpoint's, its
folder renamed into place; an evaluation sample's, its journal line). The same
record marks a finished block of a map stage (`<stage>/_done/part-NNNNN.json`) and a finished stage
(`<stage>/_done.json`). A file without its record is not done, however complete it looks, so a
half-written shard is never counted. The leading underscore keeps Parquet readers
(`pyarrow.parquet.read_table(DIR/"data")`) from reading it as data.

Executor protocol (`Executor.run(pipeline)`; nextlong/synthesis/executors/local.py is the reference):

1. Folders. Stage `s` writes only under `pipeline.root / s.name` (`ctx.out_dir`); it reads the
   folders of its `inputs` (`ctx.input(name)`), or an external folder the pipeline maps that name to
   (`pipeline.external`, e.g. a prebuilt `--index`). Executors see the same paths on every worker
   (shared storage for a cluster).
2. Order. Stages run in list order; a stage starts only when every stage it reads is done (its
   record written). An executor may overlap stages (streaming) as long as no stage is marked done
   before everything it reads is.
3. Blocks. The input of the first map stage (`ReadCorpus`) is the corpus, cut into splits from file
   sizes and read split by split, each in blocks of documents (nextlong/synthesis/read.py: the
   steps every executor runs, wherever each split is read); any later map stage's blocks are the
   parts of its first input: `ctx.input(inputs[0])` holds `part-NNNNN.parquet` files, block j =
   part j. Block numbers are 0, 1, 2, ... in input order and name the outputs: block j of map stage
   s is written to `<s>/part-{j:05d}.parquet` (`block_path`) with its block record
   `<s>/_done/part-{j:05d}.json` after it. A block whose map output has no rows still gets its
   record (and no Parquet file), so each of the `blocks` a finished map stage records has one: a reader
   (`finished_part`) names a block missing both as deleted since, never takes it as a block of no rows.
4. Ids. Nothing may depend on which worker ran what or in which order: ids are derived from
   per-block counts and a prefix sum. Corpus blocks: a split numbers `doc_index` from 0 (and the
   lines of a byte range from its start); the first map stage keeps what it is given and numbers its
   chunks from 0 in each block. The `chunks` whole stage adds the prefix sums of the earlier blocks'
   documents (their records' `numbering`), lines of the same file, and chunks (`counts["rows"]`).
   The split and block sizes therefore change nothing in the consolidated output.
5. Resume. Before running stage s, call `prepare(ctx)`: a stage whose `_done.json` holds its
   fingerprint is skipped; one with another fingerprint raises StageMismatchError (or is cleared with
   `rebuild=True`, or at once when the stage is `remake_on_change`, as the cut is); a folder with only an older nextlong's records (`stage.json`, `_shards/`) is
   cleared with a one-line log. Map stages resume per block: a block whose record holds the block
   fingerprint (`block_fingerprint(stage_fp, j, partition)`) is skipped; others are (re)computed and
   written atomically (`write_block`). Stale parts beyond the last block are removed when the stage
   finishes. Within a block, a stage whose block takes minutes (the embedder) resumes from its spill
   (`MapStage.spill_key`, spill.py): the batches it finished, kept in `<s>/_partial/`, checked (key,
   length, CRC32) before use, deleted once the block's record is written. A spill is never a record:
   a block is done only by its record, and a damaged spill only costs the rows it held.
6. Counts. Block records carry `stage.count(output_block)`; the stage record carries the sum of its
   blocks' counts (map stage) or what `build` returned (whole stage). The manifest reads them.
   Seconds. A block record keeps the seconds its worker spent on the block (reading, mapping, writing; the
   first block a worker makes also its setup) and the token of the run that made it (`run`); a stage
   record keeps what the stage took to make: a whole stage's build, a map stage's wall time in the run
   that finished it plus the seconds of the blocks earlier (killed) runs made (`made_seconds`). They are
   never settings (no fingerprint covers them); the manifest reads them (`stage_seconds`), so a rerun that
   finds its stages done still says what they cost. Records of an older nextlong keep none: not recorded.
7. Cut. A `WholeStage` with `cut_rows` set (the `--num-samples` cut, stage `data`) reads the blocks of
   its input in block order and keeps the first `cut_rows` rows. An executor MAY therefore stop the
   chain of map stages that feeds it once the first blocks hold `cut_rows` rows (the local executor
   runs that chain block by block and does); computing more blocks changes nothing in the output.
8. Faults. A block is retried from scratch, or from its spill for a stage that keeps one (its output is
   atomic, so a killed worker leaves only a temporary file and the spill's checked records). An error
   in a stage reaches the caller and neither the failed block's record nor the stage's is written. The
   local executor raises the stage's own exception unchanged; a distributed one, whose traceback would
   point into a worker, raises a NextlongError that names the stage and the block.
9. Resources. A map stage with `uses_gpu = True` (the embedder) may run on GPU actors when the
   executor was given GPUs; all others are CPU work. `ctx.threads` bounds a worker's threads.

Executors (the package nextlong/synthesis/executors/): `LocalExecutor` (executors/local.py: in-process,
block by block, threads inside stages), and `RayExecutor` (executors/ray.py, optional extra `ray`), constructed as
`RayExecutor(address=None | "auto" | "ray://...", embed_gpus=0, embed_actors=None, threads=None)`; both
expose `run(pipeline, rebuild=False, progress=True) -> {stage name: counts}` and must give
byte-identical files under every stage folder for the same pipeline. `executors.executor_for(name, **options)`
picks one by its `--executor` name.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import pyarrow as pa

from ..atomic import write_json_atomic
from ..errors import CorruptFileError, StageMismatchError
from .parts import read_part

DONE_FILE = "_done.json"
BLOCK_RECORDS = "_done"
LEGACY_RECORDS = ("stage.json", "_shards")  # an older nextlong's "done" markers


# --- fingerprints ------------------------------------------------------------------------------


def fingerprint(settings: Any) -> str:
    """Stable short hash of JSON-able settings (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def block_fingerprint(stage_fingerprint: str, block: int, partition: Any = None) -> str:
    """Fingerprint of one block of a map stage: the stage's, the block number, and what identifies
    the block's input (the corpus block's first document and size; None for the parts of an input
    stage, which its own fingerprint already fixes)."""
    return fingerprint({"stage": stage_fingerprint, "block": block, "partition": partition})


# --- the completion record ---------------------------------------------------------------------


def write_done(path, *, stage: str, fingerprint: str, settings: dict | None = None,
               counts: dict | None = None, **extra) -> dict:
    """Write the completion record at `path` (atomically). Call it after every file it vouches for.
    `extra`: block records add block, partition and stage_fingerprint."""
    record = {"stage": stage, "fingerprint": fingerprint, "settings": _jsonable(settings or {}),
              "counts": _jsonable(counts or {}),
              "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **_jsonable(extra)}
    write_json_atomic(path, record)
    return record


def read_done(path) -> dict | None:
    """The completion record at `path`, or None (missing or unreadable counts as not done)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # a record nested 100,000 deep is as unreadable as bad JSON
        return None
    if not isinstance(record, dict) or "fingerprint" not in record or not counts_read(record.get("counts")):
        return None
    return record


# counts that readers take as whole numbers (block numbers, row totals, array shapes) or copy into
# manifest.json's statistics: JSON integers, never a string, a float or a list (a corpus split's "blocks"
# excepted: its blocks' counts, in order); "negative_sim_sum" is the one sum of floats
INTEGER_COUNTS = frozenset({
    "blocks", "block", "rows", "docs", "windowed", "chunks", "documents", "tokens", "dim", "crc32", "splits",
    "bytes", "skipped", "units", "leftover_dropped", "blank_documents_skipped", "blank_documents",
    "pairs", "chunks_with_near_copies", "near_copy_families", "chunks_in_near_copy_families",
    "large_group_members_unexamined", "documents_removed", "chunks_removed", "partitions", "nprobe",
    "neighbours", "sample", "partition_size_min", "partition_size_max", "empty_partitions", "tried", "built",
    "negatives", "meta_chunks", "anchor_meta_chunks", "anchor_meta_chunks_kept", "already_long",
    "near_dup_rejected", "negative_sim_n", "searched_again", "dependency_distance_n",
    "dependency_distance_n_with_negatives", "dependency_distance_sum", "dependency_distance_sum_with_negatives"})
NUMBER_COUNTS = frozenset({"negative_sim_sum"})
# a number in synthesize's plan records, by reason in acer's assemble records: which one a stage's records hold
# is the stage's (`Stage.object_counts`, checked by `counts_fit` where the stage is known)
WHOLE_OR_OBJECT_COUNTS = frozenset({"dropped"})
MAX_COUNT = 2 ** 53  # no count of a real run comes near; 10**30 rows would be a wrong number or a huge allocation


def counts_read(counts) -> bool:
    """Whether a record's counts are of the shape its readers use (else the record counts as no record):
    an object; every integer in it, at any depth, in 0..2**53 and every float finite (readers sum them into
    manifest.json); the counts above integers; "reader" an object. Walked without recursion."""
    if not isinstance(counts, dict) or not isinstance(counts.get("reader", {}), dict):
        return False
    stack = [counts]
    while stack:
        obj = stack.pop()
        for key, value in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
            if key in WHOLE_OR_OBJECT_COUNTS and type(value) not in (int, dict):
                return False
            if isinstance(value, (dict, list)):
                if key in INTEGER_COUNTS and not (key == "blocks" and isinstance(value, list)
                                                  and all(isinstance(c, dict) for c in value)):
                    return False
                stack.append(value)
            elif key in INTEGER_COUNTS and type(value) is not int:
                return False
            elif key in NUMBER_COUNTS and type(value) not in (int, float):
                return False
            elif type(value) is int and not 0 <= value <= MAX_COUNT:
                return False
            elif type(value) is float and not math.isfinite(value):
                return False
    return True


def counts_fit(stage: "Stage", counts: dict) -> bool:
    """Whether the WHOLE_OR_OBJECT_COUNTS in a record's counts have the shape `stage` writes: an object of whole
    numbers for its `object_counts`, a whole number for the others (a plan record's "dropped" that is an object
    would be summed as a number; an assemble record's {"reason": "x"}, 1.5, true or a list was copied into
    manifest.json's samples_dropped)."""
    def fits(key, value):
        if key not in stage.object_counts:
            return type(value) is int
        return type(value) is dict and all(type(n) is int for n in value.values())

    return all(fits(key, counts[key]) for key in WHOLE_OR_OBJECT_COUNTS if key in counts)


def is_done(path, fingerprint: str) -> bool:
    """THE check: a record exists at `path` and holds this fingerprint."""
    record = read_done(path)
    return record is not None and record.get("fingerprint") == fingerprint


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


# --- stages ------------------------------------------------------------------------------------


def identity(fn: Callable[[Any], Any], **kwargs):
    """A dataclass field whose fingerprint material is `fn(value)` (e.g. a corpus path -> file sizes
    and mtimes), not the value itself."""
    return field(metadata={"identity": fn}, **kwargs)


def not_a_setting(**kwargs):
    """A dataclass field that is not part of the fingerprint (an executor hint such as threads)."""
    return field(metadata={"setting": False}, **kwargs)


def added_setting(default, *, before: str | None = None, identity: Callable[[Any], Any] | None = None, **kwargs):
    """A setting added after stages were first recorded: at its default it is left out of the
    fingerprint, so a folder made before the setting existed (which behaved as the default) still
    matches and is not redone; any other value is fingerprinted like every setting. `before`: what folders
    made before it may have run with where that was not always the default, which a refusal then says.
    `identity`: as `identity()`'s, what the fingerprint records of a value other than the default."""
    metadata = {"omit_at_default": True, **({"before": before} if before else {}),
                **({"identity": identity} if identity else {})}
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class Stage:
    """Common part of both stage kinds. Subclasses are dataclasses whose fields are their settings.

    `name` is the stage's folder under the run's root; `inputs` the names of the stages (or external
    folders) it reads, the first being the one whose blocks a map stage maps."""

    name: str = not_a_setting(default="")
    inputs: tuple = not_a_setting(default=())

    kind: ClassVar[str] = ""
    version: ClassVar[int] = 1  # bump when the stage's code changes its output for the same settings
    # the counts its record always holds and its readers index: a record without one is taken as no record
    recorded_counts: ClassVar[frozenset] = frozenset()
    object_counts: ClassVar[frozenset] = frozenset()  # of WHOLE_OR_OBJECT_COUNTS, those it records as an object
    remake_on_change: ClassVar[bool] = False  # cheap to remake (the output cut): never refused, just redone
    # a whole stage whose parts 0..blocks-1 all hold rows (the map stage reading them then refuses a missing one)
    parts_never_empty: ClassVar[bool] = False
    # setting -> the option a user sets it with, where the names differ: the refusal of a cached stage built with
    # other settings names both ("k (--retrieve): cached 24, asked 20"), not a field name the user never typed
    flags: ClassVar[dict] = {}
    # the class name its fingerprint records, when not its module's: a stage class that moved keeps the name
    # it was recorded under, so folders made before the move are not refused as "other settings"
    recorded_name: ClassVar[str | None] = None

    def settings(self) -> dict:
        """The settings this stage depends on, derived from its dataclass fields."""
        name = self.recorded_name or f"{type(self).__module__}.{type(self).__qualname__}"
        out = {"stage": name, "version": self.version}
        for f in dataclasses.fields(self):
            if f.metadata.get("setting", True) is False:
                continue
            value = getattr(self, f.name)
            if f.metadata.get("omit_at_default") and value == f.default:
                continue
            fn = f.metadata.get("identity")
            out[f.name] = _jsonable(fn(value) if fn is not None else _material(value))
        return out

    def fingerprint(self, input_fingerprints: dict[str, str]) -> str:
        """Derived from the settings and the fingerprints of every stage it reads."""
        return fingerprint({"settings": self.settings(),
                            "inputs": [[name, input_fingerprints.get(name)] for name in self.inputs]})


def _material(value):
    """What a setting contributes to the fingerprint: plain values as they are; callables by name."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class MapStage(Stage):
    """Block -> block. Subclasses override `__call__` (and `setup` for heavy state).

    The executor calls `setup(ctx)` once per worker before the first block, then `stage(block)` for
    each block it assigns to that worker, then `count(output)` on the result, in the same process.
    `__call__` must be a pure function of the block and the state built by `setup`."""

    kind: ClassVar[str] = "map"
    recorded_counts: ClassVar[frozenset] = frozenset({"blocks"})
    uses_gpu: ClassVar[bool] = False
    parquet_options: ClassVar[dict] = {}  # writer options of its blocks (write_block applies them)
    progress_unit: ClassVar[str] = "row"  # what its input rows are, on the bar of a chain it starts
    # set by an executor that shows progress: a stage whose block takes long calls it with the input rows
    # it has finished as it goes (progress.py), so the bar does not sit still for a whole block
    on_rows: ClassVar[Callable[[int], None] | None] = None

    def setup(self, ctx: "StageContext") -> None:
        """Load heavy state (embedder, memory-mapped store, searcher). Default: nothing."""

    def __call__(self, block: pa.Table) -> pa.Table:
        raise NotImplementedError

    def spill_key(self) -> dict | None:
        """None, or the settings (beyond the stage's fingerprint) that fix how its block is cut into batches:
        a stage whose block takes minutes returns them, and the executor then calls it as
        `stage(block, spill=BlockSpill)` so it keeps its finished batches (spill.py) and resumes within the
        block. The spill is work in progress, not a record: only the block record says done."""
        return None

    def count(self, output: pa.Table) -> dict:
        """Counts recorded in the block's record (summed into the stage's). It sees exactly the table
        `__call__` returned (schema metadata included), in the same process. Default: rows."""
        return {"rows": output.num_rows}


@dataclass
class FunctionStage(MapStage):
    """A batch -> batch function with its keyword settings bound (see `map_stage`)."""

    fn: Callable = None
    kwargs: dict = field(default_factory=dict)

    def __call__(self, block: pa.Table) -> pa.Table:
        return self.fn(block, **self.kwargs)


def map_stage(name: str, fn: Callable, *, inputs: Iterable[str] = (), **settings) -> FunctionStage:
    """A map stage from a plain function `fn(table, **settings) -> table`; the settings must be
    JSON-able (they are fingerprinted as they are)."""
    return FunctionStage(name=name, inputs=tuple(inputs), fn=fn, kwargs=settings)


@dataclass
class WholeStage(Stage):
    """Needs all of its inputs at once; `build(ctx)` runs once, writes under `ctx.out_dir` and returns
    the counts for the stage's record. `cut_rows` (only for the output cut): see protocol item 7."""

    kind: ClassVar[str] = "whole"
    cut_rows: ClassVar[int | None] = None
    # its record lists each file it wrote with its size and CRC32, checked before a later run uses the stage
    # (`check_stage_files`): for the ones every later stage reads as they are (the chunk store, the near-copy
    # graph), where a damaged byte would otherwise change the data built from them silently
    checksummed: ClassVar[bool] = False

    def build(self, ctx: "StageContext") -> dict:
        raise NotImplementedError


def corpus_identity(path) -> dict:
    """Cheap identity of corpus files: resolved path, and each file's name, size and mtime."""
    path = Path(path).resolve()
    if not path.exists():
        return {"path": str(path), "missing": True}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    entries = [(str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns)
               for p in files]
    return {"path": str(path), "files": len(files), "bytes": sum(e[1] for e in entries),
            "hash": fingerprint({"entries": entries})}


@dataclass
class ReadCorpus(Stage):
    """The source: the corpus, read in splits and blocks of documents (doc_index, doc_id, text).

    Nothing is written for it; its blocks feed the first map stage directly (synthesis/read.py). A
    split's record holds its pieces and block sizes in its fingerprint, so a resumed run with other
    sizes recomputes the splits instead of mixing partitions."""

    kind: ClassVar[str] = "read"
    recorded_name: ClassVar[str] = "nextlong.synthesis.stage.ReadCorpus"  # its module was stage.py
    path: str = identity(corpus_identity, default="")
    text_field: str = "text"
    id_field: str | None = None
    on_error: str = "raise"


# --- the pipeline and what a stage sees --------------------------------------------------------


@dataclass
class Pipeline:
    """The stages in order, the run's root folder, and names that point outside it."""

    root: Path
    stages: list
    external: dict = field(default_factory=dict)  # name -> folder (e.g. {"index": prebuilt index})
    source_fingerprint: str | None = None  # identity of the corpus (ReadCorpus's fingerprint input)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def fingerprints(self) -> dict[str, str]:
        """Every stage's fingerprint, in list order (each covers the stages it reads)."""
        fps: dict[str, str] = {name: fingerprint({"external": corpus_identity(path)})
                               for name, path in self.external.items()}
        for s in self.stages:
            fps[s.name] = s.fingerprint(fps)
        return fps

    def check_cached(self, fps: dict[str, str], rebuild: bool) -> None:
        """Refuse, before the run writes anything (its "running" manifest included), a folder whose cached
        stage was built with other settings: the executor would refuse it when it got there, after the
        manifest of the finished run in the folder had been replaced by this one's."""
        if rebuild:
            return
        for s in self.stages:
            if s.kind != "read" and not s.remake_on_change:
                stale = _stale_record(StageContext(self, s, fps[s.name]))
                if stale is not None:
                    raise _mismatch(self.root / s.name, s, stale)


@dataclass
class StageContext:
    """What a stage is given: its folder, its inputs' folders, its fingerprint, and a logger."""

    pipeline: Pipeline
    stage: Stage
    fingerprint: str
    rebuild: bool = False
    progress: bool = True
    threads: int | None = None  # executor hint: a CPU stage may use this many threads
    # set by Executor.run: the run's token, which the block records it writes carry (`run`), and when it began
    # this stage (time.perf_counter(), on the driver): what the stage record's `seconds` are measured from
    run: str | None = None
    started: float | None = None

    @property
    def out_dir(self) -> Path:
        return self.pipeline.root / self.stage.name

    def input(self, name: str) -> Path:
        if name in self.pipeline.external:
            return Path(self.pipeline.external[name])
        return self.pipeline.root / name

    def input_record(self, name: str) -> dict | None:
        """The completion record of an input stage (its counts), None for external folders."""
        return None if name in self.pipeline.external else read_done(self.input(name) / DONE_FILE)

    def log(self, message: str) -> None:
        if self.progress:
            print(message, file=sys.stderr, flush=True)

    @property
    def record_path(self) -> Path:
        return self.out_dir / DONE_FILE


def block_path(stage_dir, block: int) -> Path:
    return Path(stage_dir) / f"part-{block:05d}.parquet"


def block_record_path(stage_dir, block: int) -> Path:
    return Path(stage_dir) / BLOCK_RECORDS / f"part-{block:05d}.json"


def input_blocks(folder) -> list[Path]:
    """The parts of a map stage's output in block order (gaps allowed: a block of 0 rows has no file)."""
    return sorted(Path(folder).glob("part-*.parquet"))


def block_numbers(folder) -> list[int]:
    """Block numbers recorded done in a map stage's folder, in order."""
    return sorted(int(p.stem.split("-")[1]) for p in (Path(folder) / BLOCK_RECORDS).glob("part-*.json"))


def map_chain(stages: list, i: int) -> tuple[list, int, int | None]:
    """The map stages that run block by block from stage i (each reading the previous one's blocks), the index
    of the stage after them, and the row cut of the whole stage that follows them, if it sets one. Executors
    share this grouping, so local and Ray runs chain, and cut, the same stages."""
    chain, j = [stages[i]], i + 1
    while j < len(stages) and stages[j].kind == "map" and stages[j].inputs[:1] == (chain[-1].name,):
        chain.append(stages[j])
        j += 1
    follower = stages[j] if j < len(stages) else None
    cut = (follower.cut_rows if follower is not None and follower.kind == "whole"
           and follower.inputs[:1] == (chain[-1].name,) else None)
    return chain, j, cut


def map_block(contexts: list, j: int, on_error: Callable | None = None, since: float | None = None) -> int:
    """Block j through a chain of map stages (contexts in chain order, each set up): a stage whose block j
    is done is skipped, the next one reads that part from disk; an empty input block maps to an empty
    block. Returns the last stage's rows for block j. `on_error(exc, ctx)` turns a stage's exception into
    the one to raise (the Ray executor names the stage and the block); without it, it is raised as is.
    Each block record keeps the seconds its stage spent on the block (`stage_seconds` sums them), the first
    one computed also those since `since` (time.perf_counter(): the stages' setup, paid once per worker)."""
    import time

    table = None  # the previous stage's output block, once read or computed
    t0 = time.perf_counter() if since is None else since
    for ctx in contexts:
        try:
            if block_done(ctx, j):
                table = None
                continue
            if table is None:
                table = input_block(ctx, j)
            if table is None or table.num_rows == 0:
                out = pa.table({})
                write_block(ctx, j, out, {"rows": 0}, started=t0)
            else:
                spill = block_spill(ctx, j)
                out = ctx.stage(table) if spill is None else ctx.stage(table, spill=spill)
                write_block(ctx, j, out, ctx.stage.count(out), started=t0)
                if spill is not None:  # after the record: a kill in between leaves a spill of a done block
                    spill.remove()
            table = out
            t0 = time.perf_counter()
        except Exception as exc:
            if on_error is None:
                raise
            raise on_error(exc, ctx) from exc
    return int(read_done(block_record_path(contexts[-1].out_dir, j))["counts"].get("rows", 0))


def input_block(ctx: StageContext, j: int) -> pa.Table | None:
    """Block j of a map stage's input, read whole with its damage named in one line (a footer can read while a
    page cannot); None for a block of no rows, which has no part (`finished_part`)."""
    name = ctx.stage.inputs[0]
    stage = next((s for s in ctx.pipeline.stages if s.name == name), None)
    part = finished_part(ctx.input(name), j, stage)
    return None if part is None else read_part(part)


def finished_part(stage_dir, j: int, stage: Stage | None = None) -> Path | None:
    """The Parquet part of block j of a finished stage (`stage`, None for an external folder), or None for a block
    of no rows, which has no part. A part missing where the block's record counts rows, or where the stage's parts
    are never empty (a whole stage's), or a map stage's block missing with its record (every block it ran has
    one, so within its recorded block count the block was there), was deleted since that stage finished: named in
    one line, never taken as a block of no rows, which would drop its rows from the output unsaid."""
    source = Path(stage_dir)
    path = block_path(source, j)
    if path.exists():
        return path
    record_path = block_record_path(source, j)
    record = read_done(record_path)
    name = stage.name if stage is not None else source.name
    if record is None and stage is not None and stage.kind == "map":
        said = "so is its block record" if not record_path.exists() else "its block record does not read:"
        raise CorruptFileError(f"{path}: missing, and {said} {record_path}, though the {name} stage finished with "
                               f"block {j}; delete {source} to make that stage again")
    rows = record["counts"].get("rows", 0) if record is not None else 0
    if rows or (stage is not None and stage.parts_never_empty):
        raise CorruptFileError(f"{path}: missing, though the {name} stage finished with {rows or 'some'} rows in "
                               f"block {j}; delete {source} to make that stage again")
    return None


def block_spill(ctx: StageContext, j: int):
    """The spill of block j of a stage that keeps one (`MapStage.spill_key`), else None. Its name and header
    hold a key of the block's fingerprint and the stage's spill settings, so a spill of other settings is
    never read; this block's spills of other keys are deleted here."""
    from .spill import BlockSpill, remove_spills, spill_path

    key = _spill_key(ctx, j)
    if key is None:
        return None
    path = spill_path(ctx.out_dir, j, key)
    remove_spills(ctx.out_dir, j, keep=path)
    return BlockSpill(path, key, log=ctx.log)


def spilled_rows(ctx: StageContext, j: int) -> int:
    """Input rows of block j that an earlier run finished and spilled (0 for a stage that keeps no spill):
    what a progress bar counts as done before the block starts, not as this run's work."""
    from .spill import BlockSpill, spill_path

    key = _spill_key(ctx, j)
    return 0 if key is None else BlockSpill(spill_path(ctx.out_dir, j, key), key).rows()


def _spill_key(ctx: StageContext, j: int) -> str | None:
    settings = ctx.stage.spill_key()
    if settings is None:
        return None
    return fingerprint({"block": block_fingerprint(ctx.fingerprint, j), "spill": settings})


def chain_work(chain: list) -> tuple[dict, list, int]:
    """What is left of a map chain (contexts in chain order): the counts of its stages already done, the
    contexts still to run (each `prepare`d), and how many blocks their input has."""
    results, todo = {}, [ctx for ctx in chain if not prepare(ctx)]
    for ctx in chain:
        if ctx not in todo:
            results[ctx.stage.name] = read_done(ctx.record_path)["counts"]
    if not todo:
        return results, todo, 0
    source = todo[0].input(todo[0].stage.inputs[0])
    record = read_done(source / DONE_FILE)
    num_blocks = (int(record["counts"]["blocks"]) if record and "blocks" in record["counts"]
                  else len(list(source.glob("part-*.parquet"))))
    return results, todo, num_blocks


class FinishedPrefix:
    """The output rows of the finished prefix of a chain's blocks 0, 1, 2, ..., whatever order the blocks
    finish in: what the `--num-samples` cut counts (protocol item 7). `add` a block's rows as it finishes;
    `rows` is then the prefix's rows and `blocks` its length."""

    def __init__(self, rows_done: dict[int, int] | None = None):
        self.rows, self.blocks, self._waiting = 0, 0, {}
        for block, rows in (rows_done or {}).items():
            self.add(block, rows)

    def add(self, block: int, rows: int) -> None:
        self._waiting[block] = rows
        while self.blocks in self._waiting:
            self.rows += self._waiting.pop(self.blocks)
            self.blocks += 1


def prepare(ctx: StageContext) -> bool:
    """True when the stage is already done for this fingerprint. Otherwise make its folder ready:
    another fingerprint's record (stage or block) raises StageMismatchError unless `ctx.rebuild`
    (then the folder is cleared); an older nextlong's records are cleared with a one-line log."""
    directory = ctx.out_dir
    record = read_done(directory / DONE_FILE)
    if record is not None and record["fingerprint"] == ctx.fingerprint:
        if ctx.stage.recorded_counts <= record["counts"].keys() and counts_fit(ctx.stage, record["counts"]):
            return True  # else a record without a count its readers need: no record, the stage is made again
        ctx.log(f"{directory / DONE_FILE}: lacks one of the counts {sorted(ctx.stage.recorded_counts)} or holds "
                f"one of {sorted(WHOLE_OR_OBJECT_COUNTS)} in another shape than this stage's; making the stage again")
    stale = _stale_record(ctx)
    if stale is not None:
        if not (ctx.rebuild or ctx.stage.remake_on_change):
            raise _mismatch(directory, ctx.stage, stale)
        shutil.rmtree(directory)
    elif any((directory / name).exists() for name in LEGACY_RECORDS):
        ctx.log(f"{directory}: written by an older nextlong (no {DONE_FILE}); rebuilding it")
        shutil.rmtree(directory)
    if os.path.lexists(directory) and not directory.is_dir():  # mkdir said only "File exists"
        from ..errors import NextlongError

        raise NextlongError(f"{directory}: is not a folder, where the {ctx.stage.name} stage keeps its files; move it "
                            "away and re-run")
    directory.mkdir(parents=True, exist_ok=True)
    return False


def _stale_record(ctx: StageContext) -> dict | None:
    """The record (stage or block) of the stage's folder written for another fingerprint, or None."""
    directory = ctx.out_dir
    record = read_done(directory / DONE_FILE)
    if record is not None:
        return None if record["fingerprint"] == ctx.fingerprint else record
    if (directory / BLOCK_RECORDS).is_dir():
        return next((r for r in (read_done(p) for p in sorted((directory / BLOCK_RECORDS).glob("*.json")))
                     if r is not None and r.get("stage") == ctx.stage.name
                     and r.get("stage_fingerprint") not in (None, ctx.fingerprint)), None)
    return None


def recorded_settings(directory: Path) -> dict | None:
    """The settings a stage's folder records (its stage record, else its first block record), or None."""
    record = read_done(directory / DONE_FILE)
    if record is None and (directory / BLOCK_RECORDS).is_dir():
        record = next((r for r in map(read_done, sorted((directory / BLOCK_RECORDS).glob("*.json"))) if r), None)
    settings = (record or {}).get("settings")
    return settings if isinstance(settings, dict) else None


def _mismatch(directory: Path, stage: Stage, stale: dict) -> StageMismatchError:
    return StageMismatchError(f"{directory}: the cached {stage.name} stage was built with other settings "
                              f"({_diff(stale.get('settings', {}), stage.settings(), stage)}). Use another --out, or "
                              "pass --rebuild to rebuild it (from Python: another out=, or rebuild=True).")


def _diff(old: dict, new: dict, stage: Stage) -> str:
    # an added_setting at a default other than None is left out of a record: not recorded is that default (the
    # folder may be new), as much as a folder made before the setting (its `before` says what such a one may have
    # run with); asked at that default, it is left out of `new` too
    defaults = {f.name: f for f in dataclasses.fields(stage)
                if f.metadata.get("omit_at_default") and f.default is not None}
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != _jsonable(new.get(k)))
    said = []
    for k in keys:
        was, now = old.get(k), _jsonable(new.get(k))
        name = f"{k} ({stage.flags[k]})" if k in stage.flags else k
        if k in old:
            asked = f"{defaults[k].default!r} (the default)" if k not in new and k in defaults else repr(now)
            line = f"{name}: cached {was!r}, asked {asked}"
        elif k in defaults:
            before = defaults[k].metadata.get("before")
            line = (f"{name}: cached {defaults[k].default!r} (the default, left out of the record"
                    f"{'; ' + before if before else ''}), asked {now!r}")
        else:
            line = f"{name}: not recorded (the folder predates the setting), asked {now!r}"
        if (isinstance(was, dict) and isinstance(now, dict) and was.get("fingerprint") is not None
                and was.get("fingerprint") == now.get("fingerprint") and was.get("spec") != now.get("spec")):
            how = f"pass --tokenizer {was['spec']}" if was.get("spec") else "leave --tokenizer out"
            line += f" (the same tokenizer, named otherwise: {how} to reuse the stage)"
        elif (isinstance(was, dict) and isinstance(now, dict) and was.get("spec") == now.get("spec")
              and was.get("fingerprint") != now.get("fingerprint") and now.get("spec") is not None):
            from ..corpus.tokenizer import load_tokenizer, read_otherwise_note

            line += read_otherwise_note(load_tokenizer(now["spec"]), was.get("fingerprint"))
        said.append(line)
    return "; ".join(said) or "inputs changed"


def write_part(ctx: StageContext, part: Path, record: Path, table: pa.Table, counts: dict, fingerprint: str,
               started: float | None = None, **extra) -> None:
    """Write one part of a map stage: its Parquet file (atomic; none for 0 rows), then its record (which
    also names the stage fingerprint, so `prepare` can tell a partial stage of other settings), with the
    seconds since `started` (time.perf_counter() when the part's work began) when given."""
    import time

    from .writers import write_parquet_atomic

    if table.num_rows:
        write_parquet_atomic(table, part, **getattr(ctx.stage, "parquet_options", {}))
    else:
        part.unlink(missing_ok=True)
    if started is not None:
        extra["seconds"] = round(time.perf_counter() - started, 4)
        extra["run"] = ctx.run
    write_done(record, stage=ctx.stage.name, fingerprint=fingerprint, settings=ctx.stage.settings(), counts=counts,
               stage_fingerprint=ctx.fingerprint, **extra)


def part_done(part: Path, record: Path, fingerprint: str) -> dict | None:
    """The record of a part when it holds `fingerprint` and the part exists (unless it had 0 rows)."""
    done = read_done(record)
    if done is None or done["fingerprint"] != fingerprint:
        return None
    return done if done["counts"].get("rows", 0) == 0 or part.exists() else None


def write_block(ctx: StageContext, block: int, table: pa.Table, counts: dict, partition: Any = None,
                started: float | None = None) -> None:
    """Write block `block` of a map stage (`write_part` at its block number)."""
    write_part(ctx, block_path(ctx.out_dir, block), block_record_path(ctx.out_dir, block), table, counts,
               block_fingerprint(ctx.fingerprint, block, partition), started, block=block, partition=partition)


def block_done(ctx: StageContext, block: int, partition: Any = None) -> bool:
    """A block is done when its record holds its fingerprint and counts of the stage's shape (`counts_fit`),
    and its part exists unless it had 0 rows."""
    record = part_done(block_path(ctx.out_dir, block), block_record_path(ctx.out_dir, block),
                       block_fingerprint(ctx.fingerprint, block, partition))
    return record is not None and counts_fit(ctx.stage, record["counts"])


def block_counts(stage_dir, blocks: Iterable[int] | None = None, stage: Stage | None = None) -> list[dict]:
    """Counts of the recorded blocks of a map stage's folder (all, or the given block numbers); with the
    `stage`, a record whose counts do not fit it (`counts_fit`) is one that does not read."""
    numbers = block_numbers(stage_dir) if blocks is None else list(blocks)
    out = []
    for j in numbers:
        path = block_record_path(stage_dir, j)
        record = read_done(path)
        if record is not None and stage is not None and not counts_fit(stage, record["counts"]):
            record = None
        if record is None and path.exists():  # a done stage's block record that does not read
            raise CorruptFileError(f"{path}: not a block record whose counts read (an object of non-negative "
                                   f"counts); remove {Path(stage_dir)} to make the stage again")
        out.append(record["counts"] if record else {})
    return out


def sum_counts(counts: Iterable[dict]) -> dict:
    """Numeric counts summed key by key (non-numbers are dropped; nested dicts of numbers are merged)."""
    total: dict = {}
    for c in counts:
        for k, v in c.items():
            if isinstance(v, bool):
                v = int(v)
            if isinstance(v, (int, float)):
                total[k] = total.get(k, 0) + v
            elif isinstance(v, dict):
                sub = total.setdefault(k, {})
                if isinstance(sub, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, (int, float)):
                            sub[kk] = sub.get(kk, 0) + vv
    return total


def finish_map_stage(ctx: StageContext, num_blocks: int, extra: dict | None = None,
                     seconds: float | None = None) -> dict:
    """After blocks 0..num_blocks-1 are done: drop stale parts beyond them, write the stage record
    (the blocks' counts summed, plus `extra`, and `seconds`: `made_seconds`), and delete the blocks' spills
    (spill.py) a kill left."""
    from .spill import remove_spills

    remove_spills(ctx.out_dir)
    for stale in list(ctx.out_dir.glob("part-*.parquet")) + list((ctx.out_dir / BLOCK_RECORDS).glob("part-*.json")):
        if int(stale.stem.split("-")[1]) >= num_blocks:
            stale.unlink()
    counts = sum_counts(block_counts(ctx.out_dir, range(num_blocks), ctx.stage))
    counts["blocks"] = num_blocks
    counts.update(extra or {})
    write_done(ctx.record_path, stage=ctx.stage.name, fingerprint=ctx.fingerprint,
               settings=ctx.stage.settings(), counts=counts, seconds=seconds)
    return counts


def made_seconds(chain: list, num_blocks: int) -> dict[str, float | None]:
    """{stage: seconds} for map stages (contexts of one chain) whose blocks 0..num_blocks-1 are done: what
    earlier runs' blocks took, as their records keep it (a killed run's), plus this run's wall time since
    `started`, shared among the chain's stages in proportion to this run's blocks' seconds (workers' time: on
    Ray's parallel actors more than the wall's, and no scheduling). None: an earlier block keeps no seconds."""
    import time

    wall = None if chain[0].started is None else time.perf_counter() - chain[0].started
    here, earlier = {}, {}
    for ctx in chain:
        here[ctx.stage.name], earlier[ctx.stage.name] = 0.0, 0.0
        for j in range(num_blocks):
            record = read_done(block_record_path(ctx.out_dir, j))
            seconds = _recorded_seconds(record)
            if ctx.run is not None and (record or {}).get("run") == ctx.run:
                here[ctx.stage.name] += seconds or 0.0
            elif seconds is None or earlier[ctx.stage.name] is None:
                earlier[ctx.stage.name] = None
            else:
                earlier[ctx.stage.name] += seconds
    mine = sum(here.values())
    return {name: None if earlier[name] is None else round(earlier[name] + (
        here[name] if wall is None else wall * (here[name] / mine if mine else 1 / len(chain))), 4) for name in here}


def finish_map_chain(todo: list, num_blocks: int, stopped: int | None) -> dict:
    """{stage: counts} once a chain of map stages ran its blocks: stage records written when all
    `num_blocks` are done; only `blocks_computed` (no record, protocol item 7) when `--max-...` stopped it
    after `stopped` blocks."""
    if stopped is not None and stopped < num_blocks:
        return {ctx.stage.name: {"blocks_computed": stopped} for ctx in todo}
    seconds = made_seconds(todo, num_blocks)
    return {ctx.stage.name: finish_map_stage(ctx, num_blocks, seconds=seconds[ctx.stage.name]) for ctx in todo}


def finish_whole_stage(ctx: StageContext, counts: dict) -> dict:
    """Write a built whole stage's record: its counts, its files' checksums where the stage keeps them, and
    the seconds since `ctx.started` (its build; read back by `stage_seconds`)."""
    import time

    extra = {"files": stage_files(ctx.out_dir)} if getattr(ctx.stage, "checksummed", False) else {}
    if ctx.started is not None:
        extra["seconds"] = round(time.perf_counter() - ctx.started, 4)
    write_done(ctx.record_path, stage=ctx.stage.name, fingerprint=ctx.fingerprint,
               settings=ctx.stage.settings(), counts=counts, **extra)
    return counts


def _recorded_seconds(record: dict | None) -> float | None:
    """A record's `seconds` when it is a finite non-negative number (the record is as untrusted as its folder),
    else None: not recorded (a nextlong before records kept them wrote it)."""
    value = (record or {}).get("seconds")
    if type(value) not in (int, float) or not 0 <= value <= MAX_COUNT:  # NaN fails too; their sums stay finite
        return None
    return float(value)


def blocks_seconds(stage_dir, blocks: Iterable[int]) -> float | None:
    """The seconds the given blocks of a map stage took, each as recorded when it was made (in this run or an
    earlier, killed one), summed; None when one of them has none recorded."""
    total = 0.0
    for j in blocks:
        seconds = _recorded_seconds(read_done(block_record_path(stage_dir, j)))
        if seconds is None:
            return None
        total += seconds
    return total


def stage_seconds(stage_dir) -> float | None:
    """What a stage's output took to make, as recorded when it was made, whichever runs made it: its record's
    `seconds` (a whole stage's build; a map stage's `made_seconds`), or, for map stages that a `--num-samples`
    cut stopped before their record, the seconds of the blocks they finished. None: not recorded (records written before
    they kept seconds), never a made-up 0."""
    stage_dir = Path(stage_dir)
    record = read_done(stage_dir / DONE_FILE)
    if record is not None:
        return _recorded_seconds(record)
    numbers = block_numbers(stage_dir)
    return blocks_seconds(stage_dir, numbers) if numbers else None


def stage_files(directory: Path) -> dict:
    """{path under `directory`: {"bytes", "crc32"}} of every file a stage wrote there (its records left out)."""
    from ..atomic import file_crc32, is_temporary

    out = {}
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(directory)
        if rel.parts[0] in (DONE_FILE, BLOCK_RECORDS) or is_temporary(path.name):  # a killed write's, removed later
            continue
        out[rel.as_posix()] = {"bytes": path.stat().st_size, "crc32": file_crc32(path)}
    return out


def check_stage_files(pipeline: "Pipeline", fps: dict[str, str], skip_option: str | None = "--no-verify") -> None:
    """Before a run uses its finished checksummed stages: each file the stage's record lists has its recorded
    size and CRC32 (one read of each). A damaged file is a one-line CorruptFileError naming it; records made
    before the lists existed are taken as they are. The record is read as untrusted as the folder: an entry
    that is not a plain name inside the stage's folder, or a file that is not a regular one, is refused
    before anything is read (an absolute /dev/zero in a crafted record read for ever). `skip_option`: the
    command's option that skips the check, named in the error (None where it has none)."""
    import stat as _stat

    from ..atomic import file_crc32
    from ..errors import CorruptFileError
    from ..untrusted import plain_name, show

    def refused(what: str):
        return CorruptFileError(f"{directory / DONE_FILE}: {what}; remove {directory} to make the stage again")

    for stage in pipeline.stages:
        if not getattr(stage, "checksummed", False) or stage.name in pipeline.external:
            continue
        directory = pipeline.root / stage.name
        record = read_done(directory / DONE_FILE)
        if record is None or record.get("fingerprint") != fps.get(stage.name) or not isinstance(record.get("files"), dict):
            continue
        names, files = set(), set()  # each listed once: by its parts, and by (device, inode) against hard links
        for rel, want in record["files"].items():
            try:  # the project's rule for a name that stays in its folder, and a printable one of sane length
                parts = plain_name(rel, str(directory), CorruptFileError).parts
            except CorruptFileError:
                parts = ()
            if not parts or not rel.isprintable() or len(rel) > 4096 or not isinstance(want, dict):
                raise refused(f"the file entry {show(rel, 80)} is not a name inside the stage's folder")
            if parts in names:  # one file under many spellings (store//x, ./store/x/) would be read once per spelling
                raise refused(f"the file entry {show(rel, 80)} names {'/'.join(parts)} a second time")
            names.add(parts)
            path = directory.joinpath(*parts)
            try:
                info = path.lstat()
                if (info.st_dev, info.st_ino) in files:  # hard links to one file: read once per link as well
                    raise refused(f"the file entry {show(rel, 80)} is a file already listed under another name")
                files.add((info.st_dev, info.st_ino))
                same = (_stat.S_ISREG(info.st_mode) and info.st_size == want.get("bytes")
                        and file_crc32(path) == want.get("crc32"))
            except (OSError, ValueError):
                same = False
            if not same:
                skip = f", or pass {skip_option} to use it as it is" if skip_option else ""
                if skip and path.suffix == ".parquet":  # checked_parquet checks each page on every read
                    skip += " (a page that no longer matches its own checksum is refused all the same)"
                raise CorruptFileError(f"{path}: not the file the {stage.name} stage wrote (its size or CRC32 differs "
                                       f"from {directory / DONE_FILE}): it is damaged; remove {directory} to make it "
                                       f"again{skip}")


class Executor:
    """Runs a Pipeline (protocol in this module's docstring). `run` returns {stage name: counts}.

    `run` walks the stages in order, once for every executor; an executor says only how work runs, in
    three hooks: the corpus into its first map stage, a chain of map stages, and one whole stage."""

    name: ClassVar[str] = ""
    threads: int | None = None

    def run(self, pipeline: Pipeline, *, rebuild: bool = False, progress: bool = True) -> dict[str, dict]:
        import time
        import uuid

        self.before_run(progress)
        fps = pipeline.fingerprints()
        stages = pipeline.stages
        results: dict[str, dict] = {}

        def context(stage):
            return StageContext(pipeline, stage, fps[stage.name], rebuild=rebuild, progress=progress,
                                threads=self.threads, run=token, started=t0)

        token = uuid.uuid4().hex[:16]  # names the block records this run writes (`made_seconds`)

        # this run's wall time per stage (a map chain's time goes to its last stage; a cached stage's is the
        # time to find it done); what the stage took to make, whichever run made it, is `stage_seconds`
        self.seconds: dict[str, float] = {}
        i = 0
        while i < len(stages):
            t0 = time.perf_counter()
            stage = stages[i]
            if stage.kind == "read":  # feeds the next (map) stage directly
                ctx = context(stages[i + 1])
                results[ctx.stage.name] = (read_done(ctx.record_path)["counts"] if prepare(ctx)
                                           else self.read_and_map(pipeline, fps, stage, ctx))
                i += 2
            elif stage.kind == "map":
                chain, i, cut = map_chain(stages, i)
                results.update(self.run_chain(pipeline, fps, [context(s) for s in chain], cut))
            else:
                ctx = context(stage)
                if prepare(ctx):
                    results[stage.name] = read_done(ctx.record_path)["counts"]
                else:
                    counts = self.build_whole(stage, ctx) or {}
                    results[stage.name] = finish_whole_stage(ctx, counts)
                i += 1
            self.seconds[stages[i - 1].name] = time.perf_counter() - t0
        return results

    def before_run(self, progress: bool) -> None:
        """Executor-wide settings for one run (none by default)."""

    def read_and_map(self, pipeline: Pipeline, fps: dict[str, str], source, ctx: StageContext) -> dict:
        """Read `source` in blocks into the map stage of `ctx`; return that stage's counts."""
        raise NotImplementedError

    def run_chain(self, pipeline: Pipeline, fps: dict[str, str], chain: list[StageContext],
                  cut: int | None) -> dict[str, dict]:
        """Run map stages block by block (see `map_chain`); return {stage name: counts}."""
        raise NotImplementedError

    def build_whole(self, stage, ctx: StageContext) -> dict:
        """Build one whole stage; return its counts."""
        raise NotImplementedError
