"""`nextlong inspect DIR`: look at what `nextlong synthesize` or `nextlong acer` made — a sample long
document with its anchors and negatives (or, for ACER, its retrieved chunks, question and answer)
marked, and the run's statistics."""

from __future__ import annotations

import argparse
import json
import os
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
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="mark anchors and negatives in color (default auto: when writing to a terminal)")
    p.set_defaults(func=run)


def _first_document(row: dict, segments: list, max_chars: int) -> str:
    """What the row's `anchor_doc_id` is: for the stream baselines (standard, ICLM) the document the row starts
    with, which under --overflow carry may be the rest of one the previous row cut at L; for LiteLong the best
    document its topic retrieved, after the topic (cut at `max_chars`, as a segment: a topic may be long);
    else the anchor."""
    from ..untrusted import show

    doc = row.get("anchor_doc_id")
    if row.get("method") == "litelong":
        return f"topic {show(row.get('group_key'), max(max_chars, 5))}, first document {doc!r}"
    if row.get("method") not in ("standard", "iclm"):
        return f"anchor document {doc!r}"
    first = segments[0].get("chunk_index") if segments else None
    more = (f" (going on from the previous document, from its chunk {first})"
            if type(first) is int and first > 0 and segments[0].get("doc_id") == doc else "")
    return f"first document {doc!r}{more}"


def render(directory, *, sample: int = 0, max_chars: int = 300, max_segments: int = 12, color: bool = False) -> str:
    from ..manifest import recorded_tokenizer
    from ..corpus.tokenizer import load_tokenizer
    from ..untrusted import printable, read_json

    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not directory.is_dir():
        raise NextlongError(f"{directory}: " + ("no such folder" if not os.path.lexists(directory) else
                                                "not a folder") + "; give the --out of `nextlong synthesize` or "
                            "`nextlong acer`")
    if not manifest_path.exists():
        raise NextlongError(f"{manifest_path}: not found; is {directory} the --out of a finished nextlong synthesize?")
    manifest = read_json(manifest_path, NextlongError, expect=dict)
    if manifest.get("command") == "train":
        raise NextlongError(f"{directory} is a `nextlong train` run folder; inspect shows what `nextlong synthesize` "
                            f"or `nextlong acer` made (plot a run with `nextlong plot {directory}`)")
    if manifest.get("command") not in ("synthesize", "acer", None):  # None: a manifest of an early version
        from ..manifest import another_commands_run

        raise NextlongError(f"{directory}: holds {another_commands_run(manifest_path, 'synthesize')} (its "
                            "manifest.json); inspect shows what `nextlong synthesize` or `nextlong acer` made")
    settings, stats = manifest.get("settings"), manifest.get("statistics")
    from ..manifest import run_status

    if isinstance(stats, dict) and run_status(manifest) is not None:  # running, failed or interrupted
        error = f" ({printable(str(stats.get('error')))[:200]})" if stats.get("error") else ""
        raise NextlongError(f"{manifest_path}: the nextlong {manifest.get('command')} run writing {directory} has not "
                            f"finished: {run_status(manifest)}{error}; "
                            + ("fix what stopped it, then run its command again" if run_status(manifest) == "failed"
                               else "run its command again to complete it"))
    if not isinstance(settings, dict) or not isinstance(stats, dict):
        raise NextlongError(f"{manifest_path}: expected \"settings\" and \"statistics\" objects (is {directory} the "
                            "--out of nextlong synthesize?)")
    row, where = _row(directory, sample)
    ids, segments = _checked_row(row, where)
    tok = load_tokenizer(recorded_tokenizer(directory, settings))
    # everything from the folder is shown through printable(): corpus text may hold escape sequences
    acer = row.get("method") == "acer"
    if acer:
        gold = f", gold {row['gold']!r}" if row.get("gold") else ""
        lines = [printable(f"sample {sample}: {len(ids)} tokens, method acer, question {row.get('question')!r}, "
                           f"answer {row.get('answer')!r}{gold}, {len(segments)} segments")]
    else:
        lines = [printable(f"document {sample}: {len(ids)} tokens, method {row.get('method')}, "
                           f"{_first_document(row, segments, max_chars)}, {len(segments)} segments")]
    legend = _LEGENDS["acer" if acer else "nextlong"]
    lines.append("   ".join(f"{_COLOURS[k]}{_MARKS[k]} {what}{_RESET}" if color else f"{_MARKS[k]} {what}"
                            for k, what in legend))
    shown = _shown(segments, max_segments, acer)
    for seg in shown:
        try:
            text = tok.decode(ids[seg["start"]:seg["end"]])
        except ValueError as exc:  # an id outside the tokenizer's vocabulary
            raise NextlongError(f"{where}: {exc} (of the tokenizer the manifest names)") from None
        short = text if len(text) <= max_chars else text[:max_chars] + " …"
        kind = "read" if seg.get("role") == "context" and seg.get("read") else seg.get("role")
        mark = _MARKS.get(kind, "[?]")
        where_from = f" {seg['doc_id']}#{seg.get('chunk_index')}" if seg.get("doc_id") else ""
        ranks = (f" rank {seg.get('rank')} (retrieval {seg.get('retrieval_rank')})"
                 if acer and seg.get("role") == "context" else "")
        head = printable(f"{mark}{where_from}{ranks} tokens {seg['start']}-{seg['end']}")
        body = printable(short.rstrip("\n")).replace("\n", "\n    ")
        if color:
            c = _COLOURS.get(kind, "")
            lines.append(f"{c}{head}{_RESET}\n    {c}{body}{_RESET}")
        else:
            lines.append(f"{head}\n    {body}")
    if len(segments) > len(shown):
        lines.append(f"... {len(segments) - len(shown)} more segments" + (
            " (chunks the reader did not see)" if acer else ""))
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


def _shown(segments: list, limit: int, acer: bool) -> list:
    """The first `limit` segments; of an ACER sample, always the chunks the reader saw, the question and
    the answer (they come last), then its other chunks up to the limit, in sample order."""
    if not acer:
        return segments[:limit]
    keep = [seg.get("role") != "context" or bool(seg.get("read")) for seg in segments]
    room = max(0, limit - sum(keep))
    for i, kept in enumerate(keep):
        if not kept and room:
            keep[i], room = True, room - 1
    return [seg for seg, kept in zip(segments, keep) if kept]


def _row(directory: Path, sample: int) -> tuple[dict, str]:
    """Row `sample` of the folder's data shards and where it is ("FILE row N"). Each shard must be a
    regular file of DIR/data (pyarrow would wait forever on a FIFO; a link could show another folder's
    text) and readable Parquet; either problem is named."""
    import pyarrow as pa

    from ..corpus.reader import corrupt_parquet, open_parquet
    from ..synthesis.writers import shard_paths
    from ..untrusted import member, own_subfolder

    seen = 0
    data = own_subfolder(directory, "data", NextlongError, kind="output folder",
                         remedy="give the folder it points to if you trust it")
    for path in shard_paths(data):
        member(path.parent, path.name, str(path.parent), NextlongError, kind="output folder")
        pf = open_parquet(path)
        n = pf.metadata.num_rows
        if sample < seen + n:
            row = sample - seen
            try:  # only the row group that holds the row: a shard of 512K-token documents is GBs
                for g in range(pf.metadata.num_row_groups):
                    size = pf.metadata.row_group(g).num_rows
                    if row < size:
                        return pf.read_row_group(g).slice(row, 1).to_pylist()[0], f"{path} row {sample - seen}"
                    row -= size
            except (pa.ArrowException, OSError) as exc:
                raise corrupt_parquet(path, exc, f"reading row {sample - seen}") from None
            raise NextlongError(f"{path}: its row groups hold fewer rows than its footer's {n}")
        seen += n
    raise NextlongError(f"{directory / 'data'}: no long document number {sample} (the output has {seen})")


def _checked_row(row: dict, where: str) -> tuple:
    """(ids as uint32, segments) of a data row, each of the shape `nextlong synthesize` / `nextlong acer`
    write: token ids in 0..2**32-1, segments objects with integer 0 <= start <= end <= len(ids)."""
    import numpy as np

    ids, segments = row.get("input_ids"), row.get("segments")
    if not isinstance(ids, list) or not all(type(i) is int and 0 <= i < 1 << 32 for i in ids):
        raise NextlongError(f"{where}: input_ids must be a list of token ids (integers in 0..2**32-1)")
    if not isinstance(segments, list) or not all(
            isinstance(seg, dict) and type(seg.get("start")) is int and type(seg.get("end")) is int
            and 0 <= seg["start"] <= seg["end"] <= len(ids) for seg in segments):
        raise NextlongError(f"{where}: segments must be a list of {{start, end, ...}} objects with integer "
                            f"offsets 0 <= start <= end <= {len(ids)} (the document's tokens)")
    return np.asarray(ids, np.uint32), segments


def run(args: argparse.Namespace) -> int:
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(render(args.dir, sample=args.sample, max_chars=args.max_chars, max_segments=args.max_segments, color=color))
    return 0
