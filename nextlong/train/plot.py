"""RUN/metrics.jsonl (one line per optimizer step) and the loss curve drawn from it (RUN/loss.png)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import NextlongError
from ..untrusted import show

METRICS_FILE = "metrics.jsonl"
# |loss| and |lr| drawn at most this: matplotlib's axis arithmetic overflows near float's own limit (a real
# run logs nothing near it, and a non-finite value as null)
DRAWABLE = 1e300


def _lines(path: Path) -> list[str]:
    """The lines of a run's metrics.jsonl, read only as a regular file (never a link out of the run, a FIFO
    or a device)."""
    from ..untrusted import open_regular

    with open_regular(path, NextlongError, what="not found") as (fh, _):
        return fh.read().decode("utf-8", errors="replace").splitlines()


def has_steps(run) -> bool:
    """Whether RUN/metrics.jsonl records a finished step (a run that failed before one holds none)."""
    path = Path(run) / METRICS_FILE
    if not path.is_file() or path.is_symlink():
        return False
    return any(line.strip() for line in _lines(path))


def read_metrics(run) -> list[dict]:
    """The rows of RUN/metrics.jsonl, each an object with an integer `step` and a finite (or null) loss
    and lr: what the plot draws. A run folder may come from anyone: anything else is one line."""
    path = Path(run) / METRICS_FILE
    if not path.exists() and not path.is_symlink():
        raise NextlongError(f"{path}: not found; is {run} the --out of `nextlong train`?")
    rows = []
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise NextlongError(f"{path}:{n}: not a JSON object") from None
        if not (isinstance(row, dict) and type(row.get("step")) is int and type(row.get("tokens", 0)) is int
                and all(k in row and (row[k] is None or type(row[k]) in (int, float)) for k in ("loss", "lr"))):
            raise NextlongError(f"{path}:{n}: expected an object with an integer step and tokens, and numbers (or "
                                "null) for loss and lr")
        if not 0 <= row["step"] < 1 << 63:
            raise NextlongError(f"{path}:{n}: step {show(row['step'])} is out of range (expected 0 to 2**63-1)")
        for key in ("loss", "lr"):
            if row[key] is not None and not _drawable(row[key]):
                raise NextlongError(f"{path}:{n}: {key} {show(row[key])} is not a finite number of magnitude at "
                                    f"most {DRAWABLE:g} (nextlong train logs a non-finite value as null)")
        rows.append(row)
    return rows


def _drawable(value: float) -> bool:
    try:
        return abs(float(value)) <= DRAWABLE  # False for NaN, Infinity, and an int beyond float's range
    except OverflowError:
        return False


def plot_loss(run, out=None) -> Path:
    """Draw loss (and learning rate) against step into RUN/loss.png (or `out`); returns the path.
    Skipped steps (a non-finite loss, logged as null) are gaps in the curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path

    rows = read_metrics(run)
    if not rows:
        raise NextlongError(f"{Path(run) / METRICS_FILE}: no steps recorded yet")
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [float("nan") if r["loss"] is None else r["loss"] for r in rows], color="tab:blue", lw=1.2,
            label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (weighted CE, nats)", color="tab:blue")
    ax.grid(alpha=0.3)
    lr = ax.twinx()
    lr.plot(steps, [r["lr"] for r in rows], color="tab:orange", lw=1, ls="--", label="learning rate")
    lr.set_ylabel("learning rate", color="tab:orange")
    tokens = rows[-1].get("tokens", 0)
    ax.set_title(f"{Path(run).resolve().name}: {len(rows)} steps, {tokens:,} tokens")
    fig.tight_layout()
    target = Path(out) if out is not None else Path(run) / "loss.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target
