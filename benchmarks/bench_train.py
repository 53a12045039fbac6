"""Training-step throughput and peak memory: our attention + fused loss against the dense-mask paths.

One step = forward + backward + AdamW update of one packed sequence of S tokens holding documents of
`--doc` tokens each (attention must not cross them), the way `nextlong train` runs it (its
`LossModel`, the `tiny` preset with a V-id vocabulary). Each configuration runs in a fresh process
(so peak memory is its own), with the same model, data and seed:

* nextlong+fused — our attention kernel fed `cu_seqlens` (PyTorch fallback on CPU, Triton on CUDA)
  and `fused_linear_cross_entropy` from the last hidden state (no logits tensor);
* eager+dense-mask+CE — transformers' eager attention with a dense (1, 1, S, S) additive
  block-diagonal causal mask, then `lm_head` and `F.cross_entropy` on the full logits;
* sdpa+dense-mask+CE — transformers' SDPA with the same mask as a boolean tensor, standard CE.

Reported: tokens/s (S / median step time) and peak memory above the process's memory once the model
and optimizer exist (CPU: peak RSS, VmHWM; CUDA: max allocated). Ratios are against the eager path.

CPU:  python3 benchmarks/bench_train.py cpu [--seq 2048,4096] [--vocab 32768] [--threads 1]
GPU:  python3 benchmarks/bench_train.py gpu [--seq 8192,...,65536] (small preset, bf16 autocast; adds
      flash-attn varlen + Liger fused linear CE when importable, and model FLOPs utilisation)
pytest: python3 -m pytest -q benchmarks/bench_train.py (a 1K-token CPU step per configuration)
"""

from __future__ import annotations

import argparse
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
}
GPU_EXTRA = {"flash-attn-varlen+liger": ("flash_attention_2", "liger")}
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


class _LigerLoss(torch.nn.Module):
    """flash-attn varlen attention (transformers' flash_attention_2 with cu_seq_lens) + Liger's fused CE."""

    def __init__(self, lm):
        super().__init__()
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        self.lm, self.ce = lm, LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def forward(self, batch, weights):
        keys = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
        hidden = self.lm.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                               **{k: batch[k] for k in keys}).last_hidden_state
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        return self.ce(self.lm.lm_head.weight, h, batch["labels"][:, 1:].reshape(-1))


def measure_one(config: str, seq: int, doc: int, vocab: int, preset: str, steps: int, threads: int) -> dict:
    """Build, warm up, and time `steps` training steps of one configuration in this process."""
    from nextlong.train.model import LossModel, build_model

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and threads:
        torch.set_num_threads(threads)
    attention, loss = {**CONFIGS, **GPU_EXTRA}[config]
    lm = build_model(preset, vocab_size=vocab, seq_len=seq,
                     attention="nextlong" if attention == "flash_attention_2" else attention, seed=0)
    if attention == "flash_attention_2":
        lm.config._attn_implementation = "flash_attention_2"
    lm.to(device).train()
    model = _LigerLoss(lm) if loss == "liger" else LossModel(lm, attention=attention, loss=loss)
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
    lines = ["| S | config | tokens/s | x eager | peak MiB | x eager | step s |" + (" MFU |" if "mfu" in rows[0] else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if "mfu" in rows[0] else "")]
    for seq in sorted({r["seq"] for r in rows}):
        group = [r for r in rows if r["seq"] == seq]
        ref = next((r for r in group if r["config"] == "eager+dense-mask+CE" and "error" not in r), None)
        for r in group:
            if "error" in r:
                lines.append(f"| {seq} | {r['config']} | error: {r['error'][:60]} | | | | |")
                continue
            tput = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}" if ref else "-"
            mem = f"{r['peak_mib'] / ref['peak_mib']:.2f}" if ref else "-"
            mfu = f" {100 * r['mfu']:.1f}% |" if "mfu" in r else ""
            lines.append(f"| {seq} | {r['config']} | {r['tokens_per_s']:,.0f} | {tput} | {r['peak_mib']:,.0f} | {mem} "
                         f"| {r['median_step_s']:.3f} |{mfu}")
    return "\n".join(lines)


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
    a = p.parse_args(argv)
    gpu = a.kind == "gpu"
    seqs = [int(s) for s in (a.seq or ("8192,16384,32768,65536" if gpu else "2048,4096")).split(",")]
    doc = a.doc if not gpu or a.doc != 512 else 4096
    preset = a.preset or ("small" if gpu else "tiny")
    configs = list(CONFIGS) + (list(GPU_EXTRA) if gpu else [])
    print(f"load before: {os.getloadavg()}", file=sys.stderr)
    rows = []
    for seq in seqs:
        for config in configs:
            rows.append(run_isolated(config, seq, doc, a.vocab, preset, a.steps, a.threads))
            print(json.dumps(rows[-1]), file=sys.stderr)
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
