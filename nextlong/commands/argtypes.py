"""Option value types shared by the sub-commands, so a bad value is a one-line usage error (exit 2)
before any work starts, and `--threads` means the same everywhere.

    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--threads", type=threads, default=0, help=THREADS_HELP)
"""

from __future__ import annotations

import argparse

from ..seeds import seed_problem

THREADS_HELP = "worker threads (default 0: all cores this process may use)"


# Counts and sizes reach native code as size_t/int64 (and --threads as a C int): a larger value was a
# pybind11 TypeError/OverflowError traceback. No count nextlong takes comes near 2**62.
MAX_INT = 2**62
MAX_THREADS = 1024


SPELLINGS = "_spellings"  # the namespace entry OneSpelling keeps; cli.main removes it after parsing


class OneSpelling(argparse.Action):
    """An option with two spellings (`--max-len`/`--chunk-size`). argparse lets the last one given win
    without a word, so `--chunk-size 128 --max-len 256` chunked at 256; naming both is refused instead
    (one spelling given twice keeps argparse's rule: the last wins)."""

    def __call__(self, parser, namespace, values, option_string=None):
        first = vars(namespace).setdefault(SPELLINGS, {}).setdefault(self.dest, option_string)
        if first != option_string:
            parser.error(f"{first} and {option_string} are one option: give it once")
        setattr(namespace, self.dest, values)


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _int(text: str) -> int:
    value = _parse_int(text)
    if value > MAX_INT:
        raise argparse.ArgumentTypeError(f"must be at most 2**62 ({MAX_INT}), got {text[:40]}"
                                         f"{'...' if len(text) > 40 else ''}")
    return value


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
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS} threads, got {value}")
    return value


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2**63)."""
    value = _parse_int(text)
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


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers, sorted without repeats (--lengths)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sorted(set(values))


def near_dup_threshold(text: str) -> float:
    """--near-dup-threshold: a Jaccard in [0, 1], or off (= 0)."""
    if text.strip().lower() == "off":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or off, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or off, got {text!r}")
    return value


def unescape(text: str) -> str:
    """Shell-friendly escapes in --separator: \\n, \\t, \\\\ (other text is taken as is)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
