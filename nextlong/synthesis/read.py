"""The corpus into the first map stage, split by split: the steps every executor runs (protocol items 3
and 4 in framework.py), so a split read by a Ray actor and one read in this process write the same files.

1. `CorpusRead.plan()`: the corpus cut into splits from file sizes (nextlong/corpus/split.py).
2. `map_split(ctx, read, s)`, anywhere, in any order: split s is read and fed to the stage in blocks of
   `block_docs` documents / `block_bytes` of text, bounded memory whatever the split's size. Its
   blocks are written to `<stage>/_splits/split-SSSSS-KKKKK.parquet`, each with its record beside it
   (a killed split resumes from its finished blocks), then the split's record
   `_splits/split-SSSSS.json` (counts per block, the lines of a byte range, the reader's stats).
3. `finish_read(ctx, read, splits)`, once every split is done: the splits' blocks become the stage's
   blocks 0, 1, 2, ... in corpus order (hard links, so nothing is copied), each block record naming
   the documents before it and, for a byte range that starts inside a file, the lines of the file
   before it (`numbering`: what `corpus_numbered` applies when the blocks are consolidated). Then the
   stage record, then the staging folder goes.
A killed run resumes from the finished splits and blocks; one killed during step 3 redoes step 3 only.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from ..corpus.split import DEFAULT_SPLIT_BYTES, SplitReader, file_line_ids, plan_splits, starts_mid_file
from .framework import (BLOCK_RECORDS, StageContext, block_fingerprint, block_path, block_record_path, finish_map_stage,
                    part_done, read_done, sum_counts, write_done, write_part)

SPLITS = "_splits"
MAX_SKIPPED_EXAMPLES = 5


@dataclass
class CorpusRead:
    """How the corpus is cut and read: the source stage (what to read), and executor options that move
    block boundaries but change nothing in the consolidated output."""

    source: object  # stage.ReadCorpus
    split_bytes: int = DEFAULT_SPLIT_BYTES
    block_docs: int = 1024
    block_bytes: int = 4 << 20

    def plan(self) -> list[list[dict]]:
        return plan_splits(self.source.path, self.split_bytes)

    def partition(self, s: int, split: list[dict]) -> dict:
        """What identifies split s's blocks (a resumed run with other cuts or block sizes redoes them)."""
        pieces = [{k: v for k, v in p.items() if k != "path"} for p in split]
        return {"split": s, "pieces": pieces, "block_docs": self.block_docs, "block_bytes": self.block_bytes}

    def reader(self) -> SplitReader:
        src = self.source
        return SplitReader(src.path, text_field=src.text_field, id_field=src.id_field, on_error=src.on_error,
                           batch_size=self.block_docs, batch_bytes=self.block_bytes)


def split_record_path(stage_dir, s: int) -> Path:
    return Path(stage_dir) / SPLITS / f"split-{s:05d}.json"


def split_part_path(stage_dir, s: int, k: int) -> Path:
    return Path(stage_dir) / SPLITS / f"split-{s:05d}-{k:05d}.parquet"


def split_done(ctx: StageContext, read: CorpusRead, s: int, split: list[dict]) -> dict | None:
    """The record of split s when it is done for these settings and its parts are all there."""
    record = read_done(split_record_path(ctx.out_dir, s))
    if record is None or record["fingerprint"] != block_fingerprint(ctx.fingerprint, s, read.partition(s, split)):
        return None
    blocks = record["counts"]["blocks"]
    if any(b.get("rows", 0) and not split_part_path(ctx.out_dir, s, k).exists() for k, b in enumerate(blocks)):
        return None
    return record


def map_split(ctx: StageContext, read: CorpusRead, s: int, split: list[dict],
              on_block: Callable[[int, bool], None] | None = None, since: float | None = None) -> dict:
    """Split s through the stage of `ctx` (set up already), unless done; returns its record's counts.
    `on_block(docs, reused)` is told each block's documents, and whether an earlier run had mapped them.
    Each block's record keeps the seconds from the previous block's write to its own (reading and mapping
    overlap the writes), the first block's from `since` (time.perf_counter(), the stage's setup) or the
    split's start."""
    import time

    from ..corpus.reader import prefetch

    record = split_done(ctx, read, s, split)
    if record is not None:
        if on_block is not None:
            on_block(record["counts"]["docs"], True)
        return record["counts"]
    stage, reader = ctx.stage, read.reader()
    partition = read.partition(s, split)

    def mapped():  # in a thread: reading (a thread of its own) and mapping overlap the writes below
        for k, batch in enumerate(prefetch(reader.split_batches(split))):
            fp = block_fingerprint(ctx.fingerprint, s, {**partition, "block": k})
            part = split_part_path(ctx.out_dir, s, k)
            done = part_done(part, part.with_suffix(".json"), fp)
            if done is not None:
                yield k, fp, batch.num_rows, None, done["counts"]  # a resumed split keeps its finished blocks
            else:
                yield k, fp, batch.num_rows, stage(pa.Table.from_batches([batch])), None

    blocks = []
    t0 = time.perf_counter() if since is None else since
    for k, fp, docs, table, counts in prefetch(mapped()):
        reused = counts is not None
        if not reused:
            part = split_part_path(ctx.out_dir, s, k)
            counts = dict(stage.count(table), docs=docs)
            write_part(ctx, part, part.with_suffix(".json"), table, counts, fp, started=t0)
            t0 = time.perf_counter()
        blocks.append(counts)
        if on_block is not None:
            on_block(docs, reused)
    counts = {"blocks": blocks, "docs": sum(b["docs"] for b in blocks), **reader.info,
              "reader": reader.stats.as_dict()}
    write_done(split_record_path(ctx.out_dir, s), stage=stage.name,
               fingerprint=block_fingerprint(ctx.fingerprint, s, partition), settings=stage.settings(),
               counts=counts, split=s, stage_fingerprint=ctx.fingerprint)
    return counts


def finish_read(ctx: StageContext, read: CorpusRead, splits: list[list[dict]]) -> dict:
    """Step 3 of the module docstring; returns the stage's counts."""
    from ..errors import CorpusError
    from .framework import made_seconds

    records = [split_done(ctx, read, s, split) for s, split in enumerate(splits)]
    missing = [s for s, r in enumerate(records) if r is None]
    if missing:  # an executor bug, not bad input: every split was mapped before this call
        raise RuntimeError(f"stage {ctx.stage.name}: splits {missing[:5]} are not done")
    stats = [r["counts"]["reader"] for r in records]
    skipped_examples = [e for c in stats for e in c.get("skipped_examples", [])]
    rewrite_ids = read.source.id_field is None
    lines_seen: dict[str, int] = {}  # lines of the earlier ranges of each cut file
    nonblank: dict[str, int] = {}
    j, docs = 0, 0
    (ctx.out_dir / BLOCK_RECORDS).mkdir(parents=True, exist_ok=True)
    for s, (split, record) in enumerate(zip(splits, records)):
        counts, piece = record["counts"], split[0]
        line_offset = 0
        if piece.get("bytes"):  # a range of a cut file: the split's only piece
            line_offset = lines_seen.get(piece["path"], 0)
            lines_seen[piece["path"]] = line_offset + counts["lines"]
            nonblank[piece["path"]] = nonblank.get(piece["path"], 0) + counts["nonblank_lines"]
        numbering = {"doc_offset": docs, "name": piece["name"],
                     "line_offset": line_offset if rewrite_ids and starts_mid_file(piece) else 0}
        for k, block in enumerate(counts["blocks"]):
            part = split_part_path(ctx.out_dir, s, k)
            _link(part if block.get("rows", 0) else None, block_path(ctx.out_dir, j))
            partition = {"split": s, "block": k}
            made = read_done(part.with_suffix(".json")) or {}  # by the run that mapped it: its seconds
            write_done(block_record_path(ctx.out_dir, j), stage=ctx.stage.name,
                       fingerprint=block_fingerprint(ctx.fingerprint, j, partition), settings=ctx.stage.settings(),
                       counts=block, block=j, partition=partition, stage_fingerprint=ctx.fingerprint,
                       numbering=numbering, **{k: made[k] for k in ("seconds", "run") if k in made})
            j += 1
        docs += counts["docs"]
    blank = sorted(path for path, n in nonblank.items() if n == 0)
    for path in blank:  # the whole-file check no single range could make
        message = "file holds only blank lines (expected JSON lines, one object per line)"
        if read.source.on_error == "raise":
            raise CorpusError(path, message)
        skipped_examples.append(f"{path}: {message}")
    reader = sum_counts(stats)
    reader["skipped"] = reader.get("skipped", 0) + len(blank)
    reader["skipped_examples"] = skipped_examples[:MAX_SKIPPED_EXAMPLES]
    counts = finish_map_stage(ctx, j, extra={"reader": reader, "splits": len(splits)},
                              seconds=made_seconds([ctx], j)[ctx.stage.name])
    shutil.rmtree(ctx.out_dir / SPLITS, ignore_errors=True)
    return counts


def _link(src: Path | None, dst: Path) -> None:
    """dst becomes the file src (a hard link; a copy where the file system has none); None: no file."""
    dst.unlink(missing_ok=True)
    if src is None:
        return
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def corpus_numbered(table: pa.Table, record: dict | None) -> pa.Table:
    """A block of the first map stage with the corpus-wide numbering its record names: doc_index plus
    the documents of earlier splits, default ids of a mid-file range moved by the file's earlier lines.
    Blocks recorded without `numbering` (an older nextlong numbered them while reading) pass unchanged."""
    numbering = (record or {}).get("numbering")
    if not numbering:
        return table
    if numbering["doc_offset"]:
        at = table.schema.get_field_index("doc_index")
        shifted = pa.array(table.column(at).to_numpy() + np.int64(numbering["doc_offset"]))
        table = table.set_column(at, table.schema.field(at), shifted)
    if numbering["line_offset"]:
        at = table.schema.get_field_index("doc_id")
        ids = file_line_ids(table.column(at).combine_chunks().cast(pa.string()), numbering["name"], numbering["line_offset"])
        table = table.set_column(at, table.schema.field(at), ids.cast(table.schema.field(at).type))
    return table
