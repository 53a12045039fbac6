"""flash_attention (Triton in the interpreter, and the PyTorch fallback) against a dense-mask reference.

The reference is plain softmax attention in float64 with an explicit (T, T) mask built from the
document ids, causality and the window. Inputs are fp32 (the Triton interpreter's bf16 dot is not
usable), so both backends must agree with it to fp32 rounding: tolerance 2e-5 absolute on outputs and
on dq/dk/dv (observed ~1e-6). Documents have unequal lengths that are not multiples of the 16-token
test tiles, and include an empty and a one-token document.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nextlong.kernels import flash_attention
from nextlong.kernels._attn_reference import dense_reference_attention
from nextlong.kernels.attention import _normalise_window, _resolve_backend, attention_with_lse, cu_seqlens_from_lengths

ATOL = 2e-5
LENGTHS = [5, 37, 0, 20, 1, 29]
BLOCKS = (16, 16)


def _inputs(lengths, heads, kv_heads, dim, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q = torch.randn(total, heads, dim, generator=g).to(dtype).requires_grad_()
    k = torch.randn(total, kv_heads, dim, generator=g).to(dtype).requires_grad_()
    v = torch.randn(total, kv_heads, dim, generator=g).to(dtype).requires_grad_()
    do = torch.randn(total, heads, dim, generator=g).to(dtype)
    return q, k, v, do, cu_seqlens_from_lengths(lengths)


def _reference(q, k, v, do, cu, causal, window, scale=None):
    left, right = _normalise_window(window, causal)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    out = dense_reference_attention(qd, kd, vd, cu, causal, left, right, softmax_scale=scale)
    grads = torch.autograd.grad(out, (qd, kd, vd), do.double())
    return out.detach(), grads


# "torch" is the fallback's fused path (PyTorch's CPU flash kernel, per document); "torch_chunked" its
# plain-matmul path (selected by giving a tile size); "triton" the kernels in the interpreter.
BACKENDS = ["torch", "torch_chunked", "triton"]
# The interpreter takes 10-30 s per case on 2 cores: the wide sweeps run it in the slow set only (the
# other triton tests below stay in the fast loop).
BACKENDS_TRITON_SLOW = ["torch", "torch_chunked", pytest.param("triton", marks=pytest.mark.slow)]


def _check(q, k, v, do, cu, causal, window, backend, blocks=BLOCKS, scale=None, atol=ATOL):
    ref_out, ref_grads = _reference(q, k, v, do, cu, causal, window, scale)
    if backend == "torch":
        blocks = None
    backend = backend.replace("_chunked", "")
    out = flash_attention(q, k, v, causal=causal, cu_seqlens=cu, window=window, backend=backend,
                          softmax_scale=scale, _blocks=blocks)
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=0)
    for name, got, want in zip("qkv", grads, ref_grads):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=0, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS_TRITON_SLOW)
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, (3, 9)])
def test_packed_documents_match_dense_reference(backend, group, causal, window):
    q, k, v, do, cu = _inputs(LENGTHS, 4, 4 // group, 16, seed=group)
    _check(q, k, v, do, cu, causal, window, backend)


@pytest.mark.parametrize("backend", BACKENDS_TRITON_SLOW)
@pytest.mark.parametrize("causal,window", [(True, 40), (False, (40, 20)), (True, 7)])
def test_window_wide_enough_for_unmasked_tiles(backend, causal, window, monkeypatch):
    # A 100-token document with a 40-token window has tiles fully inside the window (the unmasked fast
    # path) next to tiles cut by it; 16-token tiles make both kinds appear. The fused fallback goes
    # through several 32-query blocks.
    monkeypatch.setattr("nextlong.kernels._attn_reference.FUSED_WINDOW_CHUNK", 32)
    q, k, v, do, cu = _inputs([100, 3, 61], 4, 2, 16, seed=7)
    _check(q, k, v, do, cu, causal, window, backend)


@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_default_tiles(backend, dim):
    # Production tile sizes (head dim 128: 128x128 forward, 64x128 dK/dV, 128x64 dQ, tuned on a GPU).
    q, k, v, do, cu = _inputs([130, 70, 9], 2, 1, dim, seed=3)
    _check(q, k, v, do, cu, True, None, backend, blocks=None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_layout_and_custom_scale(backend):
    g = torch.Generator().manual_seed(5)
    b, s, h, hk, d = 2, 23, 4, 2, 32
    q = torch.randn(b, s, h, d, generator=g, requires_grad=True)
    k = torch.randn(b, s, hk, d, generator=g, requires_grad=True)
    v = torch.randn(b, s, hk, d, generator=g, requires_grad=True)
    do = torch.randn(b, s, h, d, generator=g)
    blocks = None if backend == "torch" else BLOCKS
    out = flash_attention(q, k, v, causal=True, softmax_scale=0.3, backend=backend.replace("_chunked", ""),
                          _blocks=blocks)
    grads = torch.autograd.grad(out, (q, k, v), do)
    flat = lambda x: x.detach().reshape(b * s, x.shape[2], d)  # noqa: E731
    cu = cu_seqlens_from_lengths([s] * b)
    ref_out, ref_grads = _reference(flat(q), flat(k), flat(v), flat(do), cu, True, None, scale=0.3)
    assert out.shape == (b, s, h, d)
    torch.testing.assert_close(out.reshape(b * s, h, d).double(), ref_out, atol=ATOL, rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.reshape(want.shape).double(), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_information_crosses_a_document_boundary(backend):
    q, k, v, do, cu = _inputs([20, 18], 2, 2, 16, seed=11)
    blocks = None if backend == "torch" else BLOCKS
    backend = backend.replace("_chunked", "")
    out = flash_attention(q, k, v, cu_seqlens=cu, causal=False, backend=backend, _blocks=blocks)
    # Changing the second document's keys and values leaves the first document's output bit-identical.
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[20:] += 3.0
    v2[20:] -= 2.0
    out2 = flash_attention(q.detach(), k2, v2, cu_seqlens=cu, causal=False, backend=backend, _blocks=blocks)
    assert torch.equal(out[:20].detach(), out2[:20])
    assert not torch.allclose(out[20:].detach(), out2[20:])
    # And the first document's loss has exactly zero gradient in the second document's inputs.
    dq, dk, dv = torch.autograd.grad(out[:20].sum(), (q, k, v))
    assert dq[20:].abs().max() == 0 and dk[20:].abs().max() == 0 and dv[20:].abs().max() == 0
    assert dk[:20].abs().max() > 0


@pytest.mark.parametrize("backend", ["torch", "torch_chunked"])
def test_bf16_fallback_close_to_fp32_reference(backend):
    q, k, v, do, cu = _inputs([33, 50], 4, 2, 64, seed=2, dtype=torch.bfloat16)
    # bf16 inputs, fp32 accumulation: error dominated by rounding the output/gradients to bf16.
    _check(q, k, v, do, cu, True, None, backend, atol=3e-2)


def test_bad_inputs_raise_clear_errors():
    q = torch.randn(10, 4, 16)
    k = torch.randn(10, 2, 16)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(ValueError, match="int32"):
        flash_attention(q, k, k, cu_seqlens=cu.long())
    with pytest.raises(ValueError, match="rise from 0"):
        flash_attention(q, k, k, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match="rise from 0"):
        flash_attention(q, k, k, cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="must divide"):
        flash_attention(q, torch.randn(10, 3, 16), torch.randn(10, 3, 16), cu_seqlens=cu)
    with pytest.raises(ValueError, match="batch, seq, heads, head_dim"):
        flash_attention(q, k, k)
    with pytest.raises(ValueError, match="window"):
        flash_attention(q, k, k, cu_seqlens=cu, window=(-5, 2))
    with pytest.raises(ValueError, match="backend"):
        flash_attention(q, k, k, cu_seqlens=cu, backend="cuda")


def test_window_convention():
    assert _normalise_window(None, True) == (-1, -1)
    assert _normalise_window(8, True) == (8, -1)
    assert _normalise_window(8, False) == (8, 8)
    assert _normalise_window((4, 2), False) == (4, 2)


def test_triton_64bit_tile_offsets(monkeypatch):
    # Sequences with token offset x row stride >= 2**31 elements switch the kernels to 64-bit tile
    # bases; too big to allocate here, so force that variant on a small input and check it is exact too.
    monkeypatch.setattr("nextlong.kernels._attn_triton._needs_64bit", lambda *tensors: True)
    q, k, v, do, cu = _inputs([37, 20, 29], 4, 2, 16, seed=13)
    _check(q, k, v, do, cu, True, (9, -1), "triton")


def test_autocast_casts_mixed_inputs_to_its_dtype():
    # Under autocast a Llama's rotary embedding hands over fp32 q/k beside a bf16 v (a real GPU
    # training run hit this); the kernel computes in autocast's dtype, as SDPA would.
    q, k, v, do, cu = _inputs([40, 25], 4, 2, 32, seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = flash_attention(q, k, v.bfloat16(), causal=True, cu_seqlens=cu)
    ref = flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True, cu_seqlens=cu)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="must share"):  # outside autocast a mix stays an error
        flash_attention(q, k, v.bfloat16(), causal=True, cu_seqlens=cu)


def test_triton_backend_on_cpu_tensors_says_what_it_needs(monkeypatch):
    """Outside the interpreter, backend='triton' on CPU tensors is refused in our words, not Triton's
    "0 active drivers"."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        flash_attention(q, q, q, causal=True, backend="triton")
    assert flash_attention(q, q, q, causal=True, backend="auto").shape == q.shape


@pytest.mark.parametrize("backend", ["torch", "torch_chunked"])
@pytest.mark.parametrize("dim", [80, 96, 24])
def test_odd_head_dims_run_on_the_torch_backend(backend, dim):
    """Phi-2 (80) and Phi-3-mini (96) head dims on the PyTorch backend (the Triton kernels: below)."""
    q, k, v, do, cu = _inputs([7, 20], 4, 2, dim, seed=dim)
    _check(q, k, v, do, cu, True, None, backend)


# Head dims that are not a power of two run in the Triton kernels, padded inside them to the next one
# (48 -> 64, 80 and 96 -> 128, 8 -> 16): packed documents, GQA, causal or not, with a window.
# About 2 s each in the interpreter; 72 and 8 add coverage only, so they run in the slow set.
ODD_DIMS = [(40, 2, True, (9, -1)), (80, 4, False, (3, 9)), (96, 2, True, None),
            pytest.param(72, 1, False, None, marks=pytest.mark.slow),
            pytest.param(8, 2, True, (5, -1), marks=pytest.mark.slow)]


@pytest.mark.parametrize("dim,group,causal,window", ODD_DIMS)
def test_triton_takes_head_dims_that_are_not_a_power_of_two(dim, group, causal, window):
    q, k, v, do, cu = _inputs(LENGTHS, 4, 4 // group, dim, seed=dim)
    _check(q, k, v, do, cu, causal, window, "triton")


def test_triton_default_tiles_at_head_dim_96():
    # The production tiles for a padded head dim (96 uses head dim 128's: 128x128 forward, 64x128 dK/dV).
    q, k, v, do, cu = _inputs([130, 9], 2, 1, 96, seed=3)
    _check(q, k, v, do, cu, True, None, "triton", blocks=None)


@pytest.mark.parametrize("dim,want", [(80, "triton"), (96, "triton"), (5, "triton"), (256, "triton"),
                                      (257, "torch")])
def test_auto_picks_triton_for_every_head_dim_it_takes(dim, want):
    """On CUDA fp16/bf16 'auto' runs the kernels at any head_dim up to 256 (before: only powers of two, so
    Phi-2 and Phi-3 silently got the slow path). Only the rule is checked here: no GPU on CI."""
    cuda_like = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, shape=(10, 4, dim))
    assert _resolve_backend("auto", cuda_like) == want


def test_triton_refuses_what_it_cannot_compute(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(10, 2, 264)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(ValueError, match="Triton kernels take head_dim up to 256, got 264"):
        flash_attention(q, q, q, cu_seqlens=cu, backend="triton")
    # the interpreter's 16-bit dots are garbage (numpy has no bf16 matmul): refused, not returned
    h = torch.randn(10, 2, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="interpreter computes torch.bfloat16 dot products wrongly"):
        flash_attention(h, h, h, cu_seqlens=cu, backend="triton")


def test_empty_batch_and_double_backward():
    q = torch.randn(2, 0, 4, 16, requires_grad=True)
    out = flash_attention(q, q, q, causal=True)
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.shape == q.shape
    q, k, v, do, cu = _inputs([5, 6], 2, 2, 16)
    out = flash_attention(q, k, v, cu_seqlens=cu)
    with pytest.raises(RuntimeError, match="differentiable once; create_graph=True"):
        torch.autograd.grad((out * do).sum(), q, create_graph=True)


def test_a_strided_cu_seqlens_gives_the_same_numbers_on_every_backend():
    """The Triton kernels read cu_seqlens as contiguous: a strided view (a column of a table) gave NaN (audit)."""
    lengths = [5, 7, 8]
    q, k, v, do, cu = _inputs(lengths, 2, 2, 16)
    table = torch.stack([cu, torch.zeros_like(cu)], dim=1)
    strided = table[:, 0]
    assert not strided.is_contiguous()
    for backend in ("torch", "triton"):
        _check(q, k, v, do, strided, True, None, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_query_gives_nan_on_every_backend(backend):
    """PyTorch's CPU flash kernel (the torch backend's fused path) skips NaN in its running max: a query row
    holding a NaN came back as output 0 and lse 0, a finite answer from a diverged model, where the chunked
    path, the Triton kernel and flash-attn give NaN in that row (and only there)."""
    q, k, v, do, cu = _inputs([5, 8], 2, 1, 16)
    q = q.detach().clone()
    q[7, 1, 3] = float("nan")
    blocks = None if backend == "torch" else BLOCKS
    out, lse = attention_with_lse(q.requires_grad_(), k, v, cu_seqlens=cu, backend=backend.replace("_chunked", ""),
                                  _blocks=blocks)
    nan_rows = [[7, 1]]
    assert torch.isnan(out).any(-1).nonzero().tolist() == nan_rows
    assert torch.isnan(lse).nonzero().tolist() == nan_rows
    dq, = torch.autograd.grad(out, q, do)
    assert torch.isnan(dq).any(-1).nonzero().tolist() == nan_rows


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_q_k_v_on_two_devices_are_named(backend):
    """k or v on another device than q: the torch backend returned NaN or 1e34 from a "meta" k/v (not loaded)
    with no error, and the Triton kernels take raw pointers, so on two GPUs they would read the wrong memory."""
    q, k, v, _, cu = _inputs([5, 8], 2, 1, 16)
    for args, where in (((q, k.to("meta"), v), "cpu, meta, cpu"), ((q, k, v.to("meta")), "cpu, cpu, meta")):
        with pytest.raises(ValueError, match=f"q, k, v must be on one device, got {where}"):
            flash_attention(*args, cu_seqlens=cu, backend=backend)
