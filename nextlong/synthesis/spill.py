"""A block's work in progress, kept on disk so an interrupted long block resumes within itself.

A map stage whose block takes minutes (the embedder: thousands of chunks in batches of 512) would lose
the whole block to a Ctrl-C, a SIGTERM or a kill -9: its part and record are written only at the end.
Such a stage declares `MapStage.spill_key()`; `map_block` then hands it a `BlockSpill`, the rows it has
finished so far, appended batch by batch to `<stage>/_partial/part-NNNNN.<key>.spill`, read back when the
block is run again and deleted once the block's record is written.

A spill never says "done" (the block record does, framework.py): it is what the stage may start from.
So it is trusted only as far as it checks out: the header names its key (the block's fingerprint and the
stage's spill settings: a spill of other settings is never read), every record carries its length and
CRC32, and reading stops at the first record that is cut short or does not match; the rows after it are
computed again, and the damaged tail is cut off before the next append. A CRC proves nothing against whoever
wrote the file, so a header of no plain rows, or a state that is not a JSON object, is refused the same way.

File layout: `MAGIC`, one JSON line {"key", "width", "dtype"}, then records, each
`<QQI` (state bytes, data bytes, CRC32 of both) + a JSON state + `rows x width` values.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, fsync_path

MAGIC = b"NEXTLONG-SPILL 1\n"
SPILL_DIR = "_partial"  # the leading underscore keeps Parquet readers of the stage folder away
_RECORD = struct.Struct("<QQI")


def spill_path(stage_dir, block: int, key: str) -> Path:
    return Path(stage_dir) / SPILL_DIR / f"part-{block:05d}.{key}.spill"


class BlockSpill:
    """The finished rows of one block: `load` what an earlier run kept, `append` rows as they are done.

    Rows are fixed-width `dtype` vectors (`width` of them per row); each record also keeps a small JSON
    state (e.g. a running count) that the stage needs to go on from it."""

    def __init__(self, path, key: str, *, log=None):
        self.path, self.key, self.log = Path(path), key, log
        self._width = self._dtype = None
        self._end = None  # where the valid records end (the next append goes there)

    def load(self, width: int, dtype="<f4") -> list[tuple[dict, np.ndarray]]:
        """The valid records in order, each (state, rows), for rows of `width` values; [] when there is no
        spill of this key and width. What follows the valid records (a torn or damaged one) is dropped
        here: the next append goes in its place."""
        self._width, self._dtype = int(width), np.dtype(dtype)
        records = []
        try:
            with open(self.path, "rb") as f:
                blob = f.read()
        except OSError:
            self._end = None
            return []
        at = self._header_end(blob)
        if at is None or not _plain_rows(self._width, self._dtype):
            self._say("is not a spill of this block and settings (another version, or damaged): redoing the block")
            self._end = None
            return []
        row_bytes = self._width * self._dtype.itemsize
        while at < len(blob):
            head = blob[at:at + _RECORD.size]
            if len(head) < _RECORD.size:
                break
            n_state, n_data, crc = _RECORD.unpack(head)
            body = blob[at + _RECORD.size:at + _RECORD.size + n_state + n_data]
            if len(body) != n_state + n_data or zlib.crc32(body) != crc or n_data % row_bytes:
                break
            try:
                record_state = json.loads(body[:n_state])
            except (ValueError, RecursionError):  # a crafted state nested 200,000 deep is a RecursionError
                break
            if not isinstance(record_state, dict):  # the state the stage appended is always an object
                break
            records.append((record_state, np.frombuffer(body[n_state:], self._dtype).reshape(-1, self._width)))
            at += _RECORD.size + n_state + n_data
        if at < len(blob):
            rows = sum(a.shape[0] for _, a in records)
            self._say(f"damaged after {rows} rows ({len(blob) - at} bytes that do not check out): "
                      "redoing the rest of the block")
        self._end = at
        return records

    def clear(self) -> None:
        """Start the spill again: the next append replaces whatever it held."""
        self._end = None

    def append(self, rows: np.ndarray, state: dict) -> None:
        """Keep `rows` (the next finished rows of the block) and the stage's `state` after them: one
        record, flushed to the disk before the call returns. The first append writes the header."""
        if self._width is None:  # appended to without a load: a new spill of these rows' width
            self._width, self._dtype = int(rows.shape[1]), np.dtype("<f4")
        data = np.ascontiguousarray(rows, self._dtype).tobytes()
        body = json.dumps(state, sort_keys=True).encode() + data
        record = _RECORD.pack(len(body) - len(data), len(data), zlib.crc32(body)) + body
        if self._end is None:  # a new spill: header and first record written whole, then renamed into place
            with atomic_path(self.path) as tmp:
                Path(tmp).write_bytes(self._header() + record)
            self._end = len(self._header()) + len(record)
            return
        with open(self.path, "r+b") as f:
            f.truncate(self._end)  # a damaged tail load() found is cut off
            f.seek(self._end)
            f.write(record)
            f.flush()
        fsync_path(self.path)
        self._end += len(record)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def rows(self) -> int:
        """Rows the spill holds that check out (read with the width its header names): what an earlier
        run finished of the block, for a progress bar."""
        try:
            with open(self.path, "rb") as f:
                f.readline()
                header = json.loads(f.readline())
            width, dtype = int(header["width"]), np.dtype(header["dtype"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError, OverflowError):  # "width": Infinity
            return 0
        if not _plain_rows(width, dtype):  # a header of width 0 or -1, or of Python objects, holds no rows
            return 0
        quiet = BlockSpill(self.path, self.key)
        return sum(a.shape[0] for _, a in quiet.load(width, dtype))

    def _header(self) -> bytes:
        return MAGIC + json.dumps({"key": self.key, "width": self._width, "dtype": self._dtype.str},
                                  sort_keys=True).encode() + b"\n"

    def _header_end(self, blob: bytes) -> int | None:
        header = self._header()
        return len(header) if blob[:len(header)] == header else None

    def _say(self, what: str) -> None:
        if self.log is not None:
            self.log(f"{self.path}: {what}")


def _plain_rows(width: int, dtype: np.dtype) -> bool:
    """Rows a spill can hold: a positive width of plain numbers (never Python objects or structures)."""
    return width > 0 and dtype.kind in "fiu" and not dtype.hasobject and dtype.itemsize > 0


def remove_spills(stage_dir, block: int | None = None, keep: Path | None = None) -> None:
    """Delete the spills of a stage folder (of one block when `block` is given), except `keep`."""
    folder = Path(stage_dir) / SPILL_DIR
    pattern = "part-*.spill" if block is None else f"part-{block:05d}.*.spill"
    for path in folder.glob(pattern):
        if keep is None or path != keep:
            path.unlink(missing_ok=True)
    if block is None:
        try:
            os.rmdir(folder)
        except OSError:
            pass
