"""Fused linear / logits cross-entropy against PyTorch eager on materialised logits.

The fused-linear backends: "torch" (chunked fallback), "triton" (fused kernels) and "chunked" (chunks with
the Triton logit kernels), the last two in the CPU interpreter without a GPU, fp32.
Shapes are deliberately not multiples of the block sizes (interpreter blocks: 16 tokens, 32
vocabulary entries, 16 hidden units) and the vocabulary spans several blocks.
Tolerances (fp32): loss rtol 1e-5 / atol 1e-6; gradients rtol 1e-4 / atol 1e-5.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F

from nextlong.kernels.losses import cross_entropy, fused_linear_cross_entropy

N, H, V = 37, 24, 101
LINEAR_BACKENDS = ["torch", "triton", "chunked"]
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)

OPTIONS = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "zloss": {"z_loss": 1e-2},
    "softcap": {"logit_softcap": 3.0},
    "all": {"label_smoothing": 0.2, "z_loss": 1e-3, "logit_softcap": 5.0},
}


def eager_loss(z, labels, weights, reduction, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
               logit_softcap=None):
    """The definition, written with F.cross_entropy on materialised fp32 logits."""
    z = z.float()
    if logit_softcap is not None:
        z = logit_softcap * torch.tanh(z / logit_softcap)
    valid = labels != ignore_index
    per = F.cross_entropy(z, labels, reduction="none", ignore_index=ignore_index,
                          label_smoothing=label_smoothing)
    per = per + z_loss * torch.logsumexp(z, dim=-1) ** 2 * valid
    w = valid.float() if weights is None else weights * valid
    per = per * w
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / w.sum()


def make_inputs(seed=0, bias=True, dtype=torch.float32, n=N, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, H, generator=g, dtype=dtype).requires_grad_()
    w = (0.4 * torch.randn(V, H, generator=g)).to(dtype).requires_grad_()
    b = (0.5 * torch.randn(V, generator=g)).to(dtype).requires_grad_() if bias else None
    y = torch.randint(0, V, (n,), generator=g)
    y[torch.randperm(n, generator=g)[: n // 5]] = ignore_index
    tw = torch.rand(n, generator=g) * 2
    upstream = torch.randn(n, generator=g)
    return x, w, b, y, tw, upstream


def check_linear(backend, reduction, weighted, opts, bias=True, chunk_size=None, ignore_index=-100):
    x, w, b, y, tw, up = make_inputs(bias=bias, ignore_index=ignore_index)
    tw = tw if weighted else None
    params = [x, w] + ([b] if bias else [])
    out = fused_linear_cross_entropy(x, w, y, bias=b, token_weights=tw, reduction=reduction,
                                     backend=backend, chunk_size=chunk_size,
                                     ignore_index=ignore_index, **opts)
    ref = eager_loss(F.linear(x, w, b), y, tw, reduction, ignore_index=ignore_index, **opts)
    torch.testing.assert_close(out, ref, **LOSS_TOL)
    scalar, scalar_ref = ((out * up).sum(), (ref * up).sum()) if reduction == "none" else (out, ref)
    got = torch.autograd.grad(scalar, params)
    want = torch.autograd.grad(scalar_ref, params)
    for name, a, e in zip(["hidden", "weight", "bias"], got, want):
        torch.testing.assert_close(a, e, **GRAD_TOL, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("opt", list(OPTIONS))
def test_fused_linear_matches_eager(backend, reduction, weighted, opt):
    check_linear(backend, reduction, weighted, OPTIONS[opt], chunk_size=8)


@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
def test_fused_linear_without_bias_and_custom_ignore_index(backend):
    # ignore_index is an ordinary class id here: those tokens must drop out entirely.
    check_linear(backend, "mean", True, OPTIONS["all"], bias=False, ignore_index=7)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cross_entropy_on_logits_matches_eager(backend):
    x, w, b, y, tw, up = make_inputs(seed=1)
    for reduction in ["mean", "none"]:
        for opt in ["plain", "all"]:
            z = F.linear(x, w, b).detach().requires_grad_()
            out = cross_entropy(z, y, token_weights=tw, reduction=reduction, backend=backend,
                                **OPTIONS[opt])
            ref = eager_loss(z, y, tw, reduction, **OPTIONS[opt])
            torch.testing.assert_close(out, ref, **LOSS_TOL)
            if reduction == "none":
                out, ref = (out * up).sum(), (ref * up).sum()
            (got,) = torch.autograd.grad(out, z)
            (want,) = torch.autograd.grad(ref, z)
            torch.testing.assert_close(got, want, **GRAD_TOL)


@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
def test_batched_shapes_and_all_ignored(backend):
    x, w, b, y, tw, _ = make_inputs(seed=2, n=2 * 11)
    x3, y3, tw3 = x.reshape(2, 11, H), y.reshape(2, 11), tw.reshape(2, 11)
    out = fused_linear_cross_entropy(x3, w, y3, bias=b, token_weights=tw3, reduction="none",
                                     backend=backend)
    assert out.shape == (2, 11)
    torch.testing.assert_close(out.reshape(-1), eager_loss(F.linear(x, w, b), y, tw, "none"),
                               **LOSS_TOL)
    # Every token ignored: the mean is 0 (not NaN) and all gradients vanish.
    y_none = torch.full_like(y, -100)
    loss = fused_linear_cross_entropy(x, w, y_none, bias=b, backend=backend)
    assert loss.item() == 0.0
    grads = torch.autograd.grad(loss, [x, w, b])
    assert all(bool((g == 0).all()) for g in grads)


def test_token_weights_get_no_gradient():
    x, w, b, y, tw, _ = make_inputs(seed=3)
    tw = tw.requires_grad_()
    loss = fused_linear_cross_entropy(x, w, y, bias=b, token_weights=tw, backend="torch")
    loss.backward()
    assert tw.grad is None and x.grad is not None


def test_torch_backend_gradcheck_float64():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(13, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(13, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 13, (9,), generator=g)
    y[2] = -100
    tw = torch.rand(9, dtype=torch.float64, generator=g)

    def f(x, w, b):
        return fused_linear_cross_entropy(x, w, y, bias=b, token_weights=tw, backend="torch",
                                          chunk_size=4, **OPTIONS["all"])

    assert torch.autograd.gradcheck(f, (x, w, b))


@pytest.mark.parametrize("splits", [2, 3, 4])
def test_triton_vocab_split_merge(splits):
    """The forward kernel may split the vocabulary across programs; partial log-sum-exps merge."""
    from nextlong.kernels import _ce_triton

    x, w, b, y, _, _ = make_inputs(seed=5)
    with torch.no_grad():
        lse, zy, sz = _ce_triton.flce_stats(x, w, b, y, None, v_splits=splits)
        z = F.linear(x, w, b)
    torch.testing.assert_close(lse, torch.logsumexp(z, -1), **LOSS_TOL)
    torch.testing.assert_close(sz, z.sum(-1), rtol=1e-5, atol=1e-4)
    valid = y >= 0
    torch.testing.assert_close(zy[valid], z[valid, y[valid]], **LOSS_TOL)


def test_torch_backend_bf16_close_to_fp32_eager():
    x, w, b, y, tw, _ = make_inputs(seed=6)
    xb, wb, bb = (t.detach().bfloat16().requires_grad_() for t in (x, w, b))
    out = fused_linear_cross_entropy(xb, wb, y, bias=bb, token_weights=tw, backend="torch")
    assert out.dtype == torch.float32
    ref = eager_loss(F.linear(xb.float(), wb.float(), bb.float()), y, tw, "mean")
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    out.backward()
    assert xb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    # the gradients too (bf16 products with fp32 accumulation, summed over chunks in fp32)
    xf, wf, bf = (t.detach().float().requires_grad_() for t in (xb, wb, bb))
    eager_loss(F.linear(xf, wf, bf), y, tw, "mean").backward()
    for got, want in ((xb.grad, xf.grad), (wb.grad, wf.grad), (bb.grad, bf.grad)):
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-3)


def test_bad_inputs_raise_clear_errors():
    x, w, b, y, _, _ = make_inputs(seed=7)
    bad = y.clone()
    bad[5] = V
    with pytest.raises(ValueError, match=r"label 101 at flat position 5"):
        fused_linear_cross_entropy(x, w, bad)
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(x, w, y, reduction="avg")
    with pytest.raises(ValueError, match="disagree"):
        fused_linear_cross_entropy(x[:, :5], w, y)
    with pytest.raises(TypeError, match="dtype"):
        fused_linear_cross_entropy(x.double(), w, y)
    with pytest.raises(ValueError, match="token_weights"):
        fused_linear_cross_entropy(x, w, y, token_weights=torch.ones(3))
    with pytest.raises(ValueError, match="backend"):
        fused_linear_cross_entropy(x, w, y, backend="cuda")
    # a chunk size below 1 would leave the statistics as torch.empty left them
    for size in (0.5, -3, True):
        with pytest.raises(ValueError, match="chunk_size"):
            fused_linear_cross_entropy(x, w, y, chunk_size=size)
    with pytest.raises(ValueError, match="chunk_size"):
        cross_entropy(x @ w.T, y, chunk_size=-1)
    with pytest.raises(ValueError, match="z_loss"):
        cross_entropy(x @ w.T, y, z_loss=float("nan"))
    with pytest.raises(TypeError, match="floating point"):
        cross_entropy(torch.ones(4, 8, dtype=torch.long), y[:4])
    # F.cross_entropy's layout (classes in dimension 1) is named, not computed on
    with pytest.raises(ValueError, match="vocabulary is the last dimension"):
        cross_entropy(torch.randn(2, V, 5), torch.zeros(2, 5, dtype=torch.long))
    # Liger's argument order (weight, hidden, labels): the swap is named
    with pytest.raises(ValueError, match="were hidden and weight swapped"):
        fused_linear_cross_entropy(w, x, torch.zeros(x.shape[0], dtype=torch.long))
    # no double backward: said at once, not a detached gradient that fails later
    h = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(fused_linear_cross_entropy(h, w, y), h, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(cross_entropy(h @ w.T, y), h, create_graph=True)


def test_public_names_callable_from_package():
    kernels = importlib.import_module("nextlong.kernels")
    x, w, b, y, _, _ = make_inputs(seed=8)
    z = F.linear(x, w, b)
    a = kernels.cross_entropy(z, y)
    c = kernels.fused_linear_cross_entropy(x, w, y, bias=b)
    torch.testing.assert_close(a, c, **LOSS_TOL)
    torch.testing.assert_close(a, F.cross_entropy(z, y), **LOSS_TOL)


class _LargestTensor:
    """Records the largest tensor (in bytes) any aten op produces: a probe for materialised logits.

    Bytes, not elements: the Triton interpreter moves tensors through uint8 views."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        probe = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor):
                        probe.largest = max(probe.largest, t.numel() * t.element_size())
                return out

        self.largest = 0
        self.mode = Mode()


@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
def test_never_materialises_full_logits(backend):
    n, h, v, chunk = 96, 8, 211, 16
    g = torch.Generator().manual_seed(9)
    x = torch.randn(n, h, generator=g, requires_grad=True)
    w = torch.randn(v, h, generator=g, requires_grad=True)
    y = torch.randint(0, v, (n,), generator=g)
    probe = _LargestTensor()
    with probe.mode:
        loss = fused_linear_cross_entropy(x, w, y, backend=backend, chunk_size=chunk,
                                          label_smoothing=0.1, logit_softcap=4.0)
        loss.backward()
    assert probe.largest <= 4 * max(chunk * v, v * h, n * h), probe.largest  # fp32
    eager = _LargestTensor()  # the probe does see logits when they exist
    with eager.mode:
        F.cross_entropy(x @ w.T, y).backward()
    assert eager.largest >= 4 * n * v


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled Triton path needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_triton_against_fp32_eager(dtype):
    """Compiled kernels with real tile sizes; half inputs compared with fp32 eager on the same
    (rounded) inputs: loss rtol 1e-2, gradients atol 2e-2 relative to their max magnitude."""
    n, h, v = 1000, 256, 5003
    g = torch.Generator(device="cuda").manual_seed(10)
    x = torch.randn(n, h, device="cuda", generator=g).to(dtype).requires_grad_()
    w = (0.1 * torch.randn(v, h, device="cuda", generator=g)).to(dtype).requires_grad_()
    y = torch.randint(0, v, (n,), device="cuda", generator=g)
    y[::7] = -100
    tw = torch.rand(n, device="cuda", generator=g)
    opts = OPTIONS["all"]
    loss = fused_linear_cross_entropy(x, w, y, token_weights=tw, backend="triton", **opts)
    gx, gw = torch.autograd.grad(loss, [x, w])
    x32, w32 = (t.detach().float().requires_grad_() for t in (x, w))
    ref = eager_loss(x32 @ w32.T, y, tw, "mean", **opts)
    rx, rw = torch.autograd.grad(ref, [x32, w32])
    torch.testing.assert_close(loss, ref, rtol=1e-2, atol=1e-2)
    for got, want in ((gx, rx), (gw, rw)):
        err = (got.float() - want).abs().max() / want.abs().max()
        assert err < 2e-2, float(err)


@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("frozen", ["bias", "weight", "hidden"])
def test_frozen_inputs_get_no_gradient_and_others_stay_exact(backend, reduction, frozen):
    """LoRA-style frozen head or bias: skipped gradients must not change the others."""
    x, w, b, y, tw, up = make_inputs(seed=11)
    named = {"hidden": x, "weight": w, "bias": b}
    named[frozen].requires_grad_(False)
    trainable = [t for k, t in named.items() if k != frozen]
    out = fused_linear_cross_entropy(x, w, y, bias=b, token_weights=tw, reduction=reduction,
                                     backend=backend, chunk_size=8, **OPTIONS["all"])
    ref = eager_loss(F.linear(x, w, b), y, tw, reduction, **OPTIONS["all"])
    if reduction == "none":
        out, ref = (out * up).sum(), (ref * up).sum()
    for got, want in zip(torch.autograd.grad(out, trainable), torch.autograd.grad(ref, trainable)):
        torch.testing.assert_close(got, want, **GRAD_TOL)


@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
def test_zero_tokens(backend):
    x = torch.zeros(0, H, requires_grad=True)
    w = torch.randn(V, H, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    assert fused_linear_cross_entropy(x, w, y, backend=backend, reduction="none").shape == (0,)
    loss = fused_linear_cross_entropy(x, w, y, backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and bool((w.grad == 0).all())


def test_autocast_computes_in_its_dtype_and_grads_reach_fp32_params():
    # Autocast training keeps fp32 parameters: the loss takes the bf16 product F.linear would,
    # and the fp32 weight gets an fp32 gradient through the cast.
    g = torch.Generator().manual_seed(21)
    x = torch.randn(N, H, generator=g, requires_grad=True)
    w = torch.randn(V, H, generator=g, requires_grad=True)
    y = torch.randint(0, V, (N,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused_linear_cross_entropy(x, w, y, reduction="sum")
    loss.backward()
    xb, wb = x.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    ref = fused_linear_cross_entropy(xb, wb, y, reduction="sum")
    ref.backward()
    assert torch.equal(loss, ref)
    assert x.grad.dtype == w.grad.dtype == torch.float32
    assert torch.equal(x.grad, xb.grad.float()) and torch.equal(w.grad, wb.grad.float())


@pytest.mark.parametrize("backend", ["torch", "chunked"])
def test_bf16_weight_gradient_in_place_or_in_fp32(backend):
    """dW of bf16 weights over 32 chunks, against fp64 on the same bf16 inputs: summed in place in bf16 (the
    default, one rounding per chunk, as Liger does) or in an fp32 accumulator (`accumulate_fp32=True`). Both
    return bf16; the fp32 accumulator is the closer one, and the in-place sum stays within a few bf16 steps."""
    n, h, v, chunk = 256, 32, 64, 8
    g = torch.Generator().manual_seed(12)
    x = torch.randn(n, h, generator=g).bfloat16()
    w = (0.3 * torch.randn(v, h, generator=g)).bfloat16()
    y = torch.randint(0, v, (n,), generator=g)
    x64, w64 = (t.double().requires_grad_() for t in (x, w))
    want = torch.autograd.grad(F.cross_entropy(x64 @ w64.T, y), w64)[0]
    errors, grads = {}, {}
    for fp32 in (False, True):
        wb = w.clone().requires_grad_()
        loss = fused_linear_cross_entropy(x, wb, y, backend=backend, chunk_size=chunk, accumulate_fp32=fp32)
        grads[fp32] = torch.autograd.grad(loss, wb)[0]
        assert grads[fp32].dtype == torch.bfloat16
        errors[fp32] = float((grads[fp32].double() - want).abs().max() / want.abs().max())
    assert errors[True] < errors[False] < 5e-2, errors
    assert errors[True] < 1e-2, errors
    # the default follows the parameter's dtype: bf16 weights sum in place; fp32 master weights under
    # autocast (computed in bf16) get the fp32 accumulator, handed back as it is (not rounded to bf16)
    wb = w.clone().requires_grad_()
    default = torch.autograd.grad(fused_linear_cross_entropy(x, wb, y, backend=backend, chunk_size=chunk), wb)[0]
    assert torch.equal(default, grads[False])
    w32 = w.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused_linear_cross_entropy(x.float(), w32, y, backend=backend, chunk_size=chunk)
    master = torch.autograd.grad(loss, w32)[0]
    assert master.dtype == torch.float32 and torch.equal(master.bfloat16(), grads[True])
    assert float((master.double() - want).abs().max() / want.abs().max()) < errors[True]  # one rounding fewer


def test_fp16_keeps_small_logit_gradients():
    """A sum over many tokens with small weights makes each logit's gradient ~ w * p, below fp16's smallest
    subnormal (6e-8): the PyTorch chunks keep fp16's products in fp32, so nothing is flushed to 0 (on CUDA,
    fp16 takes the fused kernels, which sum in fp32: losses._cuda_backend)."""
    from nextlong.kernels.losses import _cuda_backend

    g = torch.Generator().manual_seed(13)
    n, h, v = 256, 32, 512
    x = torch.randn(n, h, generator=g).half()
    w = (0.3 * torch.randn(v, h, generator=g)).half()
    y = torch.randint(0, v, (n,), generator=g)
    tw = torch.full((n,), 1e-5)
    xh, wh = (t.clone().requires_grad_() for t in (x, w))
    loss = fused_linear_cross_entropy(xh, wh, y, token_weights=tw, reduction="sum", backend="torch", chunk_size=64)
    gx, gw = torch.autograd.grad(loss, (xh, wh))
    xf, wf = (t.float().requires_grad_() for t in (x, w))
    rx, rw = torch.autograd.grad(eager_loss(xf @ wf.T, y, tw, "sum"), (xf, wf))
    for got, want in ((gx, rx), (gw, rw)):
        assert float((got.float() - want).abs().max() / want.abs().max()) < 1e-2
    assert _cuda_backend(torch.float16) == "triton" and _cuda_backend(torch.bfloat16) == "chunked"


def test_fp16_autocast_keeps_small_logit_gradients_too():
    """As above with fp32 parameters under fp16 autocast: the loss computes its products in the dtypes it
    chose, autocast does not turn them back into fp16."""
    g = torch.Generator().manual_seed(13)
    n, h, v = 256, 32, 512
    x = torch.randn(n, h, generator=g).half().float()
    w = (0.3 * torch.randn(v, h, generator=g)).half().float()
    y = torch.randint(0, v, (n,), generator=g)
    tw = torch.full((n,), 1e-5)
    xh, wh = (t.clone().requires_grad_() for t in (x, w))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = fused_linear_cross_entropy(xh, wh, y, token_weights=tw, reduction="sum", backend="torch",
                                          chunk_size=64, accumulate_fp32=False)
    gx, gw = torch.autograd.grad(loss, (xh, wh))
    xf, wf = (t.clone().requires_grad_() for t in (x, w))
    rx, rw = torch.autograd.grad(eager_loss(xf @ wf.T, y, tw, "sum"), (xf, wf))
    for got, want in ((gx, rx), (gw, rw)):
        assert float((got.float() - want).abs().max() / want.abs().max()) < 1e-2


@pytest.mark.parametrize("backend", ["torch", "chunked"])
def test_per_token_losses_under_autocast_give_fp32_master_gradients(backend):
    """reduction="none" under bf16 autocast with fp32 parameters (the statistics path lowers them itself):
    per-token losses and fp32 gradients of weight and bias match eager on the same lowered inputs."""
    x, w, b, y, tw, up = make_inputs(seed=14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_linear_cross_entropy(x, w, y, bias=b, token_weights=tw, reduction="none", backend=backend,
                                         chunk_size=8)
    gx, gw, gb = torch.autograd.grad((out * up).sum(), (x, w, b))
    assert gw.dtype == torch.float32 and gb.dtype == torch.float32
    lx, lw, lb = (t.detach().bfloat16().float().requires_grad_() for t in (x, w, b))
    ref = eager_loss(F.linear(lx, lw, lb), y, tw, "none")
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    for got, want in zip((gx, gw, gb), torch.autograd.grad((ref * up).sum(), (lx, lw, lb))):
        assert float((got.float() - want).abs().max() / want.abs().max()) < 2e-2


def test_a_dropped_loss_graph_frees_its_inputs_without_the_cycle_collector():
    """Per-token losses whose graph is dropped without backward (scoring with grad enabled) free what they
    saved at once: nothing of the loss sits in a reference cycle waiting for gc."""
    import gc
    import weakref

    x, w, b, y, tw, _ = make_inputs(seed=15)
    gc.disable()
    try:
        hidden = x * 2  # an activation the graph saves
        probe = weakref.ref(hidden)
        out = fused_linear_cross_entropy(hidden, w, y, bias=b, reduction="none", backend="torch")
        del hidden, out
        assert probe() is None
    finally:
        gc.enable()


# ---- from an outside audit of the kernels (2026-12-06) ----------------------------------------------------

@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
def test_a_vocabulary_tile_of_minus_inf_logits_is_finite(backend):
    """A restricted-answer mask (logits -inf outside an allowed set) made a whole vocabulary tile -inf: the
    Triton kernels' running max stayed -inf and exp(-inf + inf) gave a NaN loss where F.cross_entropy is finite."""
    g = torch.Generator().manual_seed(1)
    n, v = 5, 70
    allowed = torch.arange(v) >= 40  # the first interpreter tiles (32 wide) hold no allowed entry
    y = torch.randint(40, v, (n,), generator=g)
    z = torch.randn(n, v, generator=g).masked_fill(~allowed, float("-inf")).requires_grad_()
    x, w = torch.randn(n, 16, generator=g).requires_grad_(), (0.3 * torch.randn(v, 16, generator=g)).requires_grad_()
    b = torch.zeros(v).masked_fill(~allowed, float("-inf"))
    want = F.cross_entropy((x.double() @ w.double().T + b.double()), y)
    got = fused_linear_cross_entropy(x, w, y, bias=b, backend=backend)
    torch.testing.assert_close(got.double(), want, **LOSS_TOL)
    assert all(bool(torch.isfinite(t).all()) for t in torch.autograd.grad(got, (x, w)))
    if backend != "chunked":  # cross_entropy has no chunked backend of its own
        got = cross_entropy(z, y, backend=backend)
        torch.testing.assert_close(got.double(), F.cross_entropy(z.double(), y), **LOSS_TOL)
        assert bool(torch.isfinite(torch.autograd.grad(got, z)[0]).all())


@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_weight_at_an_ignored_position_stays_out(backend, bad):
    """Ignored tokens get weight 0 (the docs): a NaN or inf weight there (0/0 scores at padding) made the whole
    loss NaN, since the weights were applied by multiplying (0 x NaN)."""
    x, w, b, y, tw, _ = make_inputs()
    ignored = int(torch.nonzero(y == -100)[0, 0])
    tw = tw.clone()
    tw[ignored] = bad
    clean = tw.clone()
    clean[ignored] = 0.0
    for reduction in ("mean", "sum", "none"):
        got = fused_linear_cross_entropy(x, w, y, bias=b, token_weights=tw, reduction=reduction, backend=backend)
        want = fused_linear_cross_entropy(x, w, y, bias=b, token_weights=clean, reduction=reduction, backend=backend)
        torch.testing.assert_close(got, want, **LOSS_TOL)
        assert bool(torch.isfinite(torch.autograd.grad(got.sum(), x)[0]).all())


def test_labels_and_weights_must_pair_by_shape_not_only_by_count():
    """(T, B) labels or weights beside (B, T) tokens have the right count and paired every token with another
    token's target or weight, in silence."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 3, 8, generator=g), torch.randn(11, 8, generator=g)
    y = torch.randint(0, 11, (2, 3), generator=g)
    with pytest.raises(ValueError, match=r"labels \(3, 2\) must have hidden's leading shape \(2, 3\)"):
        fused_linear_cross_entropy(x, w, y.T)
    with pytest.raises(ValueError, match=r"token_weights \(3, 2\) must have the labels' shape \(2, 3\)"):
        fused_linear_cross_entropy(x, w, y, token_weights=torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"token_weights \(3, 2\) must have the labels' shape"):
        cross_entropy(x @ w.T, y, token_weights=torch.ones(3, 2))
    flat = fused_linear_cross_entropy(x, w, y.reshape(-1), token_weights=torch.ones(6))  # flat is fine
    torch.testing.assert_close(flat, fused_linear_cross_entropy(x, w, y))


@pytest.mark.parametrize("backend", ["triton", "chunked"])
def test_fp64_on_the_fp32_kernels_is_refused_not_rounded(backend):
    x, w, _, y, _, _ = make_inputs(dtype=torch.float64, bias=False)
    with pytest.raises(ValueError, match="fp64 runs on backend='torch'"):
        fused_linear_cross_entropy(x, w, y, backend=backend)
    assert fused_linear_cross_entropy(x, w, y).dtype == torch.float64  # auto takes it to torch


def test_negative_weights_are_refused_under_mean_and_kept_under_sum():
    """"mean" is sum(w * CE) / sum(w): a negative weight flipped its sign, and weights summing to 0 (not all 0)
    met the all-ignored guard and came back as the plain sum, in silence. Under "sum" and "none" signed weights
    mean what they say and stay allowed."""
    x, w, b, y, tw, _ = make_inputs()
    valid = torch.nonzero(y != -100).flatten()
    signed = tw.clone()
    signed[valid[0]], signed[valid[1]] = 1.0, -1.0
    signed[valid[2:]] = 0.0  # sum(w) == 0 with two tokens weighted
    for call in (lambda: fused_linear_cross_entropy(x, w, y, bias=b, token_weights=signed),
                 lambda: cross_entropy(F.linear(x, w, b), y, token_weights=signed)):
        with pytest.raises(ValueError, match=f"token_weights must be >= 0 with reduction='mean'.*-1.0 at flat "
                                             f"position {int(valid[1])}"):
            call()
    got = fused_linear_cross_entropy(x, w, y, bias=b, token_weights=signed, reduction="sum")
    torch.testing.assert_close(got, eager_loss(F.linear(x, w, b), y, signed, "sum"), **LOSS_TOL)
    ignored = int(torch.nonzero(y == -100)[0, 0])
    at_ignored = tw.clone()
    at_ignored[ignored] = -5.0  # ignored tokens get weight 0 whatever was passed
    torch.testing.assert_close(fused_linear_cross_entropy(x, w, y, bias=b, token_weights=at_ignored),
                               eager_loss(F.linear(x, w, b), y, tw, "mean"), **LOSS_TOL)


def test_a_bias_of_another_dtype_and_arguments_that_are_not_tensors_are_named():
    """A float64 bias beside float32 weights failed inside the matmul ("self and mat2 must have the same dtype");
    a list or numpy array for any tensor argument with an AttributeError ("'list' object has no attribute
    'shape'")."""
    x, w, b, y, tw, _ = make_inputs()
    with pytest.raises(TypeError, match="bias and weight must share a dtype, got torch.float64 and torch.float32"):
        fused_linear_cross_entropy(x, w, y, bias=b.double())
    fused = {"hidden": x, "weight": w, "labels": y, "bias": b, "token_weights": tw}
    for name in fused:
        args = dict(fused, **{name: fused[name].detach().tolist()})
        with pytest.raises(TypeError, match=f"fused_linear_cross_entropy: {name} must be a torch.Tensor, got list"):
            fused_linear_cross_entropy(args.pop("hidden"), args.pop("weight"), args.pop("labels"), **args)
    z = F.linear(x, w).detach()
    for name, args in (("logits", (z.numpy(), y)), ("labels", (z, y.tolist()))):
        with pytest.raises(TypeError, match=f"cross_entropy: {name} must be a torch.Tensor, got"):
            cross_entropy(*args)
    with pytest.raises(TypeError, match="cross_entropy: token_weights must be a torch.Tensor, got list"):
        cross_entropy(z, y, token_weights=tw.tolist())


def test_a_weight_or_bias_on_another_device_is_named():
    """An lm_head weight left on "meta" (a checkpoint that did not fill it) gave log(V), the loss of all-zero
    logits, with no error; F.linear refuses such a pair."""
    x, w, b, y, _, _ = make_inputs()
    with pytest.raises(ValueError, match="hidden, weight and bias must be on one device, got cpu, meta, cpu"):
        fused_linear_cross_entropy(x, w.detach().to("meta"), y, bias=b)
    with pytest.raises(ValueError, match="hidden, weight and bias must be on one device, got cpu, cpu, meta"):
        fused_linear_cross_entropy(x, w, y, bias=b.detach().to("meta"))


def test_an_empty_vocabulary_or_hidden_size_is_named():
    """A (0, H) or (V, 0) weight, or (N, 0) logits, failed deep inside ("index -1 is out of bounds for dimension 1
    with size 0", "cannot reshape tensor of 0 elements"); F.cross_entropy has no class to score either."""
    y = torch.full((4,), -100)
    for hidden, weight in ((torch.randn(4, 8), torch.randn(0, 8)), (torch.randn(4, 0), torch.randn(5, 0))):
        with pytest.raises(ValueError, match="must have at least one vocabulary row and one hidden unit"):
            fused_linear_cross_entropy(hidden, weight, y)
    with pytest.raises(ValueError, match=r"logits \(4, 0\) need a vocabulary \(last\) dimension of size 1 or more"):
        cross_entropy(torch.randn(4, 0), y)
