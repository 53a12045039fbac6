"""`nextlong plot RUN`: draw a training run's loss curve (RUN/loss.png) from RUN/metrics.jsonl."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="draw a training run's loss curve (RUN/loss.png)",
                              description="Draw loss and learning rate against step from RUN/metrics.jsonl into "
                                          "RUN/loss.png (works while the run is still training).")
    p.add_argument("run", help="run folder of nextlong train")
    p.add_argument("--out", help="PNG path (default RUN/loss.png)")
    p.set_defaults(func=run)


def requirements(args: argparse.Namespace) -> tuple[str, ...]:
    return ("matplotlib",)


def run(args: argparse.Namespace) -> int:
    from ..train.plot import plot_loss

    print(plot_loss(args.run, args.out))
    return 0
