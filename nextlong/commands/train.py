"""`nextlong train DATA... --out RUN`: continual pre-training on synthesized long documents (stage 2)."""

from __future__ import annotations

import argparse

from ..errors import NextlongError
from ..train.config import ATTENTIONS, LOSS_ON, LOSSES, NAN_POLICIES, SPAN_MODES, WEIGHTINGS
from .argtypes import nonnegative_int, positive_float, positive_int, seed


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a causal LM on synthesized long documents (document masks, fused loss)",
        description="Continual pre-training on the output of `nextlong synthesize` or `nextlong acer` (Parquet, "
                    "MDS or JSONL with token ids; ACER's loss_mask trains on the answers only), with our "
                    "attention and fused cross-entropy kernels and ProLong's defaults (AdamW 0.9/0.95, weight "
                    "decay 0.1, clip 1.0, cosine to --min-lr-ratio). Several DATA as PATH@weight are mixed. "
                    "Multi-GPU: torchrun --nproc-per-node N -m nextlong train ...")
    p.add_argument("data", nargs="+", metavar="DATA", help="synthesize output folder(s), PATH or PATH@weight")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, loss.png, model/")
    p.add_argument("--model", default="tiny",
                   help="tiny | small | 1b (Llama presets at random init, vocabulary of the data's tokenizer) or a "
                        "Hugging Face causal-LM folder / earlier run folder (default tiny)")
    p.add_argument("--tokenizer", metavar="PATH",
                   help="the tokenizer the data was made with (default: the copy a `nextlong synthesize` folder "
                        "keeps, or the name its manifest records); a data folder that names a file outside itself "
                        "is refused until you pass that file here")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code the --model / --scorer folder ships (config.json auto_map); off by default, "
                        "never asked: only for a folder you trust")
    p.add_argument("--seq-len", type=positive_int,
                   help="tokens per sequence (default: the longest sample length among the data sources)")
    p.add_argument("--batch-tokens", type=positive_int,
                   help="tokens per optimizer step; gradient accumulation makes up the rest (default seq-len x processes, "
                        "or x sequence-parallel groups under --seq-parallel)")
    p.add_argument("--micro-batch", type=positive_int, default=1, help="sequences per forward pass (default 1)")
    p.add_argument("--steps", type=positive_int, default=100, help="optimizer steps (default 100)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default 1e-3 for a preset, 1e-5 pretrained)")
    p.add_argument("--warmup", type=nonnegative_int, help="linear warm-up steps (default 5%% of --steps)")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of --lr (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 = no clipping (default 1.0)")
    p.add_argument("--rope-theta", type=positive_float,
                   help="RoPE base set on the config before training (ProLong: 8e6 at 64K; default: unchanged)")
    p.add_argument("--seed", type=seed, default=0,
                   help="seeds the data order, the model's initialisation and dropout (default 0)")
    p.add_argument("--attention", choices=ATTENTIONS, default="nextlong",
                   help="nextlong = our kernel (Triton on CUDA, PyTorch fallback on CPU); sdpa/eager = transformers' "
                        "with a dense block-diagonal mask (default nextlong)")
    p.add_argument("--loss", choices=LOSSES, default="fused",
                   help="fused = linear cross-entropy without logits (default); eager = lm_head + cross_entropy")
    p.add_argument("--attention-spans", choices=SPAN_MODES, default="sample",
                   help="sample = one span per synthesized document (default); document = per source document "
                        "(from segments); none = plain causal over the packed sequence")
    p.add_argument("--split-spans", action="store_true",
                   help="cut spans at sequence boundaries instead of refusing spans longer than --seq-len")
    p.add_argument("--loss-on", choices=LOSS_ON,
                   help="all = every token; answer = only tokens whose loss_mask is 1 (ACER data: the answers), "
                        "each sample one attention span, never split (default: answer when the data has a "
                        "loss_mask column, else all)")
    p.add_argument("--token-weighting", choices=WEIGHTINGS, default="none",
                   help="loss weights from long- vs short-context log-probabilities (nextlong.weighting; "
                        "default none)")
    p.add_argument("--scorer", metavar="MODEL",
                   help="a trained model folder as the short-context scorer (default: the model being trained, on "
                        "sliding windows, as LongCE prescribes; with longce, another scorer's weights also carry "
                        "the gap between the two models)")
    p.add_argument("--short-window", type=positive_int, default=4096,
                   help="short-context window in tokens (capped at seq-len/4; default 4096)")
    p.add_argument("--short-stride", type=positive_int, default=512, help="sliding-window stride (default 512)")
    p.add_argument("--dense-lam", type=float, default=0.25,
                   help="dense: w = lam*s/mean(s) + (1-lam) (default 0.25, the authors' lambda = 0.75 on uniform)")
    p.add_argument("--sparse-keep", type=float, default=0.3, help="sparse: fraction of tokens kept (default 0.3)")
    p.add_argument("--longce-gamma", type=float, default=5.0, help="LongCE clip gamma (default 5)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2 fully_shard (under torchrun)")
    p.add_argument("--seq-parallel", type=positive_int, default=1,
                   help="Ulysses sequence parallelism: split every sequence's tokens over N ranks (N divides the "
                   "torchrun world and the attention heads; data parallel over the rest; default 1)")
    p.add_argument("--save-every", type=nonnegative_int, default=0,
                   help="checkpoint every N steps (default 0: only at the end)")
    p.add_argument("--keep-checkpoints", type=positive_int, default=2, help="checkpoints kept (default 2)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="with --resume: load an old checkpoint written as Python pickles (model.pt, rank-N.pt: "
                        "loading them can run any code) once and rewrite it as safetensors + JSON; only for a run "
                        "folder you trust")
    p.add_argument("--nan-policy", choices=NAN_POLICIES, default="stop",
                   help="on a non-finite loss or gradient norm: stop = end the run with an error, keeping the last "
                        "good checkpoint (default); skip-step = skip that update and go on")
    p.add_argument("--stop-after", type=positive_int,
                   help="end this invocation after N steps with a checkpoint (continue later with --resume; "
                        "default: run to --steps)")
    p.add_argument("--threads", type=nonnegative_int, default=0,
                   help="CPU threads per process (default 0: torch's default, or the cores divided among ranks)")
    p.add_argument("--collective-timeout", type=positive_float, metavar="SECONDS",
                   help="under torchrun: end the run when a collective waits this long for another process (one "
                        "that hangs: stopped, stuck on a file system; default: torch's, 30 min gloo, 10 min NCCL)")
    p.add_argument("--quiet", action="store_true", help="print nothing: no progress bar and no summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bar; the summary is still printed")
    # An option left out takes its default, or with --resume the resumed run's value: to tell the two
    # apart, every option parses to UNSET when it is not on the command line.
    defaults, actions = {}, {}
    for action in p._actions:
        if action.option_strings and action.dest not in ("help", "out", "resume"):
            defaults[action.dest], action.default = action.default, UNSET
            actions[action.dest] = action
    p.set_defaults(func=run, option_defaults=defaults, option_actions=actions)


UNSET = type("Unset", (), {"__repr__": lambda self: "UNSET"})()


def resolve_options(args: argparse.Namespace) -> dict:
    """Every option's value: as given on the command line; else, with --resume, the value the resumed
    run recorded in RUN/manifest.json (for the settings a resume must share, TrainConfig.run_defining);
    else its default. So `nextlong train DATA --out RUN --resume` continues a run with its own settings,
    and an option given anew that differs from the saved one is still refused by the trainer."""
    saved = {}
    if args.resume:
        from ..train.config import check_settings_recorded, recorded_settings, refuse_recorded_paths, run_defining_names

        shared = run_defining_names()
        check_settings_recorded(args.out, settings_given=any(
            getattr(args, k) is not UNSET for k in shared if k in args.option_actions))
        saved = recorded_settings(args.out)
        saved = {k: _checked(args.out, v, args.option_actions[k], args.option_defaults[k])
                 for k, v in saved.items() if k in shared and k in args.option_actions}
        refuse_recorded_paths(args.out, saved, {k for k in saved if getattr(args, k) is not UNSET})
    values = {dest: getattr(args, dest) if getattr(args, dest) is not UNSET else saved.get(dest, default)
              for dest, default in args.option_defaults.items()}
    # which came from the run, so that an error names them as the run's, not as typed
    values["restored"] = frozenset(k for k in saved if getattr(args, k) is UNSET)
    return values


def _checked(run, value, action: argparse.Action, default):
    """A value RUN/manifest.json recorded, checked as the command line checks the option (the file may have
    been edited): the option's type and choices, a flag's bool, None only where None is the default."""
    from pathlib import Path

    def bad(why: str):
        raise NextlongError(f"{Path(run) / 'manifest.json'}: settings.{action.dest} = {str(value)[:60]!r} is not a "
                            f"valid {action.option_strings[-1]} ({why}); fix or remove the field, or give the option")

    if value is None and default is None:
        return None
    if action.nargs == 0:  # a flag
        if not isinstance(value, bool):
            bad("expected true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        bad("expected a string or a number")
    if action.type is not None:
        try:
            value = action.type(str(value))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            bad(str(exc) or "wrong type")
    if action.choices is not None and value not in action.choices:
        bad(f"expected one of {', '.join(map(str, action.choices))}")
    return value


def _said_once_per_node(exc: NextlongError) -> NextlongError:
    """An error met before training (the run's manifest, read alike by every torchrun rank): said by each node's
    first rank only, as the parser's usage errors (cli._Parser); the others exit with its status, silently."""
    from ..errors import OtherRankFailed, quiet_rank

    if quiet_rank():
        quiet = OtherRankFailed(str(exc))
        quiet.exit_code = exc.exit_code
        return quiet
    return exc


def stopped_outside_the_loop(out, what: str) -> str:
    """What a Ctrl-C or SIGTERM outside train's step loop (its setup, mostly) leaves: the loop's own handler
    says which step it saved. Said from the run folder, since "checkpoints are kept: run the same command with
    --resume" was printed too where nothing had been written and --out did not even exist."""
    import os

    from ..train.checkpoint import list_checkpoints

    try:
        found = list_checkpoints(out)
    except OSError:  # an unreadable folder: claim nothing about it
        found = None
    if found is None:
        return what
    if found:
        return f"{what}; the run's checkpoints are kept: run the same command with --resume to continue"
    if not os.path.isfile(os.path.join(out, "manifest.json")):  # no --out, or an empty folder: no run was there
        return f"{what} before training started; nothing was written: run the command again"
    return (f"{what} before the run's first checkpoint; nothing was saved to resume from: run the command again "
            "(with --resume, the run starts again from step 0)")


def requirements(args: argparse.Namespace) -> tuple[str, ...]:
    """matplotlib is not here: without it the run skips loss.png with a notice (nextlong.train.plot)."""
    return ("torch", "transformers")


def run(args: argparse.Namespace) -> int:
    import sys

    from ..train.trainer import train

    try:
        args = argparse.Namespace(**{**vars(args), **resolve_options(args)})
    except NextlongError as exc:
        raise _said_once_per_node(exc) from None
    summary = train(
        args.data, args.out, model=args.model, seq_len=args.seq_len, batch_tokens=args.batch_tokens,
        trust_remote_code=args.trust_remote_code, tokenizer=args.tokenizer,
        micro_batch=args.micro_batch, steps=args.steps, lr=args.lr, warmup=args.warmup,
        min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        rope_theta=args.rope_theta, seed=args.seed, attention=args.attention, loss=args.loss,
        attention_spans=args.attention_spans, split_spans=args.split_spans, token_weighting=args.token_weighting,
        loss_on=args.loss_on,
        scorer=args.scorer, short_window=args.short_window, short_stride=args.short_stride,
        dense_lam=args.dense_lam, sparse_keep=args.sparse_keep, longce_gamma=args.longce_gamma,
        grad_checkpointing=args.grad_checkpointing, fsdp=args.fsdp, seq_parallel=args.seq_parallel,
        save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, resume=args.resume, stop_after=args.stop_after,
        trust_checkpoint=args.trust_checkpoint, nan_policy=args.nan_policy, restored=args.restored,
        num_threads=args.threads, collective_timeout=args.collective_timeout,
        progress=not (args.quiet or args.no_progress))
    import os

    if int(os.environ.get("RANK", "0")) == 0 and not args.quiet and summary["final_loss"] is not None:
        # the final loss is the last finite one: say when later steps were skipped (--nan-policy skip-step)
        skipped = f" ({summary['skipped_steps']} skipped: not finite)" if summary.get("skipped_steps") else ""
        print(f"{summary['status']}: {summary['steps']} steps, {summary['tokens']:,} tokens, loss "
              f"{summary['first_loss']:.4f} -> {summary['final_loss']:.4f}{skipped}, "
              f"{summary['tokens_per_s'] or 0:,.0f} "
              f"tokens/s, peak memory {summary['peak_memory_mb']:,.0f} MB; run in {args.out} "
              f"(loss.png, metrics.jsonl, model/)", file=sys.stderr)
    return 0
