"""`nextlong.parallel.ulysses_attention` with gloo on CPU, 2 and 4 processes: each rank's output and the
gradients of its q, k, v slices equal single-process attention on the whole packed sequence (fp32,
1e-5), with document boundaries inside and across the ranks' slices, grouped-query heads split or
repeated, a sliding window, and our flash_attn_varlen_func or any function of its signature."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import free_port

LENGTHS = [5, 20, 3, 20]  # 48 tokens: boundaries fall inside and across the 24- or 12-token slices


def _worker(rank, world, port, cases):
    """Each of `cases` (kv heads, window, attention function, rows) in turn, in one process group: a process
    start (torch, nextlong's kernels) costs more than a case, so the cases of a world size share their ranks."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for case in cases:
            _check_case(rank, world, *case)
    finally:
        dist.destroy_process_group()


def _check_case(rank, world, kv_heads, window, attn_name, rows):
    from nextlong.kernels import cu_seqlens_from_lengths, flash_attention, flash_attn_varlen_func
    from nextlong.parallel import ulysses_attention

    g = torch.Generator().manual_seed(0)
    total, heads, dim = sum(LENGTHS) * rows, 4, 16
    q = torch.randn(total, heads, dim, generator=g)
    k = torch.randn(total, kv_heads, dim, generator=g)
    v = torch.randn(total, kv_heads, dim, generator=g)
    grad = torch.randn(total, heads, dim, generator=g)
    cu = cu_seqlens_from_lengths(LENGTHS * rows)
    # the reference: one process, the whole sequence
    full = [x.clone().requires_grad_() for x in (q, k, v)]
    ref = flash_attention(*full, causal=True, cu_seqlens=cu, window=None if window is None else (window, 0))
    ref_grads = torch.autograd.grad((ref * grad).sum(), full)
    # this rank's slice of every row: (rows, S / world, heads, dim), or (S / world, heads, dim) for one row
    n = total // rows // world
    part = slice(rank * n, (rank + 1) * n)

    def mine(x):
        x = x.reshape(rows, total // rows, *x.shape[1:])[:, part]
        return x if rows > 1 else x[0]

    local = [mine(x).clone().requires_grad_() for x in (q, k, v)]
    calls = []

    def counting(*args, **kwargs):  # any function of flash_attn_varlen_func's signature
        calls.append(args[0].shape)
        return flash_attn_varlen_func(*args, **kwargs)

    out = ulysses_attention(*local, cu, causal=True, window_size=(-1, -1) if window is None else (window, 0),
                            attn_fn=None if attn_name == "default" else counting)
    grads = torch.autograd.grad((out * mine(grad)).sum(), local)
    case = f"{world} ranks, {kv_heads} kv heads, window {window}, {attn_name}, {rows} row(s), rank {rank}"
    close = dict(atol=1e-5, rtol=1e-5, msg=lambda m: f"{case}: {m}")
    torch.testing.assert_close(out, mine(ref), **close)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, mine(want), **close)
    if attn_name == "counting":  # attention ran on every token of this rank's heads
        assert calls == [torch.Size([total, heads // world, dim])], case


# Per world size: (kv heads, window, attention function, rows).
CASES = {2: [(2, None, "default", 1),    # kv heads split with the query heads
             (1, 6, "counting", 1),      # one kv head: repeated; a sliding window
             (2, None, "counting", 3)],  # three rows, each split over the ranks (a micro-batch of 3 sequences)
         4: [(2, None, "counting", 1),   # 2 kv heads over 4 ranks: repeated
             (4, 6, "default", 1)]}


@pytest.mark.parametrize("world", sorted(CASES))
def test_ulysses_equals_one_process(world):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, free_port(), CASES[world]), nprocs=world, join=True)


def test_heads_that_do_not_split_are_refused(monkeypatch):
    import torch.distributed as dist

    from nextlong.kernels import cu_seqlens_from_lengths
    from nextlong.parallel import ulysses_attention

    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)
    q = torch.zeros(16, 4, 16)
    with pytest.raises(ValueError, match="4 query heads cannot be split over 3 ranks"):
        ulysses_attention(q, q, q, cu_seqlens_from_lengths([48]))
    q = torch.zeros(16, 3, 16)
    with pytest.raises(ValueError, match="3 ranks x 16 local tokens != 50"):
        ulysses_attention(q, q, q, cu_seqlens_from_lengths([50]))


@pytest.mark.parametrize("extra,message", [
    ([], "the 1 process(es) do not split into groups of 2"),
    (["--attention", "sdpa"], "it runs our attention (--attention nextlong), not sdpa"),
    (["--seq-len", "255"], "--seq-len 255 does not split into 2 equal slices"),
])
def test_train_refuses_what_sequence_parallelism_cannot_run(tmp_path, capsys, extra, message):
    """One line before any work (here without torchrun, so the world of 1 is the first thing refused)."""
    from nextlong.cli import main
    from tests.train_support import SAMPLE_LEN, synthesized

    argv = ["train", str(synthesized("standard")), "--out", str(tmp_path / "run"), "--model", "tiny", "--steps", "1",
            "--seq-len", str(SAMPLE_LEN), "--seq-parallel", "2", "--split-spans", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nextlong train: error: --seq-parallel 2:") and len(err.splitlines()) == 1
    assert message in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_split_for_rank_refuses_a_sequence_that_does_not_split_evenly():
    """The tail past the last whole slice went to no rank, in silence (the trainer checks first; the helper is
    exported for other stacks)."""
    from nextlong.parallel import split_for_rank

    batch = {k: torch.zeros(1, 10, dtype=torch.long) for k in ("input_ids", "position_ids", "labels")}
    with pytest.raises(ValueError, match="10 tokens does not split into 3 equal slices"):
        split_for_rank(batch, 0, 3)
    assert split_for_rank(batch, 1, 2)["input_ids"].shape == (1, 5)
