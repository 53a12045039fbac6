"""Training data: a weighted stream of long documents cut into fixed-length sequences with explicit
attention spans, and the collator that turns sequences into model inputs. The sources themselves (what a
DATA entry is and how it is checked) are in sources.py.

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

Answer-only loss (`loss_on="answer"`, ACER's samples: a long context, a question, an answer): a
source with a `loss_mask` column (uint8, one per token, 1 on the answer) contributes to the loss
only at the tokens whose mask is 1: their labels stay, every other label is -100 (ignored, so the
token-weighting schemes and the global normalisation see only answer tokens). Each sample is one
attention span and is never split across sequences (its answer would lose its context).
`resolve_loss_on` decides and checks the mode for a set of sources.

Mixing: sample k of the global stream comes from source j with probability weight_j / sum(weights),
drawn from one seeded generator; a source that runs out starts again (a new epoch). Rank r of a
data-parallel run keeps the samples k with k % world == r and reads only those rows. The stream's
position (sample counter, generator state, rows drawn per source) and the packer's leftover spans
are plain data, saved in checkpoints so a resumed run continues with the very next token.

For transformers' `Trainer`: `PackedDataset` (an IterableDataset) and `PackedCollator`, whose
batches carry `cu_seq_lens_q/k` and `max_length_q/k` as transformers' padding-free path expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import NextlongError
from ..untrusted import show
from .sources import Sample, Source, open_sources, resolve_loss_on

IGNORE_INDEX = -100
PAD_ID = 0  # padding tokens get label -100 and a span of their own, so their id never matters


# --- the stream of samples ---------------------------------------------------------------------


class SampleStream:
    """Global sample order (weighted mixture, seeded); this rank yields every world-th sample.
    `loss_mask`: read every sample's loss_mask (answer-only loss; each sample is then one span)."""

    def __init__(self, sources: list[Source], *, seed: int = 0, rank: int = 0, world: int = 1,
                 spans: str = "sample", vocab_size: int | None = None, state: dict | None = None,
                 loss_mask: bool = False):
        self.sources, self.rank, self.world, self.spans = sources, rank, world, spans
        self.loss_mask = loss_mask
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
                sample = self.sources[j].sample(row, self.spans, self.loss_mask)
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
        """Set the position `state_dict` gave; a position that cannot be this stream's (from a damaged or
        crafted checkpoint) is a ValueError, and then nothing is set."""
        if not isinstance(state, dict):
            raise ValueError(f"the stream position must be an object, got {show(state)}")
        index, drawn = state.get("index"), state.get("drawn")
        if type(index) is not int or index < 0:
            raise ValueError(f"stream index must be an integer >= 0, got {show(index)}")
        if not (isinstance(drawn, list) and len(drawn) == len(self.sources)
                and all(type(d) is int and d >= 0 for d in drawn)):
            raise ValueError(f"stream drawn must be one count >= 0 per data source ({len(self.sources)}), got "
                             f"{show(drawn)}")
        if sum(drawn) != index:
            raise ValueError(f"stream drawn {show(drawn)} does not add up to its index {index}")
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state.get("rng")  # TypeError / ValueError for anything but a PCG64 state
        self.index, self.drawn, self.rng = index, list(drawn), rng


# --- packing into sequences --------------------------------------------------------------------


@dataclass
class Sequence:
    ids: np.ndarray               # (seq_len,) uint32
    span_lengths: list[int]       # spans tiling ids, in order
    num_pad: int = 0              # trailing padding tokens (their own span, labels -100)
    loss_mask: np.ndarray | None = None  # (seq_len,) uint8: labels are kept only where 1 (None: everywhere)


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
        # spans not yet placed: (ids, where, loss_mask or None)
        self.pending: list[tuple[np.ndarray, str, np.ndarray | None]] = []
        self.masked = stream.loss_mask
        if state is not None:
            self.load_state_dict(state)

    def next_sequence(self) -> Sequence:
        parts, masks, lengths, used = [], [], [], 0
        while used < self.seq_len:
            if not self.pending:
                sample = next(self.stream)
                m = sample.loss_mask
                self.pending = [(sample.ids[a:b], sample.where, None if m is None else m[a:b])
                                for a, b in sample.spans]
            ids, where, mask = self.pending[0]
            room = self.seq_len - used
            if len(ids) <= room:
                self.pending.pop(0)
            elif self.split:
                tail = None if mask is None else mask[room:]
                self.pending[0] = (ids[room:], where, tail)
                ids, mask = ids[:room], None if mask is None else mask[:room]
            elif len(ids) > self.seq_len:
                raise NextlongError(
                    f"{where}: an attention span of {len(ids)} tokens is longer than --seq-len {self.seq_len}; "
                    "raise --seq-len" + ("" if self.masked else
                                         ", or pass --split-spans to cut spans at sequence boundaries"))
            else:  # pad out this sequence; the span opens the next one
                parts.append(np.full(room, PAD_ID, np.uint32))
                if self.masked:
                    masks.append(np.zeros(room, np.uint8))
                lengths.append(room)
                return self._finish(parts, masks, lengths, room)
            parts.append(ids)
            if self.masked:
                masks.append(mask)
            lengths.append(len(ids))
            used += len(ids)
        return self._finish(parts, masks, lengths, 0)

    def _finish(self, parts, masks, lengths, num_pad) -> Sequence:
        ids = np.concatenate(parts).astype(np.uint32, copy=False)
        if self.whole:
            lengths = [self.seq_len]
        mask = np.concatenate(masks).astype(np.uint8, copy=False) if self.masked else None
        return Sequence(ids, lengths, num_pad, mask)

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(),
                "pending": [(np.asarray(ids).copy(), where) + (() if mask is None else (np.asarray(mask).copy(),))
                            for ids, where, mask in self.pending]}

    def load_state_dict(self, state: dict) -> None:
        """Set the position `state_dict` gave, checked whole first (a ValueError, and nothing set): every
        leftover span's ids are integers in the model's vocabulary, with a 0/1 mask of the same length
        when the run trains on answers."""
        if not isinstance(state, dict) or not isinstance(state.get("pending"), list):
            raise ValueError("the data position must be an object with a `pending` list")
        vocab = self.stream.vocab_size or (1 << 32)
        pending = []
        for i, entry in enumerate(state["pending"]):
            if not isinstance(entry, (list, tuple)) or len(entry) not in (2, 3) or not isinstance(entry[1], str):
                raise ValueError(f"pending[{i}] must be (ids, where[, loss_mask]), got {show(entry)}")
            ids = _state_array(entry[0], f"pending[{i}] ids")
            if not ids.size or int(ids.min()) < 0 or int(ids.max()) >= vocab:
                raise ValueError(f"pending[{i}] ids must be {'' if ids.size else 'a non-empty list of '}token ids "
                                 f"in 0..{vocab - 1}")
            mask = None
            if len(entry) > 2:
                mask = _state_array(entry[2], f"pending[{i}] loss_mask")
                if mask.shape != ids.shape or (mask.size and (int(mask.min()) < 0 or int(mask.max()) > 1)):
                    raise ValueError(f"pending[{i}] loss_mask must be 0/1 per token of its span")
                mask = mask.astype(np.uint8)
            if self.masked and mask is None:
                raise ValueError("the saved data position holds spans without a loss_mask")
            pending.append((ids.astype(np.uint32), entry[1], mask))
        self.stream.load_state_dict(state.get("stream"))
        self.pending = pending


def _state_array(value, what: str) -> np.ndarray:
    """A 1-D integer array from a saved data position (a list or an array of any integer type)."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        arr = np.asarray(None)
    if arr.ndim != 1 or (arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f")):
        raise ValueError(f"{what} must be a list of integers, got {show(value)}")
    return arr


# --- collation ---------------------------------------------------------------------------------


def collate(sequences: list[Sequence]) -> dict:
    """Model inputs for a list of equal-length sequences.

    input_ids, labels, position_ids: (B, S) int64. labels = input_ids with -100 at the first token of
    every span and at padding (transformers shifts labels inside the loss, so the token that starts a
    span is never predicted from the span before it), and, for a sequence with a `loss_mask`, at every
    token whose mask is 0. Labels are aligned with input_ids and the loss at position t predicts
    labels[t + 1], so the first answer token is predicted from the question's last token.
    cu_seq_lens_q/k: int32 span boundaries over the flattened B*S tokens (flash-attn's `cu_seqlens`);
    max_length_q/k: the longest span.
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
        if seq.loss_mask is not None:
            if len(seq.loss_mask) != seq_len:
                raise ValueError("collate: a loss_mask differs in length from its sequence")
            labels[b, torch.from_numpy(np.asarray(seq.loss_mask) == 0)] = IGNORE_INDEX
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
    """An endless IterableDataset of packed sequences, as dicts {"input_ids", "span_lengths", "num_pad"}
    (and "loss_mask" with answer-only loss, which `PackedCollator` turns into -100 labels).

    `data`: one DATA spec or a list ("PATH@weight"); the other arguments as for `nextlong train`
    (`loss_on`: None = "answer" when the data has a loss_mask, else "all"; checked here, so a bad
    combination fails when the dataset is made). Under torch.distributed each rank reads its own share.
    A wrong argument (seq_len="64k" or 2048.0, attention_spans="spans", split_spans="no") is a UsageError naming
    it, here, not a failure (or a setting silently taken) once a Trainer iterates.
    """

    def __init__(self, data, seq_len: int, *, attention_spans: str = "sample", split_spans: bool = False,
                 seed: int = 0, vocab_size: int | None = None, loss_on: str | None = None):
        from ..errors import UsageError, checked_flag, checked_int, checked_path
        from ..seeds import seed_problem
        from .config import SPAN_MODES

        super().__init__()
        for one in data if isinstance(data, (list, tuple)) else [data]:
            checked_path(one, "data")
        checked_int(seq_len, "seq_len", 2)
        if attention_spans not in SPAN_MODES:
            raise UsageError(f"attention_spans must be one of {SPAN_MODES}, got {attention_spans!r}")
        checked_flag(split_spans, "split_spans")
        if problem := seed_problem(seed):
            raise UsageError(f"seed {problem}")
        checked_int(vocab_size, "vocab_size", 1, none=True)
        self.data, self.seq_len, self.attention_spans = data, seq_len, attention_spans
        self.split_spans, self.seed, self.vocab_size = split_spans, seed, vocab_size
        self.loss_on = resolve_loss_on(open_sources(data), loss_on, attention_spans=attention_spans,
                                       split_spans=split_spans)

    def __iter__(self):
        import torch.distributed as dist

        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        stream = SampleStream(open_sources(self.data), seed=self.seed, rank=rank, world=world,
                              spans=self.attention_spans, vocab_size=self.vocab_size,
                              loss_mask=self.loss_on == "answer")
        packer = SequencePacker(stream, self.seq_len, split=self.split_spans)
        while True:
            seq = packer.next_sequence()
            item = {"input_ids": seq.ids, "span_lengths": seq.span_lengths, "num_pad": seq.num_pad}
            if seq.loss_mask is not None:
                item["loss_mask"] = seq.loss_mask
            yield item


class PackedCollator:
    """Collates `PackedDataset` items into `collate`'s batch (cu_seq_lens_q/k, max_length_q/k, ...);
    an item's "loss_mask" (answer-only loss) makes its labels -100 wherever the mask is 0, so stock
    transformers models and `patch_causal_lm` ones alike train on the answers only."""

    def __call__(self, features: list[dict]) -> dict:
        return collate([Sequence(np.asarray(f["input_ids"], np.uint32), list(f["span_lengths"]),
                                 int(f.get("num_pad", 0)),
                                 None if f.get("loss_mask") is None else np.asarray(f["loss_mask"], np.uint8))
                        for f in features])
