"""The copy curriculum and the copy gate of the NExtLong-vs-standard experiment (its design: README.md, "Experiment").

Length extension can only teach a model to *reach further* with a retrieval mechanism it already has; a
small model pre-trained on a few million tokens of natural text has none (its repeat gain stays within
0.2 nats of 0 even at 128 tokens). So the base is pre-trained in two stages that make copying pay at
short range, and no arm is trained unless the base copies:

  stage A  rows of pure copy episodes [x ; x], x a run of random token ids (each episode its own
           attention span, so nothing but the first copy predicts the second), constant learning rate:
           an induction mechanism forms within about 2-3 M tokens at 512 tokens of context
  stage B  half natural rows (the training documents joined by <|endoftext|>, cut to the base length),
           half copy rows whose x is random ids or a slice of training text, up to base length / 2 long:
           the mechanism carries over to natural text at every distance the base context holds

The gate: the repeat gain (nextlong.eval.repeat) at D = base length / 2 on the held-out documents must be
<= GATE_NATS. Calibrated on the `cpu` scale's corpus (1 M-parameter Llama, 2 layers): stage A alone gives
about -0.2 to -0.8 at D = 256 on natural text; after 2 M tokens of stage B, -2.4 to -2.7 on three seeds.
Natural-text-only or mixed short-span curricula stayed above -0.8 after 16 M tokens.

Nothing here reads the held-out documents; only the probe does.
"""

from __future__ import annotations

import math
from pathlib import Path

GATE_NATS = -1.0  # the base's repeat gain at D = base length / 2 must be at most this (nats/token)


def gate_distance(base_len: int) -> int:
    return base_len // 2


def gate_passes(gain: float | None) -> bool:
    """True when a measured repeat gain shows copying (a NaN or missing gain never passes)."""
    return gain is not None and math.isfinite(gain) and gain <= GATE_NATS


def natural_rows(docs: list[list[int]], seq_len: int, eot: int) -> list[list[int]]:
    """The documents in order, each followed by `eot`, cut into rows of exactly `seq_len` tokens (the
    tail shorter than a row is dropped)."""
    stream = [t for d in docs for t in (*d, eot)]
    return [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


def copy_rows(docs: list[list[int]], vocab: int, *, rows: int, seq_len: int, span_min: int, span_max: int,
              random_share: float, seed: int) -> tuple[list[list[int]], list[list[dict]], dict]:
    """`rows` rows of exactly `seq_len` tokens, each filled with copy episodes [x ; x] (|x| log-uniform in
    span_min..span_max, capped by the room left) and, when less than 2 * span_min tokens remain, a slice of
    training text. x is `random_share` of the time random ids in [1, vocab), otherwise a slice of a training
    document. Returns (token rows, segments per row as nextlong's Parquet `segments` column wants them:
    one span per episode, stats)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = [np.asarray(d, np.int64) for d in docs]
    lengths = np.asarray([len(d) for d in arrays])
    if not len(arrays) or lengths.max() < seq_len:
        raise ValueError(f"copy curriculum: no training document has {seq_len} tokens")

    def text(n: int):
        pick = np.nonzero(lengths >= n)[0]
        d = arrays[int(rng.choice(pick))]
        start = int(rng.integers(0, len(d) - n + 1))
        return d[start:start + n]

    out_ids, out_segs = [], []
    stats = {"episodes": 0, "random_episodes": 0, "text_episodes": 0, "copied_tokens": 0}
    for r in range(rows):
        parts, segs, used = [], [], 0
        while used < seq_len:
            room = seq_len - used
            if room < 2 * span_min:
                parts.append(text(room))
                segs.append({"start": used, "end": seq_len, "doc_id": f"c{r}-fill"})
                break
            hi = min(span_max, room // 2)
            n = hi if hi <= span_min else int(round(math.exp(rng.uniform(math.log(span_min), math.log(hi)))))
            if rng.random() < random_share:
                x = rng.integers(1, vocab, n)
                stats["random_episodes"] += 1
            else:
                x = text(n)
                stats["text_episodes"] += 1
            parts.append(np.concatenate([x, x]))
            segs.append({"start": used, "end": used + 2 * n, "doc_id": f"c{r}-{len(segs)}"})
            used += 2 * n
            stats["episodes"] += 1
            stats["copied_tokens"] += n
        row = np.concatenate(parts)
        assert len(row) == seq_len
        out_ids.append(row.tolist())
        out_segs.append(segs)
    stats["copied_share"] = stats["copied_tokens"] / max(1, rows * seq_len)
    return out_ids, out_segs, stats


def write_rows(path: Path, rows: list[list[int]], segments: list[list[dict]] | None = None) -> None:
    """Token rows (and their spans) as the Parquet nextlong train reads, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nextlong.atomic import atomic_path

    columns = {"input_ids": pa.array(rows, type=pa.list_(pa.uint32()))}
    if segments is not None:
        seg = pa.struct([pa.field("start", pa.int64()), pa.field("end", pa.int64()), pa.field("doc_id", pa.string())])
        columns["segments"] = pa.array(segments, type=pa.list_(seg))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp, row_group_size=256)
