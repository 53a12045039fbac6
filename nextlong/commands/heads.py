"""`nextlong heads MODEL --out DIR`: retrieval-head detection (Wu et al., 2024), with the masking check
and a comparison of two runs."""

from __future__ import annotations

import argparse

from .argtypes import int_list, nonnegative_int, positive_int, seed


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "heads",
        help="retrieval-head detection (Wu et al.): which attention heads copy the needle",
        description="Needle-in-a-haystack trials over lengths x depths x 3 needles; a head scores when its "
        "top-1 attended position is the needle token the model generates (Wu et al., 2024). Writes "
        "DIR/head_scores.json ({\"layer-head\": score}), DIR/heads.json (retrieval heads, trials), "
        "DIR/heads.png (layers x heads), summary.md and a manifest. `--compare RUN_A RUN_B` compares two "
        "such output folders instead (MODEL not needed).",
    )
    p.add_argument("model", nargs="?", help="a Hugging Face causal-LM folder, or a `nextlong train` run folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--lengths", type=int_list, default=None,
                   help="comma-separated context lengths in tokens (default: --num-lengths lengths spread from "
                   "1000 to the model's positions, at most 50000)")
    p.add_argument("--num-lengths", type=positive_int, default=5,
                   help="lengths when --lengths is not given (default 5; the paper uses 20)")
    p.add_argument("--depths", type=positive_int, default=5, help="needle depths over 0-100%% (default 5; paper 10)")
    p.add_argument("--needles", type=positive_int, default=3, choices=(1, 2, 3), help="needles per length x depth")
    p.add_argument("--threshold", type=float, default=0.1, help="retrieval-head score threshold (default 0.1)")
    p.add_argument("--min-recall", type=float, default=0.5,
                   help="a trial counts when its answer's ROUGE-1 recall of the needle is above this (default 0.5)")
    p.add_argument("--all-trials", action="store_true", help="count every trial, whatever the answer")
    p.add_argument("--max-new-tokens", type=positive_int, default=50, help="decoding steps per trial (default 50)")
    p.add_argument("--mask-heads", type=nonnegative_int, default=0, metavar="K",
                   help="causal check: NIAH accuracy with the top-K retrieval heads masked vs K random heads")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), default=None,
                   help="compare two `nextlong heads` output folders (counts and score differences B - A)")
    p.add_argument("--corpus", default=None, help="haystack corpus (default: the embedded stdlib docstrings)")
    p.add_argument("--text-field", default="text", help="text field of --corpus records (default text)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random heads masked by --mask-heads")
    p.add_argument("--attn", choices=("auto", "nextlong", "sdpa", "eager"), default="auto",
                   help="prefill attention (default auto: SDPA); decoding steps use eager attention, which returns "
                   "the weights")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar; the summary is still printed")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary (warnings and errors only)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="run lengths beyond the model's max_position_embeddings")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code the model folder ships (config.json auto_map); off by default, never "
                        "asked: only for a folder you trust")
    p.set_defaults(func=run)


def requirements(args: argparse.Namespace) -> tuple[str, ...]:
    """Checked before the model loads: the pictures are drawn only after all the scoring."""
    return ("torch", "transformers", "matplotlib")


def run(args: argparse.Namespace) -> int:
    from ..eval.heads_command import run_heads

    run_heads(args)
    return 0
