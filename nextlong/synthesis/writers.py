"""Output formats. Parquet shards are the canonical, resumable output (one file per shard, each
written atomically); JSONL and MDS are derived from them at the end of a run.

* parquet: OUTPUT_SCHEMA rows in DIR/data/part-NNNNN.parquet (read the folder with
  `pyarrow.parquet.read_table(DIR/"data")`; the `_shards` bookkeeping folder is ignored by readers);
* jsonl: DIR/jsonl/part-NNNNN.jsonl, one object per long document: the decoded `text`, the
  `segments` each with its decoded `text`, `anchor_doc_id`, `method` — for people to read;
* mds: DIR/mds, mosaicml-streaming shards with ProLong's columns: `input_ids` (uint32 array) and
  `indices` (uint32 array of [start, end) pairs, one per segment), readable by
  `streaming.StreamingDataset`. Needs the optional extra `pip install nextlong[mds]`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_path
from ..errors import NextlongError

MDS_COLUMNS = {"input_ids": "ndarray:uint32", "indices": "ndarray:uint32"}


def write_parquet_atomic(table: pa.Table, path) -> None:
    # fixed writer options so the same rows give the same bytes
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=True, write_statistics=True,
                       row_group_size=max(1, min(table.num_rows, 256)))


def shard_paths(data_dir) -> list[Path]:
    return sorted(Path(data_dir).glob("part-*.parquet"))


def iter_rows(data_dir):
    for path in shard_paths(data_dir):
        for row in pq.read_table(path).to_pylist():
            yield row


def write_jsonl(data_dir, out_dir, tokenizer) -> list[Path]:
    """One JSONL file per Parquet shard, decoded to text."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in shard_paths(data_dir):
        target = out_dir / (path.stem + ".jsonl")
        with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in pq.read_table(path).to_pylist():
                ids = np.asarray(row["input_ids"], np.uint32)
                segs = [dict(seg, text=tokenizer.decode(ids[seg["start"]:seg["end"]])) for seg in row["segments"]]
                obj = {"text": tokenizer.decode(ids), "anchor_doc_id": row["anchor_doc_id"], "method": row["method"],
                       "num_tokens": int(ids.size), "segments": segs}
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        written.append(target)
    return written


def mds_available() -> bool:
    try:
        from streaming import MDSWriter  # noqa: F401
    except ImportError:
        return False
    return True


def write_mds(data_dir, out_dir) -> Path:
    """ProLong-style MDS shards from the Parquet shards (written to a temporary folder, then renamed)."""
    try:
        from streaming import MDSWriter
    except ImportError as exc:
        raise NextlongError(
            "--format mds needs mosaicml-streaming: pip install 'nextlong[mds]' (pin torch with "
            "-c constraints.txt, it pulls heavy dependencies)"
        ) from exc
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with MDSWriter(out=str(tmp), columns=MDS_COLUMNS, compression=None) as writer:
        for path in shard_paths(data_dir):
            table = pq.read_table(path)
            for row in table.to_pylist():
                indices = np.asarray([[s["start"], s["end"]] for s in row["segments"]], np.uint32).reshape(-1, 2)
                writer.write({"input_ids": np.asarray(row["input_ids"], np.uint32), "indices": indices})
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
