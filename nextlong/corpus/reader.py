"""Reading corpora as a stream of documents, a batch at a time, never whole into memory.

Formats, chosen by extension (or `format=`):
  .jsonl / .json (JSON lines), .jsonl.gz / .json.gz (zlib, in C++), .jsonl.zst / .json.zst
  (zstandard blocks fed to the same C++ line parser), .parquet (pyarrow row batches), .txt (one
  document per file; doc_id = the path relative to the directory given).
A path may be a file, a directory (its supported files, recursively, sorted by relative path;
hidden files and `*.manifest.json` are ignored) or a list of those. Before reading, a Parquet file under
another format's name is refused, and a .txt file whose lines are JSON objects gets a warning (check_contents).

Default doc ids: "<file>:<line>" for JSON lines (1-based, as editors count) and "<file>:<row>" for
Parquet (0-based, as pyarrow counts), where <file> is the path relative to the directory given (the
file name for a file given directly). Every document gets `doc_index`, its ordinal in the stream.

Bad input raises nextlong.errors.CorpusError naming the file, the line (or row) and what was
expected. With on_error="skip" bad records (and empty files) are counted in `reader.stats` and
left out instead; a corrupt compressed stream or an unreadable file still raises.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa

from .. import checked_parquet
from ..errors import CorpusError, UsageError, checked_path, checked_str

# Columns of the record batches the reader yields.
CORPUS_BATCH_SCHEMA = pa.schema(
    [
        pa.field("doc_index", pa.int64(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)

# Longest suffixes first: ".jsonl.gz" must win over ".gz".
_SUFFIX_FORMATS = (
    (".jsonl.gz", "jsonl.gz"),
    (".json.gz", "jsonl.gz"),
    (".jsonl.zst", "jsonl.zst"),
    (".json.zst", "jsonl.zst"),
    (".jsonl", "jsonl"),
    (".json", "jsonl"),
    (".parquet", "parquet"),
    (".txt", "txt"),
)
FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet", "txt")
_ON_ERROR = ("raise", "skip")
_ZSTD_READ_BLOCK = 4 << 20
_ZSTD_IN_SLICE = 4 << 10  # compressed bytes per decompress() call (see zstd_blocks)


class Document(NamedTuple):
    """One document of the stream."""

    doc_index: int  # ordinal in the corpus stream (skipped records do not count)
    doc_id: str
    text: str


@dataclass
class CorpusStats:
    """What a reader has read so far; `bytes` counts the UTF-8 bytes of the documents' text."""

    files: int = 0
    documents: int = 0
    bytes: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "documents": self.documents,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "skipped_examples": list(self.skipped_examples),
        }


def detect_format(path: str | os.PathLike) -> str:
    """Corpus format of a file from its extension; raises CorpusError for an unknown one."""
    name = Path(path).name.lower()
    for suffix, fmt in _SUFFIX_FORMATS:
        if name.endswith(suffix):
            return fmt
    raise CorpusError(
        path, "unknown corpus file extension (expected .jsonl, .json, .jsonl.gz, .jsonl.zst, .parquet or .txt)"
    )


_HEAD_BYTES = 4096  # what check_contents reads of each file: the magic number and the first line
_FIRST_LINE_LIMIT = 16 << 20  # a .txt that starts with '{': read on to its second line, up to this


def check_contents(files: list[tuple[Path, str]], format: str | None = None) -> None:
    """Before any work: a Parquet file under another format's name is refused (the JSON-lines parser would
    call its first bytes invalid UTF-8, and `--on-error skip` would skip the whole file as bad records); a
    .txt file whose lines are JSON objects is read as one document, as asked, with a warning on stderr."""
    import json
    import sys

    as_json = []
    for path, name in files:
        fmt = format or detect_format(path)
        try:
            with open(path, "rb") as fh:
                head = fh.read(_HEAD_BYTES)
                # a text file that starts like a JSON object: its first line whole, and the next one's start (a
                # long-context record is far longer than the head), up to _FIRST_LINE_LIMIT
                while (fmt == "txt" and head.lstrip()[:1] == b"{" and len(head) < _FIRST_LINE_LIMIT
                       and not head.partition(b"\n")[2].strip()):
                    more = fh.read(len(head))
                    if not more:
                        break
                    head += more
        except OSError:
            continue  # the reader reports it, with its own wording
        if fmt != "parquet" and head[:4] == b"PAR1":
            raise CorpusError(path, "a Parquet file (it starts with PAR1), " + (
                f"not the format {format} asked for: pass --format parquet" if format else
                f"not {fmt} as its name says: rename it to end in .parquet"))
        if fmt == "txt":
            first, newline, rest = head.partition(b"\n")
            try:
                record = json.loads(first) if newline and first.lstrip().startswith(b"{") else None
            except ValueError:
                record = None
            if isinstance(record, dict) and rest.lstrip().startswith(b"{"):
                as_json.append(name)
    if as_json:
        more = f" and {len(as_json) - 1} more" if len(as_json) > 1 else ""
        print(f"nextlong: warning: {as_json[0]}{more}: read as plain text, one document per file, but its lines "
              "are JSON objects; name it .jsonl (or pass --format jsonl) to read one document per line",
              file=sys.stderr, flush=True)


def list_corpus_files(path) -> list[tuple[Path, str]]:
    """The files a corpus path stands for, each with the name its doc ids and messages use."""
    if isinstance(path, (list, tuple)):
        out: list[tuple[Path, str]] = []
        for p in path:
            out.extend(list_corpus_files(p))
        return out
    root = Path(path)
    if root.is_dir():
        files = []
        real_root = root.resolve()
        for p in root.rglob("*"):
            rel = p.relative_to(root)
            if any(part.startswith(".") for part in rel.parts) or not p.is_file():
                continue
            if p.name.endswith(".manifest.json"):
                continue
            if any(p.name.lower().endswith(suffix) for suffix, _ in _SUFFIX_FORMATS):
                target = p.resolve()
                if real_root not in target.parents:  # a folder from elsewhere must not make us read /etc/...
                    raise CorpusError(p, f"a symbolic link to {target}, outside the corpus folder; nextlong reads "
                                         "only the folder's own files: copy the file in, or name it on the "
                                         "command line")
                files.append((p, rel.as_posix()))
        if not files:
            raise CorpusError(root, "directory holds no corpus files (.jsonl, .jsonl.gz, .jsonl.zst, .parquet, .txt)")
        return sorted(files, key=lambda f: f[1])
    if not root.exists():
        raise CorpusError(root, "no such file or directory")
    return [(root, root.name)]


def not_a_file(path: Path) -> str:
    """Why a named corpus input that is not a regular file cannot be read: it is missing, or it is a pipe,
    device or socket (no size to split by byte ranges; reading it could block for ever)."""
    from ..untrusted import not_regular

    try:
        return not_regular(path.stat()) or "no such file"
    except OSError:
        return "no such file"


def zstd_blocks(path: Path) -> Iterator[bytes]:
    """The decompressed bytes of a .zst file, frame after frame, in blocks.

    A truncated or corrupt file is always a CorpusError, whatever --on-error says: zstandard's
    stream reader ends quietly at a frame cut short, which would drop the records of the last frame
    without a word. Here each frame must reach its end mark."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    frame = None  # the decompressor of the frame in progress
    frames = 0
    pending: list[bytes] = []  # decompressed, not yet yielded
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(_ZSTD_READ_BLOCK):
            # decompress() has no output limit and zstd inflates up to ~32,000x: 4 MiB read at once
            # could become 128 GiB. A 4 KiB slice becomes at most ~128 MiB; outputs are joined into
            # blocks of about _ZSTD_READ_BLOCK so the reader still gets large batches.
            for k in range(0, len(block), _ZSTD_IN_SLICE):
                data = block[k:k + _ZSTD_IN_SLICE]
                while data:
                    if frame is None:
                        frame = dctx.decompressobj()
                        frames += 1
                    try:
                        out = frame.decompress(data)
                    except zstandard.ZstdError as exc:
                        raise CorpusError(path, f"corrupt zstd data in frame {frames}: {exc}") from None
                    if out:
                        pending.append(out)
                        size += len(out)
                        if size >= _ZSTD_READ_BLOCK:
                            yield b"".join(pending)
                            pending, size = [], 0
                    if frame.eof:
                        data, frame = frame.unused_data, None
                    else:
                        data = b""
    if pending:
        yield b"".join(pending)
    if frame is not None:
        raise CorpusError(path, f"truncated zstd file: frame {frames} ends before its end mark (zstd -t reports "
                          "the same); the records in it are lost, so nothing is written")


def open_parquet(path):
    """pq.ParquetFile(path); a file that is not Parquet (empty, truncated, random bytes) is a CorpusError."""

    try:
        return checked_parquet.open_file(path)
    except (pa.ArrowException, OSError) as exc:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise CorpusError(path, "empty file (expected a Parquet file)") from None
        raise CorpusError(path, f"not a readable Parquet file ({exc})") from None


def corrupt_parquet(path, exc: Exception, where: str) -> CorpusError:
    """The error for bytes damaged inside a Parquet file whose footer still reads: pyarrow raises
    ArrowInvalid or OSError ("Deserializing page header failed") only when it decodes the page."""
    return CorpusError(path, f"corrupt Parquet data {where} ({' '.join(str(exc).split())})")


def parquet_batches(path, pf, first_row: int = 0, **options) -> Iterator[pa.RecordBatch]:
    """pf.iter_batches(**options), a damaged page being a CorpusError naming the file and the row reached."""
    batches = pf.iter_batches(**options)
    row = first_row
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise corrupt_parquet(path, exc, f"at or after row {row}") from None
        row += batch.num_rows
        yield batch


def string_layout(arr) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy (offsets int32, data uint8) views of a pyarrow string array, as the C++ engine
    takes them. Offsets are absolute positions in `data` (they need not start at 0)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    if arr.null_count:
        raise ValueError("text column holds nulls")
    bufs = arr.buffers()
    n = len(arr)
    if bufs[1] is None:
        return np.zeros(n + 1, dtype=np.int32), np.zeros(0, dtype=np.uint8)
    offsets = np.frombuffer(bufs[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, dtype=np.uint8)
    return offsets, data


def _string_array(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    """Wraps C++-built Arrow string buffers without copying."""
    return pa.Array.from_buffers(pa.string(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


class CorpusReader:
    """A corpus as a stream of documents or of record batches (doc_index, doc_id, text).

    Iterating the reader yields Documents; `batches()` yields pyarrow RecordBatches. `stats` is
    updated as the stream is consumed.
    """

    checks_contents = True  # see check_contents; a split's reader leaves it to the plan (once, not per split)

    def __init__(
        self,
        path,
        *,
        text_field: str = "text",
        id_field: str | None = None,
        format: str | None = None,
        on_error: str = "raise",
        batch_size: int = 1024,
        batch_bytes: int = 16 << 20,
    ):
        for one in path if isinstance(path, (list, tuple)) else [path]:  # a list of corpus paths is one corpus
            checked_path(one, "path")
        checked_str(text_field, "text_field")
        checked_str(id_field, "id_field", none=True)
        if on_error not in _ON_ERROR:
            raise UsageError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
        if format is not None and format not in FORMATS:
            raise UsageError(f"format must be one of {FORMATS}, got {format!r}")
        if not (1 <= batch_size <= 2**62 and 1 <= batch_bytes <= 2**62):  # native size_t / int64 beyond
            raise UsageError(f"batch_size and batch_bytes must be from 1 to 2**62, got {batch_size} and {batch_bytes}")
        self.path = path
        self.text_field = text_field
        self.id_field = id_field
        self.format = format
        self.on_error = on_error
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.stats = CorpusStats()
        self._doc_iter: Iterator[Document] | None = None
        # Listed and checked now, so that a missing input is reported before any progress bar or output.
        self.files = list_corpus_files(self.path)
        missing = next((path for path, _ in self.files if not path.is_file()), None)
        if missing is not None:
            raise CorpusError(missing, not_a_file(missing))
        if self.checks_contents:
            check_contents(self.files, format)

    # -- documents -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Document]:
        return self

    def __next__(self) -> Document:
        if self._doc_iter is None:
            self._doc_iter = self._documents()
        return next(self._doc_iter)

    def _documents(self) -> Iterator[Document]:
        for batch in self.batches():
            idx = batch.column(0).to_numpy()
            ids = batch.column(1).to_pylist()
            texts = batch.column(2).to_pylist()
            for i, doc_id, text in zip(idx, ids, texts):
                yield Document(int(i), doc_id, text)

    # -- batches ---------------------------------------------------------------------------
    def batches(self) -> Iterator[pa.RecordBatch]:
        """Record batches of at most batch_size documents (a batch never spans two files)."""
        next_index = 0
        for path, name in self.files:
            fmt = self.format or detect_format(path)
            self.stats.files += 1
            for batch in self._numbered(self._file_columns(path, name, fmt), next_index):
                next_index += batch.num_rows
                yield batch

    def _numbered(self, columns, first_index: int) -> Iterator[pa.RecordBatch]:
        """(doc_ids, texts) pairs as record batches, doc_index counted from first_index; stats updated."""
        for doc_ids, texts in columns:
            n = len(texts)
            if n == 0:
                continue
            doc_index = pa.array(np.arange(first_index, first_index + n, dtype=np.int64))
            first_index += n
            self.stats.documents += n
            offsets, _ = string_layout(texts)
            self.stats.bytes += int(offsets[-1] - offsets[0])
            yield pa.RecordBatch.from_arrays([doc_index, doc_ids, texts], schema=CORPUS_BATCH_SCHEMA)

    def _file_columns(self, path: Path, name: str, fmt: str) -> Iterator[tuple[pa.Array, pa.Array]]:
        if fmt in ("jsonl", "jsonl.gz", "jsonl.zst"):
            return self._jsonl_columns(path, name, fed=fmt == "jsonl.zst")
        if fmt == "parquet":
            return self._parquet_columns(path, name)
        return self._txt_columns(path, name)

    def _skip(self, message: str) -> None:
        self.stats.skipped += 1
        if len(self.stats.skipped_examples) < 5:
            self.stats.skipped_examples.append(message)

    def _jsonl_columns(self, path: Path, name: str, fed: bool, byte_range: tuple[int, int] | None = None):
        """Columns of a JSON-lines file, or of the lines that start in `byte_range` of a plain one (a
        split's piece; see nextlong/corpus/split.py): its lines count from the range's start, and the
        file line of an error or a skipped record is found by counting the newlines before it."""
        from .. import _native

        skip = self.on_error == "skip"
        fed = fed or byte_range is not None
        try:
            reader = _native.JsonlReader(str(path), name, self.text_field, self.id_field or "", skip, fed)
        except _native.CorpusFormatError as exc:
            raise CorpusError(path, exc.args[0]) from None
        start = 0
        if byte_range is not None:
            start, end = (align_to_line(path, pos) for pos in byte_range)
            reader.set_part_of_file(start == 0)

        def drain():
            while True:
                try:
                    got = reader.next_batch(self.batch_size, self.batch_bytes)
                except _native.CorpusFormatError as exc:
                    message, line = exc.args
                    line = line + lines_before(path, start) if line and start else line
                    raise CorpusError(path, message, line=line or None) from None
                if got is None:
                    return
                text_off, text_data, id_off, id_data, _lines = got
                yield _string_array(id_off, id_data), _string_array(text_off, text_data)

        try:
            if byte_range is not None:
                yield from self._feed_range(path, reader, drain, start, end)
            elif not fed:
                yield from drain()
            else:
                yield from self._feed_zstd(path, reader, drain)
        finally:
            self.stats.skipped += reader.skipped
            room = 5 - len(self.stats.skipped_examples)
            examples = reader.skipped_examples[:max(room, 0)]
            if examples and start:
                offset = lines_before(path, start)
                examples = [_shift_line(e, name, offset) for e in examples]
            # the file as the user can open it (the folder given included), as an error in raise mode names it
            examples = [f"{path}{e[len(name):]}" if e.startswith(name + ":") else e for e in examples]
            self.stats.skipped_examples.extend(examples)
            self.last_piece = {"lines": reader.lines, "nonblank_lines": reader.nonblank_lines}

    @staticmethod
    def _feed_range(path: Path, reader, drain, start: int, end: int):
        with open(path, "rb") as fh:
            fh.seek(start)
            left = end - start
            while left > 0:
                block = fh.read(min(left, _ZSTD_READ_BLOCK))
                if not block:
                    raise CorpusError(path, f"file ended at byte {end - left} while reading bytes {start}-{end} "
                                      "(did it change during the run?)")
                left -= len(block)
                reader.feed(block)
                yield from drain()
        reader.finish_input()
        yield from drain()

    @staticmethod
    def _feed_zstd(path: Path, reader, drain):
        for block in zstd_blocks(path):
            reader.feed(block)
            yield from drain()
        reader.finish_input()
        yield from drain()

    def _parquet_columns(self, path: Path, name: str, row_groups: tuple[int, int] | None = None, row0: int = 0):
        """Columns of a Parquet file, or of its row groups [a, b) (a split's piece; `row0`: the rows
        before group a, so default ids stay "<file>:<row>" of the whole file)."""
        if self.on_error == "skip" and path.stat().st_size == 0:
            self._skip(f"{path}: empty file (expected a Parquet file)")
            return
        pf = open_parquet(path)
        names = pf.schema_arrow.names
        for col in (self.text_field, self.id_field):
            if col is not None and col not in names:
                raise CorpusError(path, f"no column {col!r} (columns: {', '.join(names)})")
            if col is not None and names.count(col) > 1:
                raise CorpusError(path, f"column {col!r} appears {names.count(col)} times, expected one column "
                                  "of that name")
        text_type = pf.schema_arrow.field(self.text_field).type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise CorpusError(path, f"column {self.text_field!r} has type {text_type}, expected a string")
        if pf.metadata.num_rows == 0:
            message = "file holds no rows (expected documents)"
            if self.on_error == "skip":
                self._skip(f"{path}: {message}")
                return
            raise CorpusError(path, message)
        columns = [self.text_field] + ([self.id_field] if self.id_field and self.id_field != self.text_field else [])
        groups = None if row_groups is None else list(range(*row_groups))
        for batch in parquet_batches(path, pf, row0, batch_size=self.batch_size, columns=columns, row_groups=groups):
            n = batch.num_rows
            texts = batch.column(self.text_field).cast(pa.string())
            if self.id_field:
                ids = batch.column(self.id_field)
                if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type) or pa.types.is_integer(ids.type)):
                    raise CorpusError(path, f"id column {self.id_field!r} has type {ids.type}, expected string or integer")
                ids = ids.cast(pa.string())
            else:
                ids = pa.array([f"{name}:{r}" for r in range(row0, row0 + n)], pa.string())
            keep = self._check_parquet_rows(path, name, row0, texts, ids)
            if keep is not None:
                texts, ids = texts.filter(keep), ids.filter(keep)
            row0 += n
            yield ids, texts

    def _check_parquet_rows(self, path, name, row0, texts: pa.Array, ids: pa.Array):
        """Nulls and invalid UTF-8 are bad records; returns a keep-mask when some are skipped."""
        bad: dict[int, str] = {}
        for col, what in ((texts, f"column {self.text_field!r}"), (ids, f"id column {self.id_field!r}")):
            if col.null_count:
                for i in np.flatnonzero(~np.asarray(col.is_valid())):
                    bad.setdefault(int(i), f"{what} is null, expected a string")
        for col, what in ((texts, f"column {self.text_field!r}"), (ids, f"id column {self.id_field!r}")):
            try:
                col.validate(full=True)
            except pa.ArrowInvalid:
                from .. import _native

                for i, value in enumerate(col.cast(pa.binary()).to_pylist()):
                    if value is not None and _native.find_invalid_utf8(value) is not None:
                        bad.setdefault(i, f"invalid UTF-8 in {what}")
        if not bad:
            return None
        if self.on_error == "raise":
            i = min(bad)
            raise CorpusError(path, f"row {row0 + i}: {bad[i]}", record=row0 + i)
        for i in sorted(bad):
            self._skip(f"{path}: row {row0 + i}: {bad[i]}")
        keep = np.ones(len(texts), dtype=bool)
        keep[list(bad)] = False
        return pa.array(keep)

    def _txt_columns(self, path: Path, name: str):
        from .. import _native

        data = path.read_bytes()
        message = None
        line = None
        if not data:
            message = "empty file (expected a text document)"
        else:
            bad = _native.find_invalid_utf8(data)
            if bad is not None:
                line = data.count(b"\n", 0, bad) + 1
                message = f"invalid UTF-8 at byte {bad} (expected UTF-8 text)"
        if message is not None:
            if self.on_error == "skip":
                self._skip(f"{path}{':' + str(line) if line else ''}: {message}")
                return
            raise CorpusError(path, message, line=line)
        text = data.decode("utf-8")
        yield pa.array([name], pa.string()), pa.array([text], pa.string())


def align_to_line(path, pos: int) -> int:
    """The first line start at or after byte `pos` of a file (0 stays 0; the file's size when no line
    starts there). Neighbouring byte ranges aligned this way share no line and miss none."""
    if pos <= 0:
        return 0
    with open(path, "rb") as fh:
        fh.seek(pos - 1)
        at = pos - 1
        while block := fh.read(1 << 16):
            nl = block.find(b"\n")
            if nl >= 0:
                return at + nl + 1
            at += len(block)
    return at


def lines_before(path, pos: int) -> int:
    """How many lines of a file end before byte `pos` (read only to name the line of an error)."""
    count, left = 0, pos
    with open(path, "rb") as fh:
        while left > 0 and (block := fh.read(min(left, 1 << 22))):
            count += block.count(b"\n")
            left -= len(block)
    return count


def _shift_line(example: str, name: str, offset: int) -> str:
    """A skipped-record message "<name>:<line>: ..." with its line moved by `offset`."""
    head = name + ":"
    line, sep, rest = example[len(head):].partition(":")
    if not example.startswith(head) or not sep or not line.isdigit():
        return example
    return f"{head}{int(line) + offset}:{rest}"


def read_corpus(
    path,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    format: str | None = None,
    on_error: str = "raise",
) -> CorpusReader:
    """Documents of a corpus, in order. The returned reader is an iterator with `.stats`."""
    return CorpusReader(path, text_field=text_field, id_field=id_field, format=format, on_error=on_error)


def iter_corpus_batches(
    path,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    format: str | None = None,
    on_error: str = "raise",
    batch_size: int = 1024,
    batch_bytes: int = 16 << 20,
    reader: CorpusReader | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches (doc_index int64, doc_id string, text string) of at most batch_size documents.

    Pass your own `reader` (a CorpusReader) to read its `.stats` afterwards.
    """
    if reader is None:
        reader = CorpusReader(
            path, text_field=text_field, id_field=id_field, format=format, on_error=on_error,
            batch_size=batch_size, batch_bytes=batch_bytes,
        )
    return reader.batches()


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Produces `items` on a background thread, `depth` ahead, so reading overlaps the consumer's
    work (the C++ reader releases the GIL). Errors reach the consumer in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, done))
        except BaseException as exc:  # handed to the consumer
            q.put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's own clean-up (e.g. a nested prefetch) runs now, not at GC

    thread = threading.Thread(target=produce, name="nextlong-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
