"""Cutting a corpus into splits that workers read on their own, so no single process reads it all.

A split is a list of pieces read in order; a piece is a whole file, a byte range of a plain JSON-lines
file, or a range of row groups of a Parquet file. Splits are planned from file sizes and Parquet
footers only (`plan_splits`): nothing else is read, so planning a corpus of terabytes takes seconds.
Files above `split_bytes` are cut (plain JSON lines by bytes, Parquet by row groups); smaller files
are packed together up to `split_bytes`. A compressed JSON-lines file cannot be cut (neither gzip nor
zstd can start mid-stream) and is always one piece: keep compressed shards to a few hundred MB.

`read_split` yields a split's documents in record batches, doc_index counted from 0 in the split.
What a split cannot know alone is fixed by whoever sees every split (the chunk consolidation):
documents before it (a prefix sum of the splits' document counts) and, for a byte range that starts
inside a file, the lines before it. Its default ids "<file>:<line>" count lines from the range's
start; `SplitReader.info` holds the range's line count, and `file_line_ids` renumbers the ids.
An error in such a range still names the file's true line: the newlines before the range are counted
then, and only then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa

from .reader import CorpusReader, check_contents, detect_format, list_corpus_files, not_a_file
from ..errors import CorpusError

DEFAULT_SPLIT_BYTES = 64 << 20


def plan_splits(path, split_bytes: int = DEFAULT_SPLIT_BYTES, format: str | None = None) -> list[list[dict]]:
    """The splits of a corpus path, in corpus order. A piece is a dict: "path", "name" (what ids and
    messages call the file), "format", and "bytes" [start, end) (a cut JSON-lines file) or
    "row_groups" [a, b) with "row0" (a cut Parquet file); a whole file has neither."""
    splits: list[list[dict]] = []
    packed: list[dict] = []
    packed_bytes = 0

    def close():
        nonlocal packed, packed_bytes
        if packed:
            splits.append(packed)
        packed, packed_bytes = [], 0

    files = list_corpus_files(path)
    check_contents(files, format)
    for file, name in files:
        fmt = format or detect_format(file)
        whole = {"path": str(file.absolute()), "name": name, "format": fmt}  # workers may run elsewhere
        size = file.stat().st_size if file.is_file() else 0  # a missing file: its reader says so
        cuts = _cuts(file, fmt, size, split_bytes) if size > split_bytes else None
        if cuts:
            close()
            splits.extend([{**whole, **cut}] for cut in cuts)
            continue
        if packed and packed_bytes + size > split_bytes:
            close()
        packed.append(whole)
        packed_bytes += size
    close()
    return splits


def _cuts(file: Path, fmt: str, size: int, split_bytes: int) -> list[dict] | None:
    """Where a file above split_bytes is cut; None when it cannot be (compressed, unreadable footer)."""
    if fmt == "jsonl":
        return [{"bytes": [lo, min(size, lo + split_bytes)]} for lo in range(0, size, split_bytes)]
    if fmt != "parquet":
        return None
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(file).metadata
    except (pa.ArrowInvalid, OSError):
        return None  # one piece: its reader reports the error with the file's name
    cuts, first, row0, rows, grouped = [], 0, 0, 0, 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        if g > first and grouped + group.total_byte_size > split_bytes:
            cuts.append({"row_groups": [first, g], "row0": row0})
            first, row0, grouped = g, rows, 0
        grouped += group.total_byte_size
        rows += group.num_rows
    if meta.num_row_groups:
        cuts.append({"row_groups": [first, meta.num_row_groups], "row0": row0})
    return cuts if len(cuts) > 1 else None


def describe_split(split: list[dict]) -> str:
    """What a split holds, for messages: "a.jsonl bytes 0-67108864", "b.parquet row groups 4-8", "c.txt, d.txt"."""
    def one(p):
        if p.get("bytes"):
            return f"{p['name']} bytes {p['bytes'][0]}-{p['bytes'][1]}"
        if p.get("row_groups"):
            return f"{p['name']} row groups {p['row_groups'][0]}-{p['row_groups'][1]}"
        return p["name"]
    names = [one(p) for p in split[:3]]
    return ", ".join(names) + (f" and {len(split) - 3} more files" if len(split) > 3 else "")


def starts_mid_file(piece: dict) -> bool:
    """A byte-range piece that does not start at the file's first byte (its lines count from its start)."""
    return bool(piece.get("bytes")) and piece["bytes"][0] > 0


class SplitReader(CorpusReader):
    """Reads one split (`split_batches(split)`), numbering doc_index from 0; `stats` as CorpusReader's, and
    `info` = {"lines", "nonblank_lines"} of a byte-range piece (what consolidation and the whole-file
    checks need)."""

    checks_contents = False

    def split_batches(self, split: list[dict]) -> Iterator[pa.RecordBatch]:
        next_index = 0
        self.info: dict = {}
        for piece in split:
            path, name, fmt = Path(piece["path"]), piece["name"], piece["format"]
            if not path.is_file():
                raise CorpusError(path, not_a_file(path))
            if not starts_mid_file(piece) and not (piece.get("row_groups") or [0])[0]:
                self.stats.files += 1
            if piece.get("bytes"):
                columns = self._jsonl_columns(path, name, fed=True, byte_range=tuple(piece["bytes"]))
            elif piece.get("row_groups"):
                columns = self._parquet_columns(path, name, tuple(piece["row_groups"]), piece["row0"])
            else:
                columns = self._file_columns(path, name, fmt)
            for batch in self._numbered(columns, next_index):
                next_index += batch.num_rows
                yield batch
            if piece.get("bytes"):
                self.info = dict(self.last_piece)


def file_line_ids(doc_ids: pa.Array, name: str, offset: int) -> pa.Array:
    """Default ids "<name>:<line>" of a range that starts inside a file, moved by the `offset` lines
    before the range. Only called for a corpus read without an id field, where every id is a default one."""
    import pyarrow.compute as pc

    if offset == 0 or len(doc_ids) == 0:
        return doc_ids
    head = name + ":"
    lines = pc.cast(pc.utf8_slice_codeunits(doc_ids, len(head)), pa.int64())
    return pc.binary_join_element_wise(pa.scalar(head), pc.cast(pc.add(lines, offset), pa.string()), "")
