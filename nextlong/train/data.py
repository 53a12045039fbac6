"""Training data: a weighted stream of long documents cut into fixed-length sequences with explicit
attention spans, and the collator that turns sequences into model inputs.

    sources  = open_sources(["out-64k@2", "short-docs@1"])    # `nextlong synthesize` folders, Parquet or MDS
    stream   = SampleStream(sources, seed=0, rank=0, world=1, spans="sample")
    packer   = SequencePacker(stream, seq_len=8192)
    batch    = collate([packer.next_sequence() for _ in range(2)])

Spans (`spans=`): "sample" = one attention span per long document (a NExtLong document is ONE
document: its meta-chunks and their distractors must see each other); "document" = one span per run
of the same source document (from the Parquet `segments`); "none" = plain causal attention over the
whole packed sequence. MDS input carries its spans in `indices` (ProLong's layout), used for
"sample" and "document". As in ProLong's collator, the first label of every span is -100 and RoPE
positions are not reset per span.

Mixing: sample k of the global stream comes from source j with probability weight_j / sum(weights),
drawn from one seeded generator; a source that runs out starts again (a new epoch). Rank r of a
data-parallel run keeps the samples k with k % world == r and reads only those rows. The stream's
position (sample counter, generator state, rows drawn per source) and the packer's leftover spans
are plain data, saved in checkpoints so a resumed run continues with the very next token.

For transformers' `Trainer`: `PackedDataset` (an IterableDataset) and `PackedCollator`, whose
batches carry `cu_seq_lens_q/k` and `max_length_q/k` as transformers' padding-free path expects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import NextlongError, UsageError

IGNORE_INDEX = -100
PAD_ID = 0  # padding tokens get label -100 and a span of their own, so their id never matters


# --- sources -----------------------------------------------------------------------------------


def parse_data_spec(spec: str) -> tuple[str, float]:
    """'PATH' or 'PATH@weight' -> (path, weight)."""
    path, sep, weight = str(spec).rpartition("@")
    if not sep or not path:
        return str(spec), 1.0
    try:
        value = float(weight)
    except ValueError:
        return str(spec), 1.0  # an '@' that is part of the path
    if not value > 0:
        raise UsageError(f"{spec}: the mixing weight after '@' must be > 0, got {weight}")
    return path, value


@dataclass
class Sample:
    ids: np.ndarray          # uint32 token ids
    spans: list[tuple[int, int]]  # [start, end) attention spans tiling ids (or [(0, len)])
    where: str               # "FILE row N", for error messages


class Source:
    """One DATA entry: a `nextlong synthesize` output folder, a folder of Parquet shards, one Parquet
    file, or an MDS folder (index.json). Rows are read on demand by index; the reader keeps the last
    decoded row group (Parquet) or its position in the shard stream (MDS), so in-order reads decode
    each row once."""

    def __init__(self, spec: str):
        path, self.weight = parse_data_spec(spec)
        self.spec = str(spec)
        self.path = Path(path)
        if not self.path.exists():
            raise NextlongError(f"{self.path}: data not found (expected a `nextlong synthesize` output folder, "
                                "Parquet shards or an MDS folder)")
        self.manifest, self.manifest_dir = self._find_manifest()
        self.kind, self.files = self._find_files()
        if self.kind == "parquet":
            from ..corpus import open_parquet

            self._row_groups = []  # (file, row group, first global row, rows)
            start = 0
            for f in self.files:
                pf = open_parquet(f)
                meta, names = pf.metadata, set(pf.schema_arrow.names)
                if "input_ids" not in names:
                    raise NextlongError(f"{f}: no `input_ids` column (columns: {sorted(names)})")
                self.has_segments = "segments" in names
                for g in range(meta.num_row_groups):
                    n = meta.row_group(g).num_rows
                    self._row_groups.append((f, g, start, n))
                    start += n
            self.num_rows = start
        else:
            from ..mds import num_samples

            self.num_rows = num_samples(self.files[0])
            self.has_segments = True
        if self.num_rows == 0:
            raise NextlongError(f"{self.path}: the data holds no samples")
        self._cache = None  # parquet: (row group index, table); mds: (iterator, next row)

    # where the files are
    def _find_manifest(self) -> tuple[dict | None, Path | None]:
        """The `nextlong synthesize` manifest of DIR, DIR/data, DIR/mds or a shard file inside them, and
        its folder."""
        p = self.path
        folders = (p, p.parent) if p.is_dir() else (p.parent, p.parent.parent)
        for folder in folders:
            m = folder / "manifest.json"
            if m.exists():
                try:
                    manifest = json.loads(m.read_text())
                except (OSError, json.JSONDecodeError) as exc:
                    raise NextlongError(f"{m}: unreadable manifest ({exc})") from None
                if manifest.get("command") == "synthesize":
                    return manifest, folder
        return None, None

    def _find_files(self) -> tuple[str, list[Path]]:
        p = self.path
        if p.is_file():
            if p.suffix != ".parquet":
                raise NextlongError(f"{p}: expected a .parquet file or a folder")
            return "parquet", [p]
        for folder in (p, p / "data"):
            files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
            if files:
                return "parquet", files
        for folder in (p, p / "mds"):
            if (folder / "index.json").exists():
                return "mds", [folder]
        raise NextlongError(f"{p}: no training data inside (looked for data/part-*.parquet, *.parquet and an MDS "
                            "index.json); is it the --out of a finished `nextlong synthesize`?")

    # what made it
    @property
    def tokenizer_spec(self) -> str | None:
        from ..manifest import recorded_tokenizer

        settings = (self.manifest or {}).get("settings", {})
        return recorded_tokenizer(self.manifest_dir, settings) or ("cl100k_base" if self.manifest else None)

    @property
    def tokenizer_fingerprint(self) -> str | None:
        return (self.manifest or {}).get("settings", {}).get("tokenizer_fingerprint")

    @property
    def sample_length(self) -> int | None:
        return (self.manifest or {}).get("settings", {}).get("target_length")

    def fingerprint(self) -> dict:
        files = self.files if self.kind == "parquet" else sorted(self.files[0].iterdir())
        return {"path": str(self.path.resolve()), "kind": self.kind, "rows": self.num_rows,
                "files": len(files), "bytes": sum(f.stat().st_size for f in files if f.is_file()),
                "output_fingerprint": (self.manifest or {}).get("settings", {}).get("output_fingerprint")}

    # rows
    def sample(self, row: int, spans: str) -> Sample:
        if self.kind == "parquet":
            ids, segments, where = self._parquet_row(row, with_segments=spans == "document")
        else:
            ids, segments, where = self._mds_row(row)
        if ids.size == 0:
            raise NextlongError(f"{where}: empty input_ids")
        n = int(ids.size)
        if spans == "none" or segments is None:
            return Sample(ids, [(0, n)], where)
        if self.kind == "parquet":  # document: merge consecutive segments of one source document
            out: list[list] = []
            for seg in segments:
                if out and out[-1][2] == seg["doc_id"] and out[-1][1] == seg["start"]:
                    out[-1][1] = seg["end"]
                else:
                    out.append([seg["start"], seg["end"], seg["doc_id"]])
            pairs = [(int(a), int(b)) for a, b, _ in out]
        else:
            pairs = [(int(a), int(b)) for a, b in np.asarray(segments).reshape(-1, 2)]
        if not pairs or pairs[0][0] != 0 or pairs[-1][1] != n or any(b <= a for a, b in pairs) or any(
                a != b for (_, a), (b, _) in zip(pairs, pairs[1:])):
            raise NextlongError(f"{where}: the spans {pairs[:4]}{'...' if len(pairs) > 4 else ''} do not tile the "
                                f"{n} tokens in order")
        return Sample(ids, pairs, where)

    def _parquet_row(self, row: int, with_segments: bool):
        import bisect

        import pyarrow as pa

        from ..corpus import corrupt_parquet, open_parquet

        starts = [g[2] for g in self._row_groups]
        gi = bisect.bisect_right(starts, row) - 1
        f, g, first, _ = self._row_groups[gi]
        if self._cache is None or self._cache[0] != (gi, with_segments):
            cols = ["input_ids", "segments"] if with_segments and self.has_segments else ["input_ids"]
            try:
                self._cache = ((gi, with_segments), open_parquet(f).read_row_group(g, columns=cols))
            except (pa.ArrowException, OSError) as exc:
                raise corrupt_parquet(f, exc, f"in row group {g}") from None
        table = self._cache[1]
        i = row - first
        ids = table.column("input_ids")[i].values.to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
        segments = table.column("segments")[i].as_py() if "segments" in table.column_names else None
        return ids, segments, f"{f} row {i} of row group {g}"

    def _mds_row(self, row: int):
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
        if spans is not None:
            spans = _int_array(spans, "indices", where, pairs=True)
        return ids.astype(np.uint32, copy=False).reshape(-1), spans, where


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


def open_sources(specs) -> list[Source]:
    if isinstance(specs, (str, Path)):
        specs = [specs]
    sources = [Source(str(s)) for s in specs]
    fps = {s.tokenizer_fingerprint for s in sources if s.tokenizer_fingerprint}
    if len(fps) > 1:
        desc = ", ".join(f"{s.path}: {s.tokenizer_spec}" for s in sources)
        raise NextlongError(f"the data sources were tokenized with different tokenizers ({desc}); "
                            "mix only data made with one tokenizer")
    return sources


# --- the stream of samples ---------------------------------------------------------------------


class SampleStream:
    """Global sample order (weighted mixture, seeded); this rank yields every world-th sample."""

    def __init__(self, sources: list[Source], *, seed: int = 0, rank: int = 0, world: int = 1,
                 spans: str = "sample", vocab_size: int | None = None, state: dict | None = None):
        self.sources, self.rank, self.world, self.spans = sources, rank, world, spans
        self.vocab_size = vocab_size
        w = np.asarray([s.weight for s in sources], np.float64)
        self.probs = w / w.sum()
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.index = 0                       # samples drawn from the global stream
        self.drawn = [0] * len(sources)      # rows drawn per source (row = drawn % num_rows)
        if state is not None:
            self.load_state_dict(state)

    def _next_global(self) -> tuple[int, int]:
        j = 0 if len(self.sources) == 1 else int(self.rng.choice(len(self.sources), p=self.probs))
        row = self.drawn[j] % self.sources[j].num_rows
        self.drawn[j] += 1
        self.index += 1
        return j, row

    def __iter__(self) -> Iterator[Sample]:
        return self

    def __next__(self) -> Sample:
        while True:
            k = self.index
            j, row = self._next_global()
            if k % self.world == self.rank:
                sample = self.sources[j].sample(row, self.spans)
                if self.vocab_size is not None:
                    top = int(sample.ids.max())
                    if top >= self.vocab_size:
                        raise NextlongError(f"{sample.where}: token id {top} is outside the model's vocabulary of "
                                            f"{self.vocab_size} ids; was the data made with another tokenizer?")
                return sample

    def epochs(self) -> float:
        return max(d / s.num_rows for d, s in zip(self.drawn, self.sources))

    def state_dict(self) -> dict:
        return {"index": self.index, "drawn": list(self.drawn), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.index, self.drawn = int(state["index"]), list(state["drawn"])
        self.rng.bit_generator.state = state["rng"]


# --- packing into sequences --------------------------------------------------------------------


@dataclass
class Sequence:
    ids: np.ndarray               # (seq_len,) uint32
    span_lengths: list[int]       # spans tiling ids, in order
    num_pad: int = 0              # trailing padding tokens (their own span, labels -100)


class SequencePacker:
    """Fills sequences of exactly `seq_len` tokens with whole spans, in stream order.

    A span that does not fit the room left ends the sequence with padding and opens the next one;
    with `split=True` (and always for spans="none", where the sequence is one span) it is cut
    instead and its tail opens the next sequence as a span of its own. A span longer than
    `seq_len` that may not be split is an error naming the row.
    """

    def __init__(self, stream: SampleStream, seq_len: int, *, split: bool = False, state: dict | None = None):
        self.stream, self.seq_len = stream, seq_len
        self.whole = stream.spans == "none"
        self.split = split or self.whole
        self.pending: list[tuple[np.ndarray, str]] = []  # spans not yet placed: (ids, where)
        if state is not None:
            self.load_state_dict(state)

    def next_sequence(self) -> Sequence:
        parts, lengths, used = [], [], 0
        while used < self.seq_len:
            if not self.pending:
                sample = next(self.stream)
                self.pending = [(sample.ids[a:b], sample.where) for a, b in sample.spans]
            ids, where = self.pending[0]
            room = self.seq_len - used
            if len(ids) <= room:
                self.pending.pop(0)
            elif self.split:
                ids, self.pending[0] = ids[:room], (ids[room:], where)
            elif len(ids) > self.seq_len:
                raise NextlongError(
                    f"{where}: an attention span of {len(ids)} tokens is longer than --seq-len {self.seq_len}; "
                    "raise --seq-len, or pass --split-spans to cut spans at sequence boundaries")
            else:  # pad out this sequence; the span opens the next one
                pad = np.full(room, PAD_ID, np.uint32)
                parts.append(pad)
                lengths.append(room)
                return self._finish(parts, lengths, room)
            parts.append(ids)
            lengths.append(len(ids))
            used += len(ids)
        return self._finish(parts, lengths, 0)

    def _finish(self, parts, lengths, num_pad) -> Sequence:
        ids = np.concatenate(parts).astype(np.uint32, copy=False)
        if self.whole:
            lengths = [self.seq_len]
        return Sequence(ids, lengths, num_pad)

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(),
                "pending": [(np.asarray(ids).copy(), where) for ids, where in self.pending]}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.pending = [(np.asarray(ids, np.uint32), where) for ids, where in state["pending"]]


# --- collation ---------------------------------------------------------------------------------


def collate(sequences: list[Sequence]) -> dict:
    """Model inputs for a list of equal-length sequences.

    input_ids, labels, position_ids: (B, S) int64. labels = input_ids with -100 at the first token of
    every span and at padding (transformers shifts labels inside the loss, so the token that starts a
    span is never predicted from the span before it). cu_seq_lens_q/k: int32 span boundaries over the
    flattened B*S tokens (flash-attn's `cu_seqlens`); max_length_q/k: the longest span.
    """
    import torch

    seq_len = len(sequences[0].ids)
    if any(len(s.ids) != seq_len for s in sequences):
        raise ValueError("collate: sequences differ in length")
    input_ids = torch.from_numpy(np.stack([s.ids.astype(np.int64) for s in sequences]))
    labels = input_ids.clone()
    bounds, offset = [0], 0
    for b, seq in enumerate(sequences):
        start = 0
        for n in seq.span_lengths:
            labels[b, start] = IGNORE_INDEX
            start += n
            bounds.append(offset + start)
        if seq.num_pad:
            labels[b, seq_len - seq.num_pad:] = IGNORE_INDEX
        offset += seq_len
    cu = torch.tensor(bounds, dtype=torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    position_ids = torch.arange(seq_len, dtype=torch.int64).expand(len(sequences), seq_len).contiguous()
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


# --- transformers Trainer drop-in --------------------------------------------------------------


def _torch_iterable_dataset():
    from torch.utils.data import IterableDataset

    return IterableDataset


class PackedDataset(_torch_iterable_dataset()):
    """An endless IterableDataset of packed sequences, as dicts {"input_ids", "span_lengths", "num_pad"}.

    `data`: one DATA spec or a list ("PATH@weight"); the other arguments as for `nextlong train`.
    Under torch.distributed each rank reads its own share.
    """

    def __init__(self, data, seq_len: int, *, attention_spans: str = "sample", split_spans: bool = False,
                 seed: int = 0, vocab_size: int | None = None):
        super().__init__()
        self.data, self.seq_len, self.attention_spans = data, seq_len, attention_spans
        self.split_spans, self.seed, self.vocab_size = split_spans, seed, vocab_size

    def __iter__(self):
        import torch.distributed as dist

        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        stream = SampleStream(open_sources(self.data), seed=self.seed, rank=rank, world=world,
                              spans=self.attention_spans, vocab_size=self.vocab_size)
        packer = SequencePacker(stream, self.seq_len, split=self.split_spans)
        while True:
            seq = packer.next_sequence()
            yield {"input_ids": seq.ids, "span_lengths": seq.span_lengths, "num_pad": seq.num_pad}


class PackedCollator:
    """Collates `PackedDataset` items into `collate`'s batch (cu_seq_lens_q/k, max_length_q/k, ...)."""

    def __call__(self, features: list[dict]) -> dict:
        return collate([Sequence(np.asarray(f["input_ids"], np.uint32), list(f["span_lengths"]),
                                 int(f.get("num_pad", 0))) for f in features])
