"""The progress bar of a chain of map stages (stage.map_chain), shared by the executors, so that it counts
the real work and ends at its total when the chain is done.

It counts the rows of the chain's input blocks (embed: chunks; plan -> assemble: synthesis units), not
the blocks: one block can take minutes (the whole demo corpus is one block of 1,202 chunks to embed),
and a stage that reports its rows as it goes (`MapStage.on_rows`) moves the bar within a block; the rows a
spill (spill.py) holds from an interrupted run count as done when the block starts, not as this run's work. A chain
that feeds the `--num-samples` cut stops once the finished prefix of its blocks holds that many rows
(protocol item 7): its bar counts those output rows up to the cut instead, as a count of its input
would stop short of its total.
"""

from __future__ import annotations

from .framework import FinishedPrefix, block_path


def corpus_bar(ctx):
    """The bar of the corpus read into the first map stage: documents, whose number is known only once
    they are read (the splits are planned from file sizes)."""
    from tqdm.auto import tqdm

    return tqdm(desc=ctx.stage.name, unit="doc", disable=not ctx.progress)


def advance(bar, n: int, reused: bool = False) -> None:
    """Move `bar` on by `n`. `reused`: work an earlier run finished (a resumed run finds it done): the bar starts
    further on, and its rate counts this run's work only (counted as this run's, a resumed bar raced through
    what was done at reading speed)."""
    if not reused:
        bar.update(n)
    elif n and not bar.disable:
        bar.initial += n
        bar.n += n
        bar.last_print_n = bar.n
        bar.refresh()


def input_rows(folder, num_blocks: int) -> list[int]:
    """Rows of each input block of a chain, from the Parquet footers (0 where an empty block has no part).
    A part that is no Parquet file (damaged since its stage finished) is named here, before any block runs."""
    from .parts import part_rows

    paths = [block_path(folder, j) for j in range(num_blocks)]
    return [part_rows(p) if p.exists() else 0 for p in paths]


class ChainProgress:
    """A tqdm bar over a chain's input rows (or its output rows up to `cut`). Use as a context manager and
    call `begin` as a block starts and `block_done` as it goes through the chain (in any order). `first`: the
    chain's first stage when it runs in this process; its `on_rows` then moves the bar within a block, until the
    bar closes."""

    def __init__(self, names: list[str], unit: str, sizes: list[int], cut: int | None, enabled: bool,
                 first=None):
        from tqdm.auto import tqdm

        self.sizes, self.cut, self.first = sizes, cut, first
        self.done = 0  # what the bar shows (tqdm keeps no count when disabled)
        self.partial: dict[int, int] = {}  # block -> its input rows counted before it finished
        self.current = None  # the block under way in this process (the first stage's on_rows count toward it)
        self.kept = FinishedPrefix()  # what the cut counts
        self.bar = tqdm(total=sum(sizes) if cut is None else cut, desc=" -> ".join(names),
                        unit=unit if cut is None else "doc", disable=not enabled)

    def __enter__(self) -> "ChainProgress":
        if self.first is not None:
            self.first.on_rows = self.rows
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.first is not None:
            self.first.on_rows = None
        if exc_type is None and self.cut is not None and self.done < self.cut:  # every block done, fewer
            self.bar.total = self.done  # rows than the cut asked for: the bar ends at what there is (the run warns)
            self.bar.refresh()
        self.bar.close()

    def _advance(self, n: int, reused: bool = False) -> None:
        self.done += n
        if not self.bar.disable:
            advance(self.bar, n, reused)

    def begin(self, block: int, resumed: int = 0) -> None:
        """Block `block` starts (in this process: the first stage's `rows` now count toward it); `resumed` of its
        input rows were finished by an earlier run (its spill, framework.spilled_rows): done, not this run's work."""
        self.current = block
        if self.cut is None and resumed:
            self.partial[block] = self.partial.get(block, 0) + resumed
            self._advance(resumed, reused=True)

    def rows(self, n: int) -> None:
        """`n` more input rows of the block under way are done (the first stage calls this as it goes)."""
        if self.cut is None:
            self.partial[self.current] = self.partial.get(self.current, 0) + n
            self._advance(n)

    def block_done(self, block: int, rows: int, reused: bool = False) -> None:
        """Block `block` went through the chain; its last stage wrote `rows` rows. `reused`: an earlier run
        did (a resumed run finds it done)."""
        if self.cut is None:
            self._advance(self.sizes[block] - self.partial.pop(block, 0), reused)
        else:
            self.kept.add(block, rows)
            self._advance(min(self.kept.rows, self.cut) - self.done, reused)
