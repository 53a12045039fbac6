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
        from ..extras import missing_modules_error

        raise missing_modules_error("drawing the PNGs", ["matplotlib"]) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    """Write `fig` as a PNG at `path` (atomically) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _annotated(ax, matrix, fmt="{:.0f}"):
    """Each score written on its cell of a 0..100 RdYlGn map: white on the dark red and green ends, black on
    the light middle (black on dark red was hard to read, and a model that scores 0 everywhere is common)."""
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value is not None and value == value:
                ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=7,
                        color="white" if value < 20 or value > 85 else "black")


def length_depth_heatmap(path, task: str, lengths: Sequence[int], depths: Sequence, panels: dict[str, list[list]]):
    """One panel per score (e.g. greedy, teacher-forced EM), rows = lengths, columns = depths, 0..100."""
    return _save(length_depth_figure(task, lengths, depths, panels), path)


def length_depth_figure(task: str, lengths: Sequence[int], depths: Sequence, panels: dict[str, list[list]]):
    """The figure of `length_depth_heatmap`. Constrained layout places the task's title above the panels'
    and the colour bar beside them, and the panels share the length axis, labelled once on the left:
    with one length a fixed title position and per-panel labels overlapped."""
    plt = _pyplot()
    import numpy as np

    panel_width = max(2.8, 1.4 + 0.6 * len(depths))
    fig, axes = plt.subplots(1, len(panels), figsize=(0.8 + panel_width * len(panels), 1.6 + 0.4 * len(lengths)),
                             squeeze=False, sharey=True, layout="constrained")
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
        else:
            ax.tick_params(labelleft=False)
        ax.set_title(name, fontsize=9)
    fig.suptitle(task, fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="score (0-100)")
    return fig


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
    return _save(fig, path)


def repeat_gain(path, rows: Sequence[dict], title: str):
    """Loss of the first and second copy by distance (`nextlong.eval.repeat` summaries)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = [r["distance"] for r in rows]
    ax.plot(xs, [r["first"] for r in rows], marker="o", lw=1, label="first copy")
    ax.plot(xs, [r["second"] for r in rows], marker="o", lw=1, label="second copy")
    ax.set_xscale("log", base=2)
    ax.ticklabel_format(axis="y", useOffset=False)  # nearly equal losses: no "+1.12e1" offset to add in one's head
    ax.set_xlabel("distance to the earlier copy (tokens)")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def head_heatmap(path, scores, title: str, *, diverging: bool = False):
    """Layers (rows) x query heads (columns): retrieval scores, or B - A of two runs (`diverging`)."""
    return _save(head_figure(scores, title, diverging=diverging), path)


def head_figure(scores, title: str, *, diverging: bool = False):
    """The figure of `head_heatmap`. Scores (fractions of the needle copied) on a fixed 0..1 scale, so
    maps of two runs compare by eye and an all-zero map has a readable colour bar; differences on a scale
    symmetric around 0. A map with nothing on it says so in words."""
    plt = _pyplot()
    import numpy as np

    data = np.asarray(scores, dtype=float)
    layers, heads = data.shape
    # capped: a model of hundreds of heads still gives a figure that fits in memory (labels thin out below)
    width, height = max(4.0, 1.5 + 0.25 * heads), max(2.5, 1.2 + 0.22 * layers)
    fig, ax = plt.subplots(figsize=(min(40.0, width), min(30.0, height)))
    if diverging:
        bound = float(np.abs(data).max()) or 1.0
        im = ax.imshow(data, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    else:
        im = ax.imshow(data, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    if not data.any():
        ax.text(0.5, 0.5, "no difference between the runs" if diverging else "no retrieval head found",
                transform=ax.transAxes, ha="center", va="center", fontsize=10,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9})
    step_h, step_l = max(1, heads // 16), max(1, layers // 16)
    ax.set_xticks(range(0, heads, step_h))
    ax.set_yticks(range(0, layers, step_l))
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8, label="score B - A" if diverging else "retrieval score")
    return fig
