"""Stage 2 of NExtLong: continual pre-training on synthesized long documents with our kernels.

    from nextlong.train import train
    train("demo-out", "demo-run", model="tiny", steps=10)

Modules: `config` (settings), `data` (stream, packer, collator; the transformers Trainer drop-in),
`model` (presets, attention and loss selection), `memory` (settings too large for the machine),
`trainer` (the loop), `checkpoint` (atomic checkpoints, resume, the exported model folder),
`state_file` (checkpoint files that run no code when loaded), `plot` (metrics.jsonl and loss.png).
"""

from __future__ import annotations


def train(data, out, **settings) -> dict:
    from .trainer import train as _train

    return _train(data, out, **settings)


__all__ = ["train"]
