"""Mosaic Data Shard (MDS) folders, read and written without mosaicml-streaming.

MDS is the format ProLong's and NExtLong's trainers stream from. Its layout is small enough to
handle here, so `--format mds` and our own training loader need no heavy optional dependency:

* ``index.json``: ``{"version": 2, "shards": [...]}``; each shard entry holds ``samples`` (count),
  ``raw_data`` (``basename``, ``bytes``, ``hashes``), ``zip_data`` (null: uncompressed) and the
  writer's configuration: ``column_names`` (sorted), ``column_encodings``, ``column_sizes`` (bytes
  for fixed-size encodings, null for variable-size ones), ``compression``, ``size_limit``, ...
* a shard file ``shard.NNNNN.mds``: a uint32 sample count ``n``; ``n + 1`` uint32 offsets, absolute
  within the file, of where each sample starts (the last is the file's end); the configuration as
  sorted-key JSON; then the samples back to back. A sample is one uint32 byte size per
  variable-size column (in column order), then each column's bytes in column order.
* ``ndarray:DTYPE`` (dtype fixed, shape free): one byte ``ndim << 2 | s`` where ``s`` picks the
  shape's integer type (0 uint8, 1 uint16, 2 uint32, 3 uint64: the smallest that holds the largest
  dimension), the ``ndim`` dimensions in that type, then the values in C order. Empty arrays cannot
  be encoded. ``ndarray:DTYPE:D1,D2`` (shape fixed too) stores only the values.

All integers are little-endian. `MDSWriter` here produces the same bytes as mosaicml-streaming's
writer with ``compression=None`` and no hashes (tests compare them where streaming is installed).
Compressed shards are refused with a clear error rather than read wrongly.

A downloaded folder is untrusted input: `shards` checks every field of index.json, and that every
shard is a regular file inside the folder (no absolute path, no '..', no link out, no FIFO or
device) of the size the index records, before any sample is read; decoding checks every count,
offset and size against the bytes at hand. Anything else is a one-line MDSFormatError naming the
file and the field. Only the encodings below are decoded (never pickle).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from . import untrusted
from .errors import NextlongError

INDEX_NAME = "index.json"
DEFAULT_SIZE_LIMIT = 1 << 26  # streaming's default: start a new shard before 64 MiB
# ProLong's columns: the token ids, and [start, end) attention spans (one block each in training)
TRAINING_COLUMNS = {"input_ids": "ndarray:uint32", "indices": "ndarray:uint32"}

_SHAPE_DTYPES = ("uint8", "uint16", "uint32", "uint64")
_VALUE_DTYPES = {8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32", 33: "int32",
                 34: "float32", 64: "uint64", 65: "int64", 66: "float64"}
_SCALARS = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32",
            "float64")
_VARIABLE = ("str", "bytes", "json")  # the other encodings of variable size


class MDSFormatError(NextlongError):
    """An MDS folder that does not follow the layout above (names the file and sample)."""


def _show(value) -> str:
    """A value from an untrusted file, for a one-line error of bounded length."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- encodings ---------------------------------------------------------------------------------


def _parse_ndarray(encoding: str):
    """'ndarray[:dtype[:d1,d2,...]]' -> (dtype or None, shape tuple or None); MDSFormatError for an
    unknown dtype or a dimension that is not a positive decimal integer below 10**18."""
    kind, *args = encoding.split(":")
    dtype = (args[0] or None) if args else None
    dims = args[1].split(",") if len(args) == 2 else None
    if (kind != "ndarray" or len(args) > 2 or dtype not in (None, *_VALUE_DTYPES.values())
            or not all(d.isascii() and d.isdigit() and 0 < len(d.lstrip("0")) < 19 for d in dims or ())):
        raise MDSFormatError(f"unsupported ndarray encoding {_show(encoding)}")
    return dtype, None if dims is None else tuple(int(d) for d in dims)


def encoded_size(encoding: str) -> int | None:
    """Fixed byte size of an encoding, or None when it varies per sample; MDSFormatError for an
    encoding not read here (pickle, images, ...)."""
    if isinstance(encoding, str) and encoding.startswith("ndarray"):
        dtype, shape = _parse_ndarray(encoding)
        return None if dtype is None or shape is None else math.prod(shape) * np.dtype(dtype).itemsize
    if encoding in _SCALARS:
        return np.dtype(encoding).itemsize
    if encoding == "int":
        return 8
    if encoding in _VARIABLE:
        return None
    raise MDSFormatError(f"MDS encoding {_show(encoding)} is not supported here")


def encode(encoding: str, value) -> bytes:
    """Bytes of one column value (ndarray, scalar, str, bytes, int and json encodings)."""
    if encoding.startswith("ndarray"):
        dtype, shape = _parse_ndarray(encoding)
        arr = np.asarray(value)
        if arr.size == 0:
            raise MDSFormatError("MDS cannot encode an empty array")
        parts = []
        if dtype is None:
            code = {v: k for k, v in _VALUE_DTYPES.items()}.get(arr.dtype.name)
            if code is None:
                raise MDSFormatError(f"MDS ndarray cannot hold dtype {arr.dtype.name}")
            parts.append(bytes([code]))
        elif arr.dtype != np.dtype(dtype):
            raise MDSFormatError(f"column encoded as {encoding!r} got an array of {arr.dtype.name}")
        if shape is None:
            dims = np.asarray(arr.shape, np.int64)
            biggest = int(dims.max())
            s = 0 if biggest < 1 << 8 else 1 if biggest < 1 << 16 else 2 if biggest < 1 << 32 else 3
            parts.append(bytes([(arr.ndim << 2) | s]))
            parts.append(dims.astype(f"<u{1 << s}").tobytes())
        elif tuple(arr.shape) != shape:
            raise MDSFormatError(f"column encoded as {encoding!r} got shape {arr.shape}")
        parts.append(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
        return b"".join(parts)
    if encoding in _SCALARS:
        return np.asarray(value, encoding).astype(np.dtype(encoding).newbyteorder("<")).tobytes()
    if encoding == "int":
        return np.int64(value).astype("<i8").tobytes()
    if encoding == "str":
        return value.encode("utf-8")
    if encoding == "bytes":
        return bytes(value)
    if encoding == "json":
        return json.dumps(value.tolist() if isinstance(value, np.ndarray) else value).encode("utf-8")
    raise MDSFormatError(f"MDS encoding {encoding!r} is not supported here")


def decode(encoding: str, data: bytes):
    """Inverse of `encode`; arrays come back as writable copies. Bytes that do not fit the encoding
    (a wrong size, a shape past the end) raise MDSFormatError."""
    if encoding.startswith("ndarray"):
        dtype, shape = _parse_ndarray(encoding)
        pos = 0
        if dtype is None:
            dtype = _VALUE_DTYPES.get(data[0]) if data else None
            if dtype is None:
                raise MDSFormatError(f"unknown ndarray dtype code {data[:1].hex() or '(none)'}")
            pos = 1
        if shape is None:
            if pos >= len(data):
                raise MDSFormatError("ndarray without its shape byte")
            ndim, width = data[pos] >> 2, 1 << (data[pos] & 3)
            end = pos + 1 + ndim * width
            if end > len(data):
                raise MDSFormatError(f"ndarray shape byte {data[pos]} (ndim {ndim}) runs past the column's "
                                     f"{len(data)} bytes")
            shape = tuple(np.frombuffer(data, f"<u{width}", ndim, pos + 1).tolist())
            pos = end
        need = math.prod(shape) * np.dtype(dtype).itemsize
        if len(data) - pos != need:
            raise MDSFormatError(f"ndarray of shape {shape} takes {need} bytes of values, the column has "
                                 f"{len(data) - pos}")
        if max(shape, default=0) >= 1 << 62:  # numpy cannot make an array with such a dimension, even empty
            raise MDSFormatError(f"ndarray of shape {shape}: a dimension too large for numpy")
        values = np.frombuffer(data, np.dtype(dtype).newbyteorder("<"), offset=pos)
        try:
            return values.astype(dtype).reshape(shape)
        except (ValueError, OverflowError) as exc:  # any other shape numpy refuses
            raise MDSFormatError(f"ndarray of shape {shape}: {exc}") from None
    size = encoded_size(encoding)
    if size is not None and len(data) != size:
        raise MDSFormatError(f"{len(data)} bytes, {encoding!r} takes {size}")
    if encoding in _SCALARS:
        return np.frombuffer(data, np.dtype(encoding).newbyteorder("<"), 1)[0]
    if encoding == "int":
        return int(np.frombuffer(data, "<i8", 1)[0])
    if encoding == "bytes":
        return bytes(data)
    try:
        return data.decode("utf-8") if encoding == "str" else json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, too deep, a number too long
        raise MDSFormatError(f"not valid {encoding}: {exc}") from None


# --- writing -----------------------------------------------------------------------------------


class MDSWriter:
    """Writes samples into an MDS folder, uncompressed; use as a context manager or call finish().

    Shards are cut exactly where mosaicml-streaming cuts them (before a sample that would make the
    shard exceed `size_limit` bytes), so both writers give byte-identical folders."""

    def __init__(self, out, columns: dict[str, str], size_limit: int | None = DEFAULT_SIZE_LIMIT):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.names = sorted(columns)
        self.encodings = [columns[n] for n in self.names]
        self.sizes = [encoded_size(e) for e in self.encodings]
        self.size_limit = size_limit
        self.config = {"version": 2, "format": "mds", "compression": None, "hashes": [],
                       "size_limit": size_limit, "column_names": self.names,
                       "column_encodings": self.encodings, "column_sizes": self.sizes}
        self.config_bytes = json.dumps(self.config, sort_keys=True).encode("utf-8")
        self.shards: list[dict] = []
        self._samples: list[bytes] = []
        self._shard_bytes = 8 + len(self.config_bytes)  # count + last offset + config, as streaming counts

    def write(self, sample: dict) -> None:
        heads, bodies = [], []
        for name, enc, size in zip(self.names, self.encodings, self.sizes):
            datum = encode(enc, sample[name])
            if size is None:
                heads.append(len(datum))
            elif size != len(datum):
                raise MDSFormatError(f"column {name!r} ({enc}) should take {size} bytes, got {len(datum)}")
            bodies.append(datum)
        blob = np.asarray(heads, "<u4").tobytes() + b"".join(bodies)
        cost = len(blob) + 4  # the sample's offset entry
        if self.size_limit and self._samples and self.size_limit < self._shard_bytes + cost:
            self._flush()
        self._samples.append(blob)
        self._shard_bytes += cost

    def _flush(self) -> None:
        n = len(self._samples)
        header = 4 + 4 * (n + 1) + len(self.config_bytes)
        offsets = header + np.concatenate([[0], np.cumsum([len(s) for s in self._samples])])
        data = (np.uint32(n).astype("<u4").tobytes() + offsets.astype("<u4").tobytes() + self.config_bytes
                + b"".join(self._samples))
        basename = f"shard.{len(self.shards):05d}.mds"
        (self.out / basename).write_bytes(data)
        self.shards.append({"samples": n, "raw_data": {"basename": basename, "bytes": len(data), "hashes": {}},
                            "zip_data": None, **self.config})
        self._samples = []
        self._shard_bytes = 8 + len(self.config_bytes)

    def finish(self) -> None:
        if self._samples:
            self._flush()
        text = json.dumps({"version": 2, "shards": self.shards}, sort_keys=True)
        (self.out / INDEX_NAME).write_bytes(text.encode("utf-8"))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """One checked entry of index.json: its file (resolved, inside the folder), samples, bytes, and
    columns as (name, encoding, fixed byte size or None)."""

    path: Path
    samples: int
    size: int
    columns: tuple[tuple[str, str, int | None], ...]


# Opening a shard never follows a link swapped in since it was checked, nor waits for a FIFO's writer.
def _not_regular(st: os.stat_result) -> str | None:
    """Why a file cannot be read as data (a FIFO hangs, a device never ends), or None."""
    return untrusted.not_regular(st)


def _member(folder: Path, name, where: str) -> tuple[Path, os.stat_result]:
    """`name` resolved inside the (resolved) `folder`, and its stat: a regular file that no absolute
    path, '..' or symlink takes out of the folder (into another dataset, /etc, /dev/zero)."""
    return untrusted.member(folder, name, where, MDSFormatError, kind="MDS folder")


def _read(path: Path, size: int | None = None) -> bytes:
    """The bytes of a file `_member` checked, checked again on the open file (it may have been swapped
    since): a regular file, and `size` bytes long when given (no more is read)."""
    return untrusted.read_bytes(path, MDSFormatError, size=size, follow=False)


def _read_count(obj: dict, key: str, where: str) -> int:
    """obj[key] as a count: an int >= 0 (not a string, float or bool, which JSON allows)."""
    value = obj.get(key)
    if not untrusted.whole(value, 0):
        raise MDSFormatError(f"{where}.{key}: expected a count (an integer >= 0), got {_show(value)}")
    return value


def _shard(folder: Path, index: Path, i: int, entry) -> Shard:
    """Entry `i` of index.json, every field checked, its file stat'ed (not read)."""
    where = f"{index}: shards[{i}]"
    if not isinstance(entry, dict):
        raise MDSFormatError(f"{where}: expected an object, got {_show(entry)}")
    if entry.get("format") != "mds":
        raise MDSFormatError(f"{where}.format: {_show(entry.get('format'))}, expected 'mds'")
    if entry.get("zip_data") or entry.get("compression"):
        raise MDSFormatError(f"{where}: compressed ({_show(entry.get('compression'))}); only uncompressed MDS is "
                             "read here (decompress it, or use mosaicml-streaming)")
    raw = entry.get("raw_data")
    if not isinstance(raw, dict):
        raise MDSFormatError(f"{where}.raw_data: expected an object, got {_show(raw)}")
    samples, size = _read_count(entry, "samples", where), _read_count(raw, "bytes", f"{where}.raw_data")
    if 4 * (samples + 2) > size:
        raise MDSFormatError(f"{where}.samples: {samples:,} samples do not fit in raw_data.bytes {size:,}")
    lists = [entry.get(k) for k in ("column_names", "column_encodings", "column_sizes")]
    if not all(isinstance(x, list) for x in lists) or len({len(x) for x in lists}) != 1:
        raise MDSFormatError(f"{where}: column_names, column_encodings and column_sizes must be lists of one "
                             f"length, got {', '.join(_show(x) for x in lists)}")
    names, encodings, sizes = lists
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise MDSFormatError(f"{where}.column_names: expected distinct strings, got {_show(names)}")
    columns = []
    for j, (name, enc, declared) in enumerate(zip(names, encodings, sizes)):
        try:
            fixed = encoded_size(enc)
        except MDSFormatError as exc:
            raise MDSFormatError(f"{where}.column_encodings[{j}]: {exc}") from None
        if declared != fixed or type(declared) not in (int, type(None)):
            raise MDSFormatError(f"{where}.column_sizes[{j}]: {_show(declared)}, but {enc!r} takes "
                                 f"{fixed if fixed is not None else 'a size per sample (null)'}")
        columns.append((name, enc, fixed))
    path, st = _member(folder, raw.get("basename"), f"{where}.raw_data.basename")
    if st.st_size != size:
        raise MDSFormatError(f"{where}.raw_data.bytes: {size:,}, but {path} has {st.st_size:,} bytes")
    return Shard(path, samples, size, tuple(columns))


def shards(folder) -> list[Shard]:
    """The shards of an MDS folder, all checked when it is opened: a broken, incomplete or hostile
    folder fails here naming the file and field, before any sample is read (so before a training
    run's first step, not when it reaches a missing shard)."""
    folder = Path(folder).resolve()
    index, _ = _member(folder, INDEX_NAME, f"{folder}: not an MDS folder")
    obj = untrusted.parse_json(_read(index), index, MDSFormatError)
    entries = obj.get("shards") if isinstance(obj, dict) else None
    if not isinstance(entries, list):
        raise MDSFormatError(f"{index}: expected an object with a 'shards' list")
    out, seen = [], {}
    for i, entry in enumerate(entries):
        shard = _shard(folder, index, i, entry)
        if shard.path in seen:
            raise MDSFormatError(f"{index}: shards[{i}].raw_data.basename: names the file of "
                                 f"shards[{seen[shard.path]}] again")
        seen[shard.path] = i
        out.append(shard)
    return out


def num_samples(folder) -> int:
    """Number of samples in an MDS folder, from its index (every shard checked)."""
    return sum(s.samples for s in shards(folder))


def read_mds(folder) -> Iterator[dict]:
    """Every sample of an MDS folder, in order, as a dict of column name -> decoded value.

    For nextlong's training output that is ``{"input_ids": uint32 (L,), "indices": uint32 (n, 2)}``."""
    for shard in shards(folder):
        yield from _shard_samples(shard)


def _shard_samples(shard: Shard) -> Iterator[dict]:
    path, n = shard.path, shard.samples
    data = _read(path, shard.size)  # at least 4 * (n + 2) bytes: checked by _shard
    head = int.from_bytes(data[:4], "little")
    if head != n:
        raise MDSFormatError(f"{path}: holds {head:,} samples, index.json says {n:,}")
    offsets = np.frombuffer(data, "<u4", n + 1, 4).astype(np.int64)
    if offsets[0] < 4 * (n + 2) or offsets[-1] != len(data) or np.any(np.diff(offsets) < 0):
        raise MDSFormatError(f"{path}: sample offsets do not tile the file ({len(data):,} bytes)")
    n_var = sum(size is None for _, _, size in shard.columns)
    for i in range(n):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        pos = lo + 4 * n_var
        if pos > hi:
            raise MDSFormatError(f"{path}: sample {i} is shorter than its {n_var} column sizes")
        var = iter(np.frombuffer(data, "<u4", n_var, lo).tolist())
        sample = {}
        for name, enc, size in shard.columns:
            size = next(var) if size is None else size
            if pos + size > hi:
                raise MDSFormatError(f"{path}: sample {i} column {name!r} runs past the sample's end")
            try:
                sample[name] = decode(enc, data[pos:pos + size])
            except MDSFormatError as exc:
                raise MDSFormatError(f"{path}: sample {i} column {name!r}: {exc}") from None
            pos += size
        yield sample
