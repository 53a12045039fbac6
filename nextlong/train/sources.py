"""Training data sources: what one DATA entry is (a `nextlong synthesize` or `nextlong acer` folder, a
folder of Parquet files with `input_ids`, or MDS shards), read as untrusted input, and the samples it
yields (`Source.sample`). `open_sources` opens a list of "PATH@weight" specs; `resolve_loss_on` decides
whether the loss covers every token or only the answers of a set of sources. The stream that mixes them
and the packer that cuts sequences are in data.py.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NextlongError, UsageError
from ..untrusted import member, read_json, show
from .config import LOSS_ON, option_text


def parse_data_spec(spec: str, ambiguous: str = "refuse", base: str = ".") -> tuple[str, float]:
    """'PATH' or 'PATH@weight' -> (path, weight). A path that itself ends in '@number' (a folder named
    `v@2`) is that path at weight 1 when `v` does not exist (it was read as `v` at weight 2: "data not found");
    when both exist the spec is refused as ambiguous (`v@2@1` is the folder, `v/@2` the weight), or, with
    ambiguous="weight" (a spec an earlier run recorded), read as the weight, the meaning such a spec had then.
    `base`: the folder a relative spec was given from (a recorded one: the run's), where what exists is looked at."""
    spec = str(spec)
    path, sep, weight = spec.rpartition("@")
    if not sep or not path:
        return spec, 1.0
    try:
        value = float(weight)
    except ValueError:
        return spec, 1.0  # an '@' that is part of the path
    if os.path.lexists(os.path.join(base, spec)):
        if not os.path.lexists(os.path.join(base, path)):
            return spec, 1.0
        if ambiguous != "weight":
            raise UsageError(f"{spec}: ambiguous: it exists, and so does {path} (at weight {weight}); write "
                             f"{spec}@1 for the first, {path.rstrip('/')}/@{weight} for the second")
    if not 0 < value < 1e100:  # also refuses inf and nan; weights are normalised, so any scale works below
        raise UsageError(f"{spec}: the mixing weight after '@' must be a positive number below 1e100, got {weight}")
    return path, value


@dataclass
class Sample:
    ids: np.ndarray          # uint32 token ids
    spans: list[tuple[int, int]]  # [start, end) attention spans tiling ids (or [(0, len)])
    where: str               # "FILE row N", for error messages
    loss_mask: np.ndarray | None = None  # uint8 per token, 1 = a target of the loss (read for loss_on="answer")


LOSS_MASK = "loss_mask"
DATA_COMMANDS = ("synthesize", "acer")  # manifests whose settings (tokenizer, target_length) the trainer reads


class Source:
    """One DATA entry: a `nextlong synthesize` (or `nextlong acer`) output folder, a folder of Parquet
    shards, one Parquet file, an MDS folder (index.json), or JSONL files whose rows carry `input_ids`.
    Rows are read on demand by index; the reader keeps the last decoded row group (Parquet) or its
    position in the shard stream (MDS), so in-order reads decode each row once; JSONL rows are found
    by their byte offsets, indexed when the source is opened. `has_loss_mask`: every row carries a
    `loss_mask` column."""

    def __init__(self, spec: str):
        path, self.weight = parse_data_spec(spec)
        self.spec = str(spec)
        self.path = Path(path)
        if not self.path.exists():
            stem, at, weight = self.spec.rpartition("@")
            if at and stem and Path(stem).exists():  # "demo-out@x": a path, then a weight that is no number
                raise UsageError(f"{self.spec}: the mixing weight after '@' must be a positive number, got {weight!r}")
            raise NextlongError(f"{self.path}: data not found (expected a `nextlong synthesize` output folder, "
                                "Parquet shards or an MDS folder)")
        self.manifest, self.manifest_dir = self._find_manifest()
        self.kind, self.files = self._find_files()
        if self.kind == "parquet":
            from ..corpus.reader import open_parquet

            self._row_groups = []  # (file, row group, first global row, rows)
            start, masked, segmented = 0, {}, {}
            for f in self.files:
                _check_regular(f)
                pf = open_parquet(f)
                meta, names = pf.metadata, set(pf.schema_arrow.names)
                if "input_ids" not in names:
                    raise NextlongError(f"{f}: no `input_ids` column (columns: {sorted(names)})")
                _check_ids_type(f, pf.schema_arrow.field("input_ids").type)
                if LOSS_MASK in names:
                    _check_mask_type(f, pf.schema_arrow.field(LOSS_MASK).type)
                segmented[f] = "segments" in names
                masked[f] = LOSS_MASK in names
                for g in range(meta.num_row_groups):
                    n = meta.row_group(g).num_rows
                    self._row_groups.append((f, g, start, n))
                    start += n
            self.num_rows = start
            self.has_loss_mask = self._all_or_none(masked)
            # with some files without segments, --attention-spans document read them all as one span per sample
            self.has_segments = self._all_or_none(segmented, "segments")
        elif self.kind == "jsonl":
            self.num_rows, self.has_loss_mask = self._index_jsonl()
            self.has_segments = True
        else:
            from ..mds import shards

            found = shards(self.files[0])
            self.num_rows = sum(sh.samples for sh in found)
            self.has_segments = True
            self.has_loss_mask = self._all_or_none(
                {f"{sh.path.name}": LOSS_MASK in {c[0] for c in sh.columns} for sh in found})
        if self.num_rows == 0:
            raise NextlongError(f"{self.path}: the data holds no samples")
        self._cache = None  # parquet: (row group index, table); mds: (iterator, next row)

    def _all_or_none(self, masked: dict, column: str = LOSS_MASK) -> bool:
        """Whether the files of this source have `column`: all of them or none (a source is one data set)."""
        if len(set(masked.values())) > 1:
            some = sorted(str(k) for k, v in masked.items() if v)
            other = sorted(str(k) for k, v in masked.items() if not v)
            raise NextlongError(f"{self.path}: some files have a `{column}` column ({some[0]}) and some do not "
                                f"({other[0]}); a source must be one data set")
        return bool(masked) and all(masked.values())

    def _index_jsonl(self) -> tuple[int, bool]:
        """Byte offsets of the rows of every JSONL file; whether the rows have a loss_mask (from the first)."""
        self._jsonl = []  # (file, first global row, offsets of its non-empty lines)
        start, first = 0, None
        for f in self.files:
            offsets, pos = [], 0
            with _open_data_file(f) as fh:
                for line in fh:
                    if line.strip():
                        offsets.append(pos)
                        if first is None:
                            first = self._jsonl_object(line, f"{f} line 1")
                    pos += len(line)
            self._jsonl.append((f, start, np.asarray(offsets, np.int64)))
            start += len(offsets)
        if first is not None and "input_ids" not in first:
            raise NextlongError(f"{self.files[0]}: JSONL rows without `input_ids` (keys: {sorted(first)[:8]}); the "
                                "trainer reads token ids, not text: train on the output's Parquet (DIR/data) instead")
        return start, first is not None and LOSS_MASK in first

    @staticmethod
    def _jsonl_object(line: bytes, where: str) -> dict:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep for Python's parser
            raise NextlongError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise NextlongError(f"{where}: expected a JSON object per line")
        return obj

    # where the files are
    def _find_manifest(self) -> tuple[dict | None, Path | None]:
        """The `nextlong synthesize` manifest of DIR, DIR/data, DIR/mds or a shard file inside them, and
        its folder. The manifest is untrusted like the data: a regular file of the folder (no FIFO, no
        link out), a JSON object, and every setting the trainer uses of the type it expects."""
        p = self.path
        folders = (p, p.parent) if p.is_dir() else (p.parent, p.parent.parent)
        for folder in folders:
            m = folder / "manifest.json"
            if not os.path.lexists(m):
                continue
            path, _ = member(folder, "manifest.json", str(folder), NextlongError)
            manifest = read_json(path, NextlongError, expect=dict, follow=False, what="manifest")
            if manifest.get("command") in DATA_COMMANDS:
                return _checked_manifest(m, manifest), folder
            if folder == p:  # DATA itself is another command's output (a train run, an index): say so, by name
                from ..manifest import another_commands_run

                other = another_commands_run(m, "synthesize")
                hint = (f"; to start from this run's weights, pass --model {p}" if manifest.get("command") == "train"
                        else "")
                raise NextlongError(f"{p}: holds {other} (its manifest.json), not training data: train on the output "
                                    f"of `nextlong synthesize` or `nextlong acer`{hint}")
        return None, None

    def _find_files(self) -> tuple[str, list[Path]]:
        p = self.path
        if p.is_file():
            if p.suffix not in (".parquet", ".jsonl"):
                raise NextlongError(f"{p}: expected a .parquet or .jsonl file or a folder")
            return p.suffix[1:], [p]
        for folder in (p, _own_part(p, "data")):
            files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
            if files:
                return "parquet", [_data_member(folder, f) for f in files]
        for folder in (p, _own_part(p, "mds")):
            if (folder / "index.json").exists():
                return "mds", [folder]
        for folder in (p, _own_part(p, "jsonl")):
            files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
            if files:
                return "jsonl", [_data_member(folder, f) for f in files]
        raise NextlongError(f"{p}: no training data inside (looked for data/part-*.parquet, *.parquet, an MDS "
                            "index.json and *.jsonl); is it the --out of a finished `nextlong synthesize`?")

    # what made it
    @property
    def tokenizer_spec(self) -> str | None:
        from ..manifest import recorded_tokenizer

        settings = (self.manifest or {}).get("settings", {})
        return recorded_tokenizer(self.manifest_dir, settings, where=self.manifest_dir / "manifest.json" if
                                  self.manifest_dir else None) or ("cl100k_base" if self.manifest else None)

    @property
    def tokenizer_fingerprint(self) -> str | None:
        return (self.manifest or {}).get("settings", {}).get("tokenizer_fingerprint")

    @property
    def sample_length(self) -> int | None:
        return (self.manifest or {}).get("settings", {}).get("target_length")

    def fingerprint(self) -> dict:
        files = self.files if self.kind != "mds" else sorted(self.files[0].iterdir())
        return {"path": str(self.path.resolve()), "kind": self.kind, "rows": self.num_rows,
                "files": len(files), "bytes": sum(f.stat().st_size for f in files if f.is_file()),
                "output_fingerprint": (self.manifest or {}).get("settings", {}).get("output_fingerprint")}

    # rows
    def sample(self, row: int, spans: str, loss_mask: bool = False) -> Sample:
        """Row `row` with its attention spans. With `loss_mask` (answer-only loss) its mask is read and
        checked, and the sample is one span whatever `spans` says (the answer must see its context)."""
        if self.kind == "parquet":
            ids, segments, mask, where = self._parquet_row(row, with_segments=spans == "document",
                                                           with_mask=loss_mask)
        elif self.kind == "jsonl":  # as Parquet: its segments are read for `document` spans only
            ids, segments, mask, where = self._jsonl_row(row, loss_mask, with_segments=spans == "document")
        else:
            ids, segments, mask, where = self._mds_row(row, loss_mask)
        if ids.size == 0:
            raise NextlongError(f"{where}: empty input_ids")
        n = int(ids.size)
        if loss_mask:
            return Sample(ids, [(0, n)], where, _check_mask(mask, n, where))
        if spans == "none" or segments is None:
            return Sample(ids, [(0, n)], where)
        if self.kind != "mds":  # document: merge consecutive segments of one source document
            out: list[list] = []
            try:
                for seg in segments:
                    if out and out[-1][2] == seg["doc_id"] and out[-1][1] == seg["start"]:
                        out[-1][1] = seg["end"]
                    else:
                        out.append([seg["start"], seg["end"], seg["doc_id"]])
                if not all(type(a) is int and type(b) is int for a, b, _ in out):
                    raise TypeError("start and end must be integers")
            except (TypeError, KeyError, IndexError) as exc:
                raise NextlongError(f"{where}: segments must be a list of {{start, end, doc_id}} objects with "
                                    f"integer offsets ({exc})") from None
            pairs = [(int(a), int(b)) for a, b, _ in out]
        else:
            pairs = [(int(a), int(b)) for a, b in np.asarray(segments).reshape(-1, 2)]
        if not pairs or pairs[0][0] != 0 or pairs[-1][1] != n or any(b <= a for a, b in pairs) or any(
                a != b for (_, a), (b, _) in zip(pairs, pairs[1:])):
            raise NextlongError(f"{where}: the spans {pairs[:4]}{'...' if len(pairs) > 4 else ''} do not tile the "
                                f"{n} tokens in order")
        return Sample(ids, pairs, where)

    def _parquet_row(self, row: int, with_segments: bool, with_mask: bool = False):
        import bisect

        import pyarrow as pa

        from ..corpus.reader import corrupt_parquet, open_parquet

        starts = [g[2] for g in self._row_groups]
        gi = bisect.bisect_right(starts, row) - 1
        f, g, first, _ = self._row_groups[gi]
        if self._cache is None or self._cache[0] != (gi, with_segments, with_mask):
            cols = ["input_ids", "segments"] if with_segments and self.has_segments else ["input_ids"]
            if with_mask and self.has_loss_mask:
                cols.append(LOSS_MASK)
            _check_regular(f)  # still (it is opened again for each row group)
            try:
                self._cache = ((gi, with_segments, with_mask), open_parquet(f).read_row_group(g, columns=cols))
            except (pa.ArrowException, OSError) as exc:
                raise corrupt_parquet(f, exc, f"in row group {g}") from None
        table = self._cache[1]
        i = row - first
        where = f"{f} row {i} of row group {g}"
        ids = _parquet_ids(table.column("input_ids")[i], where)
        segments = table.column("segments")[i].as_py() if "segments" in table.column_names else None
        mask = None
        if LOSS_MASK in table.column_names:
            cell = table.column(LOSS_MASK)[i]
            if not cell.is_valid or not hasattr(cell, "values"):
                raise NextlongError(f"{where}: loss_mask must be a list of 0/1 per token, got {cell.type}"
                                    f"{'' if cell.is_valid else ' null'}")
            mask = cell.values.to_numpy(zero_copy_only=False)
        return ids, segments, mask, where

    def _jsonl_row(self, row: int, with_mask: bool, with_segments: bool = True):
        import bisect

        fi = bisect.bisect_right([first for _, first, _ in self._jsonl], row) - 1
        f, first, offsets = self._jsonl[fi]
        with _open_data_file(f) as fh:
            fh.seek(int(offsets[row - first]))
            line = fh.readline()
        where = f"{f} row {row - first}"
        obj = self._jsonl_object(line, where)
        if "input_ids" not in obj:
            raise NextlongError(f"{where}: no input_ids")
        ids = _int_array(obj["input_ids"], "input_ids", where)
        if ids.ndim != 1:  # a list of lists, or one number: not a row's token ids (it was flattened without a word)
            raise NextlongError(f"{where}: input_ids must be a flat list of token ids, got a value of shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.uint32).max):
            raise NextlongError(f"{where}: input_ids outside 0..2**32-1")
        mask = None
        if with_mask:
            if LOSS_MASK not in obj:
                raise NextlongError(f"{where}: no loss_mask (the source's first row has one)")
            mask = obj[LOSS_MASK]
        segments = obj.get("segments") if with_segments else None
        if segments is not None and not (isinstance(segments, list) and all(
                isinstance(s, dict) and {"start", "end", "doc_id"} <= set(s) for s in segments)):
            raise NextlongError(f"{where}: segments must be a list of {{start, end, doc_id}} objects")
        return ids.astype(np.uint32), segments, mask, where

    def _mds_row(self, row: int, with_mask: bool = False):
        from ..mds import read_mds

        if self._cache is None or self._cache[1] > row:
            self._cache = [read_mds(self.files[0]), 0]
        it = self._cache
        sample = None
        while it[1] <= row:
            sample = next(it[0])
            it[1] += 1
        where = f"{self.files[0]} sample {row}"
        if "input_ids" not in sample:
            raise NextlongError(f"{where}: no input_ids column")
        ids, spans = _int_array(sample["input_ids"], "input_ids", where), sample.get("indices")
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.uint32).max):  # uint64/int64 would wrap
            raise NextlongError(f"{where}: input_ids outside 0..2**32-1")
        if spans is not None:
            spans = _int_array(spans, "indices", where, pairs=True)
        mask = sample.get(LOSS_MASK) if with_mask else None
        return ids.astype(np.uint32, copy=False).reshape(-1), spans, mask, where


def _check_mask(mask, n: int, where: str) -> np.ndarray:
    """A row's loss_mask as uint8 0/1 of its `n` tokens (a 0/1 integer or boolean array)."""
    try:
        arr = np.asarray(mask)
    except ValueError:
        arr = np.asarray(None)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise NextlongError(f"{where}: loss_mask must be a list of 0/1 per token (uint8), got "
                            f"{arr.dtype} of shape {arr.shape}")
    if arr.size != n:
        raise NextlongError(f"{where}: loss_mask has {arr.size} entries for {n} tokens")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise NextlongError(f"{where}: loss_mask holds values other than 0 and 1 (max {arr.max()})")
    return arr.astype(np.uint8, copy=False)


def _int_array(value, name: str, where: str, pairs: bool = False) -> np.ndarray:
    """An MDS column as an integer array ([start, end) pairs with `pairs`): an MDS folder may come from
    anyone, and floats, strings or an odd count would otherwise be cast or reshaped blindly."""
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged lists (a json column)
        arr = np.asarray(None)
    if arr.dtype.kind in "iu" and not (pairs and arr.size % 2):
        return arr
    raise NextlongError(f"{where}: {name} must be an integer array{' of [start, end) pairs' if pairs else ''} "
                        f"(ndarray:uint32), got {arr.dtype} of shape {arr.shape}")


def _data_member(folder: Path, f: Path) -> Path:
    """`f`, a file found in the data folder `folder`: a regular file of the folder (a FIFO would hang the
    reader, a device never ends, a symbolic link out would read another folder); returned as found."""
    member(folder, f.name, str(folder), NextlongError, kind="data folder")
    return f


def _own_part(folder: Path, name: str) -> Path:
    """DATA/data, DATA/mds or DATA/jsonl, where the files of an output folder are: a folder of DATA, never a
    symbolic link out of it (its files would be checked to lie in the folder the link points to, anywhere).
    The folder the user names as DATA may itself be a link: their choice."""
    from ..untrusted import own_subfolder

    return own_subfolder(folder, name, NextlongError, kind="data folder",
                         remedy="give the folder it points to as DATA if you trust it")


def _check_regular(f: Path) -> None:
    """`f` is (still) a regular file: checked before each open of a Parquet file, which pyarrow opens by
    name."""
    from ..untrusted import not_regular

    try:
        problem = not_regular(os.stat(f))
    except OSError as exc:
        raise NextlongError(f"{f}: cannot read ({exc.strerror})") from None
    if problem:
        raise NextlongError(f"{f}: {problem}")


@contextlib.contextmanager
def _open_data_file(f: Path):
    """`f` opened for reading, checked on the descriptor to be a regular file (never waits on a FIFO)."""
    from ..untrusted import open_regular

    with open_regular(f, NextlongError, follow=True, what="data file not found") as (fh, _):
        yield fh


def _list_of(dtype, *kinds) -> bool:
    """Whether the Parquet type `dtype` is a list (any list type) whose values pass one of the pyarrow type
    tests `kinds` (pa.types.is_integer, ...)."""
    import pyarrow as pa

    return ((pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype))
            and any(kind(dtype.value_type) for kind in kinds))


def _check_ids_type(f: Path, dtype) -> None:
    """The Parquet type of `input_ids`: lists of integers (floats would be cut to integers silently)."""
    import pyarrow as pa

    if not _list_of(dtype, pa.types.is_integer):
        raise NextlongError(f"{f}: input_ids must be lists of integer token ids (list<uint32>), got {dtype}")


def _check_mask_type(f: Path, dtype) -> None:
    """The Parquet type of `loss_mask`: lists of integers or booleans (a struct's cells have no `values` array)."""
    import pyarrow as pa

    if not _list_of(dtype, pa.types.is_integer, pa.types.is_boolean):
        raise NextlongError(f"{f}: loss_mask must be lists of 0/1 per token (list<uint8>), got {dtype}")


def _parquet_ids(cell, where: str) -> np.ndarray:
    """One Parquet `input_ids` cell as uint32 ids: not null, no null id, each in 0..2**32-1."""
    if not cell.is_valid:
        raise NextlongError(f"{where}: input_ids is null")
    values = cell.values
    if values.null_count:
        raise NextlongError(f"{where}: input_ids holds {values.null_count} null ids")
    ids = values.to_numpy(zero_copy_only=False)
    if ids.dtype.kind not in "iu":
        raise NextlongError(f"{where}: input_ids must be integer token ids, got {ids.dtype}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) > np.iinfo(np.uint32).max):
        raise NextlongError(f"{where}: input_ids outside 0..2**32-1")
    return ids.astype(np.uint32, copy=False)


def _checked_manifest(path: Path, manifest: dict) -> dict:
    """A data manifest whose settings the trainer reads, each of the type it expects, of a finished run."""
    from ..manifest import RUNNING, run_status

    status = run_status(manifest)
    if status == RUNNING:
        raise NextlongError(f"{path}: the nextlong {manifest.get('command')} run writing this folder has not finished "
                            "(stopped, or still running): run its command again to complete it, then train")
    if status is not None:  # a finished synthesize/acer manifest has no status; failed, interrupted
        stats = manifest.get("statistics")
        error = stats.get("error") if isinstance(stats, dict) else None
        raise NextlongError(f"{path}: the nextlong {manifest.get('command')} run writing this folder has not finished "
                            f"({status}" + (f": {show(error, 200)}" if error else "") + "): fix what stopped it and "
                            "run its command again to complete it, then train")
    settings = manifest.get("settings", {})
    if not isinstance(settings, dict):
        raise NextlongError(f"{path}: settings must be a JSON object, got {show(settings)}")
    length = settings.get("target_length")
    if length is not None and (type(length) is not int or length < 1):
        raise NextlongError(f"{path}: settings.target_length must be a token count (an integer >= 1), got "
                            f"{show(length)}")
    for key in ("tokenizer", "tokenizer_copy", "tokenizer_fingerprint", "output_fingerprint"):
        value = settings.get(key)
        if value is not None and not isinstance(value, str):
            raise NextlongError(f"{path}: settings.{key} must be a string, got {show(value)}")
    return manifest


def resolve_loss_on(sources: list[Source], loss_on: str | None, *, attention_spans: str = "sample",
                    split_spans: bool = False, restored=frozenset()) -> str:
    """The loss mode for these sources: `loss_on` as asked, or (None) "answer" when the data has a
    loss_mask, else "all". A UsageError in one line when "answer" cannot apply: a source without a
    loss_mask (mixing masked and unmasked data needs --loss-on all), or options that would cut a
    sample or its attention (--split-spans, --attention-spans other than sample)."""
    if loss_on not in (None, *LOSS_ON):
        raise UsageError(f"--loss-on must be one of {LOSS_ON}, got {loss_on!r}")
    masked = [s for s in sources if s.has_loss_mask]
    if loss_on is None:
        loss_on = "answer" if masked else "all"
    if loss_on == "all":
        return loss_on
    plain = [s for s in sources if not s.has_loss_mask]
    if plain and not masked:
        raise UsageError(f"{plain[0].path}: --loss-on answer needs a `loss_mask` column (1 on the answer tokens, "
                         "as `nextlong acer` writes) and this data has none; use --loss-on all")
    if plain:
        raise UsageError(f"{plain[0].path} has no `loss_mask` but {masked[0].path} has one: answer-only loss "
                         "cannot apply to every source; pass --loss-on all to train on every token of every source")
    why = (option_text("loss_on", loss_on, restored) if "loss_on" in restored else
           f"--loss-on answer (the default for data with a loss_mask such as {masked[0].path})")
    if split_spans:
        raise UsageError(f"{option_text('split_spans', True, restored)} with {why} would cut a sample and leave its "
                         "answer without its context; raise --seq-len instead, or pass --loss-on all")
    if attention_spans != "sample":
        raise UsageError(f"{option_text('attention_spans', attention_spans, restored)} with {why}: each sample is one "
                         "attention span, so its answer sees its whole context; use --attention-spans sample, or pass "
                         "--loss-on all")
    return loss_on


def open_sources(specs) -> list[Source]:
    if isinstance(specs, (str, Path)):
        specs = [specs]
    sources = [Source(str(s)) for s in specs]
    fps = {s.tokenizer_fingerprint for s in sources if s.tokenizer_fingerprint}
    if len(fps) > 1:
        desc = ", ".join(f"{s.path}: {(s.manifest or {}).get('settings', {}).get('tokenizer')}" for s in sources)
        raise NextlongError(f"the data sources were tokenized with different tokenizers ({desc}); "
                            "mix only data made with one tokenizer")
    return sources
