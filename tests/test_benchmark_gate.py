"""The benchmarks' correctness gate: every timed row of the kernel tables is checked against the same inputs
computed in a wider dtype, and a row whose outputs are wrong is called so and recorded as failed, not as a time.
These check that the references are right (against plain autograd in fp64) and that the gate catches the
mistakes a kernel makes (a mask across documents, a dropped scale, a NaN), on tiny CPU inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import gpu_bench as bench  # noqa: F401  (the fixture)


def test_relative_error_and_verdict(bench):
    from _measure import agrees, relative_error, verdict

    ref = [torch.tensor([1.0, -2.0], dtype=torch.float64)]
    assert relative_error([torch.tensor([1.0, -2.1])], ref) == pytest.approx(0.05)
    assert relative_error([torch.tensor([float("nan"), -2.0])], ref) == math.inf
    assert relative_error([torch.tensor([0.5])], [torch.zeros(1, dtype=torch.float64)]) == 0.5  # absolute at 0
    assert agrees(0.05, torch.bfloat16) and not agrees(0.05, torch.float32) and agrees(None, torch.float32) is None
    assert verdict(math.inf, torch.bfloat16).endswith("WRONG") and verdict(None, torch.float32) == "unchecked"


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_reference_is_plain_fp64_autograd(bench, weighted):
    import bench_cross_entropy as b

    n, h, v = 300, 16, 50
    ref = b.reference_outputs(n, h, v, "cpu", torch.float32, weighted, rows=128)  # three row blocks
    hidden, weight, labels = b._inputs(n, h, v, "cpu", torch.float32)
    x, w = (t.detach().double().requires_grad_() for t in (hidden, weight))
    ce = F.cross_entropy(x @ w.T, labels, reduction="none")
    tw = b._token_weights(labels).double() if weighted else torch.ones(n, dtype=torch.float64)
    loss = (ce * tw).sum() / tw.sum()
    loss.backward()
    for got, want in zip(ref, [loss.detach(), x.grad, w.grad]):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-15)


def test_cross_entropy_gate_passes_ours_and_catches_wrong_losses(bench):
    import bench_cross_entropy as b
    from _measure import agrees, relative_error

    n, h, v = 256, 32, 64
    ref = b.reference_outputs(n, h, v, "cpu", torch.float32)
    weighted = b.reference_outputs(n, h, v, "cpu", torch.float32, weighted=True)

    def error(fn, against=ref):
        return relative_error(b.step_outputs(fn, n, h, v, "cpu", torch.float32), against)

    for name in ("nextlong", "eager"):
        assert agrees(error(b.implementation(name)), torch.float32), name
    assert agrees(error(b._nextlong_weighted, weighted), torch.float32)
    assert not agrees(error(b._nextlong_weighted), torch.float32)  # weighted work is not the plain mean
    shifted = lambda hh, w, y: b._eager(hh, w, torch.roll(y, 1))  # labels off by one position
    summed = lambda hh, w, y: F.cross_entropy(F.linear(hh, w), y, reduction="sum")  # the 1/N dropped
    for wrong in (shifted, summed):
        assert not agrees(error(wrong), torch.bfloat16)  # caught even at the bf16 tolerance


def _attention_case(b, lengths, heads=4, kv_heads=2, dim=16):
    saved, b.KV_HEADS = b.KV_HEADS, kv_heads
    try:
        q, k, v = b._inputs(sum(lengths), heads, dim, "cpu", torch.float32)
    finally:
        b.KV_HEADS = saved
    return q, k, v, b.cu_seqlens_from_lengths(lengths)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_attention_reference_is_a_dense_masked_softmax(bench, backward):
    import bench_attention as b

    lengths = [40, 7, 81]
    q, k, v, _ = _attention_case(b, lengths)
    ref = b.reference_outputs(q, k, v, lengths, backward)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(sum(lengths))
    allowed = (doc[:, None] == doc[None, :]) & (pos[None, :] <= pos[:, None])
    kk, vv = (t.repeat_interleave(2, dim=1) for t in (kd, vd))
    scores = torch.einsum("qhd,khd->hqk", qd, kk) / math.sqrt(q.shape[-1])
    out = torch.einsum("hqk,khd->qhd", scores.masked_fill(~allowed, -math.inf).softmax(-1), vv)
    want = [out.detach()]
    if backward:
        out.backward(torch.ones_like(out))
        want += [qd.grad, kd.grad, vd.grad]
    assert len(ref) == len(want)
    for got, exp in zip(ref, want):
        assert torch.allclose(got, exp, rtol=1e-10, atol=1e-12)


def test_attention_gate_passes_ours_and_catches_a_mask_across_documents(bench):
    import bench_attention as b
    from _measure import agrees, relative_error

    lengths = [40, 7, 81]
    q, k, v, cu = _attention_case(b, lengths)
    ref = b.reference_outputs(q, k, v, lengths, True)
    ours = b._outputs(b._step(b._nextlong, q, k, v, lengths, cu, True), q, k, v, True)
    assert agrees(relative_error(ours, ref), torch.float32)
    one_document = lambda q, k, v, lengths, cu: b._sdpa_split(q, k, v, [sum(lengths)], cu)  # sees across documents
    crossed = b._outputs(b._step(one_document, q, k, v, lengths, cu, True), q, k, v, True)
    assert not agrees(relative_error(crossed, ref), torch.bfloat16)


def test_a_case_past_the_budget_is_unchecked(bench, monkeypatch):
    import bench_attention as b

    q, k, v, _ = _attention_case(b, [64])
    monkeypatch.setattr(b, "REFERENCE_MAX_FLOPS", b.attention_flops([64], 4, 16, False) - 1)
    assert b.reference_outputs(q, k, v, [64], False) is None


def test_a_wrong_row_is_recorded_as_failed(bench):
    import bench_attention

    result = bench_attention.Result(seconds=0.01, peak_mib=65.0, cpu_seconds=None, lengths=[8192, 8192],
                                    first_seconds=0.02, max_diff=0.5, error=0.5)
    bench_attention._record("flex", "fwd+bwd", 16384, 16, 128, result.lengths, result, 300.0, wrong=True)
    row = json.loads(bench.read_text())
    assert row["ms"] is None and row["tflops"] is None and row["peak_mib"] == 65.0
