"""ACER's derived output formats, written from OUT/data at the end of a run (Parquet stays canonical).

* jsonl: OUT/jsonl/part-NNNNN.jsonl, one object per sample for people to read: `context` (the chunks'
  text), `question`, `answer`, `answer_cut`, `gold`, `question_id`, `num_tokens`, and `segments` each with its text.
* mds: OUT/mds, Mosaic Data Shards with ProLong's columns plus the mask: `input_ids` (uint32),
  `indices` (one attention span [0, n) per sample: the answer must see the whole context) and
  `loss_mask` (uint8, 1 on the answer tokens).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..parts import read_part
from ..writers import mds_output, shard_paths, write_jsonl_shards

MDS_COLUMNS = {"input_ids": "ndarray:uint32", "indices": "ndarray:uint32", "loss_mask": "ndarray:uint8"}


def write_jsonl(data_dir, out_dir, tokenizer) -> list[Path]:
    def record(row, ids, segs):
        context_end = max((s["end"] for s in segs if s["role"] == "context"), default=0)
        return {"question_id": row["question_id"], "question": row["question"], "answer": row["answer"],
                "answer_cut": row.get("answer_cut"), "gold": row["gold"], "num_tokens": row["num_tokens"],
                "method": row["method"],
                "context": tokenizer.decode(ids[:context_end]), "segments": segs}

    return write_jsonl_shards(data_dir, out_dir, tokenizer, record)


def write_mds(data_dir, out_dir) -> Path:
    with mds_output(out_dir, MDS_COLUMNS) as writer:
        for path in shard_paths(data_dir):
            table = read_part(path, columns=["input_ids", "loss_mask"])
            for ids, mask in zip(table.column("input_ids").to_numpy(zero_copy_only=False),
                                 table.column("loss_mask").to_numpy(zero_copy_only=False)):
                ids = np.asarray(ids, np.uint32)
                writer.write({"input_ids": ids, "indices": np.asarray([[0, ids.size]], np.uint32),
                              "loss_mask": np.asarray(mask, np.uint8)})
    return Path(out_dir)
