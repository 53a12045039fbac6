"""The local executor: runs a Pipeline in this process, block by block (protocol: ../framework.py).

Parallelism lives inside the stages (the native chunker's threads, torch's, numba's); here reading the
corpus overlaps chunking (a prefetch thread), split after split (nextlong/synthesis/read.py). Consecutive map stages that read each other's blocks run
as one chain, block by block, so a `--num-samples` cut after them stops the chain early.
"""

from __future__ import annotations

import time
from typing import ClassVar

from ...corpus.split import DEFAULT_SPLIT_BYTES
from ..framework import (Executor, Pipeline, StageContext, block_done, chain_work, finish_map_chain, map_block,
                         spilled_rows)


class LocalExecutor(Executor):
    name: ClassVar[str] = "local"

    def __init__(self, threads: int | None = None, corpus_block_docs: int = 1024,
                 corpus_block_bytes: int = 4 << 20, corpus_split_bytes: int = DEFAULT_SPLIT_BYTES):
        self.threads = threads
        self.corpus_split_bytes = corpus_split_bytes
        self.corpus_block_docs = corpus_block_docs
        self.corpus_block_bytes = corpus_block_bytes

    def build_whole(self, stage, ctx: StageContext) -> dict:
        return stage.build(ctx)

    # --- the corpus into the first map stage ---------------------------------------------------

    def read_and_map(self, pipeline: Pipeline, fps, source, ctx: StageContext) -> dict:
        started = time.perf_counter()  # the plan's and the setup's seconds go to the first block made
        from ..progress import advance, corpus_bar
        from ..read import CorpusRead, finish_read, map_split

        read = CorpusRead(source, split_bytes=self.corpus_split_bytes, block_docs=self.corpus_block_docs,
                          block_bytes=self.corpus_block_bytes)
        splits = read.plan()
        ctx.stage.setup(ctx)
        with corpus_bar(ctx) as bar:
            for s, split in enumerate(splits):
                map_split(ctx, read, s, split, on_block=lambda docs, reused: advance(bar, docs, reused), since=started)
                started = None
        return finish_read(ctx, read, splits)

    # --- map chains ----------------------------------------------------------------------------

    def run_chain(self, pipeline: Pipeline, fps, chain: list[StageContext], cut: int | None) -> dict[str, dict]:
        started = time.perf_counter()  # the setup's seconds go to the first block made
        from ..progress import ChainProgress, input_rows

        results, todo, num_blocks = chain_work(chain)
        if not todo:
            return results
        source = todo[0].input(todo[0].stage.inputs[0])
        for ctx in todo:
            ctx.stage.setup(ctx)
        rows = 0
        stopped = None
        first = todo[0].stage
        with ChainProgress([c.stage.name for c in todo], first.progress_unit, input_rows(source, num_blocks), cut,
                           todo[0].progress, first=first) as bar:
            for j in range(num_blocks):
                reused = all(block_done(ctx, j) for ctx in todo)
                bar.begin(j, 0 if reused or block_done(todo[0], j) else spilled_rows(todo[0], j))
                last = map_block(todo, j, since=None if reused else started)
                started = started if reused else None
                rows += last
                bar.block_done(j, last, reused)
                if cut is not None and rows >= cut:
                    stopped = j + 1
                    break
        results.update(finish_map_chain(todo, num_blocks, stopped))
        return results
