"""The cost of one ACER sample: LM calls and tokens per stage, and seconds, measured on this machine.

Not a peer comparison (nothing else makes ACER data offline): it measures what docs/acer.md's cost
formulas count, for random Llamas of two shapes (their answers are junk; the work is the same as a
real model's of that shape, except that a real reader stops at its answer instead of the budget).

    python benchmarks/acer_cost.py --questions 4 --retrieve 32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SHAPES = {  # name -> save_tiny_llama keyword arguments
    "tiny": dict(layers=2, heads=4, kv_heads=2, hidden=64),
    "small": dict(layers=8, heads=8, kv_heads=4, hidden=512),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="tiny,small")
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--docs", type=int, default=60, help="documents of the shipped corpus")
    p.add_argument("--chunk-tokens", type=int, default=128)
    p.add_argument("--retrieve", type=int, default=32)
    p.add_argument("--read", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--target-length", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import nextlong
    from tests.eval_fixtures import save_tiny_llama, train_tokenizer
    from tests.helpers import corpus_head, write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = train_tokenizer(root / "tok" / "tokenizer.json")
        docs = corpus_head(limit=args.docs)
        corpus = write_jsonl(root / "corpus.jsonl", docs)
        questions = root / "q.jsonl"
        questions.write_text("".join(json.dumps({"question": f"What does the {name} module provide?"}) + "\n"
                                     for name, _ in docs[:args.questions]))
        print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; torch threads {args.threads}")
        for shape in args.shapes.split(","):
            model = save_tiny_llama(root / shape, tok, max_positions=8192, **SHAPES[shape])
            params = sum(t.numel() for t in __import__("safetensors.torch").torch.load_file(
                str(model / "model.safetensors")).values())
            t0 = time.perf_counter()
            manifest = nextlong.acer(corpus, root / f"out-{shape}", model=model, questions=questions,
                                     embedder="hashed-tfidf", target_length=args.target_length,
                                     chunk_tokens=args.chunk_tokens, retrieve=args.retrieve, read=args.read,
                                     max_new_tokens=args.max_new_tokens, progress=False, num_threads=args.threads)
            wall = time.perf_counter() - t0
            s = manifest["statistics"]
            n = s["samples"]
            print(f"\n{shape}: {params / 1e6:.1f}M parameters, {n} samples, {wall:.1f} s wall")
            for stage, w in s["lm"].items():
                tokens = w["prompt_tokens"] + w["generated_tokens"]
                print(f"  {stage:5s} per sample: {w['calls'] / n:6.1f} LM calls, {w['prompt_tokens'] / n:8.0f} prompt "
                      f"tokens, {w['generated_tokens'] / n:5.0f} generated; {w['seconds'] / n:6.2f} s "
                      f"({tokens / max(w['seconds'], 1e-9):,.0f} tokens/s)")
            other = {k: v for k, v in s["seconds"].items() if k not in s["lm"] and k != "total"}
            print("  other stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in other.items()))


if __name__ == "__main__":
    main()
