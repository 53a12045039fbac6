"""The random seeds nextlong accepts, in one place: the CLI's `--seed` type and the synthesis, ACER and
training configs (the Python API) refuse the same values, before any work starts."""

from __future__ import annotations

import operator

SEED_LIMIT = 1 << 63  # numpy's and torch's generators take seeds in [0, 2**63)


def seed_problem(value) -> str | None:
    """Why `value` cannot seed every generator nextlong uses (None when it can), so the CLI and the
    Python API refuse a bad seed before any work, not deep in a run."""
    if isinstance(value, bool):
        return f"expected an integer, got {value!r}"
    try:
        value = operator.index(value)  # numpy integers too
    except TypeError:
        return f"expected an integer, got {value!r}"
    if not 0 <= value < SEED_LIMIT:
        return f"must be between 0 and 2**63-1 ({SEED_LIMIT - 1}), got {value}"
    return None
