"""The training loop of `nextlong train`, readable in one sitting.

    train(["demo-out"], "demo-run", model="tiny", steps=10)

One optimizer step = `batch_tokens` tokens = G sequences of `seq_len`, split over `world` ranks and
`accum` micro-batches of `micro_batch` sequences. Each micro-batch's loss is sum_t w_t * CE_t; the
step divides by the total weight of all micro-batches on all ranks (known before the first backward,
since weights never depend on the parameters' gradients), so the gradient is that of
sum w*CE / sum w over the global batch whether it ran on one process or eight.

Answer-only loss (`loss_on="answer"`, data with a `loss_mask`): labels outside the answers are -100,
so w is 0 there and sum w counts answer tokens only. A step whose global batch holds no target
token (sum w = 0) has no defined loss: it applies no update (AdamW would still move the weights by
momentum and decay), logs a null loss with `loss_tokens: 0`, and uses up its data and its place in
the schedule; a run in which no step had a target is an error.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch

from ..errors import NextlongError, UsageError
from ..manifest import RUNNING, ended_by, read_manifest, run_status
from ..model_folder import folder_identity
from ..model_folder import tokenizer_spec as model_tokenizer_spec
from ..untrusted import whole
from . import checkpoint as ckpt
from .config import TrainConfig, check_output_folder, other_settings_error
from .data import SampleStream, SequencePacker, collate
from .distributed import (agreed, all_ranks_ok, all_reduce_sum, barrier, init_distributed, lowest_rank_with,
                          on_every_rank, rng_state, seed_all, set_rng_state)
from .memory import check_step_memory, is_out_of_memory
from .model import LossModel, build_model, check_attention_dropout, get_rope_theta, is_preset, run_or_model_folder
from .plot import METRICS_FILE, has_steps, plot_loss
from .sources import open_sources, resolve_loss_on
from .token_weights import TokenWeigher, autocast, sequence_parallel, short_window


def train(data, out, **settings) -> dict:
    """Train on `data` (a DATA spec or a list of "PATH@weight"), writing the run to folder `out`.

    Keyword settings are TrainConfig's fields (model, seq_len, batch_tokens, steps, lr, ...). With
    resume=True, the settings a resume must share default to what the run recorded.
    Returns a summary dict (also in RUN/manifest.json). The caller's torch thread count, global random
    generators (Python's, numpy's, torch's CPU one) and transformers' progress bars are as they were after."""
    data = [str(data)] if isinstance(data, (str, os.PathLike)) else [str(d) for d in data]
    if settings.get("resume"):
        from .config import resumed_settings

        settings = resumed_settings(out, settings)
    cfg = TrainConfig(data=data, out=str(out), **settings).validate()
    with _caller_state_kept():
        return Trainer(cfg).run()


@contextlib.contextmanager
def _caller_state_kept():
    """A run seeds the global generators (--seed), may set torch's thread count (--threads) and turns
    transformers' progress bars off (checkpoint.py): a notebook or a program that trains was left with them
    changed. The CUDA generators are left alone: reading every device's would open a context on each."""
    import random

    import numpy as np

    threads = torch.get_num_threads()
    generators = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
    except ImportError:
        hf_logging = bar = None
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        random.setstate(generators[0])
        np.random.set_state(generators[1])
        torch.set_rng_state(generators[2])
        if bar:
            hf_logging.enable_progress_bar()


# --- processes and devices ---------------------------------------------------------------------


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cosine_schedule(warmup: int, steps: int, min_ratio: float):
    """lr multiplier of optimizer step s (0-based): linear warm-up to 1 over `warmup` steps (step 0
    already trains at 1/warmup), then cosine decay to `min_ratio` at the last step."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        progress = (s - warmup) / max(1, steps - warmup - 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


# --- the trainer -------------------------------------------------------------------------------


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM at a step boundary, after saving that step's checkpoint. `quiet`: a
    lower rank was signalled too and says it (torchrun forwards a signal to every rank: one line, not one per
    rank)."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


class _Recorded(NextlongError):
    """An error that ends a run whose manifest already says why (diverged, no loss tokens)."""


def _finished_manifest(run: Path) -> bool:
    """Whether a run's manifest records a run that ended (a kill while it was written, or before the final one,
    leaves "running", which a resumed finished run must replace)."""
    return run_status(read_manifest(run / "manifest.json")) not in (None, RUNNING)


class _StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM during training: noted, so the loop stops at the end of the step and saves
    it, instead of losing every step since the last checkpoint (with --save-every 0, all of them). A second
    signal acts at once, unless it comes within SAME_REQUEST_S of the first: a scheduler that signals every
    process of a job (Slurm) reaches a torchrun worker twice, directly and forwarded by torchrun, and that
    is one request. Only the main thread can take signals. `speaks`: the note is printed as the signal comes
    (rank 0, or a single process); another rank's waits for say(), at the step boundary where the ranks learn
    whether a lower one was signalled too and said it."""

    SAME_REQUEST_S = 2.0

    def __init__(self, speaks: bool = True):
        import signal
        import threading

        self.requested = None
        self._at = None
        self._speaks, self._said = speaks, False
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._note)

    def _note(self, signum, frame):
        import signal

        now = time.monotonic()
        if self.requested is None:
            self.requested, self._at = signal.Signals(signum).name, now
            if self._speaks:
                self.say()
        elif now - self._at >= self.SAME_REQUEST_S:  # a second request: the signal's own action, at once
            self.restore()
            signal.raise_signal(signum)

    def say(self) -> None:
        """The note that the run stops after this step, once."""
        import sys

        if not self._said:
            self._said = True
            print(f"\n{self.requested}: stopping after this step and saving it (again, {self.SAME_REQUEST_S:g} s or "
                  "more from now, to stop at once)", file=sys.stderr)

    def restore(self) -> None:
        import signal

        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.plain_ce = None  # the last step's unweighted cross-entropy, with token weighting
        self.manifest_running = False  # this invocation wrote a "running" manifest that its end must replace
        # a resume found other data / another scorer than the manifest records, at this step (or an earlier one)
        self.changed_at_step: dict[str, int] = {}
        self.scorer_identity = None  # --scorer's folder as its files' names, sizes and modification times
        self.agreed_failure = None  # a failure every rank raised at the same point (a bad row read mid-run)

    def run(self) -> dict:
        import torch.distributed as dist

        cfg = self.cfg
        started = not dist.is_initialized()
        self.rank, self.world, self.local_world, self.device = init_distributed(cfg.collective_timeout)
        try:
            if self.device.type == "cpu" and (cfg.num_threads or self.local_world > 1):
                torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // self.local_world))
            lock = contextlib.nullcontext()
            if self.rank == 0:
                from ..locking import output_lock

                lock = output_lock(self.run_dir, "train", file=False)
            with lock:
                self.setup()
                try:
                    return self.loop()
                except (TrainingInterrupted, _Recorded):
                    raise
                except BaseException as exc:  # the record said "running": it now says the run stopped, and why
                    steps = self.history[-1]["step"] if self.history else self.start_step
                    lost = _lost_a_process(exc, steps, cfg.collective_timeout) if self.world > 1 else None
                    if self.manifest_running:
                        self.write_manifest({**ended_by(lost or exc), "steps": steps})
                    if exc is self.agreed_failure:
                        # every rank is here, alive: none leaves before rank 0 has written that record (torchrun
                        # stops the other workers as soon as one exits, and rank 0's record stayed "running")
                        barrier()
                    if lost is not None:
                        raise lost from exc
                    raise
        finally:
            # the groups this run started end with it: left to the interpreter's exit, gloo's threads (more of
            # them with --seq-parallel's subgroups) could abort the process ("terminate called ...")
            if started and dist.is_initialized():
                dist.destroy_process_group()

    # setup: everything that can go wrong with the input fails here, before the first step. Under torchrun the
    # parts that may fail on one rank alone (its files, its device's memory) end in an agreement, so every rank
    # stops there with the failed rank's message instead of meeting a broken connection at the next collective.
    def setup(self) -> None:
        agreed(self._setup_inputs)  # sources, tokenizer, settings: no collective
        self._sequence_parallel_groups()  # collective: creates the sequence-parallel groups
        agreed(self._setup_model)  # the model built and checked on this rank: no collective
        cfg = self.cfg
        check_step_memory(self.lm, seq_len=self.seq_len, micro_batch=cfg.micro_batch, device=self.device,
                          shards=self.world if cfg.fsdp else 1, local_world=self.local_world,
                          seq_parallel=self.sp, restored=cfg.restored)  # collective: every rank refuses alike
        agreed(self._setup_scorer)
        self.wrapped = self._wrap(self.loss_model)
        self.weigher = TokenWeigher(cfg, seq_len=self.seq_len, device=self.device, long_logprobs=self._long_logprobs,
                                    short_model=self.scorer or self.lm, sp=self.sp, sp_rank=self.sp_rank,
                                    sp_group=self.sp_group)

        decay = [p for p in self.loss_model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.loss_model.parameters() if p.requires_grad and p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=self.lr, betas=tuple(cfg.betas), eps=1e-8)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_schedule(self.warmup, cfg.steps, cfg.min_lr_ratio))

        stream = SampleStream(self.sources, seed=cfg.seed, rank=self.dp_rank, world=self.dp_world,
                              spans=cfg.attention_spans, vocab_size=self.model_vocab,
                              loss_mask=self.loss_on == "answer")
        self.packer = SequencePacker(stream, self.seq_len, split=cfg.split_spans)
        self.start_step, self.history = 0, []
        self._resume_or_start()
        # the first step's data is read now: bad samples fail before any training, on every rank, before the run
        # writes anything
        self.next_batches = agreed(self._read_step_batches)
        if self.loss_on == "answer" and self.rank == 0 and not any(
                bool((b["labels"][:, 1:] != -100).any()) for b in self.next_batches):
            print("nextlong train: the first step's sequences hold no answer token (their loss_mask is 0 on every "
                  "target); a step without one applies no update", file=sys.stderr)

    def _setup_inputs(self) -> None:
        cfg = self.cfg
        seed_all(cfg.seed)  # a resumed run then restores the checkpoint's generator states
        ckpt.check_run_folder(self.run_dir)  # a run folder from someone else: its parts must be its own
        check_output_folder(self.run_dir)  # nor another command's output, whose manifest the run would replace
        self.sources = sources = open_sources(cfg.data)
        out = self.run_dir.resolve()
        for s in sources:  # the run's files would land among the data (a plain Parquet folder has no manifest)
            if out in {s.path.resolve(), *([s.manifest_dir.resolve()] if s.manifest_dir else [])}:
                raise NextlongError(f"{self.run_dir} is the DATA folder {s.spec}: give --out a new folder or a "
                                    "training run's folder")
        self.data_fingerprint = [s.fingerprint() for s in sources]  # what the manifest records and a resume compares
        self.loss_on = resolve_loss_on(sources, cfg.loss_on, attention_spans=cfg.attention_spans,
                                       split_spans=cfg.split_spans, restored=cfg.restored)
        # the user's --tokenizer, else what the data's manifests name (their own copy, or a built-in name)
        data_tok = cfg.tokenizer or next((s.tokenizer_spec for s in sources if s.tokenizer_spec), None)
        data_fp = next((s.tokenizer_fingerprint for s in sources if s.tokenizer_fingerprint), None)
        self.tokenizer_spec, vocab, eos_id = data_tok, None, None
        if data_tok is not None:
            from ..corpus.tokenizer import load_tokenizer

            tok = load_tokenizer(data_tok)
            if cfg.tokenizer is not None and data_fp is not None and tok.fingerprint != data_fp:
                from ..corpus.tokenizer import read_otherwise_note

                note = read_otherwise_note(tok, data_fp)
                raise NextlongError(f"--tokenizer {cfg.tokenizer} is not the tokenizer the data was made with (its "
                                    f"manifest records another fingerprint{note}); "
                                    + ("synthesize the data again" if note else
                                       "pass the file the data was synthesized with"))
            vocab, data_fp, eos_id = tok.vocab_size, data_fp or tok.fingerprint, tok.end_of_text_id
        if not is_preset(cfg.model):
            self._check_model_tokenizer(cfg.model, "--model", data_tok, data_fp)
            if self.tokenizer_spec is None:  # plain Parquet/MDS names no tokenizer: keep the model folder's
                self.tokenizer_spec = model_tokenizer_spec(run_or_model_folder(cfg.model))
        if cfg.scorer is not None and is_preset(cfg.scorer):
            raise UsageError(f"--scorer {cfg.scorer}: a preset is a model at random initialisation (with this --seed, "
                             "the very weights the trained model starts from), whose log-probs measure nothing; give "
                             "a trained model folder, or leave --scorer out to score with the model being trained")
        if cfg.scorer is not None:  # its log-probs must be of the data's ids
            self._check_model_tokenizer(cfg.scorer, "--scorer", data_tok, data_fp)

        # without --seq-len: the longest source's samples (a mix of 64K and 512K data packs the 64K ones)
        self.seq_len = cfg.seq_len or max((s.sample_length for s in sources if s.sample_length), default=None)
        if self.seq_len is None:
            raise UsageError("give --seq-len: the data has no `nextlong synthesize` manifest to take it from")
        if cfg.attention_spans == "document" and self.rank == 0 and any(
                ((s.manifest or {}).get("settings") or {}).get("method") == "nextlong" for s in sources):
            from ..synthesis.config import BLOCKED_DEPENDENCIES

            print(f"nextlong train: {BLOCKED_DEPENDENCIES.format(what='--attention-spans document')}", file=sys.stderr)
        if cfg.attention_spans == "sample" and not cfg.split_spans:
            for s in sources:
                if s.kind == "parquet" and s.sample_length and s.sample_length > self.seq_len:
                    raise UsageError(f"{s.path}: its samples are {s.sample_length} tokens, longer than --seq-len "
                                     f"{self.seq_len}, and a sample is one attention span; raise --seq-len (which keeps "
                                     "every dependency in the data), pass --split-spans to cut them, or use "
                                     "--attention-spans document|none (for NExtLong data, document blocks the "
                                     "dependencies between its meta-chunks)")
        self.data_tok, self.data_vocab, self.eos_id = data_tok, vocab, eos_id
        self._check_sequence_parallel_settings()

    def _check_sequence_parallel_settings(self) -> None:
        """--seq-parallel N's usage errors, checked here, inside setup's first agreement: every rank meets them
        alike, and only the lowest prints (raised beside the group creation, each rank printed its own copy)."""
        cfg, sp = self.cfg, self.cfg.seq_parallel
        if sp == 1:
            return
        problems = [
            (cfg.attention != "nextlong", f"it runs our attention (--attention nextlong), not {cfg.attention}"),
            (self.seq_len % sp, f"{cfg.option('seq_len', self.seq_len)} does not split into {sp} equal slices"),
            (self.world % sp, f"the {self.world} process(es) do not split into groups of {sp}; start it with "
                              f"torchrun --nproc-per-node a multiple of {sp}"),
        ]
        for bad, why in problems:
            if bad:
                raise UsageError(f"{cfg.option('seq_parallel')}: {why}")

    def _setup_model(self) -> None:
        cfg, data_tok, vocab, eos_id = self.cfg, self.data_tok, self.data_vocab, self.eos_id
        self.batch_tokens = cfg.batch_tokens or self.seq_len * self.dp_world
        if self.batch_tokens % self.seq_len:
            raise UsageError(f"{cfg.option('batch_tokens', self.batch_tokens)} must be a multiple of "
                             f"{cfg.option('seq_len', self.seq_len)}")
        per_step = self.batch_tokens // self.seq_len
        if per_step % (self.dp_world * cfg.micro_batch):
            raise UsageError(f"{cfg.option('batch_tokens', self.batch_tokens)} is {per_step} sequences per step, "
                             f"which {self.dp_world} data-parallel process(es) x {cfg.option('micro_batch')} do "
                             "not divide")
        self.accum = per_step // (self.dp_world * cfg.micro_batch)
        self.lr = cfg.lr or (1e-3 if is_preset(cfg.model) else 1e-5)
        self.warmup = cfg.resolved_warmup()
        if cfg.fsdp and self.world == 1:
            raise UsageError("--fsdp shards the model over processes: start it with torchrun --nproc-per-node N")
        if cfg.fsdp and cfg.token_weighting != "none" and cfg.scorer is None:
            raise UsageError("--fsdp with --token-weighting needs a separate --scorer model for the short-context "
                             "scores (the sharded model cannot run the sliding-window pass on its own)")

        lm = build_model(cfg.model, vocab_size=vocab, seq_len=self.seq_len, attention=cfg.attention,
                         rope_theta=cfg.rope_theta, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code,
                         eos_id=eos_id)
        check_attention_dropout(lm, cfg.model, cfg.attention)
        self.model_vocab = lm.config.vocab_size
        _check_vocabulary("--model", cfg.model, self.model_vocab, data_tok, vocab)
        if self.sp > 1 and lm.config.num_attention_heads % self.sp:
            raise UsageError(f"{cfg.option('seq_parallel', self.sp)}: the model's {lm.config.num_attention_heads} "
                             "attention heads do not split over it (Ulysses gives each rank whole heads)")
        self.num_params = sum(p.numel() for p in lm.parameters())
        _check_finite_weights("--model", cfg.model, lm)
        self.rope_theta = get_rope_theta(lm.config)
        if cfg.grad_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.to(self.device).train()
        self.lm = lm
        self.loss_model = LossModel(lm, attention=cfg.attention, loss=cfg.loss)

    def _setup_scorer(self) -> None:
        cfg, data_tok, vocab, eos_id = self.cfg, self.data_tok, self.data_vocab, self.eos_id
        self.scorer = None
        if cfg.scorer is not None:  # its identity taken first: a change while it loads shows on the next resume
            self.scorer_identity = folder_identity(run_or_model_folder(cfg.scorer))
            self.scorer = build_model(cfg.scorer, vocab_size=vocab, seq_len=self.seq_len, attention=cfg.attention,
                                      seed=cfg.seed, trust_remote_code=cfg.trust_remote_code, eos_id=eos_id
                                      ).to(self.device).eval().requires_grad_(False)
            _check_vocabulary("--scorer", cfg.scorer, self.scorer.config.vocab_size, data_tok, vocab)
            _check_finite_weights("--scorer", cfg.scorer, self.scorer)

    def _sequence_parallel_groups(self) -> None:
        """--seq-parallel N: ranks r, r+1, ... r+N-1 (r a multiple of N) split each sequence's tokens and read the
        same data; data parallelism runs over the world / N groups. Sets sp, sp_rank, sp_group, dp_rank,
        dp_world (1-way groups when N = 1); the settings were checked in _setup_inputs."""
        sp = self.cfg.seq_parallel
        self.sp, self.sp_rank, self.sp_group = sp, self.rank % sp, None
        self.dp_rank, self.dp_world = self.rank // sp, self.world // sp
        if sp == 1:
            return
        import torch.distributed as dist

        import nextlong.parallel  # noqa: F401  (the attention hook looks for it)

        for first in range(0, self.world, sp):  # every rank creates every group, in the same order
            group = dist.new_group(list(range(first, first + sp)))
            if first <= self.rank < first + sp:
                self.sp_group = group

    def _check_model_tokenizer(self, spec, option, data_tok, data_fp) -> None:
        folder = run_or_model_folder(spec)
        model_tok = model_tokenizer_spec(folder)
        if model_tok is None or data_fp is None:
            return
        from ..corpus.tokenizer import load_tokenizer

        from ..corpus.tokenizer import read_otherwise_note

        model_tokenizer = load_tokenizer(model_tok)
        if model_tokenizer.fingerprint != data_fp:
            raise NextlongError(f"{option} {spec}: the model was trained with tokenizer {model_tok}, but the data was "
                                f"tokenized with {data_tok}{read_otherwise_note(model_tokenizer, data_fp)}; "
                                f"synthesize the data with --tokenizer {model_tok}")

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return module
        if self.cfg.fsdp:
            from torch.distributed.fsdp import fully_shard

            for layer in getattr(self.lm.get_decoder(), "layers", []):
                fully_shard(layer)
            fully_shard(module)
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids)

    def resolved_settings(self) -> dict:
        d = self.cfg.run_defining()
        d.update(seq_len=self.seq_len, batch_tokens=self.batch_tokens, lr=self.lr, warmup=self.warmup,
                 world_size=self.world, rope_theta=self.rope_theta, loss_on=self.loss_on)
        return d

    def _resume_or_start(self) -> None:
        # every rank looks before rank 0 writes anything (the agreement is a barrier), and a refusal, alike on every
        # rank, is printed once
        found = agreed(self._checkpoint_to_resume)
        if found is None:
            return
        latest, saved = found
        ckpt.load_checkpoint(latest, model=self.loss_model, optimizer=self.optimizer, scheduler=self.scheduler,
                             packer=self.packer, sharded=self.cfg.fsdp, rank=self.rank, world=self.world,
                             trust=self.cfg.trust_checkpoint, max_step=self.cfg.steps)
        self.start_step = saved["step"]
        self.history = saved["history"]
        self._warn_if_inputs_changed(self.run_dir)

    def _checkpoint_to_resume(self) -> tuple[Path, dict] | None:
        """(the newest checkpoint, its trainer.json) when this run resumes one whose settings are this run's; None
        when it starts from step 0. No collective."""
        cfg, run = self.cfg, self.run_dir
        found = ckpt.list_checkpoints(run)
        existing = bool(found) or has_steps(run)  # a run that failed before its first step does not count
        if not cfg.resume:
            if existing:
                raise NextlongError(f"{run}: already holds a training run; pass --resume to continue it, or choose "
                                    "another --out")
            return None
        if not found:
            if self.rank == 0:
                print(f"nextlong train: no checkpoint in {run}; starting from step 0", file=sys.stderr)
            return None
        latest = found[-1]
        saved = ckpt.read_trainer_state(latest, max_step=cfg.steps)
        mine = self.resolved_settings()
        theirs = dict(saved.get("settings", {}))
        theirs.setdefault("loss_on", "all")  # saved before --loss-on existed: every token was a target
        import json

        mine_json = json.loads(json.dumps(mine, default=str))
        # the same folders spelled otherwise (relative, from another folder, a trailing '/') are the same data, model
        # and scorer; a checkpoint saved before it recorded its cwd: its relative paths from the current folder
        base = saved.get("cwd", ".")
        same = {"data": _same_data, "model": _same_path, "scorer": _same_path}
        diff = sorted(str(k) for k in set(mine_json) | set(theirs)
                      if not same.get(k, lambda now, was, _: now == was)(mine_json.get(k), theirs.get(k), base))
        if diff:
            raise other_settings_error(run, {k: (theirs.get(k), mine_json.get(k)) for k in diff}, saved.get("cwd"))
        return latest, saved

    def _warn_if_inputs_changed(self, run: Path) -> None:
        """The content of the data and of --scorer's folder is not among the settings a resume must match (a fixed
        row is a reason to resume), but a resumed run on other data, or scored by a scorer whose files changed (a
        run folder that trained on meanwhile), is no exact continuation: say so, and keep it in the manifest."""
        import json

        if self.start_step >= self.cfg.steps:  # a finished run resumed takes no step: nothing is scored or read
            return
        settings = read_manifest(run / "manifest.json").get("settings")
        settings = settings if isinstance(settings, dict) else {}
        now = json.loads(json.dumps({"data": self.data_fingerprint,
                                     "scorer": self.scorer_identity}, default=str))
        recorded = {"data": settings.get("data_fingerprint"), "scorer": settings.get("scorer_identity")}
        step = self.start_step
        what = {"data": f"the data changed since step {step} was saved (its rows, files or bytes differ from the "
                        "manifest's)",
                "scorer": f"--scorer {self.cfg.scorer}: its files changed since step {step} was saved (the names, "
                          "sizes or modification times of the model folder's files differ from the manifest's)"}
        for key in ("data", "scorer"):
            earlier = settings.get(f"{key}_changed_at_step")
            if whole(earlier):  # a change found by an earlier resume
                self.changed_at_step[key] = earlier
            if recorded[key] is not None and recorded[key] != now[key]:
                self.changed_at_step.setdefault(key, step)
                if self.rank == 0:
                    print(f"nextlong train: warning: {what[key]}: the resumed run is not an exact continuation",
                          file=sys.stderr)

    def _write_metrics(self, rows: list[dict]) -> None:
        """RUN/metrics.jsonl replaced by `rows` (strict JSON); the run folder is made if need be. A new file
        under the name, never a write through whatever was there (a link out of the run, a FIFO)."""
        import json

        from ..atomic import atomic_path

        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.run_dir / METRICS_FILE) as tmp:
            tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))

    # data and weights
    def _read_step_batches(self) -> list[dict]:
        seqs = [[self.packer.next_sequence() for _ in range(self.cfg.micro_batch)] for _ in range(self.accum)]
        # the step's padding, this rank's share scaled to the global batch: throughput counts real tokens
        read = sum(len(s.ids) for group in seqs for s in group)
        self.step_padding = round(self.batch_tokens * sum(s.num_pad for g in seqs for s in g) / max(read, 1))
        batches = [collate(group) for group in seqs]
        if self.sp > 1:  # every rank of a sequence-parallel group read the same sequences: keep this rank's slice
            from ..parallel import split_for_rank

            batches = [split_for_rank(b, self.sp_rank, self.sp) for b in batches]
        return batches

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def token_weights(self, batch: dict) -> torch.Tensor:
        """Per-token loss weights aligned with labels (0 where the label is ignored)."""
        return self.weigher(batch)[0]

    def _long_logprobs(self, batch: dict) -> torch.Tensor:
        return self.loss_model.target_logprobs(batch) if not self.cfg.fsdp else self.wrapped.target_logprobs(batch)

    def _sequence_parallel(self):
        return sequence_parallel(self.sp, self.sp_group)

    def _autocast(self):
        return autocast(self.device)

    # one optimizer step
    def step(self, batches: list[dict]) -> tuple[float, float, bool | None, int]:
        """(loss, gradient norm before clipping, whether the update was applied, target tokens in the
        global batch). A non-finite loss or norm is never applied; every rank takes the same decision
        (one all-reduced flag). A global batch whose total weight is 0 (no target token: answer-only
        loss on sequences without an answer) has no loss (nan): nothing is applied, and `applied` is
        None (nothing to apply, not a failure)."""
        batches = [self._to_device(b) for b in batches]
        scored = [self.weigher(b) for b in batches]
        weights = [w for w, _ in scored]
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        sums = torch.stack([torch.stack([w[:, 1:].sum().double(), (b["labels"][:, 1:] != -100).sum().double(),
                                         zero if ce is None else ce.to(self.device)])
                            for (w, ce), b in zip(scored, batches)]).sum(0)
        total_w, loss_tokens, plain = all_reduce_sum(sums)
        loss_tokens = int(loss_tokens)
        # the step's unweighted cross-entropy (before the update), beside the weighted objective it trains on
        self.plain_ce = float(plain) / loss_tokens if scored[0][1] is not None and loss_tokens else None
        if loss_tokens == 0 or float(total_w) == 0:  # nothing to learn from: same on every rank
            self._advance_schedule()  # the step still uses up its place in the schedule
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan"), 0.0, None, loss_tokens
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, (batch, w) in enumerate(zip(batches, weights)):
            sync = i == len(batches) - 1 or not hasattr(self.wrapped, "no_sync")
            with (contextlib.nullcontext() if sync else self.wrapped.no_sync()), self._autocast(), \
                    self._sequence_parallel():
                part = self.wrapped(batch, w)
            with self._sequence_parallel():  # --grad-checkpointing recomputes attention inside backward
                (part * (self.world / total_w.to(part.dtype))).backward()
            loss_sum += part.detach().double()
        loss = all_reduce_sum(loss_sum) / total_w
        params = [p for p in self.loss_model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip or float("inf"))
        loss = float(loss)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        applied = bool(all_ranks_ok(math.isfinite(loss) and math.isfinite(grad_norm)))
        if applied:
            self.optimizer.step()
        self._advance_schedule()  # a skipped step still uses up its place in the schedule
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, applied, loss_tokens

    def _advance_schedule(self) -> None:
        """scheduler.step(), also after a step that applied no update (without torch's warning about a
        scheduler stepped before its optimizer: skipping an update is deliberate here)."""
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()

    def step_explained(self, batches: list[dict], step: int) -> tuple[float, float, bool | None, int]:
        """`step`, with running out of memory said in one line naming the options that size a step."""
        try:
            return self.step(batches)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            detail = " ".join(str(exc).split())[:200]
            raise NextlongError(f"step {step}: out of memory with --seq-len {self.seq_len} x --micro-batch "
                                f"{self.cfg.micro_batch} ({detail}); lower them, or pass --grad-checkpointing"
                                ) from None

    def loop(self) -> dict:
        import json

        from tqdm import tqdm

        cfg, run = self.cfg, self.run_dir
        steps_here = 0
        bar = tqdm(total=cfg.steps, initial=self.start_step, desc="train", unit="step", dynamic_ncols=True,
                   disable=self.rank != 0 or not cfg.progress)
        tokens = self.start_step * self.batch_tokens
        t_run = time.perf_counter()
        step = self.start_step
        last_saved = self.start_step
        # a finished run resumed has nothing to do: its manifest keeps the statistics of the run that did the work
        keep_manifest = self.start_step >= cfg.steps and _finished_manifest(run)
        if self.rank == 0 and not keep_manifest:  # the run's record exists before the first step
            self.write_manifest({"status": RUNNING, "steps": self.start_step})
            self.manifest_running = True
        metrics = None
        if self.rank == 0:  # written after setup, so a run refused there leaves no file behind; a resumed run drops
            self._write_metrics(self.history)  # the lines of steps after its checkpoint (a killed run logs some)
            metrics = _append(run / METRICS_FILE)
        batches = self.next_batches  # read in setup, so bad data failed before any step
        # Ctrl-C / SIGTERM are noted until the final checkpoint, export and manifest are written: a first signal
        # during them must not kill the run with its last steps unsaved
        stop = _StopRequest(speaks=self.rank == 0)
        try:
            try:
                while step < cfg.steps:
                    if cfg.stop_after is not None and steps_here >= cfg.stop_after:
                        break
                    if steps_here:  # every rank stops at one step; the lowest rank signalled says so
                        first = lowest_rank_with(stop.requested)
                        if first is not None:
                            if first[0] == self.rank:
                                stop.say()
                            break
                    t0 = time.perf_counter()
                    before = None  # the state after `step`, while it is unsaved: what a failed next step saves
                    if batches is None:
                        before = self._state_before_step() if step != last_saved else None
                        batches = self._read_next_step(step, before)
                    lr = self.scheduler.get_last_lr()[0]
                    loss, grad_norm, applied, loss_tokens = self.step_explained(batches, step + 1)
                    batches = None
                    step += 1
                    steps_here += 1
                    tokens += self.batch_tokens
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    dt = time.perf_counter() - t0
                    real = self.batch_tokens - self.step_padding
                    row = {"step": step, "loss": _finite_or_none(loss), "lr": lr,
                           "grad_norm": _finite_or_none(grad_norm), "tokens": tokens,
                           "padding_tokens": self.step_padding,  # in `tokens`, not in tokens_per_s
                           "tokens_per_s": round(real / dt, 1), "step_s": round(dt, 4),
                           "peak_memory_mb": round(peak_memory_mb(self.device), 1),
                           "epoch": round(self.packer.stream.epochs(), 4), "loss_tokens": loss_tokens}
                    if self.cfg.token_weighting != "none":  # `loss` is the weighted objective: the plain one too
                        row["ce"] = _finite_or_none(self.plain_ce) if self.plain_ce is not None else None
                    if applied is False:
                        row["skipped"] = True  # loss / grad_norm null: not finite
                    self.history.append(row)
                    if metrics is not None:
                        metrics.write(json.dumps(row, allow_nan=False) + "\n")
                        metrics.flush()
                    if applied is False and cfg.nan_policy == "stop":
                        self.stop_diverged(step, loss, grad_norm, before)
                    # the postfix first: update() draws the bar, and a postfix set after it showed the step before
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}",
                                    mem=f"{row['peak_memory_mb']:.0f}MB", refresh=False)
                    bar.update(1)
                    if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                        self.save(step)
                        last_saved = step
            finally:
                bar.close()
                if metrics is not None:
                    metrics.close()
            if step != last_saved:  # the data position saved is the one after the last step taken
                self.save(step)
            elif steps_here == 0 and step and not all_ranks_ok(ckpt.exported_step(run) == step):
                self.export(step)  # resumed at a checkpoint whose model export a kill cut short
            finished = step >= cfg.steps
            summary = self.summary(step, finished, time.perf_counter() - t_run, steps_here)
            if finished and self.history and not any(r.get("loss_tokens", 1) for r in self.history):
                if self.rank == 0:
                    self.write_manifest(dict(summary, status="no-loss-tokens"))
                what = "an answer token (the data's loss_mask is 0 on every target read)" \
                    if self.loss_on == "answer" else "a target token"
                raise _Recorded(f"{run}: none of the run's {step} steps held {what}, so nothing was trained; check "
                                "the data" + ("'s loss_mask, or pass --loss-on all" if self.loss_on == "answer" else ""))
            if self.rank == 0 and not keep_manifest:
                self.write_manifest(summary)
                if self.history:
                    self.draw_loss()
            requested = stop.requested  # the ranks signalled raise; the lowest of them says it
            first = lowest_rank_with(requested)
            if requested and not finished:
                raise TrainingInterrupted(f"interrupted ({requested}) after step {step} of {cfg.steps}; its "
                                          f"checkpoint is saved: run the same command with --resume to continue",
                                          quiet=first[0] != self.rank)
            return summary
        finally:
            stop.restore()

    def write_manifest(self, statistics: dict) -> None:
        from ..manifest import write_manifest

        write_manifest(self.run_dir / "manifest.json", command="train", settings=self.manifest_settings(),
                       statistics=statistics, seed=self.cfg.seed)

    def draw_loss(self) -> None:
        """loss.png is optional: without matplotlib (or if drawing fails) the finished run says so in one line."""
        try:
            plot_loss(self.run_dir)
        except Exception as exc:
            print(f"nextlong train: loss.png not drawn ({' '.join(str(exc).split())}); the run itself is complete "
                  f"(draw it later with `nextlong plot {self.run_dir}`)", file=sys.stderr)

    def stop_diverged(self, step: int, loss: float, grad_norm: float, before: dict | None) -> None:
        """--nan-policy stop: end the run at its first non-finite loss or gradient norm, this update not applied.
        The last good state (step - 1, from `before`) is saved first unless it is saved already (or is step 0):
        a run stopped at step 9,999 of 10,000 keeps its 9,998 steps, and resuming it with --nan-policy
        skip-step goes on exactly as a run with skip-step from the start. Weights that are no longer finite
        (the update of step - 1 overflowed them) are not saved: the newest checkpoint is then the last good one."""
        if before is not None and self.weights_finite():
            self._save_state_before(step - 1, before)
        found = ckpt.list_checkpoints(self.run_dir)
        if found and ckpt.checkpoint_step(found[-1]) == step - 1:
            run = self.run_dir
            then = (f"step {step - 1} is saved ({found[-1]}): to go on, skipping this update, run the same command "
                    f"with --resume --nan-policy skip-step, or start a new run from its weights with --model {run} "
                    "and a lower --lr")
        elif step == 1:
            then = "no update was applied before it; lower --lr"
        else:
            last = f"{found[-1]} is the last good checkpoint" if found else "no checkpoint was saved before it"
            then = f"the weights after step {step - 1} are not finite, so they are not saved; {last}; lower --lr"
        if self.rank == 0:
            self.write_manifest({"status": "diverged", "steps": step - 1, "diverged_at_step": step})
        raise _Recorded(f"step {step}: the loss is {loss} and the gradient norm {grad_norm}: training diverged; "
                        f"stopped without applying this update; {then}")

    def weights_finite(self) -> bool:
        local = all(bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all())
                    for p in self.loss_model.parameters())
        return all_ranks_ok(local)

    def _state_before_step(self) -> dict:
        """What the next step changes besides the weights and AdamW's moments (which it changes only when its update
        is applied): the data position, the learning-rate schedule, the random states and the history."""
        import copy

        return {"data": self.packer.state_dict(), "scheduler": copy.deepcopy(self.scheduler.state_dict()),
                "lrs": [g["lr"] for g in self.optimizer.param_groups], "rng": rng_state(), "rows": len(self.history)}

    def _save_state_before(self, step: int, before: dict) -> None:
        """Checkpoint `step` (all ranks) as it was before the next step, which failed (a bad row read) or applied no
        update (diverged): `before` is restored first, so resuming from it repeats that step exactly."""
        self.scheduler.load_state_dict(before["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, before["lrs"]):
            group["lr"] = lr  # the scheduler sets it on the optimizer, whose state is saved with it
        set_rng_state(before["rng"])
        del self.history[before["rows"]:]
        self.save(step, data_position=before["data"])

    def _read_next_step(self, step: int, before: dict | None) -> list[dict]:
        """The next step's batches. A row that fails while they are read (a bad id, a damaged file) ends the run
        on every rank, with that rank's message (the ranks agree before the step's collectives), but first the
        steps since the last checkpoint are saved as they were before the read (`before`, None when `step` is
        saved), so fixing the row and resuming loses nothing."""
        save = None if before is None else lambda: self._save_state_before(step, before)
        return self._agreed_remembered(self._read_step_batches, before_raising=save)

    def _agreed_remembered(self, work, before_raising=None):
        """agreed(work) for the loop's writes and reads, a failure remembered: run() then holds every rank until
        rank 0 has recorded it (torchrun stops the others as soon as one rank exits). `before_raising()`: what
        every rank does first when the work failed on one (the read saves the steps since the last checkpoint)."""
        result, failure = on_every_rank(work)
        if failure is not None:
            if before_raising is not None:
                before_raising()
            self.agreed_failure = failure
            raise failure
        return result

    def save(self, step: int, data_position: dict | None = None) -> None:
        """Checkpoint (all ranks) and RUN/model (rank 0) at `step`; weights that are not finite are never saved.
        `data_position`: the stream position to record, when it is not the packer's current one."""
        if not self.weights_finite():
            raise NextlongError(f"step {step}: the model's weights are no longer finite (an update overflowed), so "
                                "they are not saved; the newest checkpoint is the last good one; lower --lr")
        rank_state = {"data": data_position if data_position is not None else self.packer.state_dict()}
        # cwd: the folder the relative paths of its settings were given from, so a resume from another folder
        # compares them as they were meant
        trainer_state = {"settings": self.resolved_settings(), "history": self.history, "world_size": self.world,
                         "cwd": os.getcwd()}
        # gathered once: under FSDP the checkpoint and the export gathered every shard each
        states = ckpt.full_state_dicts(self.loss_model, self.optimizer, self.cfg.fsdp)
        model_sd = states[0]
        ckpt.save_checkpoint(self.run_dir, step, model=self.loss_model, optimizer=self.optimizer,
                             scheduler=self.scheduler, rank_state=rank_state, trainer_state=trainer_state,
                             sharded=self.cfg.fsdp, rank=self.rank, keep=self.cfg.keep_checkpoints,
                             agree=self._agreed_remembered, states=states)
        del states
        self.export(step, full=model_sd)

    def export(self, step: int, full: dict | None = None) -> None:
        """RUN/model from the weights now (all ranks take part under FSDP; rank 0 writes), recording `step`.
        `full`: the model's state dict as full_state_dicts gives it, when the caller has gathered it."""
        state_dict = None
        if self.cfg.fsdp:
            if full is None:
                full, _ = ckpt.full_state_dicts(self.loss_model, self.optimizer, True)
            state_dict = {k[len("lm."):]: v for k, v in full.items() if k.startswith("lm.")}
        # the other ranks wait for rank 0's write: when it failed, they went on to the next step and met rank 0's exit
        # there as a gloo traceback
        self._agreed_remembered(lambda: self.rank == 0 and ckpt.export_model(
            self.run_dir, self.lm, tokenizer_spec=self.tokenizer_spec, state_dict=state_dict, step=step))

    def summary(self, step: int, finished: bool, seconds: float, steps_here: int) -> dict:
        losses = [r["loss"] for r in self.history if r.get("loss") is not None]
        # the tokens of this invocation's steps, padding left out
        real_here = sum(self.batch_tokens - r.get("padding_tokens", 0) for r in self.history[-steps_here:]) \
            if steps_here else 0
        return {
            "status": "finished" if finished else "stopped",
            "steps": step, "tokens": step * self.batch_tokens,
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "skipped_steps": sum(1 for r in self.history if r.get("skipped")),
            "loss_on": self.loss_on,
            "loss_tokens": sum(r.get("loss_tokens", 0) for r in self.history),
            "steps_without_loss_tokens": sum(1 for r in self.history if r.get("loss_tokens", 1) == 0),
            "seconds_this_invocation": round(seconds, 3),
            "steps_per_s": round(steps_here / seconds, 4) if seconds > 0 and steps_here else None,
            "tokens_per_s": round(real_here / seconds, 1) if seconds > 0 and steps_here else None,
            "padding_tokens": sum(r.get("padding_tokens", 0) for r in self.history),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
            "num_parameters": self.num_params,
            "epochs": round(self.packer.stream.epochs(), 4),
        }

    def manifest_settings(self) -> dict:
        d = self.cfg.to_dict()
        d.update(self.resolved_settings())
        d.update(tokenizer=self.tokenizer_spec, model_config=self.lm.config.to_dict(),
                 accumulation_steps=self.accum,
                 # --short-window as used: capped at seq_len / 4 (the setting above is what was asked for)
                 short_window_used=short_window(self.cfg, self.seq_len) if self.cfg.token_weighting != "none" else None,
                 data_fingerprint=self.data_fingerprint, scorer_identity=self.scorer_identity)
        d.update({f"{key}_changed_at_step": step for key, step in self.changed_at_step.items()})
        return d


def _lost_a_process(exc: BaseException, steps: int, timeout: float | None = None) -> NextlongError | None:
    """The one-line error for a collective that failed because another rank is gone (killed, out of memory) or
    stopped answering (hung: --collective-timeout ran out): gloo raises a plain RuntimeError naming its transport,
    NCCL a DistError. Else None. It was a 40-line traceback on every survivor, and the manifest's error gloo's
    "Connection reset by peer ... GLHF!" (or "Timed out waiting 3000ms for recv operation")."""
    import torch.distributed as dist

    if not (isinstance(exc, getattr(dist, "DistError", ())) or
            (isinstance(exc, RuntimeError) and "gloo/transport" in str(exc))):
        return None
    detail = " ".join(str(exc).split()).split(" This is typically")[0][:200]
    if "timed out" in detail.lower():  # torchrun sees a hung process as alive: its report names none
        limit = f"--collective-timeout {timeout:g} s" if timeout is not None else "torch's process-group timeout"
        return NextlongError(f"another process of the run stopped answering after step {steps}: a collective waited "
                             f"{limit} for it (a stopped or hung worker; torchrun does not see one); the run's "
                             f"checkpoints are kept for --resume ({type(exc).__name__}: {detail})")
    return NextlongError(f"another process of the run stopped after step {steps} (torchrun's report names it and "
                         f"why); the run's checkpoints are kept for --resume ({type(exc).__name__}: {detail})")


def _check_finite_weights(option: str, spec, model) -> None:
    """A model whose weights hold a NaN or an infinity is refused before any step: its first step would
    report a diverged loss and blame the learning rate."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise NextlongError(f"{option} {spec}: the weight {name} holds a NaN or an infinity; the model folder is "
                                "damaged (or was saved from a run that diverged)")


def _check_vocabulary(option: str, spec, model_vocab: int, data_tok, vocab: int | None) -> None:
    """The data's token ids must all fit the model's embedding table (the trained model's or the scorer's)."""
    if vocab is not None and vocab > model_vocab:
        raise NextlongError(f"{option} {spec}: the data's tokenizer ({data_tok}) has {vocab} ids but the model's "
                            f"vocabulary has {model_vocab}: token ids would reach past its embedding table")


def _same_path(now, saved, base=".") -> bool:
    """Whether two `model` (or `scorer`) settings name the same thing: equal presets, or paths resolving alike (a
    resume must give a model path again; a relative one resolves from the current folder, as the data's do, a saved
    one from `base`, the folder the run gave it from: the same relative spelling from another folder is another).
    A preset name and a folder of that name are not the same model. Only compared: the model loaded is the one
    given now."""
    from .model import is_preset

    if not (isinstance(now, str) and isinstance(saved, str)) or is_preset(now) or is_preset(saved):
        return now == saved
    try:  # equal relative spellings given from two folders are two folders
        return Path(now).resolve() == (Path(base) / saved).resolve() and (now == saved or Path(now).exists())
    except (OSError, RuntimeError, ValueError):
        return False


def _same_data(now, saved, base=".") -> bool:
    """Whether two `data` settings (lists of "PATH" or "PATH@weight") name the same sources, compared as resolved
    paths (a saved relative path from `base`, the folder the run gave it from), weight by weight. A saved "v@2" that
    is ambiguous now (both v and a folder v@2 exist) meant one of the two when it was recorded: either matches (a
    resume on the other one's data is warned of by the data fingerprint)."""
    from .sources import parse_data_spec

    def readings(spec, recorded: bool):  # a recorded spec read where it was given: is `v@2` a folder there?
        try:
            return [parse_data_spec(spec, base=base if recorded else ".")]
        except UsageError:
            if not recorded:
                raise
            return [parse_data_spec(spec, "weight", base), (spec, 1.0)]

    def resolved(pair, start="."):
        return str((Path(start) / pair[0]).resolve()), pair[1]

    if now == saved and base == ".":  # equal relative spellings given from two folders are two folders
        return True
    if not (isinstance(now, list) and isinstance(saved, list) and len(now) == len(saved)
            and all(isinstance(x, str) for x in now + saved)):
        return False
    try:
        return all(resolved(readings(n, False)[0]) in [resolved(r, base) for r in readings(s, True)]
                   for n, s in zip(now, saved))
    except (TypeError, ValueError, OSError, RuntimeError, UsageError):  # a value of the wrong shape
        return False


def _append(path: Path):
    """`path` opened to append lines, never through a symbolic link nor waiting on a FIFO."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    return open(fd, "a")


def _finite_or_none(x: float) -> float | None:
    """metrics.jsonl stays strict JSON: a non-finite value is null (the row also says "skipped")."""
    return x if math.isfinite(x) else None
