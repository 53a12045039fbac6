"""`nextlong inspect DIR`: look at what `nextlong synthesize` or `nextlong acer` made — a sample long
document with its anchors and negatives (or, for ACER, its retrieved chunks, question and answer)
marked, and the run's statistics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import NextlongError
from .argtypes import nonnegative_int, positive_int

_COLOURS = {"anchor": "\033[1;32m", "negative": "\033[2;37m", "read": "\033[1;32m", "context": "\033[2;37m",
            "question": "\033[1;36m", "answer": "\033[1;33m"}
_MARKS = {"anchor": "[A]", "negative": "[N]", "read": "[C*]", "context": "[C]", "question": "[Q]", "answer": "[R]"}
_LEGENDS = {"nextlong": (("anchor", "anchor meta-chunk"), ("negative", "negative")),
            "acer": (("read", "chunk the reader saw"), ("context", "chunk it did not"), ("question", "question"),
                     ("answer", "answer (the loss is on it)"))}
_RESET = "\033[0m"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="show a synthesized document and the run's statistics",
                              description="Print one long document of a `nextlong synthesize` output folder with "
                                          "anchor meta-chunks and negatives marked (of a `nextlong acer` folder: its "
                                          "chunks, question and answer), then the manifest's statistics.")
    p.add_argument("dir", help="output folder of nextlong synthesize or nextlong acer")
    p.add_argument("--sample", type=nonnegative_int, default=0, help="which long document (row number, default 0)")
    p.add_argument("--max-chars", type=positive_int, default=300, help="characters shown per segment (default 300)")
    p.add_argument("--max-segments", type=positive_int, default=12, help="segments shown (default 12)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.set_defaults(func=run)


def render(directory, *, sample: int = 0, max_chars: int = 300, max_segments: int = 12, color: bool = False) -> str:
    import numpy as np
    import pyarrow.parquet as pq

    from ..untrusted import printable
    from ..manifest import recorded_tokenizer
    from ..synthesis.writers import shard_paths
    from ..corpus.tokenizer import load_tokenizer
    from ..untrusted import read_json

    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.exists():
        raise NextlongError(f"{manifest_path}: not found; is {directory} the --out of a finished nextlong synthesize?")
    manifest = read_json(manifest_path, NextlongError, expect=dict)
    settings, stats = manifest.get("settings"), manifest.get("statistics")
    if not isinstance(settings, dict) or not isinstance(stats, dict):
        raise NextlongError(f"{manifest_path}: expected \"settings\" and \"statistics\" objects (is {directory} the "
                            "--out of nextlong synthesize?)")
    shards = shard_paths(directory / "data")
    row, seen = None, 0
    for path in shards:
        n = pq.ParquetFile(path).metadata.num_rows
        if sample < seen + n:
            row = pq.read_table(path).slice(sample - seen, 1).to_pylist()[0]
            break
        seen += n
    if row is None:
        raise NextlongError(f"{directory / 'data'}: no long document number {sample} (the output has {seen})")
    tok = load_tokenizer(recorded_tokenizer(directory, settings))
    ids = np.asarray(row["input_ids"], np.uint32)
    # everything from the folder is shown through printable(): corpus text may hold escape sequences
    acer = row.get("method") == "acer"
    if acer:
        gold = f", gold {row['gold']!r}" if row.get("gold") else ""
        lines = [printable(f"sample {sample}: {len(ids)} tokens, method acer, question {row['question']!r}, answer "
                           f"{row['answer']!r}{gold}, {len(row['segments'])} segments")]
    else:
        lines = [printable(f"document {sample}: {len(ids)} tokens, method {row['method']}, anchor document "
                           f"{row['anchor_doc_id']!r}, {len(row['segments'])} segments")]
    legend = _LEGENDS["acer" if acer else "nextlong"]
    lines.append("   ".join(f"{_COLOURS[k]}{_MARKS[k]} {what}{_RESET}" if color else f"{_MARKS[k]} {what}"
                            for k, what in legend))
    for seg in row["segments"][:max_segments]:
        text = tok.decode(ids[seg["start"]:seg["end"]])
        short = text if len(text) <= max_chars else text[:max_chars] + " …"
        kind = "read" if seg["role"] == "context" and seg.get("read") else seg["role"]
        mark = _MARKS.get(kind, "[?]")
        where = f" {seg['doc_id']}#{seg['chunk_index']}" if seg.get("doc_id") else ""
        ranks = f" rank {seg['rank']} (retrieval {seg['retrieval_rank']})" if acer and seg["role"] == "context" else ""
        head = printable(f"{mark}{where}{ranks} tokens {seg['start']}-{seg['end']}")
        body = printable(short.rstrip("\n")).replace("\n", "\n    ")
        if color:
            c = _COLOURS.get(kind, "")
            lines.append(f"{c}{head}{_RESET}\n    {c}{body}{_RESET}")
        else:
            lines.append(f"{head}\n    {body}")
    if len(row["segments"]) > max_segments:
        lines.append(f"... {len(row['segments']) - max_segments} more segments")
    lines.append("")
    lines.append("statistics:")
    for key in sorted(stats):
        value = stats[key]
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        lines.append(printable(f"  {key}: {value}"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(render(args.dir, sample=args.sample, max_chars=args.max_chars, max_segments=args.max_segments, color=color))
    return 0
