"""`nextlong.kernels.flash_attn_varlen_func` against flash-attn's documented semantics, written out as a
slow loop over queries (fp64): bottom-right causal alignment for unequal q/k lengths, sliding windows,
softmax scale, GQA, the returned log-sum-exp, and gradients. Tolerance 1e-5 (fp32)."""

from __future__ import annotations

import math

import pytest
import torch

from nextlong.kernels import flash_attn_varlen_func


def loop_reference(q, k, v, cu_q, cu_k, causal, scale, window):
    """Query by query: sequence s's query i (of lq) may see key j (of lk) when j <= i + lk - lq (causal) and
    i + lk - lq - left <= j <= i + lk - lq + right (window, -1 unbounded). A query with no key gives 0 and
    lse -inf. Differentiable (rows are stacked, not written in place). Returns (out, lse (H, total_q))."""
    left, right = window
    group = q.shape[1] // k.shape[1]
    rows, lses = [], []
    for s in range(len(cu_q) - 1):
        a, b, c, d = cu_q[s], cu_q[s + 1], cu_k[s], cu_k[s + 1]
        lq, lk = b - a, d - c
        for i in range(lq):
            pos = i + lk - lq
            keys = [j for j in range(lk) if (not causal or j <= pos) and (left < 0 or pos - j <= left)
                    and (right < 0 or causal or j - pos <= right)]
            heads, row_lse = [], []
            for h in range(q.shape[1]):
                if not keys:
                    heads.append(torch.zeros(q.shape[-1], dtype=q.dtype))
                    row_lse.append(torch.tensor(-math.inf, dtype=q.dtype))
                    continue
                idx = c + torch.tensor(keys)
                scores = (k[idx, h // group] @ q[a + i, h]) * scale
                heads.append(torch.softmax(scores, 0) @ v[idx, h // group])
                row_lse.append(torch.logsumexp(scores, 0))
            rows.append(torch.stack(heads))
            lses.append(torch.stack(row_lse))
    return torch.stack(rows), torch.stack(lses).t()


def data(lq, lk, heads=4, kv_heads=2, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lq), heads, dim, generator=g, requires_grad=True)
    k = torch.randn(sum(lk), kv_heads, dim, generator=g, requires_grad=True)
    v = torch.randn(sum(lk), kv_heads, dim, generator=g, requires_grad=True)
    cu = lambda lengths: torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)  # noqa: E731
    return q, k, v, cu(lq), cu(lk)


CASES = [  # (query lengths, key lengths, causal, window, scale)
    ([5, 17, 9], [5, 17, 9], True, (-1, -1), None),       # self-attention, several documents
    ([5, 17, 9], [5, 17, 9], True, (4, 0), 0.3),          # sliding window, custom scale
    ([5, 17, 9], [5, 17, 9], False, (3, 2), None),        # two-sided window, not causal
    ([3, 8, 1], [7, 8, 12], True, (-1, -1), None),        # shorter queries: the last lq positions
    ([3, 8, 1], [7, 8, 12], True, (2, 0), None),
    ([3, 8, 1], [7, 8, 12], False, (-1, -1), 0.5),
    ([9, 4], [5, 4], True, (-1, -1), None),               # longer queries: the first see no key at all
    ([9, 4], [5, 4], False, (1, 1), None),
]


@pytest.mark.parametrize("lq,lk,causal,window,scale", CASES)
def test_flash_attn_varlen_func_follows_flash_attn_semantics(lq, lk, causal, window, scale):
    q, k, v, cu_q, cu_k = data(lq, lk)
    out, lse, extra = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk), 0.0, softmax_scale=scale,
                                             causal=causal, window_size=window, return_attn_probs=True)
    scale = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want, want_lse = loop_reference(q64, k64, v64, cu_q.tolist(), cu_k.tolist(), causal, scale, window)
    assert extra is None and out.shape == q.shape and out.dtype == q.dtype and lse.shape == (q.shape[1], q.shape[0])
    torch.testing.assert_close(out.double(), want.detach(), atol=1e-5, rtol=1e-5)
    seen = torch.isfinite(want_lse)
    torch.testing.assert_close(lse.double()[seen], want_lse.detach()[seen], atol=1e-5, rtol=1e-5)
    assert torch.all(lse[~seen] == -math.inf)
    # gradients, against autograd through the same loop
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    dq, dk, dv = torch.autograd.grad((out * g).sum(), (q, k, v))
    rq, rk, rv = torch.autograd.grad((want * g.double()).sum(), (q64, k64, v64))
    for got, exp in ((dq, rq), (dk, rk), (dv, rv)):
        torch.testing.assert_close(got.double(), exp, atol=1e-5, rtol=1e-5)


def test_unsupported_arguments_are_named():
    q, k, v, cu, _ = data([4], [4])
    with pytest.raises(ValueError, match="dropout_p"):
        flash_attn_varlen_func(q, k, v, cu, cu, 4, 4, dropout_p=0.1)
    for name, value in (("softcap", 30.0), ("alibi_slopes", torch.zeros(4)), ("block_table", torch.zeros(1))):
        with pytest.raises(NotImplementedError, match=name):
            flash_attn_varlen_func(q, k, v, cu, cu, 4, 4, **{name: value})


def test_inconsistent_inputs_are_named_not_computed():
    """Each of these once returned a tensor of the wrong length, read past a split, or failed deep in torch."""
    from nextlong.kernels import flash_attn_varlen_backward

    def t(n, d=16):
        return torch.randn(n, 2, d)

    def i32(*x):
        return torch.tensor(x, dtype=torch.int32)

    cases = [
        (lambda: flash_attn_varlen_func(t(10), t(4), t(4), i32(0, 5, 8), i32(0, 2, 4)), "cu_seqlens_q must rise"),
        (lambda: flash_attn_varlen_func(t(10), t(6), t(6), i32(0, 5, 10), i32(0, 2, 4)), "cu_seqlens_k must rise"),
        (lambda: flash_attn_varlen_func(t(6), t(10), t(10), i32(0, 5, 4), i32(0, 5, 10)), "cu_seqlens_q must rise"),
        (lambda: flash_attn_varlen_func(t(10, 17), t(4), t(4), i32(0, 5, 10), i32(0, 2, 4)), "must match q"),
        (lambda: flash_attn_varlen_func(t(4), t(10), t(10), torch.tensor([0., 2., 4.]), i32(0, 5, 10)), "int32"),
        (lambda: flash_attn_varlen_func(t(4), t(10), t(10), i32(0, 2, 4), i32(0, 5, 10), window_size=3),
         "window_size"),
        (lambda: flash_attn_varlen_backward(t(4), t(10), t(10), t(10), t(10), torch.zeros(2, 10), i32(0, 5, 10),
                                            i32(0, 5, 10)), "dout must have"),
        (lambda: flash_attn_varlen_backward(t(10), t(10), t(10), t(10), t(10), torch.zeros(3), i32(0, 5, 10),
                                            i32(0, 5, 10)), "softmax_lse must be"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_same_as_flash_attention_on_self_attention():
    """Equal cu_seqlens are our flash_attention exactly (the path every Ulysses call takes)."""
    from nextlong.kernels import flash_attention

    q, k, v, cu, _ = data([6, 30, 11], [6, 30, 11])
    out = flash_attn_varlen_func(q, k, v, cu, cu.clone(), 30, 30, causal=True)
    assert torch.equal(out, flash_attention(q, k, v, causal=True, cu_seqlens=cu))


@pytest.mark.parametrize("dim", [16, 80])
def test_the_log_sum_exp_is_the_same_from_both_backends(dim):
    """The Triton kernels keep lse in base 2, (heads, tokens); attention_with_lse gives natural log, (tokens,
    heads), from either backend (Triton here in the interpreter, fp32), also at a padded head dim (80)."""
    from nextlong.kernels.attention import attention_with_lse

    q, k, v, cu, _ = data([7, 20], [7, 20], dim=dim)
    ref_out, ref_lse = attention_with_lse(q, k, v, causal=True, cu_seqlens=cu, window=(5, 0), backend="torch")
    out, lse = attention_with_lse(q, k, v, causal=True, cu_seqlens=cu, window=(5, 0), backend="triton")
    assert lse.shape == ref_lse.shape == (27, 4) and not lse.requires_grad
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lq,lk,causal,window,scale", CASES)
def test_forward_and_backward_halves_follow_flash_attn_semantics(lq, lk, causal, window, scale):
    """The halves ring wrappers call (flash-attn's private `_flash_attn_varlen_forward/_backward`):
    the backward runs on the saved out and lse and gives autograd's gradients through the loop."""
    from nextlong.kernels import flash_attn_varlen_backward, flash_attn_varlen_forward

    q, k, v, cu_q, cu_k = data(lq, lk)
    out, lse = flash_attn_varlen_forward(q, k, v, cu_q, cu_k, max(lq), max(lk), softmax_scale=scale, causal=causal,
                                         window_size=window)
    assert not out.requires_grad and lse.shape == (q.shape[1], q.shape[0])
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    dq, dk, dv = flash_attn_varlen_backward(g, q.detach(), k.detach(), v.detach(), out, lse, cu_q, cu_k, max(lq),
                                            max(lk), softmax_scale=scale, causal=causal, window_size=window)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    scale = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want, _ = loop_reference(q64, k64, v64, cu_q.tolist(), cu_k.tolist(), causal, scale, window)
    torch.testing.assert_close(out.double(), want.detach(), atol=1e-5, rtol=1e-5)
    for got, exp in zip((dq, dk, dv), torch.autograd.grad((want * g.double()).sum(), (q64, k64, v64))):
        torch.testing.assert_close(got.double(), exp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,dim", [("torch", 16), ("triton", 16), ("triton", 72)])
def test_backward_from_a_merged_log_sum_exp_is_the_whole_gradient(backend, dim):
    """Ring attention in one process: keys in two blocks, each block's forward on its own, the partial results
    merged by their lse, then each block's backward given the *merged* out and lse. The summed dq and the
    blocks' dk, dv equal the gradients of attention over all keys (the lse really is read: a stale one fails)."""
    from nextlong.kernels.attention import attention_backward

    from nextlong.kernels import flash_attn_varlen_backward, flash_attn_varlen_forward

    q, k, v, cu, _ = data([24], [24], dim=dim, seed=3)
    q, k, v = (x.detach() for x in (q, k, v))
    cu_q, cu_first, cu_second = (torch.tensor([0, n], dtype=torch.int32) for n in (12, 12, 12))
    qs = q[12:]  # the second half's queries see the first half's keys (not causal) and their own (causal)
    o1, l1 = flash_attn_varlen_forward(qs, k[:12], v[:12], cu_q, cu_first, causal=False)
    o2, l2 = flash_attn_varlen_forward(qs, k[12:], v[12:], cu_q, cu_second, causal=True)
    lse = torch.logaddexp(l1, l2)
    out = o1 * torch.exp(l1 - lse).t()[..., None] + o2 * torch.exp(l2 - lse).t()[..., None]
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    if backend == "torch":
        dq1, dk1, dv1 = flash_attn_varlen_backward(g, qs, k[:12], v[:12], out, lse, cu_q, cu_first, causal=False)
        dq2, dk2, dv2 = flash_attn_varlen_backward(g, qs, k[12:], v[12:], out, lse, cu_q, cu_second, causal=True)
    else:  # the Triton kernels (interpreter, fp32) through the same entry point the varlen halves use
        dq1, dk1, dv1 = attention_backward(g, qs, k[:12], v[:12], out, lse.t(), cu_seqlens=cu_q, causal=False,
                                           backend="triton")
        dq2, dk2, dv2 = attention_backward(g, qs, k[12:], v[12:], out, lse.t(), cu_seqlens=cu_q, causal=True,
                                           backend="triton")
    leaves = [x.clone().requires_grad_() for x in (qs, k, v)]
    scale = 1 / math.sqrt(q.shape[-1])
    want, _ = loop_reference(*leaves, [0, 12], [0, 24], True, scale, (-1, -1))
    rq, rk, rv = torch.autograd.grad((want * g).sum(), leaves)
    torch.testing.assert_close(out, want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dq1 + dq2, rq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([dk1, dk2]), rk, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([dv1, dv2]), rv, atol=1e-5, rtol=1e-5)
    stale = flash_attn_varlen_backward(g, qs, k[12:], v[12:], out, l2, cu_q, cu_second, causal=True)[0]
    assert not torch.allclose(dq1 + stale, rq, atol=1e-3)


@pytest.mark.parametrize("front", [(9, 2), (3, 2), (1, 7)])
def test_backward_from_a_merged_log_sum_exp_with_unequal_lengths(front):
    """As above with two sequences (6 and 10 queries over 14 and 16 keys), each sequence's keys cut into a
    front block every query sees (not causal) and a back block (causal, bottom-right aligned): the cuts give
    blocks shorter than their queries (the exact PyTorch path) and longer (the padded kernel path). The
    backward must use the merged lse, not the block's own softmax."""
    from nextlong.kernels import flash_attn_varlen_backward, flash_attn_varlen_forward

    lq, lk = [6, 10], [14, 16]
    q, k, v, cu_q, cu_k = data(lq, lk, seed=5)
    q, k, v = (x.detach() for x in (q, k, v))
    cut = lambda lengths: torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)  # noqa
    f = list(front)
    back = [n - m for n, m in zip(lk, f)]
    first = torch.cat([torch.arange(c, c + m) for c, m in zip(cu_k[:-1].tolist(), f)])
    second = torch.cat([torch.arange(c + m, c + n) for c, m, n in zip(cu_k[:-1].tolist(), f, lk)])
    blocks = [(first, cut(f), False), (second, cut(back), True)]
    halves = [flash_attn_varlen_forward(q, k[idx], v[idx], cu_q, cu, causal=causal) for idx, cu, causal in blocks]
    (o1, l1), (o2, l2) = halves
    lse = torch.logaddexp(l1, l2)
    w1, w2 = (torch.exp(l - lse).nan_to_num(0.0).t()[..., None] for l in (l1, l2))
    out = o1 * w1 + o2 * w2
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    dq = torch.zeros_like(q)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    for idx, cu, causal in blocks:
        bq, bk, bv = flash_attn_varlen_backward(g, q, k[idx], v[idx], out, lse, cu_q, cu, causal=causal)
        dq += bq
        dk[idx], dv[idx] = bk, bv
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    want, _ = loop_reference(*leaves, cu_q.tolist(), cu_k.tolist(), True, 1 / math.sqrt(q.shape[-1]), (-1, -1))
    torch.testing.assert_close(out, want.detach(), atol=1e-5, rtol=1e-5)
    for got, exp in zip((dq, dk, dv), torch.autograd.grad((want * g).sum(), leaves)):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sq,sk,causal", [(9, 9, False), (9, 9, True), (4, 9, True), (4, 9, False)])
def test_flash_attn_func_is_the_batched_layout_with_flash_attns_defaults(sq, sk, causal):
    """flash-attn's flash_attn_func: (B, S, H, D), causal False by default, bottom-right alignment for S_q < S_k,
    softmax_lse (B, H, S_q); the loop reference per row."""
    from nextlong.kernels import flash_attn_func

    g = torch.Generator().manual_seed(sq * 10 + sk)
    q = torch.randn(3, sq, 4, 16, generator=g, requires_grad=True)
    k = torch.randn(3, sk, 2, 16, generator=g, requires_grad=True)
    v = torch.randn(3, sk, 2, 16, generator=g, requires_grad=True)
    kwargs = {"causal": True} if causal else {}  # the default is flash-attn's: not causal
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True, **kwargs)
    cu_q = [i * sq for i in range(4)]
    cu_k = [i * sk for i in range(4)]
    ref, ref_lse = loop_reference(q.reshape(-1, 4, 16), k.reshape(-1, 2, 16), v.reshape(-1, 2, 16), cu_q, cu_k,
                                  causal, 0.25, (-1, -1))
    assert out.shape == q.shape and lse.shape == (3, 4, sq)
    torch.testing.assert_close(out, ref.reshape(q.shape), atol=2e-5, rtol=0)
    torch.testing.assert_close(lse, ref_lse.reshape(4, 3, sq).transpose(0, 1), atol=2e-5, rtol=0)
    do = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, (q, k, v), do)
    want = torch.autograd.grad(ref.reshape(q.shape), (q, k, v), do)
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=0, msg=lambda m: f"d{name}: {m}")


def test_split_halves_with_an_empty_key_sequence_and_misused_splits():
    """A sequence with no key (lengths q [2, 3], k [0, 3]): the backward half crashed reshaping 0 elements; a
    Python list or a split on another device was failed on by torch.equal instead of being named."""
    from nextlong.kernels import flash_attn_varlen_backward, flash_attn_varlen_forward

    q, k, v, cu_q, cu_k = data([2, 3], [0, 3])
    out, lse = flash_attn_varlen_forward(q, k, v, cu_q, cu_k, causal=True)
    assert bool((out[:2] == 0).all()) and bool(torch.isneginf(lse[:, :2]).all())
    do = torch.randn(out.shape)
    dq, dk, dv = flash_attn_varlen_backward(do, q, k, v, out, lse, cu_q, cu_k, causal=True)
    want = torch.autograd.grad(flash_attn_varlen_func(q, k, v, cu_q, cu_k, causal=True), (q, k, v), do)
    for a, b in zip((dq, dk, dv), want):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=0)
    with pytest.raises(ValueError, match="flash_attn_varlen_func: cu_seqlens_q must be a 1-D int32 tensor"):
        flash_attn_varlen_func(q, k, v, cu_q.tolist(), cu_k)
    with pytest.raises(ValueError, match="flash_attn_varlen_func: cu_seqlens_k is on meta, the tokens on cpu"):
        flash_attn_varlen_func(q, k, v, cu_q, cu_k.to("meta"))
    with pytest.raises(ValueError, match="flash_attn_varlen_func: window_size entries must be >= 0"):
        flash_attn_varlen_func(q, k, v, cu_q, cu_k, window_size=(-5, 2))


@pytest.mark.parametrize("sq,sk", [(3, 3), (2, 5)])
def test_flash_attn_func_takes_an_empty_batch(sq, sk):
    """A batch of 0 sequences (the tail of a dataloader, an empty shard) was refused with "cu_seqlens_q must be
    a 1-D int32 tensor", an argument a flash_attn_func caller never passed; now it is empty out, as for S = 0."""
    from nextlong.kernels import flash_attn_func

    q = torch.randn(0, sq, 4, 16, requires_grad=True)
    k, v = torch.randn(0, sk, 2, 16, requires_grad=True), torch.randn(0, sk, 2, 16, requires_grad=True)
    out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert out.shape == q.shape and lse.shape == (0, 4, sq) and lse.dtype == torch.float32
    assert [t.shape for t in torch.autograd.grad(out.sum(), (q, k, v))] == [q.shape, k.shape, v.shape]
    with pytest.raises(ValueError, match="k/v heads \\(3\\) must divide q heads \\(4\\)"):
        flash_attn_func(q, torch.randn(0, sk, 3, 16), torch.randn(0, sk, 3, 16))


def test_flash_attn_func_names_a_k_on_another_device():
    """flash_attn_func builds its cu_seqlens on q's device: a k on another one was reported as "cu_seqlens_k is
    on cpu, the tokens on meta", an argument its caller never passed."""
    from nextlong.kernels import flash_attn_func

    q = torch.randn(1, 6, 2, 8)
    with pytest.raises(ValueError, match="q, k, v must be on one device, got cpu, meta, cpu"):
        flash_attn_func(q, q.to("meta"), q)


def test_arguments_that_are_not_tensors_are_named():
    """A numpy array for q failed with "'numpy.ndarray' object has no attribute 'dim'" (flash_attn_varlen_func) or
    "'str' object has no attribute 'type'" (flash_attention), and cu_seqlens_from_lengths turned a length of 2.5
    into 2."""
    from nextlong.kernels import cu_seqlens_from_lengths, flash_attention, flash_attn_varlen_backward

    q, k, v, cu_q, cu_k = data([2, 3], [2, 3])
    with pytest.raises(TypeError, match="flash_attn_varlen_func: q must be a torch.Tensor, got ndarray"):
        flash_attn_varlen_func(q.detach().numpy(), k, v, cu_q, cu_k)
    with pytest.raises(TypeError, match="flash_attention: v must be a torch.Tensor, got list"):
        flash_attention(q, k, v.tolist(), cu_seqlens=cu_q)
    out, lse, _ = flash_attn_varlen_func(q, k, v, cu_q, cu_k, return_attn_probs=True)
    with pytest.raises(TypeError, match="flash_attn_varlen_backward: softmax_lse must be a torch.Tensor, got list"):
        flash_attn_varlen_backward(out, q, k, v, out, lse.tolist(), cu_q, cu_k)
    with pytest.raises(TypeError, match="cu_seqlens_from_lengths: lengths must be integers, got torch.float32"):
        cu_seqlens_from_lengths(torch.tensor([2.5, 3.0]))
    assert cu_seqlens_from_lengths([2, 3]).tolist() == [0, 2, 5]
