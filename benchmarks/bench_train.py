"""Training-step throughput and peak memory: our attention + fused loss against the peer stacks.

One step = forward + backward + AdamW update of one packed sequence of S tokens holding documents of
`--doc` tokens each (attention must not cross them), the way `nextlong train` runs it (its
`LossModel`, the `tiny` preset with a V-id vocabulary). Each configuration runs in a fresh process
(so peak memory is its own), with the same model, data and seed:

* nextlong+fused — our attention kernel fed `cu_seqlens` (PyTorch fallback on CPU, Triton on CUDA)
  and `fused_linear_cross_entropy` from the last hidden state (no logits tensor);
* eager+dense-mask+CE — transformers' eager attention with a dense (1, 1, S, S) additive
  block-diagonal causal mask, then `lm_head` and `F.cross_entropy` on the full logits;
* sdpa+dense-mask+CE — transformers' SDPA with the same mask as a boolean tensor, standard CE;
* sdpa-split+CE — SDPA with `is_causal` once per document (torch.split views of the packed sequence,
  as in bench_attention.py), standard CE: the attention a CPU user would write without a dense mask.

The dense-mask configurations pay an (S, S) mask and the full logits: they show what our kernels save
against the obvious transformers set-up, not against the fastest peers. On CUDA the fair peer stacks
are added (each guarded: skipped with the reason when its package or kernel is missing):

* varlen+liger — PyTorch's own varlen attention (`torch.nn.attention.varlen.varlen_attn`, registered as
  a transformers attention function fed the collator's `cu_seq_lens`) and Liger's
  `LigerFusedLinearCrossEntropyLoss`;
* flex+liger — transformers' `flex_attention` (compiled FlexAttention) with a document+causal
  `BlockMask` built from `cu_seq_lens` in every step (bench_attention.flex_block_mask), and Liger;
* flash-attn-varlen+liger — transformers' `flash_attention_2` (flash-attn's varlen kernel) and Liger.

Every configuration starts from the same weights and data, so the first step's loss must agree:
the table gives each one's difference from nextlong+fused's.

Reported: tokens/s (S / median step time) and peak memory above the process's memory once the model
and optimizer exist (CPU: peak RSS, VmHWM; CUDA: max allocated). Ratios are against the eager
dense-mask path (SDPA's where eager ran out of memory) and, on CUDA, against the fastest fair peer
stack of the run ("x best peer").

CPU:  python3 benchmarks/bench_train.py cpu [--seq 2048,4096] [--vocab 32768] [--threads 1]
GPU:  python3 benchmarks/bench_train.py gpu [--seq 8192,...,65536] (small preset, bf16 autocast; adds
      the peer stacks above and model FLOPs utilisation)
pytest: python3 -m pytest -q benchmarks/bench_train.py (a 1K-token CPU step per configuration)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time

import pytest
import torch

CONFIGS = {
    "nextlong+fused": ("nextlong", "fused"),
    "eager+dense-mask+CE": ("eager", "eager"),
    "sdpa+dense-mask+CE": ("sdpa", "eager"),
    "sdpa-split+CE": ("bench_sdpa_split", "eager"),
}
GPU_EXTRA = {
    "varlen+liger": ("bench_varlen", "liger"),
    "flex+liger": ("flex_attention", "liger"),
    "flash-attn-varlen+liger": ("flash_attention_2", "liger"),
}
FAIR_PEERS = tuple(GPU_EXTRA)
H100_BF16_DENSE_TFLOPS = 989.0


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _batch(seq: int, doc: int, vocab: int, device):
    from nextlong.train.data import Sequence, collate
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, seq, dtype=np.uint32)
    spans = [doc] * (seq // doc) + ([seq % doc] if seq % doc else [])
    batch = collate([Sequence(ids, spans)])
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _packed(query, key, value):
    """transformers' (B, H, S, D) -> the packed (B * S, H, D) layout of varlen kernels, in autocast's dtype
    when autocast is on (as SDPA and F.linear compute; the rotary embedding hands over fp32 q/k)."""
    b, _, s, d = query.shape
    out = [x.transpose(1, 2).reshape(b * s, x.shape[1], d) for x in (query, key, value)]
    if torch.is_autocast_enabled(query.device.type):
        dtype = torch.get_autocast_dtype(query.device.type)
        out = [x.to(dtype) for x in out]
    return out


def _repeat_kv(x, heads):
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function over torch.nn.attention.varlen.varlen_attn (CUDA), fed the
    collator's cu_seq_lens_q / max_length_q: attention never crosses a document."""
    from torch.nn.attention.varlen import varlen_attn

    b, h, s, d = query.shape
    q, k, v = _packed(query, key, value)
    params = inspect.signature(varlen_attn).parameters
    extra = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    if "enable_gqa" in params:
        extra["enable_gqa"] = True
    else:
        k, v = _repeat_kv(k, h), _repeat_kv(v, h)
    if "scale" in params:  # torch 2.9 takes none (its default 1/sqrt(D) is Llama's scaling too)
        extra["scale"] = scaling
    cu = kwargs["cu_seq_lens_q"].to(torch.int32)
    m = int(kwargs["max_length_q"])
    out = varlen_attn(q, k, v, cu, cu, m, m, **extra)
    return out.reshape(b, s, h, d), None  # in autocast's dtype, as SDPA's output would be


def sdpa_split_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: SDPA with is_causal once per document, over torch.split views."""
    import torch.nn.functional as F

    b, h, s, d = query.shape
    assert b == 1, "sdpa_split_attention: one packed row"
    lengths = torch.diff(kwargs["cu_seq_lens_q"]).tolist()
    key, value = _repeat_kv(key, h), _repeat_kv(value, h)
    parts = [x.split(lengths, dim=2) for x in (query, key, value)]
    outs = [F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling) for q, k, v in zip(*parts)]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2), None


def _register(name: str, fn) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, flash_attention_mask)  # no mask: the boundaries come as cu_seq_lens


CUSTOM_ATTENTION = {"bench_varlen": varlen_attention, "bench_sdpa_split": sdpa_split_attention}
SPAN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


class PeerLoss(torch.nn.Module):
    """A peer stack: the decoder with `attention` given the document boundaries the way that attention
    takes them (cu_seq_lens, or a FlexAttention BlockMask built each step), then Liger's fused linear CE
    ("liger") or lm_head + F.cross_entropy on fp32 logits ("eager"); the sum over the labelled tokens,
    like LossModel's with weights 1."""

    def __init__(self, lm, attention: str, loss: str):
        super().__init__()
        self.lm, self.attention, self.ce = lm, attention, None
        if loss == "liger":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            self.ce = LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def attention_inputs(self, batch):
        if self.attention == "flex_attention":
            from bench_attention import flex_block_mask

            lengths = torch.diff(batch["cu_seq_lens_q"]).tolist()
            return {"attention_mask": flex_block_mask(lengths, batch["input_ids"].device)[0]}
        return {k: batch[k] for k in SPAN_KEYS}

    def forward(self, batch, weights):
        import torch.nn.functional as F

        hidden = self.lm.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                       use_cache=False, **self.attention_inputs(batch)).last_hidden_state
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        y = batch["labels"][:, 1:].reshape(-1)
        head = self.lm.get_output_embeddings()
        if self.ce is not None:
            return self.ce(head.weight, h, y)
        return F.cross_entropy(head(h).float(), y, ignore_index=-100, reduction="sum")


def measure_one(config: str, seq: int, doc: int, vocab: int, preset: str, steps: int, threads: int) -> dict:
    """Build, warm up, and time `steps` training steps of one configuration in this process."""
    from nextlong.train.model import LossModel, build_model

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and threads:
        torch.set_num_threads(threads)
    attention, loss = {**CONFIGS, **GPU_EXTRA}[config]
    lm = build_model(preset, vocab_size=vocab, seq_len=seq,
                     attention=attention if attention in ("nextlong", "eager", "sdpa") else "nextlong", seed=0)
    if attention in CUSTOM_ATTENTION:
        _register(attention, CUSTOM_ATTENTION[attention])
    lm.config._attn_implementation = "nextlong" if attention == "nextlong" else attention
    lm.to(device).train()
    if attention in ("nextlong", "eager", "sdpa"):
        model = LossModel(lm, attention=attention, loss=loss)
    else:
        model = PeerLoss(lm, attention, loss)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    batch = _batch(seq, doc, vocab, device)
    weights = (batch["labels"] != -100).float()
    n_params = sum(p.numel() for p in lm.parameters())

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else _null():
            out = model(batch, weights) / weights[:, 1:].sum()
        out.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out)

    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_kib("VmRSS") * 1024
    loss0 = step()  # warm-up (also allocates the optimizer state)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM") * 1024) - base
    median = sorted(times)[len(times) // 2]
    out = {"config": config, "seq": seq, "doc": doc, "vocab": vocab, "preset": preset, "params": n_params,
           "median_step_s": median, "tokens_per_s": seq / median, "peak_mib": peak / 2**20, "first_loss": loss0,
           "device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()} threads"}
    if cuda:  # model FLOPs: 6 * params * tokens + attention (causal, per span: 6 * layers * hidden * sum len^2)
        cfg = lm.config
        attn = 6 * cfg.num_hidden_layers * cfg.hidden_size * sum(min(doc, seq - s) ** 2 for s in range(0, seq, doc))
        out["mfu"] = (6 * n_params * seq + attn) / median / (H100_BF16_DENSE_TFLOPS * 1e12)
        out["tflops"] = (6 * n_params * seq + attn) / median / 1e12
        out["hidden"] = cfg.hidden_size
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_isolated(config, seq, doc, vocab, preset, steps, threads) -> dict:
    """measure_one in a fresh interpreter, so its peak memory is not another configuration's."""
    args = [sys.executable, __file__, "one", config, str(seq), str(doc), str(vocab), preset, str(steps), str(threads)]
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads or "")))
    if proc.returncode != 0:
        return {"config": config, "seq": seq, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """Markdown table; ratios against eager+dense-mask+CE (sdpa+dense-mask+CE where eager failed) and
    against the fastest fair peer stack of the same S (FAIR_PEERS, CUDA only); 'loss diff': first-step
    loss minus nextlong+fused's."""
    ok_rows = [r for r in rows if "error" not in r]
    mfu_col = any("mfu" in r for r in ok_rows)
    peers = any(r["config"] in FAIR_PEERS for r in ok_rows)
    head = "| S | config | tokens/s | x dense | peak MiB | x dense | step s | loss diff |"
    sep = "|---|---|---|---|---|---|---|---|"
    if peers:
        head, sep = head + " x best peer (tokens/s, memory) |", sep + "---|"
    if mfu_col:
        head, sep = head + " MFU |", sep + "---|"
    lines = [head, sep]
    for seq in sorted({r["seq"] for r in rows}):
        group = [r for r in rows if r["seq"] == seq]
        ok = [r for r in group if "error" not in r]
        ref = next((r for r in ok if r["config"] == "eager+dense-mask+CE"),
                   next((r for r in ok if r["config"] == "sdpa+dense-mask+CE"), None))
        ours = next((r for r in ok if r["config"] == "nextlong+fused"), None)
        best = max((r for r in ok if r["config"] in FAIR_PEERS), key=lambda r: r["tokens_per_s"], default=None)
        for r in group:
            if "error" in r:
                lines.append(f"| {seq} | {r['config']} | error: {r['error'][:80]} |" + " |" * (sep.count("|") - 4))
                continue
            tput = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}" if ref else "-"
            mem = f"{r['peak_mib'] / ref['peak_mib']:.2f}" if ref else "-"
            diff = f"{r['first_loss'] - ours['first_loss']:+.4f}" if ours else "-"
            line = (f"| {seq} | {r['config']} | {r['tokens_per_s']:,.0f} | {tput} | {r['peak_mib']:,.0f} | {mem} "
                    f"| {r['median_step_s']:.3f} | {diff} |")
            if peers:
                line += (f" {r['tokens_per_s'] / best['tokens_per_s']:.2f}, {r['peak_mib'] / best['peak_mib']:.2f} "
                         f"({best['config']}) |" if best else " - |")
            if mfu_col:
                line += f" {100 * r['mfu']:.1f}% |" if "mfu" in r else " |"
            lines.append(line)
    lines.append("\nx dense: against eager+dense-mask+CE, or sdpa+dense-mask+CE where eager failed; x best peer: "
                 "against the fastest fair peer stack of that S; loss diff: first-step loss minus nextlong+fused's")
    return "\n".join(lines)


def _record(row: dict, seq: int, doc: int, vocab: int) -> None:
    """One row of docs/benchmarks/gpu-runs.jsonl: impl is the stack's configuration name (attention + loss);
    a failed run (out of memory among others) has ms null."""
    try:
        from _measure import record_gpu_row
    except ModuleNotFoundError:
        from benchmarks._measure import record_gpu_row

    ok = "error" not in row
    record_gpu_row("train_step", "fwd+bwd", row["config"], seq=seq, docs=-(-seq // doc), v=vocab,
                   h=row.get("hidden"), dtype="bfloat16", ms=1000 * row["median_step_s"] if ok else None,
                   peak_mib=row.get("peak_mib"), tflops=row.get("tflops"))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "one":
        config, seq, doc, vocab, preset, steps, threads = argv[1:]
        print(json.dumps(measure_one(config, int(seq), int(doc), int(vocab), preset, int(steps), int(threads))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("cpu", "gpu"))
    p.add_argument("--seq", help="comma-separated sequence lengths (cpu: 2048,4096; gpu: 8192,16384,32768,65536)")
    p.add_argument("--doc", type=int, default=512, help="tokens per packed document (default 512; gpu 4096)")
    p.add_argument("--vocab", type=int, default=32768, help="vocabulary size (default 32768)")
    p.add_argument("--preset", help="model preset (cpu: tiny, gpu: small)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up (default 5)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1; 0 = torch's default)")
    p.add_argument("--configs", help="comma-separated configurations to run (default: all for the device)")
    a = p.parse_args(argv)
    gpu = a.kind == "gpu"
    seqs = [int(s) for s in (a.seq or ("8192,16384,32768,65536" if gpu else "2048,4096")).split(",")]
    doc = a.doc if not gpu or a.doc != 512 else 4096
    preset = a.preset or ("small" if gpu else "tiny")
    configs = list(CONFIGS) + (list(GPU_EXTRA) if gpu else [])
    if a.configs:
        unknown = set(a.configs.split(",")) - set(CONFIGS) - set(GPU_EXTRA)
        if unknown:
            p.error(f"unknown configurations {sorted(unknown)}; known: {', '.join([*CONFIGS, *GPU_EXTRA])}")
        configs = a.configs.split(",")
    print(f"load before: {os.getloadavg()}", file=sys.stderr)
    rows = []
    for seq in seqs:
        for config in configs:
            rows.append(run_isolated(config, seq, doc, a.vocab, preset, a.steps, a.threads))
            print(json.dumps(rows[-1]), file=sys.stderr)
            if gpu:
                _record(rows[-1], seq, doc, a.vocab)
    print(f"load after: {os.getloadavg()}", file=sys.stderr)
    print(table(rows))
    return 0


@pytest.mark.parametrize("config", list(CONFIGS))
def test_cpu_train_step(benchmark, config):
    attention, loss = CONFIGS[config]
    result = benchmark.pedantic(measure_one, args=(config, 1024, 256, 4096, "tiny", 2, 1), rounds=1, iterations=1)
    assert result["tokens_per_s"] > 0


if __name__ == "__main__":
    sys.exit(main())
