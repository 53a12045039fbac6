"""The PNGs of `nextlong eval` and `nextlong heads` stay readable: an all-zero head map says what it
shows on a real colour scale, and no two labels of a heat map overlap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from nextlong.eval import plots  # noqa: E402


def texts(fig) -> list:
    """The visible, non-empty texts of a drawn figure."""
    from matplotlib.text import Text

    fig.canvas.draw()
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def test_all_zero_head_scores_say_so_on_a_fixed_scale(tmp_path):
    fig = plots.head_figure(np.zeros((2, 4)), "retrieval scores (0/8 trials counted; 0 heads > 0.1)")
    assert "no retrieval head found" in [t.get_text() for t in texts(fig)]
    image = fig.axes[0].images[0]
    assert (image.norm.vmin, image.norm.vmax) == (0, 1)  # was 0 .. 1e-9, drawn as an offset over the labels
    assert plots.head_heatmap(tmp_path / "heads.png", np.zeros((2, 4)), "t").stat().st_size > 0
    some = plots.head_figure(np.full((2, 4), 0.3), "t")
    assert "no retrieval head found" not in [t.get_text() for t in texts(some)]


@pytest.mark.parametrize("make", [
    # what `nextlong eval --lengths 1024 --depths 2` draws: the task's title sat on the second panel's
    lambda: plots.length_depth_figure("niah_single_1", [1024], [0.0, 100.0],
                                      {"greedy": [[0.0, 100.0]], "teacher-forced EM": [[0.0, 0.0]]}),
    lambda: plots.length_depth_figure("vt", [1024 << i for i in range(8)], [None],
                                      {"greedy": [[50.0]] * 8, "teacher-forced EM": [[100.0]] * 8}),
    lambda: plots.head_figure(np.random.default_rng(0).random((80, 64)), "retrieval scores"),
], ids=["eval-one-length", "eval-no-depth", "heads-80x64"])
def test_no_two_labels_overlap(make):
    fig = make()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts(fig)]
    assert [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)] == []
