"""What matching a tokenizer.json's non-special added tokens costs `encode_ordinary` (corpus text).

Files built from cl100k's ranks (transformers' TikTokenConverter, as bench_tokenizer.py does), each with an
NFC normalizer and the added tokens of a real family: GPT-NeoX-style (Pythia, Phi-2: `<|endoftext|>` and
`<|padding|>` special, runs of 2-24 spaces and 2-9 tabs not special and normalized) and Qwen3-style
(`<|endoftext|>`, `<|im_start|>`, `<|im_end|>` special; `<think>`, `</think>`, `<tool_call>`,
`</tool_call>` not), each beside the same file with every added token special (encode_ordinary then
matches none), plus a GPT-2-style file (GPT-2 pattern, only `<|endoftext|>`). The text is ~10 MB of
tests.helpers.benchmark_documents (snapshot and standard-library sources, shuffled with seed 0), one
encode_ordinary call per document. Rounds are interleaved over the files; each file's pass follows a
warm-up on its first 200 documents (the piece cache is per tokenizer). Reported: best-of-rounds thread CPU
time (other processes' load moves the wall time more) and wall time, MB/s, a digest of the ids, and the
ratios non-special / all-special.

    python3 -m benchmarks.bench_added_tokens [--rounds 5] [--mb 10]   (from the repository root)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from nextlong.corpus.tokenizer import GPT2_PATTERN, QWEN2_PATTERN, load_tokenizer
from tests.helpers import benchmark_documents

BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
QWEN_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
# (content, normalized, special)
NEOX = [("<|endoftext|>", False, True), ("<|padding|>", False, True)] + \
       [(" " * k, True, False) for k in range(24, 1, -1)] + [("\t" * k, True, False) for k in range(9, 1, -1)]
QWEN = [("<|endoftext|>", False, True), ("<|im_start|>", False, True), ("<|im_end|>", False, True),
        ("<tool_call>", False, False), ("</tool_call>", False, False), ("<think>", False, False),
        ("</think>", False, False)]


def write_files(folder: Path) -> dict[str, Path]:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = importlib.util.find_spec("bpe_openai")
    ranks = folder / "cl100k_base.tiktoken"
    ranks.write_bytes(gzip.decompress((Path(list(spec.submodule_search_locations)[0]) / "data" /
                                       "cl100k_base.tiktoken.gz").read_bytes()))
    TikTokenConverter(vocab_file=str(ranks), pattern=GPT2_PATTERN).converted().save(str(folder / "base.json"))
    base = json.loads((folder / "base.json").read_text())
    first_id = len(base["model"]["vocab"])
    files = {}
    for name, pre, items, nfc in (("gpt2", BYTELEVEL, [("<|endoftext|>", False, True)], False),
                                  ("neox", BYTELEVEL, NEOX, True),
                                  ("neox-all-special", BYTELEVEL, [(c, n, True) for c, n, _ in NEOX], True),
                                  ("qwen3", QWEN_PRE, QWEN, True),
                                  ("qwen3-all-special", QWEN_PRE, [(c, n, True) for c, n, _ in QWEN], True)):
        data = dict(base, normalizer={"type": "NFC"} if nfc else None, pre_tokenizer=pre)
        data["added_tokens"] = [{"id": first_id + k, "content": c, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": n, "special": s} for k, (c, n, s) in enumerate(items)]
        files[name] = folder / f"{name}.json"
        files[name].write_text(json.dumps(data))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        toks = {name: load_tokenizer(str(path)) for name, path in write_files(Path(tmp)).items()}
    docs = [text for _, text in benchmark_documents()]
    random.Random(0).shuffle(docs)
    texts, total = [], 0
    for text in docs:
        if total >= args.mb * 1e6:
            break
        texts.append(text)
        total += len(text.encode())
    print(f"{len(texts)} documents, {total / 1e6:.2f} MB; load {open('/proc/loadavg').read().split()[:3]}")
    cpu = {name: float("inf") for name in toks}
    wall = dict(cpu)
    digest = {}
    for r in range(args.rounds):
        for name, tok in toks.items():
            for text in texts[:200]:
                tok.encode_ordinary(text)
            t0, c0 = time.perf_counter(), time.thread_time()
            ids = [tok.encode_ordinary(text) for text in texts]
            cpu[name] = min(cpu[name], time.thread_time() - c0)
            wall[name] = min(wall[name], time.perf_counter() - t0)
            if r == 0:
                h = hashlib.sha256()
                for a in ids:
                    h.update(np.int64(len(a)).tobytes())
                    h.update(np.asarray(a, np.uint32).tobytes())
                digest[name] = f"{h.hexdigest()[:16]} ({sum(len(a) for a in ids):,} ids)"
    print(f"load after {open('/proc/loadavg').read().split()[:3]}")
    for name in toks:
        print(f"{name:18s} cpu {cpu[name] * 1e3:7.1f} ms {total / cpu[name] / 1e6:6.1f} MB/s   "
              f"wall {wall[name] * 1e3:7.1f} ms   ids {digest[name]}")
    for label, best in (("cpu", cpu), ("wall", wall)):
        print(f"{label}: neox / all-special {best['neox'] / best['neox-all-special']:.3f}, "
              f"qwen3 / all-special {best['qwen3'] / best['qwen3-all-special']:.3f}")


if __name__ == "__main__":
    main()
