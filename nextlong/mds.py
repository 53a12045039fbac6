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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

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


class MDSFormatError(NextlongError):
    """An MDS folder that does not follow the layout above (names the file and sample)."""


# --- encodings ---------------------------------------------------------------------------------


def _parse_ndarray(encoding: str):
    """'ndarray[:dtype[:d1,d2,...]]' -> (dtype or None, shape tuple or None)."""
    args = encoding.split(":")[1:]
    dtype = args[0] if args and args[0] else None
    shape = tuple(int(x) for x in args[1].split(",")) if len(args) > 1 else None
    if dtype is not None and dtype not in _VALUE_DTYPES.values():
        raise MDSFormatError(f"unsupported ndarray dtype in encoding {encoding!r}")
    return dtype, shape


def encoded_size(encoding: str) -> int | None:
    """Fixed byte size of an encoding, or None when it varies per sample."""
    if encoding.startswith("ndarray"):
        dtype, shape = _parse_ndarray(encoding)
        return None if dtype is None or shape is None else int(np.prod(shape)) * np.dtype(dtype).itemsize
    if encoding in _SCALARS:
        return np.dtype(encoding).itemsize
    if encoding == "int":
        return 8
    return None


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
    """Inverse of `encode`; arrays come back as writable copies."""
    if encoding.startswith("ndarray"):
        dtype, shape = _parse_ndarray(encoding)
        pos = 0
        if dtype is None:
            dtype = _VALUE_DTYPES.get(data[0])
            if dtype is None:
                raise MDSFormatError(f"unknown ndarray dtype code {data[0]}")
            pos = 1
        if shape is None:
            ndim, s = data[pos] >> 2, data[pos] & 3
            width = 1 << s
            shape = tuple(int(x) for x in np.frombuffer(data, f"<u{width}", ndim, pos + 1))
            pos += 1 + ndim * width
        values = np.frombuffer(data, np.dtype(dtype).newbyteorder("<"), offset=pos)
        if values.size != int(np.prod(shape)):
            raise MDSFormatError(f"ndarray of shape {shape} but {values.size} values")
        return values.astype(dtype).reshape(shape)
    if encoding in _SCALARS:
        return np.frombuffer(data, np.dtype(encoding).newbyteorder("<"), 1)[0]
    if encoding == "int":
        return int(np.frombuffer(data, "<i8", 1)[0])
    if encoding == "str":
        return data.decode("utf-8")
    if encoding == "bytes":
        return bytes(data)
    if encoding == "json":
        return json.loads(data.decode("utf-8"))
    raise MDSFormatError(f"MDS encoding {encoding!r} is not supported here")


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


def _index(folder) -> list[dict]:
    path = Path(folder) / INDEX_NAME
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise MDSFormatError(f"{path}: not found (an MDS folder holds index.json and shard files)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MDSFormatError(f"{path}: not valid JSON ({exc})") from None
    shards = obj.get("shards") if isinstance(obj, dict) else None
    if not isinstance(shards, list):
        raise MDSFormatError(f"{path}: expected an object with a 'shards' list")
    for i, shard in enumerate(shards):
        if shard.get("format") != "mds":
            raise MDSFormatError(f"{path}: shard {i} has format {shard.get('format')!r}, expected 'mds'")
        if shard.get("zip_data") or shard.get("compression"):
            raise MDSFormatError(f"{path}: shard {i} is compressed ({shard.get('compression')}); only "
                                 "uncompressed MDS is read here (decompress it, or use mosaicml-streaming)")
    return shards


def num_samples(folder) -> int:
    """Number of samples in an MDS folder, from its index."""
    return sum(int(s["samples"]) for s in _index(folder))


def read_mds(folder) -> Iterator[dict]:
    """Every sample of an MDS folder, in order, as a dict of column name -> decoded value.

    For nextlong's training output that is ``{"input_ids": uint32 (L,), "indices": uint32 (n, 2)}``."""
    folder = Path(folder)
    for shard in _index(folder):
        path = folder / shard["raw_data"]["basename"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MDSFormatError(f"{path}: listed in {folder / INDEX_NAME} but missing") from None
        names, encodings, sizes = shard["column_names"], shard["column_encodings"], shard["column_sizes"]
        if len(data) < 4:
            raise MDSFormatError(f"{path}: truncated ({len(data)} bytes)")
        n = int(np.frombuffer(data, "<u4", 1)[0])
        if n != int(shard["samples"]) or len(data) < 4 * (n + 2):
            raise MDSFormatError(f"{path}: holds {n} samples, index.json says {shard['samples']}")
        offsets = np.frombuffer(data, "<u4", n + 1, 4).astype(np.int64)
        if offsets[-1] != len(data) or np.any(np.diff(offsets) < 0):
            raise MDSFormatError(f"{path}: sample offsets do not tile the file ({len(data)} bytes)")
        n_var = sum(s is None for s in sizes)
        for i in range(n):
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            var = iter(np.frombuffer(data, "<u4", n_var, lo).tolist()) if n_var else iter(())
            pos = lo + 4 * n_var
            sample = {}
            for name, enc, size in zip(names, encodings, sizes):
                size = next(var) if size is None else size
                if pos + size > hi:
                    raise MDSFormatError(f"{path}: sample {i} column {name!r} runs past the sample's end")
                sample[name] = decode(enc, data[pos:pos + size])
                pos += size
            yield sample
