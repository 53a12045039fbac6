"""Does NExtLong data teach long-range dependency better than standard concatenation? (mini scale)

    python3 benchmarks/experiments/nextlong_vs_standard.py --out DIR [--scale smoke|cpu|gpu] [--seeds 0,1,2]
            [--arms standard,nextlong,short,quest,knn] [--report-dir docs/experiments] [--report-only]

One command runs the whole experiment; every stage writes its output folder and then a completion
record (`.done.json`, holding the stage's settings), so a re-run skips finished stages and finished
seeds and a killed run loses only the stage it was in (training resumes from its last checkpoint):

  corpus      the running interpreter's standard-library sources (*.py), split by a hash of the path
              into training documents and held-out long documents (evaluation only)
  tokenizer   byte-level BPE (HF `tokenizers` trainer) on the training split, loaded by nextlong.Tokenizer
  pretrain    a small Llama initialised at random, trained at the base length on the training split
  synth       per (method, seed): `nextlong.synthesize` on the training split (chunks and embeddings are
              cached in one work folder and shared by every method and seed)
  train       per (arm, seed): `nextlong.train.train` from the base checkpoint, same steps, tokens per
              step, schedule, RoPE theta; `short` continues at the base length on the same documents
  eval        per (arm, seed): `nextlong eval` (teacher-forced recall tasks), LongPPL / long-context
              gain / loss by position / short-context perplexity on the held-out documents, `nextlong heads`
  report      results.json ({"arms": {ARM: {"seeds": {SEED: {METRIC: value}}}}, ...}), the Markdown
              report with mean ± std, 95% intervals, the paired NExtLong − standard differences, and plots

The plan (sizes, tokens, why this corpus) is written in docs/experiments/nextlong-vs-standard.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shutil
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ALL_ARMS = ("standard", "nextlong", "short", "quest", "knn")
OPTIONAL_ARMS = ("quest", "knn")  # the design runs them "where time allows"; the comparison rests on the others
TASK_GROUPS = ("niah_single", "niah_multikey", "vt", "json_kv")
DONE = ".done.json"


# --- scales ------------------------------------------------------------------------------------


@dataclass
class Scale:
    name: str
    corpus_max_bytes: int          # training split cap (bytes of source text)
    heldout_docs: int              # held-out long documents (evaluation only)
    vocab: int
    hidden: int
    layers: int
    heads: int
    mlp: int
    base_len: int                  # pre-training context
    base_steps: int
    base_lr: float
    long_len: int                  # extension context (every long arm)
    batch_tokens: int              # tokens per optimizer step (every arm)
    steps: int                     # optimizer steps per arm
    lr: float
    warmup: int
    base_theta: float
    long_theta: float
    chunk_chars: int               # NExtLong chunk size s (characters)
    embedder: str                  # synthesis embedder
    eval_lengths: list[int]
    eval_depths: int
    eval_samples: int
    ppl_window: int                # W of the long-context gain and LongPPL's short window
    heads_lengths: list[int]
    heads_depths: int
    seeds: list[int]
    arms: list[str]
    save_every: int = 50
    split_chars: int = 0           # > 0: synthesize from the training documents cut into pieces of at most this
                                   # many characters (at line ends); 0: from the documents as they are
    repeat_distances: tuple[int, ...] = ()  # the repeat probe's distances (nextlong.eval.repeat), <= long_len / 2


SCALES = {
    "smoke": Scale("smoke", corpus_max_bytes=1_200_000, heldout_docs=2, vocab=2048, hidden=64, layers=2, heads=2,
                   mlp=192, base_len=256, base_steps=6, base_lr=3e-3, long_len=1024, batch_tokens=2048, steps=4,
                   lr=1e-3, warmup=1, base_theta=10_000.0, long_theta=40_000.0, chunk_chars=512,
                   embedder="hashed-tfidf", eval_lengths=[1024], eval_depths=2, eval_samples=1,
                   ppl_window=256, heads_lengths=[1000], heads_depths=2, seeds=[0], arms=["standard", "nextlong"],
                   save_every=0, repeat_distances=(128, 512)),
    "cpu": Scale("cpu", corpus_max_bytes=12_000_000, heldout_docs=16, vocab=4096, hidden=256, layers=4, heads=4,
                 mlp=768, base_len=512, base_steps=400, base_lr=2e-3, long_len=4096, batch_tokens=8192, steps=100,
                 lr=5e-4, warmup=10, base_theta=10_000.0, long_theta=80_000.0, chunk_chars=1024,
                 embedder="static",
                 eval_lengths=[1024, 2048, 4096], eval_depths=3, eval_samples=2, ppl_window=512,
                 heads_lengths=[1024, 2048, 4000], heads_depths=3, seeds=[0, 1, 2],
                 arms=["standard", "nextlong", "short", "quest", "knn"], save_every=25,
                 repeat_distances=(256, 1024, 2048)),
    "gpu": Scale("gpu", corpus_max_bytes=30_000_000, heldout_docs=32, vocab=8192, hidden=512, layers=8, heads=8,
                 mlp=1536, base_len=1024, base_steps=2000, base_lr=1e-3, long_len=16384, batch_tokens=65536,
                 steps=400, lr=3e-4, warmup=20, base_theta=10_000.0, long_theta=640_000.0, chunk_chars=2048,
                 embedder="all-MiniLM-L6-v2", eval_lengths=[2048, 4096, 8192, 16384], eval_depths=5,
                 eval_samples=4, ppl_window=1024, heads_lengths=[2048, 8192, 16000], heads_depths=5,
                 seeds=[0, 1, 2], arms=["standard", "nextlong", "short", "quest", "knn"], save_every=100,
                 repeat_distances=(512, 4096, 8192)),
}


# Variants: one setting changed against the scale, run beside the main experiment with `--variant NAME`.
# They reuse its corpus, tokenizer, base checkpoint and base evaluation (`--out` is the same folder) and keep
# their own synthesis, runs and evaluations under OUT/variants/NAME; the report is
# nextlong-vs-standard-NAME.md. Each says why it was tried.
VARIANTS = {
    "short-docs": {
        "overrides": {"split_chars": 2048, "arms": ["standard", "nextlong"]},
        "why": "In the main run most training modules are long next to the 4,096-token target (a third of the "
               "NExtLong samples are single modules that need no negatives), so NExtLong inserts under one "
               "negative per meta-chunk and its mean dependency distance stays near 200 tokens, inside the "
               "512-token base context: its data asks for no longer dependency than standard's. The paper "
               "builds 128K documents from short ones. Here both arms synthesize from the same training "
               "modules cut into pieces of at most 2,048 characters (about 570 tokens, at line ends), so "
               "NExtLong must put several negatives between the meta-chunks of a piece, while standard "
               "concatenates unrelated pieces. Everything else (base checkpoint, steps, tokens, evaluation on "
               "the uncut held-out modules) is the main run's.",
    },
}


# --- small helpers -----------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_json(path: Path, obj) -> None:
    from nextlong.atomic import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, obj)


def done(folder: Path, settings: dict) -> dict | None:
    """The completion record of a stage folder, if the stage finished with these settings."""
    record = folder / DONE
    if not record.exists():
        return None
    data = json.loads(record.read_text())
    if data.get("settings") != json.loads(json.dumps(settings)):
        raise SystemExit(f"{folder}: finished with other settings ({data.get('settings')} != {settings}); "
                         "use another --out for another scale or configuration")
    return data


def mark_done(folder: Path, settings: dict, seconds: float, **extra) -> None:
    write_json(folder / DONE, {"settings": settings, "seconds": round(seconds, 1),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra})


def stage(folder: Path, settings: dict, name: str):
    """Decorator-free stage runner: returns the record, running `fn` only when the stage is not done."""
    def runner(fn):
        rec = done(folder, settings)
        if rec is not None:
            return rec
        log(f"{name}: start")
        t0 = time.time()
        extra = fn() or {}
        mark_done(folder, settings, time.time() - t0, **extra)
        log(f"{name}: done in {time.time() - t0:.0f} s")
        return done(folder, settings)
    return runner


def record_failure(root: Path, arm: str, seed: int, message: str | None) -> None:
    """failures.json: {"ARM seed S": message} of (arm, seed) pairs that could not be built (None clears one)."""
    path = root / "failures.json"
    failures = json.loads(path.read_text()) if path.exists() else {}
    key = f"{arm} seed {seed}"
    if message is None and key not in failures:
        return
    if message is None:
        failures.pop(key)
    else:
        failures[key] = message
        log(f"{key}: {message}")
    write_json(path, failures)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- stage 1: corpus ---------------------------------------------------------------------------


def stdlib_sources() -> list[tuple[str, str]]:
    """(relative path, text) of the interpreter's standard-library modules, in path order.

    Kept: every *.py outside site-packages, the test suite (much of it generated or repetitive) and
    `encodings` (codec tables, not prose or code)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if rel.parts[0] in ("site-packages", "dist-packages", "test", "encodings", "__pycache__") or \
                "tests" in rel.parts or "test" in rel.parts:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text.strip()) >= 200:
            out.append((str(rel), text))
    return out


def path_hash(rel: str) -> float:
    return int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) / 2**32


def build_corpus(out: Path, sc: Scale) -> dict:
    folder = out / "corpus"
    settings = {"scale": sc.name, "max_bytes": sc.corpus_max_bytes, "heldout": sc.heldout_docs,
                "min_heldout_chars": 5 * sc.long_len, "python": platform.python_version()}

    def run():
        docs = stdlib_sources()
        # held out: the long documents (>= 5 chars per token of the long context) with the smallest hashes
        long_docs = sorted((d for d in docs if len(d[1]) >= 5 * sc.long_len), key=lambda d: path_hash(d[0]))
        heldout = long_docs[:sc.heldout_docs]
        if len(heldout) < sc.heldout_docs:
            raise SystemExit(f"corpus: only {len(heldout)} standard-library modules have {5 * sc.long_len} chars")
        held = {d[0] for d in heldout}
        train, size = [], 0
        for rel, text in sorted((d for d in docs if d[0] not in held), key=lambda d: path_hash(d[0])):
            if size + len(text) > sc.corpus_max_bytes:
                continue
            train.append((rel, text))
            size += len(text)
        folder.mkdir(parents=True, exist_ok=True)
        for name, rows in (("train", train), ("heldout", heldout)):
            from nextlong.atomic import atomic_path

            with atomic_path(folder / f"{name}.jsonl") as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    for rel, text in rows:
                        f.write(json.dumps({"id": rel, "text": text}) + "\n")
        return {"train_docs": len(train), "train_chars": size, "heldout_docs": len(heldout),
                "heldout_chars": sum(len(t) for _, t in heldout), "heldout_ids": sorted(held)}

    return stage(folder, settings, "corpus")(run)


def split_corpus(out: Path, root: Path, sc: Scale) -> Path:
    """The training split cut into pieces of at most `sc.split_chars` characters at line ends (a longer
    line is its own piece), ids `MODULE#i`: a corpus of short documents, as NExtLong expects."""
    folder = root / "corpus"
    source = out / "corpus" / "train.jsonl"
    settings = {"source": str(source), "split_chars": sc.split_chars}

    def run():
        from nextlong.atomic import atomic_path

        pieces = 0
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "train.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in read_jsonl(source):
                for i, piece in enumerate(split_text(row["text"], sc.split_chars)):
                    f.write(json.dumps({"id": f"{row['id']}#{i}", "text": piece}) + "\n")
                    pieces += 1
        return {"pieces": pieces}

    stage(folder, settings, "split corpus")(run)
    return folder / "train.jsonl"


def split_text(text: str, max_chars: int) -> list[str]:
    """`text` as consecutive pieces of whole lines, each at most `max_chars` long unless one line is longer;
    joined they give `text` back."""
    pieces, cur = [], ""
    for line in text.splitlines(keepends=True):
        if cur and len(cur) + len(line) > max_chars:
            pieces.append(cur)
            cur = ""
        cur += line
    return pieces + ([cur] if cur else [])


# --- stage 2: tokenizer ------------------------------------------------------------------------


def build_tokenizer(out: Path, sc: Scale) -> Path:
    folder = out / "tokenizer"
    settings = {"vocab": sc.vocab, "corpus": str(out / "corpus" / "train.jsonl")}

    def run():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        texts = [r["text"] for r in read_jsonl(out / "corpus" / "train.jsonl")]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=sc.vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=["<|endoftext|>"], show_progress=False)
        tok.train_from_iterator(texts, trainer)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "tokenizer.json.tmp"
        tok.save(str(tmp))
        os.replace(tmp, folder / "tokenizer.json")
        import nextlong

        ours = nextlong.Tokenizer.from_file(folder / "tokenizer.json")
        for text in texts[:20]:  # our tokenizer must read it exactly as HF does
            if list(ours.encode(text)) != tok.encode(text).ids:
                raise SystemExit("tokenizer: nextlong.Tokenizer disagrees with HF tokenizers on the trained vocabulary")
        return {"vocab_size": ours.vocab_size}

    stage(folder, settings, "tokenizer")(run)
    return folder / "tokenizer.json"


# --- stage 3: tokenized documents (pre-training and the `short` arm) ----------------------------


def write_token_parquet(path: Path, rows: list[list[int]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nextlong.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"input_ids": pa.array(rows, type=pa.list_(pa.uint32()))})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=256)


def tokenized_training_docs(out: Path, tok_path: Path) -> list[list[int]]:
    import nextlong

    tok = nextlong.Tokenizer.from_file(tok_path)
    texts = [r["text"] for r in read_jsonl(out / "corpus" / "train.jsonl")]
    return [x.astype("int64").tolist() for x in tok.encode_ordinary_batch(texts)]


def build_docs(out: Path, tok_path: Path, seed: int | None) -> Path:
    """The training documents as token rows: in corpus order (seed None, pre-training) or shuffled by seed."""
    folder = out / ("pretrain-data" if seed is None else f"short-data/seed-{seed}")
    settings = {"tokenizer": str(tok_path), "seed": seed}

    def run():
        rows = tokenized_training_docs(out, tok_path)
        if seed is not None:
            random.Random(seed).shuffle(rows)
        write_token_parquet(folder / "data.parquet", rows)
        return {"docs": len(rows), "tokens": sum(len(r) for r in rows)}

    return stage(folder, settings, "tokenized documents" + ("" if seed is None else f" (seed {seed})"))(run)


# --- stage 4: base model -----------------------------------------------------------------------


def base_init(out: Path, sc: Scale, tok_path: Path) -> Path:
    folder = out / "base-init"
    settings = {"vocab": sc.vocab, "hidden": sc.hidden, "layers": sc.layers, "heads": sc.heads, "mlp": sc.mlp,
                "theta": sc.base_theta, "positions": sc.long_len}

    def run():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from nextlong.train.model import set_rope_theta

        config = LlamaConfig(vocab_size=sc.vocab, hidden_size=sc.hidden, num_hidden_layers=sc.layers,
                             num_attention_heads=sc.heads, num_key_value_heads=sc.heads, intermediate_size=sc.mlp,
                             max_position_embeddings=sc.long_len, tie_word_embeddings=True, bos_token_id=None,
                             eos_token_id=None, pad_token_id=None)
        set_rope_theta(config, sc.base_theta)
        torch.manual_seed(1234)
        model = LlamaForCausalLM(config)
        if folder.exists():
            shutil.rmtree(folder)
        model.save_pretrained(folder, safe_serialization=True)
        shutil.copy2(tok_path, folder / "tokenizer.json")
        return {"params": sum(p.numel() for p in model.parameters())}

    stage(folder, settings, "base init")(run)
    return folder


THREADS = {"n": 0}  # torch CPU threads for training (0: torch's default); not part of any stage's settings


def train_run(folder: Path, settings: dict, name: str, **kwargs) -> dict:
    """`nextlong.train.train` into `folder`, resumed from its last checkpoint if one exists."""
    def run():
        from nextlong.train import train

        summary = train(out=folder, resume=True, progress=False, num_threads=THREADS["n"], **kwargs)
        return {"train": {k: summary.get(k) for k in ("steps", "tokens", "seconds", "tokens_per_s", "final_loss",
                                                        "num_params") if k in summary}}

    return stage(folder, settings, name)(run)


def pretrain(out: Path, sc: Scale, data: Path, init: Path) -> Path:
    folder = out / "base"
    kwargs = dict(data=str(data), model=str(init), seq_len=sc.base_len, batch_tokens=sc.batch_tokens,
                  steps=sc.base_steps, lr=sc.base_lr, warmup=max(1, sc.base_steps // 20), rope_theta=sc.base_theta,
                  seed=0, split_spans=True, attention_spans="sample", save_every=sc.save_every)
    train_run(folder, kwargs, "pre-training", **kwargs)
    return folder


# --- stage 5: synthesis ------------------------------------------------------------------------


def samples_needed(sc: Scale) -> int:
    return math.ceil(sc.steps * sc.batch_tokens / sc.long_len) + 2


def synthesize_arm(root: Path, sc: Scale, corpus: Path, tok_path: Path, method: str, seed: int) -> Path:
    folder = root / "synth" / method / f"seed-{seed}"
    settings = dict(corpus=str(corpus), tokenizer=str(tok_path), method=method, seed=seed,
                    target_length=sc.long_len, num_samples=samples_needed(sc), chunk_size=sc.chunk_chars,
                    embedder=sc.embedder if method in ("nextlong", "knn") else None, id_field="id")

    def run():
        import nextlong

        work = root / "synth-work"  # chunks and embeddings cached here, shared by every method and seed
        shutil.rmtree(work / "data", ignore_errors=True)  # the previous (method, seed)'s output, already copied
        # rebuild: the work folder is a cache; a stage cached with other settings (a nextlong upgrade that
        # changed a default) is remade, not a failed arm. Matching stages (the embeddings) are still reused.
        manifest = nextlong.synthesize(out=str(work), progress=False, rebuild=True, **settings)
        files = sorted((work / "data").glob("*.parquet"))
        listed = manifest.get("statistics", {}).get("files") or manifest.get("files")
        if isinstance(listed, list) and listed:
            names = {Path(f).name for f in listed}
            files = [f for f in files if f.name in names] or files
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "data").mkdir(parents=True)
        for f in files:
            shutil.copy2(f, folder / "data" / f.name)
        shutil.copy2(work / "manifest.json", folder / "manifest.json")
        copy = (manifest.get("settings") or {}).get("tokenizer_copy")
        if copy:  # `nextlong train` reads a data folder's tokenizer from inside it (its own copy) only
            (folder / copy).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(work / copy, folder / copy)
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        if rows * sc.long_len < sc.steps * sc.batch_tokens:
            log(f"synth {method} seed {seed}: warning: {rows} samples < the {samples_needed(sc)} one epoch needs; "
                "training repeats them")
        return {"samples": rows, "files": [f.name for f in files]}

    stage(folder, settings, f"synthesize {method} seed {seed}")(run)
    return folder


# --- stage 6: extension runs -------------------------------------------------------------------


def arm_run(out: Path, root: Path, sc: Scale, arm: str, seed: int, data: Path) -> Path:
    folder = root / "runs" / arm / f"seed-{seed}"
    seq = sc.base_len if arm == "short" else sc.long_len
    kwargs = dict(data=str(data), model=str(out / "base"), seq_len=seq, batch_tokens=sc.batch_tokens,
                  steps=sc.steps, lr=sc.lr, warmup=sc.warmup, rope_theta=sc.long_theta, seed=seed,
                  attention_spans="sample", split_spans=arm == "short", save_every=sc.save_every)
    train_run(folder, kwargs, f"train {arm} seed {seed}", **kwargs)
    return folder


# --- stage 7: evaluation -----------------------------------------------------------------------


def _cli_args(command: str, argv: list[str]) -> argparse.Namespace:
    from nextlong.commands import eval as eval_cmd
    from nextlong.commands import heads as heads_cmd

    parser = argparse.ArgumentParser(prog="nextlong")
    sub = parser.add_subparsers(dest="command")
    {"eval": eval_cmd, "heads": heads_cmd}[command].add_parser(sub)
    return parser.parse_args([command] + argv)


def heldout_tokens(out: Path, tok) -> list[list[int]]:
    texts = [r["text"] for r in read_jsonl(out / "corpus" / "heldout.jsonl")]
    return [list(map(int, tok.encode(t))) for t in texts]


def document_metrics(model_dir: Path, out: Path, sc: Scale, buckets: int = 32) -> dict:
    """LongPPL, plain perplexity, the long-context gain and loss by position on the held-out long
    documents (cut to the long context), and short-context perplexity on base-length windows."""
    from nextlong.eval.model import load_model

    lm = load_model(str(model_dir), attn="auto")
    docs = [d for d in heldout_tokens(out, lm.tokenizer) if len(d) >= sc.long_len]
    return heldout_metrics(lm, docs, sc, buckets)


def heldout_metrics(lm, docs: list[list[int]], sc: Scale, buckets: int = 32) -> dict:
    """`nextlong.eval.longppl` on `docs` (token lists of at least `sc.long_len` tokens) at the long
    context, with the window W = `sc.ppl_window` (stride W/2), plus up to 8 base-length windows of
    each whole document for the short-context perplexity."""
    from nextlong.eval.longppl import measure_documents

    W = sc.ppl_window
    m = measure_documents(lm, docs, length=sc.long_len, short_window=W, short_stride=max(1, W // 2),
                          buckets=buckets, short_context_length=sc.base_len, short_context_windows=8)
    curve = m.loss_by_position()
    return {
        "metrics": {
            "ppl_long": m.ppl,
            "longppl": m.longppl,
            "key_token_fraction": m.key_fraction,
            "long_context_gain": m.long_context_gain,  # full minus last-W loss; negative = uses context
            "loss_far_full": m.loss_far_full,
            "short_ppl": m.short_ppl,
        },
        "loss_by_position": {"positions": curve["positions"], "loss": curve["loss"]},
        "documents": m.documents,
    }


def evaluate_model(out: Path, sc: Scale, name: str, model_dir: Path, eval_seed: int = 0, root: Path | None = None) -> dict:
    folder = (root or out) / "eval" / name
    settings = {"model": str(model_dir), "lengths": sc.eval_lengths, "depths": sc.eval_depths,
                "samples": sc.eval_samples, "window": sc.ppl_window, "heads": sc.heads_lengths, "seed": eval_seed}

    def run():
        from nextlong.eval.evaluate import run_eval
        from nextlong.eval.heads_command import run_heads

        essay = str(out / "corpus" / "heldout.jsonl")
        lengths = ",".join(map(str, sc.eval_lengths))
        args = _cli_args("eval", [str(model_dir), "--out", str(folder / "tasks"), "--tasks", ",".join(TASK_GROUPS),
                                  "--lengths", lengths, "--depths", str(sc.eval_depths), "--samples",
                                  str(sc.eval_samples), "--seed", str(eval_seed), "--mode", "teacher-forced",
                                  "--corpus", essay])
        run_eval(args)
        docs = document_metrics(model_dir, out, sc)
        write_json(folder / "documents.json", docs)
        hargs = _cli_args("heads", [str(model_dir), "--out", str(folder / "heads"), "--lengths",
                                    ",".join(map(str, sc.heads_lengths)), "--depths", str(sc.heads_depths),
                                    "--needles", "1", "--max-new-tokens", "12", "--all-trials", "--corpus", essay])
        run_heads(hargs)
        return {}

    stage(folder, settings, f"evaluate {name}")(run)
    return collect_metrics(folder)


def repeat_probe(out: Path, sc: Scale, name: str, model_dir: Path, root: Path | None = None) -> None:
    """`nextlong.eval.repeat` on the held-out documents: can the model copy from each distance back?
    Its own stage (folder eval/NAME/repeat), so models evaluated before it existed get it on a re-run."""
    folder = (root or out) / "eval" / name / "repeat"
    settings = {"model": str(model_dir), "distances": list(sc.repeat_distances), "documents": "heldout"}
    if not sc.repeat_distances:
        return

    def run():
        from nextlong.eval.model import load_model
        from nextlong.eval.repeat import repeat_losses

        lm = load_model(str(model_dir), attn="auto")
        docs = heldout_tokens(out, lm.tokenizer)
        rows = repeat_losses(lm, docs, list(sc.repeat_distances), progress=False)
        write_json(folder / "repeat.json", {"distances": [r.summary() for r in rows]})
        return {}

    stage(folder, settings, f"repeat probe {name}")(run)


def collect_metrics(folder: Path) -> dict:
    """Flat {METRIC: value} of one evaluated model, plus the curves the plots need."""
    res = json.loads((folder / "tasks" / "results.json").read_text())
    docs = json.loads((folder / "documents.json").read_text())
    heads = json.loads((folder / "heads" / "head_scores.json").read_text())
    metrics, by_length = {}, {}
    for group in TASK_GROUPS:
        subtasks = [t for t in res["tasks"] if t == group or t.startswith(group + "_")]
        accs = [res["tasks"][t]["overall"].get("teacher_forced_em") for t in subtasks]
        lps = [res["tasks"][t]["overall"].get("teacher_forced_logprob_per_token") for t in subtasks]
        metrics[f"{group}_tf_acc"] = sum(accs) / len(accs) if accs and None not in accs else None
        metrics[f"{group}_tf_logprob"] = sum(lps) / len(lps) if lps and None not in lps else None
        by_length[group] = {}
        for length in res["lengths"]:
            cells = [res["tasks"][t]["by_length"][str(length)] for t in subtasks]
            by_length[group][str(length)] = {
                "tf_acc": sum(c.get("teacher_forced_em", 0) for c in cells) / len(cells),
                "tf_logprob": sum(c.get("teacher_forced_logprob_per_token", 0) for c in cells) / len(cells)}
    by_depth = {}  # answer log-prob per token by needle depth (tasks with a depth), over lengths and variants
    for group in TASK_GROUPS:
        cells = [c for t in res["tasks"] if t == group or t.startswith(group + "_") for c in res["tasks"][t]["cells"]
                 if c.get("depth") is not None and c.get("teacher_forced_logprob_per_token") is not None]
        depths = sorted({c["depth"] for c in cells})
        if depths:
            by_depth[group] = {str(d): sum(c["teacher_forced_logprob_per_token"] for c in cells if c["depth"] == d)
                               / sum(1 for c in cells if c["depth"] == d) for d in depths}
    metrics.update(docs["metrics"])
    metrics["retrieval_heads"] = sum(1 for s in heads.values() if s > 0.1)
    metrics["max_head_score"] = max(heads.values()) if heads else 0.0
    repeat = {}
    if (folder / "repeat" / DONE).exists():
        for row in json.loads((folder / "repeat" / "repeat.json").read_text())["distances"]:
            metrics[f"repeat_gain_{row['distance']}"] = row["gain"]
            repeat[str(row["distance"])] = {"first": row["first"], "second": row["second"]}
    return {"metrics": metrics, "loss_by_position": docs["loss_by_position"], "by_length": by_length,
            "by_depth": by_depth, "head_scores": heads, "repeat": repeat}


# --- report ------------------------------------------------------------------------------------

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
HIGHER_IS_BETTER = {"ppl_long": False, "longppl": False, "short_ppl": False, "long_context_gain": False,
                    "loss_far_full": False, "key_token_fraction": True, "retrieval_heads": True, "max_head_score": True}


def paired_seeds(a: dict | None, b: dict | None) -> list[str]:
    """The seeds both arms finished, in order."""
    return sorted(set(a["seeds"]) & set(b["seeds"]), key=int) if a and b else []


def paired_diffs(a: dict, b: dict, seeds: list[str], name: str) -> list[float | None]:
    """b − a of metric `name` per seed (None where either arm lacks it); `summarize` skips the Nones."""
    return [None if a["seeds"][s].get(name) is None or b["seeds"][s].get(name) is None
            else b["seeds"][s][name] - a["seeds"][s][name] for s in seeds]


def summarize(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    n = len(vals)
    if n == 0:
        return {"n": 0}
    mean = sum(vals) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = T975.get(n - 1, 1.96) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and (abs(x) >= 1000 or (abs(x) < 0.001 and x != 0)):
        return f"{x:.3g}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def gather(out: Path, root: Path, sc: Scale, seeds: list[int], arms: list[str]) -> dict:
    """results.json from every finished evaluation (missing ones are listed, never guessed). The base
    model's stages are in `out`, the arms' in `root` (`out` itself, or a variant's folder)."""
    results = {"arms": {}, "curves": {}, "missing": [], "scale": asdict(sc), "seeds": seeds}
    for arm in ["base"] + arms:
        for seed in ([0] if arm == "base" else seeds):
            folder = out / "eval" / "base" if arm == "base" else root / "eval" / f"{arm}-seed-{seed}"
            if not (folder / DONE).exists():
                results["missing"].append(f"{arm} seed {seed}")
                continue
            m = collect_metrics(folder)
            results["arms"].setdefault(arm, {"seeds": {}})["seeds"][str(seed)] = m["metrics"]
            results["curves"].setdefault(arm, {})[str(seed)] = {k: m[k] for k in ("loss_by_position", "by_length",
                                                                                   "by_depth", "head_scores", "repeat")}
            run = root / "runs" / arm / f"seed-{seed}"
            rec = json.loads((run / DONE).read_text()) if (run / DONE).exists() else None
            if rec:
                results["arms"][arm].setdefault("train", {})[str(seed)] = rec.get("train", {}) | {
                    "seconds": rec.get("seconds")}
    base = out / "base" / DONE
    if base.exists():
        results["pretrain"] = json.loads(base.read_text()).get("train", {}) | {
            "seconds": json.loads(base.read_text()).get("seconds")}
    corpus = out / "corpus" / DONE
    if corpus.exists():
        results["corpus"] = {k: v for k, v in json.loads(corpus.read_text()).items() if k != "settings"}
    synth = {}
    for rec in sorted((root / "synth").glob(f"*/seed-*/{DONE}")):
        entry = {k: v for k, v in json.loads(rec.read_text()).items() if k in ("seconds", "samples")}
        manifest = rec.parent / "manifest.json"
        if manifest.exists():
            st = json.loads(manifest.read_text()).get("statistics", {})
            entry.update({k: st[k] for k in SYNTH_STATS if k in st})
        synth[f"{rec.parent.parent.name} {rec.parent.name}"] = entry
    results["synthesis"] = synth
    stages = {}
    for rec in sorted(root.rglob(DONE)):
        if root == out and rec.parent.relative_to(out).parts[0] == "variants":
            continue
        data = json.loads(rec.read_text())
        stages[str(rec.parent.relative_to(out))] = {"seconds": data.get("seconds"), "finished": data.get("finished")}
    results["stages"] = stages
    running = []
    for metrics in sorted(out.glob("base/metrics.jsonl")) + sorted(root.glob("runs/*/seed-*/metrics.jsonl")):
        if not (metrics.parent / DONE).exists():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            total = sc.base_steps if metrics.parent.name == "base" else sc.steps
            last = rows[-1] if rows else {}
            running.append(f"{metrics.parent.relative_to(out)}: step {last.get('step', 0)} of {total}"
                           + (f", loss {last['loss']:.3f}, {last.get('tokens_per_s', 0):,.0f} tokens/s at the last step"
                              if rows else ""))
    results["in_progress"] = running
    failures = root / "failures.json"
    results["failures"] = json.loads(failures.read_text()) if failures.exists() else {}
    exp = root / "experiment.json"
    if exp.exists():
        results["machine"] = {k: v for k, v in json.loads(exp.read_text()).items() if k not in ("scale",)}
    return results


SYNTH_STATS = ("source_documents_used", "already_long", "negatives_per_meta_chunk_mean",
               "anchor_negative_similarity_mean", "random_chunk_pair_similarity_mean",
               "mean_dependency_distance_tokens")


def synthesis_lines(results: dict) -> list[str]:
    synth = results.get("synthesis") or {}
    if not synth:
        return []
    cols = ["samples", "seconds"] + list(SYNTH_STATS)
    lines = ["## Synthesized data", "", "| method seed | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for key, entry in synth.items():
        lines.append(f"| {key} | " + " | ".join(fmt(entry.get(c)) for c in cols) + " |")
    return lines + ["", "`already long`: anchors that alone reach the target length, kept whole without negatives "
                    "(the synthesis default `--long-docs keep`); `standard` cuts such documents too.", ""]


def budget_lines(results: dict) -> list[str]:
    """The token plan of the scale, with the time it takes at the throughput measured in this run."""
    sc = results["scale"]
    pre = sc["base_steps"] * sc["batch_tokens"]
    ext = sc["steps"] * sc["batch_tokens"]
    n_runs = len(sc["arms"]) * len(results["seeds"])
    measured = {}
    if "pretrain" in results and results["pretrain"].get("tokens_per_s"):
        measured["pre"] = results["pretrain"]["tokens_per_s"]
    long_tps = [t.get("tokens_per_s") for arm, v in results["arms"].items() if arm != "short"
                for t in v.get("train", {}).values() if t.get("tokens_per_s")]
    if long_tps:
        measured["long"] = sum(long_tps) / len(long_tps)
    evals = [v["seconds"] for k, v in results.get("stages", {}).items() if k.startswith("eval/") and v["seconds"]]
    lines = ["## Budget plan", "",
             f"- Pre-training: {sc['base_steps']} steps x {sc['batch_tokens']:,} tokens = {pre / 1e6:.2f} M tokens at "
             f"{sc['base_len']} tokens" + (f"; measured {measured['pre']:,.0f} tokens/s" if "pre" in measured else "") + ".",
             f"- Extension: {ext / 1e6:.2f} M tokens per (arm, seed) at {sc['long_len']} tokens, {n_runs} runs "
             f"({len(sc['arms'])} arms x {len(results['seeds'])} seeds) = {n_runs * ext / 1e6:.1f} M tokens"
             + (f"; measured {measured['long']:,.0f} tokens/s at {sc['long_len']}" if "long" in measured else "") + ".",
             "- Planned at the 2,000 tokens/s the issue gives for a 6 M-parameter Llama at 4K on these 2 cores: "
             f"{pre / 2000 / 60:.0f} min pre-training, {ext / 2000 / 60:.0f} min per extension run, about "
             f"{(pre + n_runs * ext) / 2000 / 3600:.1f} h of training; the order is seed-major (standard, nextlong, "
             "short, quest, knn for seed 0, then seed 1, ...), so a partial run still gives paired seeds."]
    if evals:
        lines.append(f"- Evaluation: {sum(evals) / len(evals) / 60:.1f} min per model on average ({len(evals)} "
                     "evaluated so far).")
    m = results.get("machine")
    if m:
        lines.append(f"- Hardware: {m.get('cpus')} CPU cores ({m.get('machine')}), torch threads "
                     f"{m.get('torch_threads')}, Python {m.get('python')}; the CPU was shared with other jobs while "
                     "this ran, so wall times are upper bounds.")
    return lines + [""]


def metric_names(results: dict) -> list[str]:
    names = []
    for arm in results["arms"].values():
        for m in arm["seeds"].values():
            for k in m:
                if k not in names:
                    names.append(k)
    return names


def draw_plots(results: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    curves = results.get("curves", {})
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for arm, seeds in curves.items():
            ys = [s["loss_by_position"]["loss"] for s in seeds.values()]
            xs = next(iter(seeds.values()))["loss_by_position"]["positions"]
            mean = [sum(v) / len(v) for v in zip(*ys)]
            ax.plot(xs, mean, label=f"{arm} (n={len(ys)})")
        ax.set_xlabel("token position")
        ax.set_ylabel("loss (nats/token), held-out documents")
        ax.set_title("loss by position (mean over seeds)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "loss_by_position.png", dpi=110)
        plt.close(fig)
        written.append("loss_by_position.png")

        fig, axes = plt.subplots(1, len(TASK_GROUPS), figsize=(4 * len(TASK_GROUPS), 3.5), squeeze=False)
        for ax, group in zip(axes[0], TASK_GROUPS):
            for arm, seeds in curves.items():
                per = [s["by_length"][group] for s in seeds.values()]
                lengths = sorted(per[0], key=int)
                ax.plot([int(x) for x in lengths],
                        [sum(p[x]["tf_logprob"] for p in per) / len(per) for x in lengths], marker="o", label=arm)
            ax.set_xscale("log", base=2)
            ax.set_title(group)
            ax.set_xlabel("context length (tokens)")
        axes[0][0].set_ylabel("answer log-prob per token (teacher-forced)")
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "answer_logprob_by_length.png", dpi=110)
        plt.close(fig)
        written.append("answer_logprob_by_length.png")

        groups = [g for g in TASK_GROUPS if all(g in s.get("by_depth", {}) for v in curves.values() for s in v.values())]
        if groups:
            fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.5), squeeze=False)
            for ax, group in zip(axes[0], groups):
                for arm, seeds in curves.items():
                    per = [s["by_depth"][group] for s in seeds.values()]
                    depths = sorted(per[0], key=float)
                    ax.plot([float(d) for d in depths], [sum(p[d] for p in per) / len(per) for d in depths],
                            marker="o", label=arm)
                ax.set_title(group)
                ax.set_xlabel("needle depth (% of the context)")
            axes[0][0].set_ylabel("answer log-prob per token (teacher-forced)")
            axes[0][-1].legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(folder / "answer_logprob_by_depth.png", dpi=110)
            plt.close(fig)
            written.append("answer_logprob_by_depth.png")

        arms = list(curves)
        fig, axes = plt.subplots(1, len(arms), figsize=(3.2 * len(arms), 3), squeeze=False)
        for ax, arm in zip(axes[0], arms):
            scores = {}
            for s in curves[arm].values():
                for k, v in s["head_scores"].items():
                    scores.setdefault(k, []).append(v)
            layers = 1 + max(int(k.split("-")[0]) for k in scores)
            heads = 1 + max(int(k.split("-")[1]) for k in scores)
            grid = [[sum(scores.get(f"{l}-{h}", [0])) / max(1, len(scores.get(f"{l}-{h}", [0])))
                     for h in range(heads)] for l in range(layers)]
            im = ax.imshow(grid, vmin=0, vmax=max(0.1, max(max(r) for r in grid)), cmap="viridis", aspect="auto")
            ax.set_title(arm)
            ax.set_xticks(range(heads))
            ax.set_yticks(range(layers))
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle("retrieval score per head (mean over seeds)")
        fig.tight_layout()
        fig.savefig(folder / "retrieval_heads.png", dpi=110)
        plt.close(fig)
        written.append("retrieval_heads.png")

        probed = {arm: [s["repeat"] for s in seeds.values() if s.get("repeat")] for arm, seeds in curves.items()}
        probed = {arm: per for arm, per in probed.items() if per}
        if probed:
            fig, ax = plt.subplots(figsize=(7, 4))
            for arm, per in probed.items():
                dists = sorted(per[0], key=int)
                gains = [sum(p[d]["second"] - p[d]["first"] for p in per) / len(per) for d in dists]
                ax.plot([int(d) for d in dists], gains, marker="o", label=f"{arm} (n={len(per)})")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("distance to the earlier copy (tokens)")
            ax.set_ylabel("repeat gain (nats/token; lower = copies)")
            ax.set_title("repeat probe on held-out text (mean over seeds)")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(folder / "repeat_probe.png", dpi=110)
            plt.close(fig)
            written.append("repeat_probe.png")
    return written


def report_stem(variant: str | None) -> str:
    return "nextlong-vs-standard" + (f"-{variant}" if variant else "")


def write_report(out: Path, sc: Scale, seeds: list[int], arms: list[str], report_dir: Path, command: str,
                 variant: str | None = None) -> Path:
    stem = report_stem(variant)
    results = gather(out, variant_root(out, variant), sc, seeds, arms)
    assets = report_dir / stem
    results["generated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["command"] = command
    results["variant"] = variant
    write_json(assets / "results.json", results)
    plots = draw_plots(results, assets)
    md = render_markdown(results, plots, stem, report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"{stem}.md.tmp").write_text(md, encoding="utf-8")
    os.replace(report_dir / f"{stem}.md.tmp", report_dir / f"{stem}.md")
    log(f"report: {report_dir / f'{stem}.md'}")
    return report_dir / f"{stem}.md"


def variant_root(out: Path, variant: str | None) -> Path:
    return out / "variants" / variant if variant else out


def variant_lines(results: dict, report_dir: Path) -> list[str]:
    """The variant this page reports (why it was tried), or, on the main page, every variant and its result."""
    variant = results.get("variant")
    if variant:
        v = VARIANTS[variant]
        return [f"## Variant `{variant}`", "", f"Changed against `--scale {results['scale']['name']}`: "
                + ", ".join(f"`{k}` = {val}" for k, val in v["overrides"].items()) + ".", "", v["why"], "",
                "Main run: [nextlong-vs-standard.md](nextlong-vs-standard.md).", ""]
    lines = ["## What else was tried", ""]
    for name, v in VARIANTS.items():
        stem = report_stem(name)
        path = report_dir / stem / "results.json"
        lines.append(f"- `{name}` ([{stem}.md]({stem}.md)): {v['why']}")
        if not path.exists():
            lines += ["  Not run yet.", ""]
            continue
        other = json.loads(path.read_text())
        a, b = other["arms"].get("standard"), other["arms"].get("nextlong")
        common = paired_seeds(a, b)
        if not common:
            lines += ["  No paired seed has finished yet.", ""]
            continue
        cells = []
        for name_ in ("long_context_gain", "loss_far_full", "ppl_long", "short_ppl"):
            st = summarize(paired_diffs(a, b, common, name_))
            if st["n"]:
                cells.append(f"`{name_}` {fmt(st['mean'])}" + (f" [{fmt(st['ci95'][0])}, {fmt(st['ci95'][1])}]"
                                                            if st["n"] > 1 and st["std"] is not None else ""))
        lines += [f"  NExtLong − standard over {len(common)} paired seed(s) ({', '.join(common)}): "
                  + "; ".join(cells) + ".", ""]
    return lines


DESIGN = """## Design (why it is built this way)

**Question.** The NExtLong paper (8B model, 128K context) reports NExtLong 62.58 against Quest 55.25,
Standard 52.85, KNN 50.97 and ICLM 50.37 on HELMET/RULER averages. This experiment asks whether our
implementation reproduces the *direction* of that result at a scale two CPU cores can afford: a few-million
parameter Llama extended from 512 to 4,096 tokens.

**Corpus.** The source files (`*.py`) of the running interpreter's standard library: present on every machine
that has Python (no download at run time), real text (code, docstrings and comments written by people), and
with many long documents: about 270 modules exceed 32 KB. Source code is a good test bed for long-range
dependency (a name defined near the top is used thousands of tokens later). Left out: `site-packages`, the
test suite (`test/`, `tests/`, much of it generated or repetitive) and `encodings/` (codec tables). The shipped
docstring snapshot in `tests/data` (about 0.5 MB compressed) was too small and its documents too short for a
held-out set of 4K-token documents; a PyPI text package would have added a dependency for no gain. The corpus
depends on the Python version (3.11 here), which the work folder records. Split: the modules of at least
5 x 4,096 characters with the smallest SHA-256 of their path are held out (16 at `cpu` scale, 1.4 M chars); they
are used only for LongPPL, the long-context gain, loss by position and short-context perplexity, and as the
essay haystack of the recall tasks. Training, tokenizer and synthesis see only the rest (636 modules, 9.8 M
chars, 2.7 M tokens at `cpu` scale).

**Tokenizer.** Byte-level BPE with 4,096 ids trained on the training split with HF `tokenizers`' trainer
(about 3.6 characters per token on this corpus), loaded by `nextlong.Tokenizer.from_file`; the script checks
that both encode the first training documents identically.

**Model and schedule.** Llama, 4 layers, hidden 256, 4 heads of 64, MLP 768, tied embeddings:
4.46 M in all, 1.05 M of them the embedding. Pre-trained once at 512 tokens (RoPE theta 10,000) on the training
split; every arm then starts from that checkpoint with the same optimizer steps, tokens per step, learning
rate schedule, RoPE theta (80,000, raised for the 8x longer context as ProLong raises it) and seed, and one
attention span per sample. Arms: `standard` (random concatenation of training documents to 4,096 tokens),
`nextlong` (hard-negative extension with the paper's defaults; embedder `static`, the shipped MiniLM distilled
to static vectors: the corpus's 9,801 chunks of 1,024 characters took it about 5 minutes on the busy shared
cores, where MiniLM itself had embedded none of them after 13 minutes; the vectors are computed once and shared
by every seed and by `knn`), `quest` and `knn` (the paper's other baselines, after the first three),
and `short` (the same documents at 512 tokens, same tokens per step: the control for "more training at all").
Each seed changes the synthesis sampling (hence which documents and distractors each sample holds) and, for
`short`, the document order; the model initialisation is shared.

**Metrics.** From `nextlong eval` (teacher-forced, since a model this small does not follow the answer format
when decoding greedily): exact match and log-prob per answer token on `niah_single`, `niah_multikey` (each group
averaged over its RULER variants), `vt` and `json_kv`, at 1K, 2K and 4K tokens and 3 depths. On the held-out
documents cut to 4,096 tokens: perplexity, LongPPL (key tokens by LongPPL's rule with a short window W = 512),
the long-context gain (mean loss of tokens past position W with the full context minus with only the last W
tokens: negative means the far context helps), and loss by position. Short-context perplexity: base-length
windows of the same documents. `nextlong heads`: retrieval-head scores (Wu et al.) counting every trial, since
a model this small rarely reproduces the needle.
The repeat probe (`nextlong.eval.repeat`, added after the first runs when every arm's long-context gain came
out near 0): the first D = 256, 1,024 and 2,048 tokens of each held-out document fed twice; the loss of the
second copy minus the first tells whether a model can fetch a token from D back at all, apart from whether
natural text rewards it.

**Variants** (`--variant NAME`, same `--out`; see "What else was tried"): one setting changed at a time, run
after the main arms, reusing the corpus, tokenizer and base checkpoint, with their own report page.

**Budget (`--scale cpu`).** About 3 hours on 2 idle cores; the token plan and the throughput measured in the
run are in the section "Budget plan" above.

**Quest on this corpus.** Quest groups documents by one of their top TF-IDF keywords; module names and
identifiers make most keywords unique here (535 groups, 464 of a single module), so Quest builds only about
100 contexts of 4,096 tokens where the budget asks for 202: its arm sees each context about twice. An arm whose
synthesis fails outright (Quest on the tiny smoke corpus) is listed under Status and the others go on.

**Resuming.** Run the same command again (`--scale cpu --out DIR`): finished stages are skipped (each folder's
`.done.json` holds its settings), training resumes from its last checkpoint (every 25 steps), evaluation from
its progress file. `--threads 1` on a CPU shared with other jobs (two OpenMP threads fighting other processes
ran up to 30x slower here), `--threads 2` on idle cores. `--report-only` regenerates this page from whatever
has finished.
"""


def better_when_higher(name: str) -> bool:
    if name in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[name]
    return name.endswith(("_tf_acc", "_tf_logprob"))


COPY_THRESHOLD = 0.5  # nats/token: a repeat gain below minus this counts as copying


def probe_lines(results: dict) -> list[str]:
    """What the repeat probe says about every model: can any of them copy from D tokens back?"""
    cells = {}  # (arm, D) -> mean gain over seeds
    for arm, v in results["arms"].items():
        for m in v["seeds"].values():
            for k, val in m.items():
                if k.startswith("repeat_gain_") and val is not None:
                    cells.setdefault((arm, int(k.rsplit("_", 1)[1])), []).append(val)
    if not cells:
        return []
    means = {key: sum(v) / len(v) for key, v in cells.items()}
    (arm, dist), best = min(means.items(), key=lambda kv: kv[1])
    copiers = sorted({a for (a, _), g in means.items() if g < -COPY_THRESHOLD})
    lines = ["## Can the models copy at all? (repeat probe)", "",
             f"Strongest copying of any model: repeat gain {fmt(best)} nats/token ({arm}, D = {dist}; mean over "
             f"seeds). Every model's gains lie in [{fmt(min(means.values()))}, {fmt(max(means.values()))}]."]
    if copiers:
        lines.append(f"Models that copy (gain below −{COPY_THRESHOLD}) at some distance: {', '.join(copiers)}.")
    else:
        lines.append(f"No model copies at any distance (no gain below −{COPY_THRESHOLD} nats/token; a model with "
                     "induction heads that reach D brings the second copy's loss close to 0, a gain of several "
                     "nats). The base model lacks the mechanism that long-context data would train to reach "
                     "further, so at this scale no arm can show better retrieval, whatever its data: recall and "
                     "retrieval-head differences here are noise, and only natural-text losses can differ.")
    return lines + [""]


def verdict_lines(a: dict, b: dict, common: list[str], names: list[str], complete: bool) -> list[str]:
    """What the paired NExtLong − standard differences support, metric by metric, from the numbers alone."""
    lines = ["## What the result supports", ""]
    if len(common) < 3:
        return lines + [f"Only {len(common)} paired seed(s) have finished: too few for any conclusion (the plan "
                        "needs 3). The numbers above are reported as they are, without a claim.", ""]
    wins, losses, ties = [], [], []
    for name in names:
        st = summarize(paired_diffs(a, b, common, name))
        if st["n"] < 3 or st["std"] is None:
            continue
        lo, hi = st["ci95"]
        if lo > 0 or hi < 0:
            good = (lo > 0) == better_when_higher(name)
            (wins if good else losses).append(f"`{name}` ({fmt(st['mean'])} [{fmt(lo)}, {fmt(hi)}])")
        else:
            ties.append(f"`{name}`")
    lines.append(f"Over {len(common)} paired seeds (95% t-intervals of NExtLong − standard):")
    lines.append("- NExtLong better, interval excluding 0: " + (", ".join(wins) if wins else "none") + ".")
    lines.append("- NExtLong worse, interval excluding 0: " + (", ".join(losses) if losses else "none") + ".")
    lines.append("- No difference resolved: " + (", ".join(ties) if ties else "none") + ".")
    lines += ["", "This is a mini-scale check of the direction of the paper's claim (a 4 M-parameter model, "
              "4K context, under a million tokens of extension per arm), not a reproduction of its 8B/128K "
              "numbers; three seeds resolve only large differences, and teacher-forced recall at this size sits "
              "near chance." + ("" if complete else " Some arms or seeds are still missing (see Status)."), ""]
    return lines


def render_markdown(results: dict, plots: list[str], stem: str = "nextlong-vs-standard",
                    report_dir: Path | None = None) -> str:
    """The generated part of the report: status, table, paired differences, plots."""
    sc = results["scale"]
    title = "# NExtLong vs standard concatenation at mini scale" + (
        f" (variant `{results['variant']}`)" if results.get("variant") else "")
    lines = [title, "",
             "<!-- generated by benchmarks/experiments/nextlong_vs_standard.py --report-only; edit the script -->", "",
             f"Command: `{results['command']}`  ", f"Generated: {results['generated']}", ""]
    if results.get("variant"):
        lines += variant_lines(results, report_dir or Path("."))
    finished = {arm: sorted(v["seeds"], key=int) for arm, v in results["arms"].items()}
    core_missing = [m for m in results["missing"] if m.split()[0] not in OPTIONAL_ARMS]
    optional_missing = [m for m in results["missing"] if m.split()[0] in OPTIONAL_ARMS]
    complete = not core_missing
    lines += ["## Status", "",
              ("All planned arms and seeds finished." if not results["missing"] else
               f"Every seed of the core arms finished; optional arms ({', '.join(OPTIONAL_ARMS)}) not finished: "
               + ", ".join(optional_missing) + ". Nothing below is a conclusion about those."
               if complete else
               "**PARTIAL RESULTS: the run has not finished.** Missing: " + ", ".join(results["missing"]) +
               ". Nothing below is a conclusion about arms or seeds that are missing."), "",
              "Finished (arm: seeds): " + ("; ".join(f"{a}: {', '.join(s)}" for a, s in finished.items()) or "none"),
              ""]
    if results.get("failures"):
        lines += ["Could not be built (retried on every re-run): " + "; ".join(
            f"{k}: {v[:300]}" for k, v in results["failures"].items()), ""]
    if results.get("in_progress"):
        lines += ["Training in progress (resumes from its last checkpoint): " + "; ".join(results["in_progress"]) + ".",
                  ""]
    lines += ["## Setup", "",
              f"- Scale `{sc['name']}`: Llama {sc['layers']} layers, hidden {sc['hidden']}, {sc['heads']} heads, "
              f"MLP {sc['mlp']}, vocabulary {sc['vocab']} (byte-level BPE trained on the training split), tied "
              "embeddings.",
              f"- Pre-training: {sc['base_steps']} steps x {sc['batch_tokens']} tokens at {sc['base_len']} tokens, "
              f"RoPE theta {sc['base_theta']:g}, lr {sc['base_lr']:g}.",
              f"- Extension (every arm): {sc['steps']} steps x {sc['batch_tokens']} tokens "
              f"= {sc['steps'] * sc['batch_tokens']:,} tokens at {sc['long_len']} tokens (`short`: at {sc['base_len']}), "
              f"RoPE theta {sc['long_theta']:g}, lr {sc['lr']:g} (warm-up {sc['warmup']}, cosine to 10%), "
              f"one attention span per sample; synthesis embedder `{sc['embedder']}`, chunk {sc['chunk_chars']} chars.",
              f"- Evaluation: teacher-forced recall at lengths {sc['eval_lengths']} ({sc['eval_depths']} depths x "
              f"{sc['eval_samples']} samples per task), held-out documents cut to {sc['long_len']} tokens, W = "
              f"{sc['ppl_window']}.", ""]
    if "corpus" in results:
        c = results["corpus"]
        lines += [f"- Corpus: {c.get('train_docs')} training modules ({c.get('train_chars', 0) / 1e6:.1f} M chars), "
                  f"{c.get('heldout_docs')} held-out modules ({c.get('heldout_chars', 0) / 1e6:.2f} M chars).", ""]
    if "pretrain" in results:
        p = results["pretrain"]
        lines += [f"- Pre-training took {fmt(p.get('seconds'), 0)} s ({fmt(p.get('tokens_per_s'), 0)} tokens/s).", ""]
    train_times = {arm: [t.get("seconds") for t in v.get("train", {}).values()] for arm, v in results["arms"].items()}
    tt = [f"{arm}: {fmt(sum(s) / len(s), 0)} s" for arm, s in train_times.items() if s and None not in s]
    if tt:
        lines += ["- Mean extension wall time per seed: " + "; ".join(tt) + ".", ""]

    lines += budget_lines(results)
    lines += synthesis_lines(results)
    names = metric_names(results)
    if not names:
        lines += ["## Results", "", "No model has been evaluated yet.", ""]
    lines += [] if not names else ["## Results (mean ± std over seeds, 95% t-interval)", "",
              "| metric | " + " | ".join(results["arms"]) + " |", "|---|" + "---|" * len(results["arms"])]
    for name in names:
        cells = []
        for arm, v in results["arms"].items():
            s = summarize([m.get(name) for m in v["seeds"].values()])
            if s["n"] == 0:
                cells.append("–")
            elif s["n"] == 1:
                cells.append(f"{fmt(s['mean'])} (n=1)")
            else:
                cells.append(f"{fmt(s['mean'])} ± {fmt(s['std'])} [{fmt(s['ci95'][0])}, {fmt(s['ci95'][1])}] "
                             f"(n={s['n']})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Metrics: `*_tf_acc` = teacher-forced exact match of the whole answer (%), `*_tf_logprob` = mean "
              "log-prob per answer token (higher is better), both averaged over the task group's variants, depths and "
              "lengths; `ppl_long` = perplexity on the held-out documents at the long context; `longppl` = "
              "perplexity on key tokens (LongPPL's rule with window W); `long_context_gain` = loss with full context "
              "minus loss with only the last W tokens (W to 1.5 W: the short pass slides windows with stride W/2), "
              "over positions > W (negative = the model uses the far context); `short_ppl` = perplexity on base-length windows; `retrieval_heads` = heads with "
              "retrieval score > 0.1 (every trial counted); `repeat_gain_D` = the repeat probe (`nextlong.eval.repeat`): "
              "the first D tokens of each held-out document fed twice, mean loss of the second copy minus the first "
              "on the same tokens (negative = the model copies from D tokens back; D past the base length shows "
              "whether the extension taught it to reach that far).", ""]
    a, b = results["arms"].get("standard"), results["arms"].get("nextlong")
    if a and b:
        common = paired_seeds(a, b)
        lines += ["## Paired: NExtLong − standard (same seed)", "",
                  "| metric | " + " | ".join(f"seed {s}" for s in common) + " | mean [95% interval] |",
                  "|---|" + "---|" * (len(common) + 1)]
        for name in names:
            diffs = paired_diffs(a, b, common, name)
            s = summarize(diffs)
            tail = "–" if s["n"] == 0 else (fmt(s["mean"]) if s["n"] == 1 else
                                             f"{fmt(s['mean'])} [{fmt(s['ci95'][0])}, {fmt(s['ci95'][1])}]")
            lines.append(f"| {name} | " + " | ".join(fmt(d) for d in diffs) + f" | {tail} |")
        lines.append("")
        lines += verdict_lines(a, b, common, names, complete)
    lines += probe_lines(results)
    if not results.get("variant") and report_dir is not None:
        lines += variant_lines(results, report_dir)
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({stem}/{p})" for p in plots] + [""]
    lines += [DESIGN]
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="work folder (every stage cached here; re-run to resume)")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the scale's)")
    p.add_argument("--arms", default=None, help=f"comma-separated arms among {', '.join(ALL_ARMS)} (default: the scale's)")
    p.add_argument("--report-dir", default=str(REPO / "docs" / "experiments"),
                   help="where the report and its assets go (default docs/experiments)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default=None,
                   help="run a variant beside the main experiment in the same --out (it reuses the corpus, "
                   "tokenizer and base model; see VARIANTS for what each changes and why)")
    p.add_argument("--report-only", action="store_true", help="only regenerate the report from finished stages")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default, all cores). On a CPU shared with other jobs use 1: "
                   "two OpenMP threads contending with other processes ran 30x slower here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sc = SCALES[args.scale]
    if args.variant:
        sc = replace(sc, **VARIANTS[args.variant]["overrides"])
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(sc.seeds)
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else list(sc.arms)
    bad = [a for a in arms if a not in ALL_ARMS]
    if bad:
        raise SystemExit(f"unknown arms {bad}; choose among {ALL_ARMS}")
    out = Path(args.out)
    root = variant_root(out, args.variant)
    report_dir = Path(args.report_dir)
    command = "python3 benchmarks/experiments/nextlong_vs_standard.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    if args.report_only:
        write_report(out, sc, seeds, arms, report_dir, command, args.variant)
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        THREADS["n"] = args.threads
    out.mkdir(parents=True, exist_ok=True)
    write_json(root / "experiment.json", {"scale": asdict(sc), "variant": args.variant, "seeds": seeds, "arms": arms,
                                         "python": platform.python_version(), "machine": platform.machine(),
                                         "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()})
    build_corpus(out, sc)
    tok = build_tokenizer(out, sc)
    pre = build_docs(out, tok, None)
    init = base_init(out, sc, tok)
    pretrain(out, sc, out / "pretrain-data", init)
    evaluate_model(out, sc, "base", out / "base")
    repeat_probe(out, sc, "base", out / "base")
    corpus = split_corpus(out, root, sc) if sc.split_chars else out / "corpus" / "train.jsonl"
    for seed in seeds:  # seed-major: each finished seed gives a complete paired comparison
        for arm in arms:
            if arm == "short":
                data = out / "short-data" / f"seed-{seed}"
                build_docs(out, tok, seed)
            else:
                from nextlong.errors import NextlongError

                try:
                    data = synthesize_arm(root, sc, corpus, tok, arm, seed)
                except NextlongError as exc:  # e.g. Quest finds no key group on a small corpus: the others go on
                    record_failure(root, arm, seed, f"synthesis failed: {exc}")
                    continue
            record_failure(root, arm, seed, None)
            run = arm_run(out, root, sc, arm, seed, data)
            evaluate_model(out, sc, f"{arm}-seed-{seed}", run, root=root)
            repeat_probe(out, sc, f"{arm}-seed-{seed}", run, root=root)
            if not args.no_report:
                write_report(out, sc, seeds, arms, report_dir, command, args.variant)
    del pre
    if not args.no_report:
        write_report(out, sc, seeds, arms, report_dir, command, args.variant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
