"""Do NExtLong data and token weighting teach long-range retrieval? (mini scale)

    python3 benchmarks/experiments/nextlong_vs_standard.py --out DIR [--scale smoke|cpu|lease] [--seeds 0,1,2]
            [--arms standard,nextlong,nextlong+longce,standard+longce,short,quest,knn,...] [--threads N]
            [--report-dir docs/experiments] [--report-only] [--base-only] [--skip-gate] [--embedder SPEC]

One command runs the whole experiment; every stage writes its output folder and then a completion
record (`.done.json`, holding the stage's settings), so a re-run skips finished stages and finished
seeds and a killed run loses only the stage it was in (training resumes from its last checkpoint):

  corpus      the running interpreter's standard-library sources (*.py), split by a hash of the path
              into training documents and held-out long documents (evaluation only)
  tokenizer   byte-level BPE (HF `tokenizers` trainer) on the training split, loaded by nextlong.Tokenizer
  pretrain    a small Llama initialised at random, trained at the base length in two stages with a copy
              curriculum (copy_curriculum.py), its copy curve probed as it goes
  gate        the base's repeat gain at D = base length / 2 must be <= -1 nat/token, or no arm is trained
              (exit status 3; the report says why)
  synth       per (method, seed): `nextlong.synthesize` on the training split (chunks and embeddings are
              cached in one work folder and shared by every method and seed)
  train       per (arm, seed): `nextlong.train.train` from the base, same steps, tokens per step, schedule,
              RoPE theta; `+longce` arms weight tokens by LongCE with the base as the short-context scorer,
              `+longce-self` arms with the model in training as its own scorer (Fang et al.'s way);
              `short` continues at the base length on the same documents
  eval        per (arm, seed): `nextlong eval` (teacher-forced recall tasks), LongPPL / long-context
              gain / loss by position / short-context perplexity on the held-out documents, `nextlong heads`,
              the repeat probe; each record also holds the fingerprint of the model it measured, so a model
              trained again at the same path is evaluated again (a record from before fingerprints is trusted)
  report      results.json ({"base_length": N, "arms": {ARM: {"seeds": {SEED: {METRIC: value}}}}, ...}) and
              the Markdown page (experiment_report.py)

The design (sizes, tokens, why this corpus, the pre-registered metrics) is written in
docs/experiments/nextlong-vs-standard.md.
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
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # copy_curriculum.py beside this script
import copy_curriculum as C  # noqa: E402
from experiment_report import (SYNTH_STATS, arm_method, draw_plots, fmt, render_markdown,  # noqa: E402,F401
                               report_stem, summarize)
ALL_ARMS = ("standard", "nextlong", "nextlong+longce", "standard+longce", "short", "quest", "knn",
            "nextlong+longce-self", "standard+longce-self")
# the design runs them "where time allows"; the comparison rests on the others. `+longce-self`: LongCE as Fang et
# al. run it (the model in training scores its own short windows), added after the pre-registered `+longce` arms
OPTIONAL_ARMS = ("quest", "knn", "nextlong+longce-self", "standard+longce-self")
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
    copy_steps: int                # pre-training stage A: copy episodes only (copy_curriculum.py)
    base_steps: int                # pre-training stage B: half natural rows, half copy rows
    base_batch_tokens: int         # tokens per pre-training step
    copy_rows: int                 # copy rows built for each pre-training stage
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
    repeat_distances: tuple[int, ...] = ()  # the repeat probe's distances D (nextlong.eval.repeat), < long_len
    probe_every: int = 0           # pre-training steps between two points of the base's copy curve (0: end only)
    attention: str = "nextlong"    # the trainer's attention (sdpa on CPU: the calibrated, faster path there)
    micro_tokens: int = 0          # > 0: tokens per forward pass (micro-batch), so a GPU step of a small model is
                                   # a few launches, not one per sequence; 0: one sequence per pass (CPU)
    overflow: str = "carry"        # standard's packing (`nextlong synthesize --overflow`): a document cut at the
                                   # end of a sample goes on in the next; "drop" loses its rest (runs before 2026-12-07)
    samples: str = "standard"      # "standard": every arm's data holds as many samples as standard's for its seed
                                   # (at most one epoch's worth), so the arms repeat their data equally; "epoch":
                                   # each method makes up to one epoch's worth (runs before 2026-12-07: the lease's
                                   # standard then went 5.1 times over its data, nextlong 1.8)


SCALES = {
    "smoke": Scale("smoke", corpus_max_bytes=1_200_000, heldout_docs=2, vocab=2048, hidden=64, layers=2, heads=2,
                   mlp=192, base_len=256, copy_steps=3, base_steps=3, base_batch_tokens=2048, copy_rows=24,
                   base_lr=3e-3, long_len=1024, batch_tokens=2048, steps=4,
                   lr=1e-3, warmup=1, base_theta=10_000.0, long_theta=40_000.0, chunk_chars=512,
                   embedder="hashed-tfidf", eval_lengths=[1024], eval_depths=2, eval_samples=1,
                   ppl_window=256, heads_lengths=[1000], heads_depths=2, seeds=[0],
                   arms=["standard", "nextlong", "nextlong+longce"], save_every=0, repeat_distances=(128, 512),
                   attention="sdpa"),
    "cpu": Scale("cpu", corpus_max_bytes=12_000_000, heldout_docs=16, vocab=4096, hidden=128, layers=2, heads=4,
                 mlp=512, base_len=512, copy_steps=1000, base_steps=2000, base_batch_tokens=4096, copy_rows=8000,
                 base_lr=3e-3, long_len=4096, batch_tokens=8192, steps=150,
                 lr=5e-4, warmup=10, base_theta=10_000.0, long_theta=80_000.0, chunk_chars=1024,
                 embedder="static",
                 eval_lengths=[1024, 2048, 4096], eval_depths=5, eval_samples=2, ppl_window=512,
                 heads_lengths=[1024, 2048, 4000], heads_depths=3, seeds=[0, 1, 2],
                 arms=["standard", "nextlong", "nextlong+longce", "standard+longce", "short"],
                 save_every=25, repeat_distances=(256, 1024, 2048, 3072), probe_every=250, attention="sdpa"),
    # One H100/H200 lease (9 minutes for everything). The first lease (2026-12-06, H100) ran stage A's 400 steps in
    # 30 s and stage B's 600 in 29 s, and the base failed the gate (-0.46 at D = 512, falling fast: -0.01, -0.06,
    # -0.46 at steps 200, 400, 600), so pre-training is now 600 + 2,000 steps (about 2.5 minutes there).
    "lease": Scale("lease", corpus_max_bytes=12_000_000, heldout_docs=16, vocab=4096, hidden=256, layers=4, heads=4,
                   mlp=1024, base_len=1024, copy_steps=600, base_steps=2000, base_batch_tokens=32768,
                   copy_rows=12000, base_lr=2e-3, long_len=8192, batch_tokens=65536, steps=80, lr=5e-4, warmup=8,
                   base_theta=10_000.0, long_theta=160_000.0, chunk_chars=1024, embedder="static",
                   eval_lengths=[2048, 4096, 8192], eval_depths=5, eval_samples=2, ppl_window=1024,
                   heads_lengths=[2048, 8000], heads_depths=3, seeds=[0, 1, 2],
                   arms=["standard", "nextlong", "nextlong+longce", "standard+longce", "short"], save_every=20,
                   repeat_distances=(512, 2048, 4096, 6144), probe_every=200, attention="nextlong",
                   micro_tokens=65536),
}


# Variants: one setting changed against the scale, run beside the main experiment with `--variant NAME`.
# They reuse its corpus, tokenizer, base checkpoint and base evaluation (`--out` is the same folder) and keep
# their own synthesis, runs and evaluations under OUT/variants/NAME; the report is
# nextlong-vs-standard-NAME.md. Each says why it was tried.
VARIANTS = {
    "longce-self": {
        "overrides": {"arms": ["standard", "nextlong", "nextlong+longce-self", "standard+longce-self"]},
        "why": "The pre-registered `+longce` arms score every token's short context with the base, as the experiment "
               "planned before its runs; Fang et al.'s LongCE scores it with the model being trained, so a weight measures only what "
               "the far context adds for that model, not also how far the extended model has moved from the base. "
               "Here `+longce-self` arms train the same way with the model in training as its own scorer (same "
               "short window and blocks, same clip at 5, weight 1 for the first window), beside `standard` and "
               "`nextlong` on the same data and seeds, all four trained in the variant's own folder from the base of "
               "the work folder (`--out`), so every comparison here is within this page. Added after the main run's "
               "results, so its comparisons are exploratory.",
    },
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


def read_record(folder: Path) -> dict | None:
    """A stage folder's completion record, or None where it has none; one line naming the file where it is not
    a JSON object."""
    record = folder / DONE
    if not record.exists():
        return None
    try:
        data = json.loads(record.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise SystemExit(f"{record}: not a completion record (not JSON: {e}); remove it to run the stage again")
    if not isinstance(data, dict):
        raise SystemExit(f"{record}: not a completion record (a JSON {type(data).__name__}, expected an object); "
                         "remove it to run the stage again")
    return data


def done(folder: Path, settings: dict) -> dict | None:
    """The completion record of a stage folder, if the stage finished with these settings."""
    data = read_record(folder)
    if data is None:
        return None
    if data.get("settings") != json.loads(json.dumps(settings)):
        raise SystemExit(f"{folder}: finished with other settings ({data.get('settings')} != {settings}); "
                         "use another --out for another scale or configuration")
    return data


def cpu_identity() -> str:
    """The processor and the kernels torch picks for it: the same settings have pre-trained different bases on
    different sessions' machines, and CPU matmul kernels (MKL, oneDNN) differ by processor, so experiment.json and
    each stage record (`made_on`) say which made them."""
    import torch

    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or "unknown processor"
    family = (f" (family {info['cpu family']}, model {info['model']})" if "cpu family" in info and "model" in info
              else "")
    return f"{name}{family}, torch {torch.__version__} CPU capability {torch.backends.cpu.get_cpu_capability()}"


def made_on() -> str:
    """What a stage ran on: the GPU where torch has one (the lease scale trains there), else the processor."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return cpu_identity()


def mark_done(folder: Path, settings: dict, seconds: float, **extra) -> None:
    write_json(folder / DONE, {"settings": settings, "seconds": round(seconds, 1), "made_on": made_on(),
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


# --- stage 3: tokenized documents (the `short` arm) ---------------------------------------------


def tokenized_training_docs(out: Path, tok_path: Path) -> list[list[int]]:
    import nextlong

    tok = nextlong.Tokenizer.from_file(tok_path)
    texts = [r["text"] for r in read_jsonl(out / "corpus" / "train.jsonl")]
    return [x.astype("int64").tolist() for x in tok.encode_ordinary_batch(texts)]


def build_docs(out: Path, tok_path: Path, seed: int) -> Path:
    """The training documents as token rows, shuffled by seed (the `short` arm's data)."""
    folder = out / f"short-data/seed-{seed}"
    settings = {"tokenizer": str(tok_path), "seed": seed}

    def run():
        rows = tokenized_training_docs(out, tok_path)
        random.Random(seed).shuffle(rows)
        C.write_rows(folder / "data.parquet", rows)
        return {"docs": len(rows), "tokens": sum(len(r) for r in rows)}

    return stage(folder, settings, f"tokenized documents (seed {seed})")(run)


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


def pretrain_data(out: Path, sc: Scale, tok_path: Path) -> Path:
    """The base's pre-training rows (copy_curriculum.py): natural rows at the base length, and one set of
    copy rows per stage (stage A: random-id episodes up to base_len / 8 long; stage B: random ids or
    training text, up to base_len / 2)."""
    folder = out / "pretrain-data"
    settings = {"tokenizer": str(tok_path), "seq_len": sc.base_len, "copy_rows": sc.copy_rows,
                "stage_a": {"span": [4, sc.base_len // 8], "random_share": 1.0, "seed": 0},
                "stage_b": {"span": [4, sc.base_len // 2], "random_share": 0.5, "seed": 1}}

    def run():
        from tokenizers import Tokenizer

        docs = tokenized_training_docs(out, tok_path)
        eot = Tokenizer.from_file(str(tok_path)).token_to_id("<|endoftext|>")
        rows = C.natural_rows(docs, sc.base_len, eot)
        C.write_rows(folder / "natural" / "data.parquet", rows)
        stats = {"natural_rows": len(rows)}
        for name in ("stage_a", "stage_b"):
            cfg = settings[name]
            ids, segs, st = C.copy_rows(docs, sc.vocab, rows=sc.copy_rows, seq_len=sc.base_len, span_min=cfg["span"][0],
                                        span_max=cfg["span"][1], random_share=cfg["random_share"], seed=cfg["seed"])
            C.write_rows(folder / f"copy-{name[-1]}" / "data.parquet", ids, segs)
            stats[name] = st
        return stats

    stage(folder, settings, "pre-training data")(run)
    return folder


def probe_gain(model_dir: Path, out: Path, distance: int) -> float:
    """The repeat gain at `distance` on the held-out documents (nextlong.eval.repeat)."""
    from nextlong.eval.model import load_model
    from nextlong.eval.repeat import repeat_losses

    lm = load_model(str(model_dir), attn="auto")
    return repeat_losses(lm, heldout_tokens(out, lm.tokenizer), [distance], progress=False, batch_size=8)[0].gain


def train_with_curve(folder: Path, settings: dict, name: str, out: Path, sc: Scale, **kwargs) -> dict:
    """train_run, stopping every `sc.probe_every` steps to add a point to the base's copy curve
    (FOLDER/copy_curve.jsonl: step, tokens, repeat gain at the gate distance)."""
    def run():
        from nextlong.train import train

        curve_path = folder / "copy_curve.jsonl"
        D = C.gate_distance(sc.base_len)
        probed = {r["step"] for r in read_jsonl(curve_path)} if curve_path.exists() else set()
        while True:
            chunk = sc.probe_every or kwargs["steps"]
            summary = train(out=folder, resume=True, progress=False, num_threads=THREADS["n"], stop_after=chunk,
                            **kwargs)
            step = summary["steps"]
            if step not in probed:
                gain = probe_gain(folder, out, D)
                with open(curve_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, "tokens": step * kwargs["batch_tokens"],
                                        f"repeat_gain_{D}": gain}) + "\n")
                probed.add(step)
                log(f"{name}: step {step}, repeat gain at D = {D}: {gain:+.3f} nats/token")
            if step >= kwargs["steps"]:
                break
        return {"train": {k: summary.get(k) for k in ("steps", "tokens", "seconds", "tokens_per_s", "final_loss",
                                                        "num_params") if k in summary}}

    return stage(folder, settings, name)(run)


def micro_batch(sc: Scale, seq_len: int, batch_tokens: int) -> dict:
    """The trainer's micro_batch for this scale: the most sequences per forward pass within micro_tokens that
    divides a step's sequences ({} on CPU scales, whose recorded settings stay as they were). The gradient
    does not depend on the split (the trainer divides by the step's total weight)."""
    per_step = batch_tokens // seq_len
    most = min(per_step, sc.micro_tokens // seq_len)
    size = max((m for m in range(1, most + 1) if per_step % m == 0), default=1)
    return {"micro_batch": size} if size > 1 else {}


def pretrain(out: Path, sc: Scale, data: Path, init: Path) -> Path:
    """The base, in two stages (copy_curriculum.py): out/base-copy (stage A, constant learning rate after
    warm-up), then out/base (stage B, from stage A, cosine to 10%)."""
    common = dict(seq_len=sc.base_len, batch_tokens=sc.base_batch_tokens, lr=sc.base_lr, rope_theta=sc.base_theta,
                  seed=0, attention_spans="document", split_spans=False, save_every=sc.save_every,
                  attention=sc.attention, **micro_batch(sc, sc.base_len, sc.base_batch_tokens))
    a = dict(common, data=str(data / "copy-a"), model=str(init), steps=sc.copy_steps,
             warmup=max(1, min(50, sc.copy_steps // 20)), min_lr_ratio=1.0)
    train_with_curve(out / "base-copy", a, "pre-training stage A (copy episodes)", out, sc, **a)
    b = dict(common, data=[f"{data / 'natural'}@0.5", f"{data / 'copy-b'}@0.5"], model=str(out / "base-copy"),
             steps=sc.base_steps, warmup=max(1, min(50, sc.base_steps // 20)))
    train_with_curve(out / "base", b, "pre-training stage B (natural text + copy episodes)", out, sc, **b)
    return out / "base"


def copy_gate(out: Path, sc: Scale) -> dict:
    """The base's repeat gain at D = base length / 2 (read from its repeat probe) against the gate."""
    D = C.gate_distance(sc.base_len)
    path = out / "eval" / "base" / "repeat" / "repeat.json"
    rows = {r["distance"]: r for r in json.loads(path.read_text())["distances"]} if path.exists() else {}
    gain = rows.get(D, {}).get("gain")
    return {"distance": D, "gain": gain, "threshold": C.GATE_NATS, "passed": C.gate_passes(gain)}


# --- stage 5: synthesis ------------------------------------------------------------------------


def samples_needed(sc: Scale) -> int:
    return math.ceil(sc.steps * sc.batch_tokens / sc.long_len) + 2


def arm_samples(root: Path, sc: Scale, corpus: Path, tok_path: Path, method: str, seed: int) -> int:
    """How many samples a method's data gets: one epoch's worth, and under `samples = "standard"` no more than
    `standard`'s data holds for the seed (synthesized first for that), so every arm repeats its data as often."""
    needed = samples_needed(sc)
    if sc.samples != "standard" or method == "standard":
        return needed
    return min(needed, int(read_record(synthesize_arm(root, sc, corpus, tok_path, "standard", seed))["samples"]))


def synth_settings(sc: Scale, corpus: Path, tok_path: Path, method: str, seed: int, num_samples: int) -> dict:
    settings = dict(corpus=str(corpus), tokenizer=str(tok_path), method=method, seed=seed,
                    target_length=sc.long_len, num_samples=num_samples, chunk_size=sc.chunk_chars,
                    embedder=sc.embedder if method in ("nextlong", "knn") else None, id_field="id")
    if method == "standard":
        settings["overflow"] = sc.overflow
    return settings


def synthesize_arm(root: Path, sc: Scale, corpus: Path, tok_path: Path, method: str, seed: int) -> Path:
    folder = root / "synth" / method / f"seed-{seed}"
    settings = synth_settings(sc, corpus, tok_path, method, seed, arm_samples(root, sc, corpus, tok_path, method,
                                                                               seed))

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
            log(f"synth {method} seed {seed}: {rows} samples < the {samples_needed(sc)} one epoch needs; "
                "training repeats them" + (" (as many as standard's)" if rows == settings["num_samples"] else ""))
        return {"samples": rows, "files": [f.name for f in files]}

    stage(folder, settings, f"synthesize {method} seed {seed}")(run)
    return folder


# --- stage 6: extension runs -------------------------------------------------------------------


def arm_run(out: Path, root: Path, sc: Scale, arm: str, seed: int, data: Path) -> Path:
    folder = root / "runs" / arm / f"seed-{seed}"
    seq = sc.base_len if arm == "short" else sc.long_len
    kwargs = dict(data=str(data), model=str(out / "base"), seq_len=seq, batch_tokens=sc.batch_tokens,
                  steps=sc.steps, lr=sc.lr, warmup=sc.warmup, rope_theta=sc.long_theta, seed=seed,
                  attention_spans="sample", split_spans=arm == "short", save_every=sc.save_every,
                  attention=sc.attention, **micro_batch(sc, seq, sc.batch_tokens))
    if arm.endswith(("+longce", "+longce-self")):
        # LongCE weights: the model in training with the whole context against a short-context scorer reading
        # only the last base_len / 2 tokens (blocks of base_len / 4: every window stays inside the base's trained
        # length): the base for `+longce`, the model in training itself for `+longce-self`
        kwargs.update(token_weighting="longce", short_window=sc.base_len // 2, short_stride=sc.base_len // 4)
        if arm.endswith("+longce"):
            kwargs["scorer"] = str(out / "base")
    # a run finished while its settings held the data's completion time (data_made, replaced by trained_on's check)
    # keeps its record: that key is no setting of the run, and its data were just checked
    recorded = (trained_on(folder, data) or {}).get("settings")
    made = recorded.get("data_made") if isinstance(recorded, dict) else None
    settings = kwargs if made is None else dict(kwargs, data_made=made)
    train_run(folder, settings, f"train {arm} seed {seed}", **kwargs)
    return folder


def trained_on(folder: Path, data: Path) -> dict | None:
    """The completion record of the run in `folder` (None: not finished), refused where its data was made again
    differently since (synth/ removed and synthesized anew with another cap, corpus or setting): the record names
    the data by path only, so the trainer's own record of what it read (the data's fingerprint: settings, rows,
    bytes) is compared with what the folder holds now. The same data made again (synthesis is deterministic)
    keeps the run."""
    record = read_record(folder)
    if record is None:
        return None
    from nextlong.train.sources import open_sources

    manifest = folder / "manifest.json"
    try:
        recorded = json.loads(manifest.read_text())["settings"]["data_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{manifest}: no record of the data the run trained on ({type(e).__name__}: {e}); "
                         f"remove {folder} to train it again")
    now = json.loads(json.dumps([s.fingerprint() for s in open_sources([str(data)])]))
    if recorded != now:
        raise SystemExit(f"{folder}: trained on other data than {data} holds now (recorded {recorded}, now {now}); "
                         f"remove {folder} to train it again")
    return record


# --- stage 7: evaluation -----------------------------------------------------------------------


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
            "key_tokens": m.key_tokens,
            "short_ppl": m.short_ppl,
        },
        "loss_by_position": {"positions": curve["positions"], "loss": curve["loss"]},
        "documents": m.documents,
    }


def model_fingerprint(model_dir: Path) -> str:
    """The identity of the weights an evaluation loads: SHA-256 over the name, size and CRC32 of every file of
    the model folder (RUN/model of a training run). A model trained again gets another fingerprint, though its
    path and the evaluation's settings are the same."""
    from nextlong.model_folder import resolve_model_folder

    folder, _ = resolve_model_folder(model_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        crc = 0
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                crc = zlib.crc32(block, crc)
        h.update(f"{f.relative_to(folder).as_posix()}\0{f.stat().st_size}\0{crc:08x}\n".encode())
    return h.hexdigest()


def forget_stale_evaluation(folder: Path, settings: dict, fingerprint: str) -> None:
    """An evaluation stage is keyed on the model's path and the evaluation settings; its record also holds the
    fingerprint of the model it measured. Where the record has these settings and another fingerprint (the run
    at that path was trained again), or none (written before fingerprints existed: nothing says which model it
    measured, and trusting it would keep a retrained model's old metrics for good), the stage's outputs are removed
    so it measures the model there now (once per older work folder). Any other record is left to the stage's own
    check: other settings are refused there, not deleted here; a record that is not a JSON object gets its one
    line there. A stage nested in the folder (eval/NAME/repeat) keeps its own: it checks its own record."""
    record = folder / DONE
    try:
        data = read_record(folder)
    except SystemExit:
        return
    if data is None or data.get("settings") != json.loads(json.dumps(settings)):
        return
    if data.get("model_fingerprint") == fingerprint:
        return
    log(f"{folder}: " + ("the model changed since it was evaluated" if "model_fingerprint" in data else
                         "its record predates model fingerprints, so which model it measured is unknown")
        + ": evaluating it again")
    record.unlink()  # first: a kill below leaves an unfinished stage, never a finished one without its outputs
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink() and (child / DONE).exists():
            continue
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def evaluate_model(out: Path, sc: Scale, name: str, model_dir: Path, eval_seed: int = 0, root: Path | None = None) -> dict:
    folder = (root or out) / "eval" / name
    settings = {"model": str(model_dir), "lengths": sc.eval_lengths, "depths": sc.eval_depths,
                "samples": sc.eval_samples, "window": sc.ppl_window, "heads": sc.heads_lengths, "seed": eval_seed}
    fingerprint = model_fingerprint(model_dir)
    forget_stale_evaluation(folder, settings, fingerprint)

    def run():
        from nextlong.eval import evaluate, retrieval_heads

        essay = str(out / "corpus" / "heldout.jsonl")
        evaluate(model_dir, folder / "tasks", tasks=list(TASK_GROUPS), lengths=list(sc.eval_lengths),
                 depths=sc.eval_depths, samples=sc.eval_samples, seed=eval_seed, mode="teacher-forced", corpus=essay)
        docs = document_metrics(model_dir, out, sc)
        write_json(folder / "documents.json", docs)
        retrieval_heads(model_dir, folder / "heads", lengths=list(sc.heads_lengths), depths=sc.heads_depths,
                        needles=1, max_new_tokens=12, all_trials=True, corpus=essay)
        return {"model_fingerprint": fingerprint}

    stage(folder, settings, f"evaluate {name}")(run)
    return collect_metrics(folder)


def probe_distances(sc: Scale) -> list[int]:
    """The repeat probe's distances: the scale's, plus the gate's (base length / 2)."""
    return sorted(set(sc.repeat_distances) | {C.gate_distance(sc.base_len)})


def repeat_probe(out: Path, sc: Scale, name: str, model_dir: Path, root: Path | None = None) -> None:
    """`nextlong.eval.repeat` on the held-out documents within the long context: can the model copy from
    each distance back? Its own stage (folder eval/NAME/repeat)."""
    folder = (root or out) / "eval" / name / "repeat"
    settings = {"model": str(model_dir), "distances": probe_distances(sc), "documents": "heldout",
                "max_length": sc.long_len}
    fingerprint = model_fingerprint(model_dir)
    forget_stale_evaluation(folder, settings, fingerprint)

    def run():
        from nextlong.eval.model import load_model
        from nextlong.eval.repeat import repeat_losses

        lm = load_model(str(model_dir), attn="auto")
        docs = heldout_tokens(out, lm.tokenizer)
        rows = repeat_losses(lm, docs, probe_distances(sc), progress=False, max_length=sc.long_len)
        write_json(folder / "repeat.json", {"distances": [r.summary() for r in rows]})
        return {"model_fingerprint": fingerprint}

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
    # answer log-prob per token by needle depth (tasks with a depth), over lengths and variants (by_depth) and
    # at the longest length only (by_depth_long; its mean over depths is the metric GROUP_tf_logprob_at_L)
    by_depth, by_depth_long, longest = {}, {}, max(res["lengths"])
    for group in TASK_GROUPS:
        cells = [c for t in res["tasks"] if t == group or t.startswith(group + "_") for c in res["tasks"][t]["cells"]
                 if c.get("depth") is not None and c.get("teacher_forced_logprob_per_token") is not None]
        for target, chosen in ((by_depth, cells), (by_depth_long, [c for c in cells if c["length"] == longest])):
            depths = sorted({c["depth"] for c in chosen})
            if depths:
                target[group] = {str(d): sum(c["teacher_forced_logprob_per_token"] for c in chosen if c["depth"] == d)
                                 / sum(1 for c in chosen if c["depth"] == d) for d in depths}
        if group in by_depth_long:
            values = list(by_depth_long[group].values())
            metrics[f"{group}_tf_logprob_at_{longest}"] = sum(values) / len(values)
    metrics.update(docs["metrics"])
    metrics["retrieval_heads"] = sum(1 for s in heads.values() if s > 0.1)
    metrics["max_head_score"] = max(heads.values()) if heads else 0.0
    repeat = {}
    if (folder / "repeat" / DONE).exists():
        for row in json.loads((folder / "repeat" / "repeat.json").read_text())["distances"]:
            metrics[f"repeat_gain_{row['distance']}"] = row["gain"]
            repeat[str(row["distance"])] = {"first": row["first"], "second": row["second"]}
    return {"metrics": metrics, "loss_by_position": docs["loss_by_position"], "by_length": by_length,
            "by_depth": by_depth, "by_depth_long": by_depth_long, "head_scores": heads, "repeat": repeat}


# --- report ------------------------------------------------------------------------------------

SECONDARY = ("ppl_long", "long_context_gain", "short_ppl", "retrieval_heads")


def primary_metrics(sc: Scale) -> list[str]:
    """The pre-registered primary metrics: the repeat gain at every probe distance past the base length (did
    extension teach the copy mechanism to reach that far?) and the teacher-forced answer log-prob of the
    needle tasks at the long length."""
    return [f"repeat_gain_{d}" for d in sc.repeat_distances if d > sc.base_len] + \
        [f"{g}_tf_logprob_at_{max(sc.eval_lengths)}" for g in ("niah_single", "niah_multikey")]


def gather(out: Path, root: Path, sc: Scale, seeds: list[int], arms: list[str]) -> dict:
    """results.json from every finished evaluation (missing ones are listed, never guessed). The base
    model's stages are in `out`, the arms' in `root` (`out` itself, or a variant's folder)."""
    results = {"base_length": sc.base_len, "arms": {}, "curves": {}, "missing": [], "scale": asdict(sc),
               "seeds": seeds, "primary": primary_metrics(sc), "secondary": list(SECONDARY),
               "task_groups": list(TASK_GROUPS), "optional_arms": list(OPTIONAL_ARMS), "variants": VARIANTS}
    gate = out / "gate.json"
    results["gate"] = json.loads(gate.read_text()) if gate.exists() else None
    results["copy_curve"] = {
        name: [{"tokens": r["tokens"], "step": r["step"], "gain": r[f"repeat_gain_{C.gate_distance(sc.base_len)}"]}
               for r in read_jsonl(out / folder / "copy_curve.jsonl")] if (out / folder / "copy_curve.jsonl").exists()
        else [] for name, folder in (("stage A: copy episodes", "base-copy"),
                                     ("stage B: natural text + copy episodes", "base"))}
    for arm in ["base"] + arms:
        for seed in ([0] if arm == "base" else seeds):
            folder = out / "eval" / "base" if arm == "base" else root / "eval" / f"{arm}-seed-{seed}"
            if not (folder / DONE).exists():
                results["missing"].append(f"{arm} seed {seed}")
                continue
            m = collect_metrics(folder)
            results["arms"].setdefault(arm, {"seeds": {}})["seeds"][str(seed)] = m["metrics"]
            results["curves"].setdefault(arm, {})[str(seed)] = {k: m[k] for k in (
                "loss_by_position", "by_length", "by_depth", "by_depth_long", "head_scores", "repeat")}
            run = root / "runs" / arm / f"seed-{seed}"
            rec = read_record(run)
            if rec:
                results["arms"][arm].setdefault("train", {})[str(seed)] = rec.get("train", {}) | {
                    "seconds": rec.get("seconds")}
    base = read_record(out / "base")
    if base is not None:
        results["pretrain"] = base.get("train", {}) | {"seconds": base.get("seconds")} | (
            {"made_on": base["made_on"]} if isinstance(base.get("made_on"), str) else {})
    corpus = read_record(out / "corpus")
    if corpus is not None:
        results["corpus"] = {k: v for k, v in corpus.items() if k != "settings"}
    # per seed with data: whether its `standard` record names `overflow`, as every seed's has since 2026-12-07 (each
    # arm's sample count is read from it). A seed without marks data made before (`standard` dropped the rest of a
    # cut document, each method made up to one epoch's worth): such a run (--report-only on its --out, or its
    # records.tgz unpacked) must not have its page describe the design of today's scale
    synth, overflow_named = {}, {}
    for rec in sorted((root / "synth").glob(f"*/seed-*/{DONE}")):
        record = read_record(rec.parent)
        entry = {k: v for k, v in record.items() if k in ("seconds", "samples")}
        manifest = rec.parent / "manifest.json"
        if manifest.exists():
            st = json.loads(manifest.read_text()).get("statistics", {})
            entry.update({k: st[k] for k in SYNTH_STATS if k in st})
        method, seed = rec.parent.parent.name, rec.parent.name
        synth[f"{method} {seed}"] = entry
        overflow_named.setdefault(seed, False)
        if method == "standard":
            overflow_named[seed] = "overflow" in (record.get("settings") or {})
    results["synthesis"] = synth
    if not all(overflow_named.values()):  # the page says the design its data was made with, not this code's
        for key in ("overflow", "samples"):
            results["scale"].pop(key, None)
    stages = {}
    for rec in sorted(root.rglob(DONE)):
        if root == out and rec.parent.relative_to(out).parts[0] == "variants":
            continue
        data = json.loads(rec.read_text())
        stages[str(rec.parent.relative_to(out))] = {"seconds": data.get("seconds"), "finished": data.get("finished")}
    results["stages"] = stages
    running = []
    for metrics in sorted(out.glob("base*/metrics.jsonl")) + sorted(root.glob("runs/*/seed-*/metrics.jsonl")):
        if not (metrics.parent / DONE).exists():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            total = {"base-copy": sc.copy_steps, "base": sc.base_steps}.get(metrics.parent.name, sc.steps)
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


def write_report(out: Path, sc: Scale, seeds: list[int], arms: list[str], report_dir: Path, command: str,
                 variant: str | None = None) -> Path:
    stem = report_stem(variant, sc.name)
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
    p.add_argument("--base-only", action="store_true",
                   help="stop after the base model and its copy gate (pre-training, repeat probe, evaluation)")
    p.add_argument("--skip-gate", action="store_true",
                   help="train the arms even when the base fails the copy gate (to test the pipeline only: the "
                   "report then says that its results cannot answer the question)")
    p.add_argument("--embedder", default=None,
                   help="the synthesis embedder instead of the scale's (e.g. the folder of a distilled static "
                   "embedder, on a machine without the MiniLM package it is distilled from: lease_run.sh)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default, all cores). On a CPU shared with other jobs use 1: "
                   "two OpenMP threads contending with other processes ran 30x slower here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sc = SCALES[args.scale]
    if args.variant:
        sc = replace(sc, **VARIANTS[args.variant]["overrides"])
    if args.embedder:
        sc = replace(sc, embedder=args.embedder)
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
    threads = torch.get_num_threads()
    try:  # the record of the earlier invocations (rewritten below: a damaged one only loses their thread counts)
        earlier = json.loads((root / "experiment.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        earlier = {}
    earlier = earlier if isinstance(earlier, dict) else {}
    seen = earlier.get("torch_threads_seen") or ([earlier["torch_threads"]] if earlier.get("torch_threads") else [])
    seen = sorted({t for t in seen if isinstance(t, int)} | {threads})  # a resumed run may have used other threads
    write_json(root / "experiment.json", {"scale": asdict(sc), "variant": args.variant, "seeds": seeds, "arms": arms,
                                         "python": platform.python_version(), "machine": platform.machine(),
                                         "cpus": os.cpu_count(), "cpu": cpu_identity(), "torch_threads": threads,
                                         "torch_threads_seen": seen,
                                         "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None})
    if args.variant and read_record(out / "base") is None:
        log(f"--variant {args.variant}: {out} holds no finished base: the corpus, tokenizer and base are built here "
            "first (the main experiment run with this --out would reuse them)")
    build_corpus(out, sc)
    tok = build_tokenizer(out, sc)
    init = base_init(out, sc, tok)
    pretrain(out, sc, pretrain_data(out, sc, tok), init)
    repeat_probe(out, sc, "base", out / "base")
    gate = copy_gate(out, sc)
    write_json(out / "gate.json", gate | {"skipped": bool(args.skip_gate and not gate["passed"])})
    if not gate["passed"]:
        log(f"copy gate: FAILED: the base's repeat gain at D = {gate['distance']} is {fmt(gate['gain'])} nats/token, "
            f"above {gate['threshold']}: it does not copy, so no arm could show better retrieval"
            + ("; --skip-gate: training the arms anyway" if args.skip_gate else "; no arm is trained"))
        if not args.skip_gate:
            if not args.no_report:
                write_report(out, sc, seeds, arms, report_dir, command, args.variant)
            return 3
    else:
        log(f"copy gate: passed (repeat gain {gate['gain']:+.3f} nats/token at D = {gate['distance']})")
    evaluate_model(out, sc, "base", out / "base")
    if args.base_only:
        if not args.no_report:
            write_report(out, sc, seeds, arms, report_dir, command, args.variant)
        return 0
    corpus = split_corpus(out, root, sc) if sc.split_chars else out / "corpus" / "train.jsonl"
    for seed in seeds:  # seed-major: each finished seed gives a complete paired comparison
        for arm in arms:
            if arm == "short":
                data = out / "short-data" / f"seed-{seed}"
                build_docs(out, tok, seed)
            else:
                from nextlong.errors import NextlongError

                try:
                    data = synthesize_arm(root, sc, corpus, tok, arm_method(arm), seed)
                except NextlongError as exc:  # e.g. Quest finds no key group on a small corpus: the others go on
                    record_failure(root, arm, seed, f"synthesis failed: {exc}")
                    continue
            record_failure(root, arm, seed, None)
            run = arm_run(out, root, sc, arm, seed, data)
            evaluate_model(out, sc, f"{arm}-seed-{seed}", run, root=root)
            repeat_probe(out, sc, f"{arm}-seed-{seed}", run, root=root)
            if not args.no_report:
                write_report(out, sc, seeds, arms, report_dir, command, args.variant)
    if not args.no_report:
        write_report(out, sc, seeds, arms, report_dir, command, args.variant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
