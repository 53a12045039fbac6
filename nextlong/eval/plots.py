"""Pictures a person reads faster than numbers: length x depth heat maps, the loss-by-position curve,
and the layers x heads retrieval-score map. matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..atomic import atomic_path


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError:
        from ..errors import NextlongError

        raise NextlongError("drawing the PNGs needs matplotlib: pip install 'nextlong[eval]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _annotated(ax, matrix, fmt="{:.0f}"):
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value is not None and value == value:
                ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=7, color="black")


def length_depth_heatmap(path, task: str, lengths: Sequence[int], depths: Sequence, panels: dict[str, list[list]]):
    """One panel per score (e.g. greedy, teacher-forced EM), rows = lengths, columns = depths, 0..100."""
    plt = _pyplot()
    import numpy as np

    panel_width = max(2.8, 1.4 + 0.6 * len(depths))
    fig, axes = plt.subplots(1, len(panels), figsize=(0.8 + panel_width * len(panels), 1.6 + 0.4 * len(lengths)),
                             squeeze=False)
    for k, (ax, (name, matrix)) in enumerate(zip(axes[0], panels.items())):
        data = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
        im = ax.imshow(data, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        _annotated(ax, matrix)
        ax.set_xticks(range(len(depths)), [("-" if d is None else f"{d:g}") for d in depths], fontsize=7)
        ax.set_yticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
        ax.set_xlabel("needle depth (%)" if any(d is not None for d in depths) else "(task without a depth)",
                      fontsize=8)
        if k == 0:
            ax.set_ylabel("length (tokens)", fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.suptitle(task, fontsize=10, y=1.03)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="score (0-100)")
    out = _save(fig, path)
    plt.close(fig)
    return out


def loss_by_position(path, positions: Sequence[float], losses: Sequence[float], title: str, window: int | None = None):
    """Mean loss per position bucket; a vertical line where the short window ends."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(positions, losses, marker=".", lw=1)
    if window:
        ax.axvline(window, color="grey", ls="--", lw=0.8, label=f"short window ({window})")
        ax.legend(fontsize=7)
    ax.set_xlabel("token position")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def repeat_gain(path, rows: Sequence[dict], title: str):
    """Loss of the first and second copy by distance (`nextlong.eval.repeat` summaries)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = [r["distance"] for r in rows]
    ax.plot(xs, [r["first"] for r in rows], marker="o", lw=1, label="first copy")
    ax.plot(xs, [r["second"] for r in rows], marker="o", lw=1, label="second copy")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("distance to the earlier copy (tokens)")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def head_heatmap(path, scores, title: str, *, diverging: bool = False):
    """Layers (rows) x query heads (columns)."""
    plt = _pyplot()
    import numpy as np

    data = np.asarray(scores, dtype=float)
    layers, heads = data.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 1.5 + 0.25 * heads), max(2.5, 1.2 + 0.22 * layers)))
    if diverging:
        bound = float(np.abs(data).max()) or 1.0
        im = ax.imshow(data, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    else:
        im = ax.imshow(data, cmap="viridis", vmin=0, vmax=max(float(data.max()), 1e-9), aspect="auto")
    step_h, step_l = max(1, heads // 16), max(1, layers // 16)
    ax.set_xticks(range(0, heads, step_h))
    ax.set_yticks(range(0, layers, step_l))
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    out = _save(fig, path)
    plt.close(fig)
    return out
