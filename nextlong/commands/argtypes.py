"""Option value types shared by the sub-commands, so a bad value is a one-line usage error (exit 2)
before any work starts, and `--threads` means the same everywhere.

    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--threads", type=threads, default=0, help=THREADS_HELP)
"""

from __future__ import annotations

import argparse

from ..seeds import seed_problem

THREADS_HELP = "worker threads (default 0: all cores this process may use)"


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def threads(text: str) -> int:
    """A thread count: N >= 1 threads, or 0 for all the cores this process may use."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (all cores) or a positive number of threads, got {value}")
    return value


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2**63)."""
    value = _int(text)
    problem = seed_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value
