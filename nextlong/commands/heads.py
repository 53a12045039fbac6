"""`nextlong heads MODEL --out DIR`: retrieval-head detection (Wu et al., 2024), with the masking check
and a comparison of two runs."""

from __future__ import annotations

import argparse

from ..eval.options import ATTENTION, DTYPES, HEADS_DEFAULTS as D
from .argtypes import OneSpelling, int_list, nonnegative_int, positive_int, seed


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
    p.add_argument("--lengths", type=int_list, default=D["lengths"],
                   help="comma-separated context lengths in tokens (default: --num-lengths lengths spread from "
                   "1000 to the model's positions, at most 50000)")
    p.add_argument("--num-lengths", type=positive_int, default=D["num_lengths"],
                   help="lengths when --lengths is not given (default 5; the paper uses 20)")
    p.add_argument("--depths", type=positive_int, default=D["depths"], help="needle depths over 0-100%% (default 5; paper 10)")
    p.add_argument("--needles", type=positive_int, default=D["needles"], choices=(1, 2, 3),
                   help=f"needles per length x depth (default {D['needles']})")
    p.add_argument("--threshold", type=float, default=D["threshold"], help="retrieval-head score threshold (default 0.1)")
    p.add_argument("--min-recall", type=float, default=D["min_recall"],
                   help="a trial counts when its answer's ROUGE-1 recall of the needle is above this (default 0.5)")
    p.add_argument("--all-trials", action="store_true", help="count every trial, whatever the answer")
    p.add_argument("--max-new-tokens", type=positive_int, default=D["max_new_tokens"], help="decoding steps per trial (default 50)")
    p.add_argument("--mask-heads", type=nonnegative_int, default=D["mask_heads"], metavar="K",
                   help="causal check: NIAH accuracy with the top-K retrieval heads masked vs K random heads "
                        f"(default {D['mask_heads']}: no check)")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), default=D["compare"],
                   help="compare two `nextlong heads` output folders (counts and score differences B - A)")
    p.add_argument("--corpus", default=D["corpus"], help="haystack corpus (default: the embedded stdlib docstrings)")
    p.add_argument("--text-field", default=D["text_field"], help="text field of --corpus records (default text)")
    p.add_argument("--seed", type=seed, default=D["seed"],
                   help=f"seed of the K random heads --mask-heads compares with (default {D['seed']})")
    p.add_argument("--attn", "--attention", action=OneSpelling, dest="attn", choices=ATTENTION, default=D["attn"],
                   help="prefill attention (default auto: SDPA); decoding steps use eager attention, which returns "
                   "the weights")
    p.add_argument("--device", default=D["device"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar; the summary is still printed")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary (warnings and errors only)")
    p.add_argument("--dtype", choices=DTYPES, default=D["dtype"])
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
    from ..eval.heads_run import run_heads
    from ..eval.options import HeadsOptions

    run_heads(HeadsOptions.from_cli(args))
    return 0
