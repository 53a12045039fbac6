"""Chunk embeddings on disk, written as they are made, so a stopped run resumes where it stopped.

Embedding dominates the cost of NExtLong (hours to days at corpus scale), so `embed_chunks` writes
into a memory-mapped `.npy` and, after each slice is flushed, atomically rewrites a small progress
record (`<out>.progress.json`). The record is the only truth: rows past `done` may hold garbage from a
killed run and are simply embedded again.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np

from .. import checked_parquet
from ..atomic import file_crc32, write_json_atomic
from ..corpus.reader import parquet_batches
from ..errors import (CorpusError, CorruptFileError, EmbedderError, NextlongError, StageMismatchError, UsageError,
                     check_free_space, disk_full, is_disk_full)

PROGRESS_SUFFIX = ".progress.json"


def progress_path(out_path: str | os.PathLike) -> Path:
    return Path(str(out_path) + PROGRESS_SUFFIX)


class _Texts:
    """Rows of a chunk table (Parquet path or pyarrow Table) or a list of strings, read in slices."""

    def __init__(self, source):
        import pyarrow as pa

        self.path = None
        self.table = None
        self.list = None
        if isinstance(source, (str, os.PathLike)):
            self.path = Path(source)
            try:
                self.file = checked_parquet.open_file(self.path)
            except (OSError, pa.ArrowException) as exc:
                raise CorpusError(self.path, f"not a readable Parquet chunk table ({exc})") from exc
            if "text" not in self.file.schema_arrow.names:
                raise CorpusError(self.path, "chunk table has no 'text' column (expected nextlong.schema.CHUNK_SCHEMA)")
            self.rows = self.file.metadata.num_rows
        elif isinstance(source, pa.Table):
            if "text" not in source.column_names:
                raise CorpusError("<table>", "chunk table has no 'text' column (expected nextlong.schema.CHUNK_SCHEMA)")
            self.table = source
            self.rows = source.num_rows
        else:
            self.list = list(source)
            self.rows = len(self.list)

    def fingerprint(self) -> str:
        """Identifies the rows cheaply: the text_hash column if there is one, else the texts."""
        h = hashlib.blake2b(digest_size=16)
        h.update(str(self.rows).encode())
        if self.path is not None and "text_hash" in self.file.schema_arrow.names:
            for batch in parquet_batches(self.path, self.file, batch_size=1 << 20, columns=["text_hash"]):
                h.update(batch.column(0).to_numpy(zero_copy_only=False).astype("<u8").tobytes())
        elif self.table is not None and "text_hash" in self.table.column_names:
            h.update(self.table.column("text_hash").to_numpy().astype("<u8").tobytes())
        else:
            for _, texts in self.slices(0, 1 << 14):
                for t in texts:
                    h.update(t.encode("utf-8", "surrogatepass"))
                    h.update(b"\0")
        return h.hexdigest()

    def slices(self, start: int, size: int):
        """Yield (first_row, [texts]) from row `start` on, `size` texts at a time."""
        if self.list is not None:
            for i in range(start, self.rows, size):
                yield i, self.list[i : i + size]
            return
        if self.table is not None:
            col = self.table.column("text")
            for i in range(start, self.rows, size):
                yield i, col.slice(i, size).to_pylist()
            return
        # Parquet: skip whole row groups before `start`, then stream.
        meta = self.file.metadata
        first_group, row = 0, 0
        while first_group < meta.num_row_groups and row + meta.row_group(first_group).num_rows <= start:
            row += meta.row_group(first_group).num_rows
            first_group += 1
        groups = list(range(first_group, meta.num_row_groups))
        if not groups:
            return
        pending: list[str] = []
        pos = start
        for batch in parquet_batches(self.path, self.file, row, batch_size=size, row_groups=groups, columns=["text"]):
            texts = batch.column(0).to_pylist()
            if row < start:  # still inside the first group, before `start`
                skip = min(len(texts), start - row)
                row += skip
                texts = texts[skip:]
            row += len(texts)
            pending.extend(texts)
            while len(pending) >= size:
                yield pos, pending[:size]
                pos += size
                pending = pending[size:]
        if pending:
            yield pos, pending


def embed_chunks(
    chunk_table_or_path,
    embedder,
    out_path: str | os.PathLike,
    *,
    batch_size: int = 512,
    progress: bool = True,
    dtype: str = "float32",
    overwrite: bool = False,
    verify: bool = True,
    on_accepted=None,
) -> np.ndarray:
    """Embed every chunk's text into `out_path` (.npy, shape (rows, dim)), resuming a stopped run.

    `chunk_table_or_path`: a Parquet chunk table (CHUNK_SCHEMA), a pyarrow Table, or a list of texts.
    `batch_size` texts are embedded and flushed at a time (the embedder sorts them by length inside).
    A finished or partial file made with another embedder or other rows raises StageMismatchError
    unless `overwrite=True`. Returns the embeddings as a read-only memory map. The progress record
    counts the texts the embedder had to embed in windows (`windowed_texts`, longer than its model's
    max length; see TransformerEmbedder).

    The file's full size is reserved on disk before anything is written (a write into a memory-mapped
    page the disk cannot back kills the process with SIGBUS), so a full disk is a DiskFullError up
    front. A finished file's CRC32 is stored in its progress record and checked when the file is
    reused (`verify=False` skips that read). `on_accepted()` runs once an existing file has been
    accepted (or there is none), before any embedding: where a caller may first write to the folder.
    """
    import json

    out_path = Path(out_path)
    if out_path.is_dir():
        raise UsageError(f"{out_path}: is a folder; out_path names the .npy file the embeddings go to")
    texts = _Texts(chunk_table_or_path)
    record_path = progress_path(out_path)
    expected = {
        "embedder": embedder.name,
        "dim": int(embedder.dim),
        "rows": int(texts.rows),
        "dtype": np.dtype(dtype).name,
        "fingerprint": texts.fingerprint(),
    }
    if getattr(embedder, "long_texts", None):  # how texts beyond the model's window were embedded
        expected["long_texts"] = embedder.long_texts
    record = None
    if record_path.is_file() and out_path.is_file() and not overwrite:
        try:
            record = json.loads(record_path.read_text())
        except ValueError:
            record = None  # a torn record cannot happen with atomic writes; treat as absent
        if record is not None:
            mismatched = {k: (record.get(k), v) for k, v in expected.items() if record.get(k) != v}
            if mismatched:
                detail = "; ".join(f"{k}: on disk {a!r}, asked {b!r}" for k, (a, b) in mismatched.items())
                raise StageMismatchError(
                    f"{out_path}: embeddings were made with other settings ({detail}); "
                    "delete it to re-embed (from Python: embed_chunks(..., overwrite=True))"
                )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if record is None:
        header = 128  # numpy's .npy header for a 2-D array (64-byte aligned; more only for odd dtypes)
        check_free_space(out_path, header + texts.rows * expected["dim"] * np.dtype(dtype).itemsize)
        arr = np.lib.format.open_memmap(out_path, mode="w+", dtype=expected["dtype"],
                                        shape=(texts.rows, expected["dim"]))
        _reserve(out_path)
        record = dict(expected, done=0, complete=texts.rows == 0)
        arr.flush()
        if record["complete"]:
            record["crc32"] = file_crc32(out_path)
        write_json_atomic(record_path, record)
    else:
        try:
            arr = np.lib.format.open_memmap(out_path, mode="r+")
        except (OSError, ValueError) as exc:
            raise StageMismatchError(f"{out_path}: unreadable embeddings file ({exc}); delete it to re-embed "
                                     "(from Python: embed_chunks(..., overwrite=True))") from exc
        if arr.shape != (texts.rows, expected["dim"]) or arr.dtype != np.dtype(expected["dtype"]):
            raise StageMismatchError(f"{out_path}: holds {arr.shape} {arr.dtype}, its progress record says "
                                     f"{(texts.rows, expected['dim'])} {expected['dtype']}; delete it to "
                                     "re-embed (from Python: embed_chunks(..., overwrite=True))")
        if record.get("complete"):
            if verify:
                _verify(out_path, record)
        else:
            _reserve(out_path)  # a file begun by an older nextlong may still be sparse
    if on_accepted is not None:
        on_accepted()
    done = int(record["done"])
    if done < texts.rows:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=texts.rows, initial=done, unit="chunk", desc=f"embedding ({embedder.name})",
                       dynamic_ncols=True)
        try:
            for first, batch in texts.slices(done, batch_size):
                windowed_before = getattr(embedder, "windowed_texts", 0)
                vecs = embedder.embed(batch)
                if vecs.shape != (len(batch), expected["dim"]):
                    raise EmbedderError(f"embedder {embedder.name!r} returned shape {vecs.shape}, "
                                        f"expected {(len(batch), expected['dim'])}")
                arr[first : first + len(batch)] = vecs
                arr.flush()
                record["done"] = first + len(batch)
                record["windowed_texts"] = (record.get("windowed_texts", 0)
                                            + getattr(embedder, "windowed_texts", 0) - windowed_before)
                record["complete"] = record["done"] >= texts.rows
                if record["complete"]:
                    record["crc32"] = file_crc32(out_path)
                write_json_atomic(record_path, record)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
    del arr
    return np.load(out_path, mmap_mode="r")


def _reserve(path: Path) -> None:
    """Allocate the whole file on disk now (posix_fallocate), so later writes through the memory map
    cannot run out of space; ENOSPC here is a DiskFullError naming the bytes needed."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if is_disk_full(exc):
            import shutil

            raise disk_full(path, size, shutil.disk_usage(path.parent).free) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    except AttributeError:  # no posix_fallocate on this platform: the free-space check stands alone
        pass
    finally:
        os.close(fd)


def _verify(path: Path, record: dict) -> None:
    stored = record.get("crc32")
    if stored is None:  # written by an older nextlong: nothing to compare with
        return
    actual = file_crc32(path)
    if actual != stored:
        raise CorruptFileError(
            f"{path}: CRC32 mismatch ({actual:08x} now, {stored:08x} stored when it was written); the embeddings "
            f"file is corrupt: delete it and {progress_path(path).name} to embed again (or pass --no-verify)")


def open_embeddings(path: str | os.PathLike, *, verify: bool = True) -> np.ndarray:
    """A finished embeddings file as a read-only memory map, its CRC32 checked against the progress
    record (`verify=False` skips the read). A file without a record is opened as it is. The file may
    come from a folder someone handed us (an index's embeddings.npy): it must be a regular file in its
    folder (a FIFO would hang the load, a link could read elsewhere) holding a 2-d float array."""
    from ..untrusted import load_array, member, read_json, show

    path = Path(path)
    resolved, _ = member(path.parent, path.name, str(path), CorruptFileError)
    record_path = progress_path(path)
    if record_path.is_file() or record_path.is_symlink():
        record = read_json(record_path, CorruptFileError, expect=dict, follow=False)
        if record.get("complete") is not True:
            raise NextlongError(f"{path}: embedding stopped at row {show(record.get('done'))} of "
                                f"{show(record.get('rows'))}; re-run to finish it")
        if verify:
            _verify(resolved, record)
    return load_array(resolved, CorruptFileError, kind="f", ndim=2,
                      remedy="an embeddings file holds one row of floats per chunk: embed the corpus again")


def embedding_progress(out_path: str | os.PathLike) -> dict | None:
    """The progress record of an embeddings file (None when there is none)."""
    import json

    path = progress_path(out_path)
    return json.loads(path.read_text()) if path.is_file() else None
