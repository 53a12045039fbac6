"""An interrupted embedding resumes within its block (audit s12 finding 2: Ctrl-C at `embed: 43% 512/1202` kept
nothing, and the rerun embedded all 1,202 chunks again). The embed stage spills its finished batches
(synthesis/spill.py); a resumed run reads them back instead of embedding them again, and ends with the same
bytes as an uninterrupted run. A damaged spill, or one of other settings, is redone, never used."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nextlong.mining.lexical_embedding import HashedLexicalEmbedder
from nextlong.synthesis.executors.local import LocalExecutor
from nextlong.synthesis.framework import DONE_FILE, block_record_path, read_done
from nextlong.synthesis.spill import MAGIC, SPILL_DIR
from tests.helpers import BarRecorder, corpus_head, embed_pipeline, write_jsonl

BLOCK_DOCS = 5  # the 10 documents in two corpus blocks: block 0 is finished when block 1 is interrupted


def _executor():
    return LocalExecutor(corpus_block_docs=BLOCK_DOCS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (the bytes every resumed run must give), and the corpus."""
    root = tmp_path_factory.mktemp("embed_resume")
    corpus = write_jsonl(root / "docs.jsonl", corpus_head(60_000))
    _executor().run(embed_pipeline(root / "ref", corpus), progress=False)
    return root / "ref", corpus


@pytest.fixture
def work(reference, tmp_path):
    """A copy of the reference run's folder without its embedding stages (chunking is not redone per test)."""
    ref, corpus = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out, ignore=lambda d, names: [n for n in names if Path(d) == ref
                                                       and n in ("embed", "embeddings")])
    return out, corpus


@pytest.fixture
def embeds(monkeypatch):
    """Counts the embedder's calls (one per batch); `stop` = k makes the k-th call raise KeyboardInterrupt."""
    real, calls = HashedLexicalEmbedder.embed, {"n": 0, "stop": None}

    def counting(self, texts):
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise KeyboardInterrupt
        return real(self, texts)

    monkeypatch.setattr(HashedLexicalEmbedder, "embed", counting)
    return calls


def _batches(out, batch_size=8):
    """Batches of each embed block (rows of the chunk stage's parts)."""
    blocks = int(read_done(out / "chunk" / DONE_FILE)["counts"]["blocks"])
    return [math.ceil(pq.ParquetFile(out / "chunk" / f"part-{j:05d}.parquet").metadata.num_rows / batch_size)
            for j in range(blocks)]


def _interrupt(out, corpus, embeds, after: int, batch_size=8):
    """A run stopped (KeyboardInterrupt) in the embedder's batch `after + 1` of block 1."""
    first = _batches(out, batch_size)[0]
    embeds.update(n=0, stop=first + after + 1)
    with pytest.raises(KeyboardInterrupt):
        _executor().run(embed_pipeline(out, corpus, batch_size), progress=False)
    embed = out / "embed"
    assert read_done(block_record_path(embed, 0)) is not None and read_done(block_record_path(embed, 1)) is None
    spills = list((embed / SPILL_DIR).glob("part-00001.*.spill"))
    assert len(spills) == 1
    return spills[0]


def _resume(out, corpus, embeds, batch_size=8, progress=False):
    embeds.update(n=0, stop=None)
    _executor().run(embed_pipeline(out, corpus, batch_size), progress=progress)
    return embeds["n"]


def _same_as_reference(out, ref):
    assert (out / "embeddings" / "embeddings.npy").read_bytes() == (ref / "embeddings" / "embeddings.npy").read_bytes()
    for j in range(len(_batches(ref))):
        name = f"embed/part-{j:05d}.parquet"
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    counts = [read_done(root / "embed" / DONE_FILE)["counts"] for root in (out, ref)]
    assert counts[0] == counts[1]
    assert not (out / "embed" / SPILL_DIR).exists(), "the spills go once the stage is done"


def test_an_interrupted_block_resumes_from_its_spilled_batches(reference, work, embeds):
    out, corpus = work
    batches = _batches(out)
    assert len(batches) == 2 and batches[1] > 5
    _interrupt(out, corpus, embeds, after=3)
    calls = _resume(out, corpus, embeds)
    # before: block 1 embedded whole again (batches[1] calls); now only its batches after the 3 kept
    assert calls == batches[1] - 3
    _same_as_reference(out, reference[0])


@pytest.mark.parametrize("damage", ["flipped byte", "torn record", "foreign header"])
def test_a_damaged_spill_is_redone_not_used(reference, work, embeds, damage):
    out, corpus = work
    batches = _batches(out)
    spill = _interrupt(out, corpus, embeds, after=3)
    blob = bytearray(spill.read_bytes())
    if damage == "flipped byte":  # in the first record's vectors: its CRC fails, nothing of the spill is used
        first = blob.index(b"\n", len(MAGIC)) + 1  # after the JSON header line: the first record
        state_bytes = int.from_bytes(blob[first:first + 8], "little")
        blob[first + 20 + state_bytes + 100] ^= 0x40
        kept = 0
    elif damage == "torn record":  # the last append cut short (a kill during write): the two before it are kept
        del blob[-7:]
        kept = 2
    else:
        blob[:8] = b"NOTSPILL"
        kept = 0
    spill.write_bytes(bytes(blob))
    calls = _resume(out, corpus, embeds)
    assert calls == batches[1] - kept
    _same_as_reference(out, reference[0])


@pytest.mark.parametrize("rows, state", [(5, {"rows": 5}), (8, {"rows": 9})])
def test_a_spill_whose_records_are_not_whole_batches_is_redone(reference, work, embeds, rows, state):
    """A spill of this block and settings whose record is not a whole batch (5 rows in batches of 8), or whose
    state counts other rows than it holds: not the batches an uninterrupted run embeds, so the block is
    embedded again whole (the key alone cannot tell: it matches)."""
    from nextlong.synthesis.spill import BlockSpill

    out, corpus = work
    spill = _interrupt(out, corpus, embeds, after=3)
    crafted = BlockSpill(spill, spill.name.split(".")[1])
    vectors = np.concatenate([part for _, part in crafted.load(64)])
    crafted.clear()
    crafted.append(vectors[:rows], dict(state, windowed=0))
    assert _resume(out, corpus, embeds) == _batches(out)[1]
    _same_as_reference(out, reference[0])


def _crafted(spill, state: bytes, rows: np.ndarray, **header) -> None:
    """Rewrite `spill` as one record of `state` and `rows`, its CRC32 valid, under its header changed by `header`."""
    import struct
    import zlib

    blob = spill.read_bytes()
    end = blob.index(b"\n", len(MAGIC)) + 1
    head = dict(json.loads(blob[len(MAGIC):end]), **header)
    body = state + rows.tobytes()
    spill.write_bytes(MAGIC + json.dumps(head, sort_keys=True).encode() + b"\n"
                      + struct.pack("<QQI", len(state), len(rows.tobytes()), zlib.crc32(body)) + body)


CRAFTED = {  # each with a valid CRC32: before, a traceback (or the -1000 in the manifest); now the block is redone
    "state nested 200,000 deep": (b"[" * 200_000 + b"]" * 200_000, {}),  # RecursionError
    "state a list": (b"[8]", {}),  # AttributeError
    "windowed a string": (b'{"rows": 8, "windowed": "x"}', {}),  # ValueError
    "windowed negative": (b'{"rows": 8, "windowed": -1000}', {}),  # kept as chunks_windowed -1000 + the rest
    "header width 0": (b'{"rows": 8}', {"width": 0}),  # ZeroDivisionError from the progress bar's count
    "header width -1": (b'{"rows": 8}', {"width": -1}),  # a reshape ValueError there
    "header dtype object": (b'{"rows": 8}', {"dtype": "|O"}),  # "cannot create an OBJECT array" there
    "header width infinite": (b'{"rows": 8}', {"width": float("inf")}),  # an OverflowError there (attack s14 #2)
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_crafted_spill_is_redone_never_a_traceback(reference, work, embeds, case):
    """A spill someone else crafted, its records' CRC32 valid (it checks out byte by byte), with a state or header
    no run writes: read as no spill (the block is embedded again whole), by the stage and by the bar's count."""
    out, corpus = work
    spill = _interrupt(out, corpus, embeds, after=3)
    state, header = CRAFTED[case]
    _crafted(spill, state, np.zeros((8, 64), "<f4"), **header)
    assert _resume(out, corpus, embeds) == _batches(out)[1]
    _same_as_reference(out, reference[0])


def test_a_damaged_tail_is_cut_off_before_the_next_record(work, embeds):
    """A spill whose valid records are followed by junk longer than a record (a damaged tail): the next append
    cuts the junk off, so the spill holds its records and nothing after them, and is read back whole."""
    from nextlong.synthesis.spill import BlockSpill

    out, corpus = work
    spill = _interrupt(out, corpus, embeds, after=3)
    valid = spill.read_bytes()
    spill.write_bytes(valid + b"\x00junk" * 2000)
    embeds.update(n=0, stop=2)  # the resumed run embeds one batch, spills it, and is stopped in the next
    with pytest.raises(KeyboardInterrupt):
        _executor().run(embed_pipeline(out, corpus), progress=False)
    said = []
    records = BlockSpill(spill, spill.name.split(".")[1], log=said.append).load(64)
    assert [state["rows"] for state, _ in records] == [8, 16, 24, 32] and said == []
    record = 20 + len(json.dumps({"rows": 32, "windowed": 0})) + 8 * 64 * 4  # <QQI, state, 8 rows of 64 floats
    assert spill.stat().st_size == len(valid) + record


def test_the_windowed_count_of_spilled_batches_is_kept(work, embeds, monkeypatch):
    """An embedder that windows long texts counts them (the manifest's chunks_windowed): a resumed block adds
    the count its spilled batches recorded to its own. Here every text counts as windowed."""
    real = HashedLexicalEmbedder.embed

    def windowing(self, texts):
        self.windowed_texts = getattr(self, "windowed_texts", 0) + len(texts)
        return real(self, texts)

    monkeypatch.setattr(HashedLexicalEmbedder, "embed", windowing)
    out, corpus = work
    _interrupt(out, corpus, embeds, after=3)
    _resume(out, corpus, embeds)
    rows = pq.ParquetFile(out / "chunk" / "part-00001.parquet").metadata.num_rows
    assert read_done(block_record_path(out / "embed", 1))["counts"]["windowed"] == rows


def test_a_spill_of_other_settings_is_never_read(reference, work, embeds):
    """A spill made with batches of 8 is not resumed in batches of 4 (its batches would not be the ones an
    uninterrupted run embeds): block 1 is embedded again whole, and the old spill deleted. Each of its records
    ends on a whole batch of 4, so only the spill's key refuses it (resumed in batches of 16, the row check
    did: its first record ends at row 8)."""
    out, corpus = work
    old = _interrupt(out, corpus, embeds, after=3, batch_size=8)
    calls = _resume(out, corpus, embeds, batch_size=4)
    assert calls == _batches(out, 4)[1] and not old.exists()
    _same_as_reference(out, reference[0])


def test_the_bar_counts_spilled_chunks_as_done_not_as_this_runs_work(reference, work, embeds, monkeypatch):
    import tqdm.auto

    out, corpus = work
    rows = [pq.ParquetFile(out / "chunk" / f"part-{j:05d}.parquet").metadata.num_rows for j in range(2)]
    _interrupt(out, corpus, embeds, after=3)
    monkeypatch.setattr(tqdm.auto, "tqdm", BarRecorder)
    BarRecorder.seen = []
    _resume(out, corpus, embeds, progress=True)
    (bar,) = [b for b in BarRecorder.seen if b.desc == "embed"]
    # block 0 (finished) and the 24 spilled chunks of block 1 are where the bar starts; it ends at its total
    assert (bar.initial, bar.n, bar.total) == (rows[0] + 3 * 8, sum(rows), sum(rows))


_CHILD = """
import sys, time
from nextlong.mining.lexical_embedding import HashedLexicalEmbedder
from nextlong.synthesis.executors.local import LocalExecutor
from tests.helpers import embed_pipeline

real = HashedLexicalEmbedder.embed
def slow(self, texts):
    time.sleep(0.15)  # a batch of a real model takes seconds: the kill lands within a block
    return real(self, texts)
HashedLexicalEmbedder.embed = slow
LocalExecutor(corpus_block_docs=int(sys.argv[3])).run(embed_pipeline(sys.argv[1], sys.argv[2]), progress=False)
"""


def _spilled(path) -> int:
    from nextlong.synthesis.spill import BlockSpill

    return BlockSpill(path, path.name.split(".")[1]).rows()  # part-NNNNN.KEY.spill


def test_a_run_killed_with_sigkill_mid_block_resumes_from_its_spill(reference, work, embeds):
    out, corpus = work
    batches = _batches(out)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out), str(corpus), str(BLOCK_DOCS)], env=env,
                             cwd=root, stderr=subprocess.PIPE)
    spilled, deadline = 0, time.monotonic() + 60
    try:
        while spilled < 2 * 8 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
            found = list((out / "embed" / SPILL_DIR).glob("part-00001.*.spill"))
            spilled = _spilled(found[0]) if found else 0
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
        err = child.stderr.read().decode()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL, err
    spill = next((out / "embed" / SPILL_DIR).glob("part-00001.*.spill"))
    kept = _spilled(spill) // 8
    assert 2 <= kept < batches[1] and read_done(block_record_path(out / "embed", 1)) is None
    assert _resume(out, corpus, embeds) == batches[1] - kept
    _same_as_reference(out, reference[0])
