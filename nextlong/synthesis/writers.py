"""Output formats. Parquet shards are the canonical, resumable output (one file per shard, each
written atomically); JSONL and MDS are derived from them at the end of a run, each written beside its
folder and swapped in whole (`swapped_folder`); a run removes the ones it does not write
(driver.discard_stale_formats), so none holds other rows than DIR/data.

* parquet: OUTPUT_SCHEMA rows in DIR/data/part-NNNNN.parquet (read the folder with
  `pyarrow.parquet.read_table(DIR/"data")`; the `_done.json` completion record is ignored by readers);
* jsonl: DIR/jsonl/part-NNNNN.jsonl, one object per long document: the decoded `text`, the
  `segments` each with its decoded `text`, `anchor_doc_id`, `method` — for people to read;
* mds: DIR/mds, Mosaic Data Shards with ProLong's columns, readable by `streaming.StreamingDataset`
  and by `nextlong.mds.read_mds` (written by nextlong.mds, byte-identical to mosaicml-streaming's
  writer, so no optional dependency is needed): `input_ids` (uint32, L) and `indices` (uint32 (n, 2)
  [start, end) pairs). The trainer makes every pair its own attention block and masks the first label
  of each, so the pairs are *attention spans*, never segments: `sample` (default) gives one span
  [0, L) per long document, so attention reaches across meta-chunks and their negatives (the whole
  point of the synthesized document); `document` gives one span per run of consecutive segments of
  the same source document, for document-masked baselines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import checked_parquet
from ..corpus.reader import parquet_batches
from ..atomic import atomic_path, fsync_path
from ..errors import NextlongError
from .parts import read_part

def _canonical_type(t: pa.DataType) -> pa.DataType:
    """`t` with every list's item field named "item": a list column read back from Parquet names it
    "element", one built in memory "item", and the name is stored in the file, so a stage resumed from
    disk would write other bytes than one fed by the stage before it."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        item = t.value_field
        field = pa.field("item", _canonical_type(item.type), item.nullable, item.metadata)
        return pa.large_list(field) if pa.types.is_large_list(t) else pa.list_(field)
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_canonical_type(f.type)) for f in t])
    return t


def canonical_lists(table: pa.Table) -> pa.Table:
    schema = pa.schema([f.with_type(_canonical_type(f.type)) for f in table.schema], metadata=table.schema.metadata)
    return table if schema.equals(table.schema, check_metadata=True) else table.cast(schema)


def write_parquet_atomic(table: pa.Table, path, **options) -> None:
    # fixed writer options so the same rows give the same bytes (`options` override them, e.g. no
    # dictionary for float vectors)
    table = canonical_lists(table)
    settings = dict(compression="zstd", use_dictionary=True, write_statistics=True, **checked_parquet.WRITE_OPTIONS,
                    row_group_size=max(1, min(table.num_rows, 256)))
    settings.update(options)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **settings)


def shard_paths(data_dir) -> list[Path]:
    return sorted(Path(data_dir).glob("part-*.parquet"))


def write_jsonl_shards(data_dir, out_dir, tokenizer, record) -> list[Path]:
    """One JSONL file per Parquet shard: `record(row, ids, segments)` makes each line's object, given the row,
    its ids and its segments each with their decoded `text`. The folder is written beside `out_dir` and
    swapped in whole (`swapped_folder`): a failed or killed run leaves the previous folder, never a mix of
    new and old files."""
    out_dir = Path(out_dir)
    names = []
    with swapped_folder(out_dir) as tmp_dir:
        for path in shard_paths(data_dir):
            target = tmp_dir / (path.stem + ".jsonl")
            shard = checked_parquet.open_file(path)
            others = [name for name in shard.schema_arrow.names if name != "input_ids"]
            with open(target, "w", encoding="utf-8") as f:
                # a few rows at a time, ids as numpy: a shard of 64 rows at 512K tokens is 32M ids, over a GB
                # as Python ints
                for batch in parquet_batches(path, shard, batch_size=8):
                    column = batch.column("input_ids")
                    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
                    offsets = column.offsets.to_numpy() - column.offsets[0].as_py()
                    for r, row in enumerate(batch.select(others).to_pylist()):
                        ids = flat[offsets[r]:offsets[r + 1]]
                        segs = [dict(seg, text=tokenizer.decode(ids[seg["start"]:seg["end"]]))
                                for seg in row["segments"]]
                        f.write(json.dumps(record(row, ids, segs), ensure_ascii=False) + "\n")
            names.append(target.name)
    return [out_dir / name for name in names]


def write_jsonl(data_dir, out_dir, tokenizer) -> list[Path]:
    """One JSONL file per Parquet shard, decoded to text."""
    return write_jsonl_shards(data_dir, out_dir, tokenizer, lambda row, ids, segs: {
        "text": tokenizer.decode(ids), "anchor_doc_id": row["anchor_doc_id"], "method": row["method"],
        "group_key": row.get("group_key"), "num_tokens": int(ids.size), "segments": segs})


def mds_available() -> bool:
    """True when mosaicml-streaming is installed (only needed to read MDS with StreamingDataset)."""
    try:
        from streaming import MDSWriter  # noqa: F401
    except ImportError:
        return False
    return True


def attention_spans(starts, ends, doc_ids, length: int, mode: str = "sample") -> np.ndarray:
    """[start, end) attention spans of one long document as a uint32 (n, 2) array.

    `sample`: one span [0, length). `document`: consecutive segments of the same source document
    merged into one span (segments tile the document, so the spans do too)."""
    if mode == "sample":
        return np.asarray([[0, length]], np.uint32)
    if mode != "document":
        raise NextlongError(f"attention spans must be sample or document, got {mode!r}")
    spans: list[list[int]] = []
    prev_doc = None
    for start, end, doc in zip(starts, ends, doc_ids):
        if end <= start:
            continue
        if spans and doc == prev_doc and start == spans[-1][1]:
            spans[-1][1] = end
        else:
            spans.append([start, end])
        prev_doc = doc
    if not spans:
        spans = [[0, length]]
    return np.asarray(spans, np.uint32).reshape(-1, 2)


@contextlib.contextmanager
def swapped_folder(out_dir):
    """A temporary folder beside `out_dir` to write into, renamed to `out_dir` once the block finished
    cleanly (a failed or killed run leaves the previous output, never half of a new one). The previous
    output is renamed aside before the swap (and back if the swap fails) and deleted after it; what a kill
    between the two renames leaves aside (`NAME.old.tmp`) the next run's clean-up of temporaries removes."""
    out_dir = Path(out_dir)
    tmp, old = out_dir.with_name(out_dir.name + ".tmp"), out_dir.with_name(out_dir.name + ".old.tmp")
    _remove(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    for f in sorted(tmp.rglob("*")):  # on disk before the swap publishes them (atomic.fsync_path)
        fsync_path(f)
    fsync_path(tmp)
    _remove(old)
    if os.path.lexists(out_dir):
        out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except BaseException:
        if os.path.lexists(old) and not os.path.lexists(out_dir):
            old.rename(out_dir)
        raise
    fsync_path(out_dir.parent)
    _remove(old)


def remove_output(path) -> None:
    """A derived output folder removed at once for its readers: renamed aside (`NAME.old.tmp`, which the
    clean-up of temporaries removes if a kill comes first), then deleted."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    old = path.with_name(path.name + ".old.tmp")
    _remove(old)
    path.rename(old)
    _remove(old)


@contextlib.contextmanager
def mds_output(out_dir, columns):
    """An MDSWriter into a temporary folder beside `out_dir`, swapped in whole once it closed cleanly
    (`swapped_folder`); every run writes the format anew."""
    from ..mds import MDSWriter

    with swapped_folder(out_dir) as tmp:
        _remove(tmp)  # MDSWriter makes its own folder
        with MDSWriter(tmp, columns) as writer:
            yield writer


def _remove(path: Path) -> None:
    """Whatever is at `path`: a folder with what it holds, or a file or link (rmtree leaves those)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def write_mds(data_dir, out_dir, attention_spans_mode: str = "sample") -> Path:
    """ProLong-style MDS shards from the Parquet shards (written to a temporary folder, then renamed)."""
    from ..mds import TRAINING_COLUMNS

    with mds_output(out_dir, TRAINING_COLUMNS) as writer:
        for path in shard_paths(data_dir):
            table = read_part(path, columns=["input_ids", "segments"])
            ids_col = table.column("input_ids").combine_chunks()
            ids_flat = ids_col.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
            ids_off = ids_col.offsets.to_numpy()
            for r, segs in enumerate(table.column("segments").to_pylist()):
                ids = ids_flat[ids_off[r] - ids_off[0]:ids_off[r + 1] - ids_off[0]]
                spans = attention_spans([s["start"] for s in segs], [s["end"] for s in segs],
                                        [s["doc_id"] for s in segs], int(ids.size), attention_spans_mode)
                writer.write({"input_ids": ids, "indices": spans})
    return Path(out_dir)
