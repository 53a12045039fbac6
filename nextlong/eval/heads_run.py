"""`nextlong heads` end to end: trials, detection (resumable), scores, picture, masking, comparison."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from pathlib import Path

from ..atomic import atomic_path
from ..untrusted import printable, strict_json
from ..errors import NextlongError, UsageError
from ..locking import output_lock
from ..model_folder import ModelFolderError
from ..manifest import failure_recorded, write_manifest, write_running_manifest
from ..untrusted import read_json, show
from . import heads as H
from .options import HeadsOptions
from .report import (
    CHARS_PER_TOKEN_BUDGET,
    corpus_texts,
    non_finite_note,
    write_strict_json,
)
from .runner import ResultJournal
from .tasks import linear_depths

MAX_SCORE = 1000.0  # a head_scores.json value past this is not a retrieval score (--compare refuses it)


def auto_lengths(max_positions: int | None, count: int, reserve: int) -> list[int]:
    """`count` lengths spread from 1000 to the model's positions (minus the decoding budget), capped
    at 50000 as in the reference setup."""
    hi = min(50000, (max_positions or 4096) - reserve)
    lo = min(1000, hi)
    if count == 1 or hi == lo:
        return [hi]
    return sorted({round(lo + (hi - lo) * i / (count - 1)) for i in range(count)})


def _cell(name: str) -> tuple[int, int]:
    """(layer, head) of a head name such as "3-7"."""
    layer, head = name.split("-")
    return int(layer), int(head)


def _grid_shape(names) -> tuple[int, int]:
    """(layers, heads) of the grid the head names span."""
    cells = [_cell(k) for k in names]
    return 1 + max(c[0] for c in cells), 1 + max(c[1] for c in cells)


def _load_scores(folder) -> dict[str, float]:
    path = Path(folder) / "head_scores.json"
    if not path.is_file():
        raise NextlongError(f"{folder}: no head_scores.json (expected an output folder of `nextlong heads`)")
    data = read_json(path, NextlongError)
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in data.values()):
        raise NextlongError(f"{path}: expected {{\"layer-head\": score}}")
    bad = next((k for k in data if not re.fullmatch(r"\d{1,4}-\d{1,4}", k)), None)
    if bad is not None or not data:
        raise NextlongError(f"{path}: expected {{\"layer-head\": score}} with names such as \"3-7\", got "
                            f"{show(bad) if data else 'no heads'}")
    # every head of a layers x heads grid, as `nextlong heads` writes it (the plot is that grid)
    layers, heads = _grid_shape(data)
    if len(data) != layers * heads or len({_cell(k) for k in data}) != len(data):
        raise NextlongError(f"{path}: expected a score for every head of {layers} layers x {heads} heads "
                            f"(names 0-0 .. {layers - 1}-{heads - 1}), got {len(data)} names")
    # a trial adds 1/len(needle) at every step a head copies (Wu et al.'s rule), so a model that repeats the
    # needle can pass 1; MAX_SCORE only refuses what no decoding budget gives
    out_of_range = next((k for k, v in data.items() if not 0.0 <= v <= MAX_SCORE), None)
    if out_of_range is not None:
        raise NextlongError(f"{path}: retrieval scores lie in [0, {MAX_SCORE:g}] (above 1 only for a model that "
                            f"repeats the needle), got {show(data[out_of_range])} for head {out_of_range}")
    return data


def run_compare(args: HeadsOptions) -> dict:
    a, b = args.compare
    if Path(args.out).resolve() in (Path(a).resolve(), Path(b).resolve()):
        raise UsageError(f"--out {args.out} is one of the runs compared: its manifest would be replaced; give "
                         "another folder")
    named_a, named_b = _load_scores(a), _load_scores(b)
    try:
        result = H.compare(named_a, named_b, args.threshold)
    except ValueError as exc:
        raise NextlongError(f"--compare {a} {b}: {exc}") from None
    result.update(run_a=str(a), run_b=str(b))
    out = Path(args.out)
    with output_lock(out, "heads --compare", file=False), failure_recorded(out / "manifest.json"):
        settings = {"run_a": str(a), "run_b": str(b), "threshold": args.threshold}
        write_running_manifest(out / "manifest.json", command="heads --compare", settings=settings)
        write_strict_json(out / "compare.json", result)
        import numpy as np

        from .plots import head_heatmap

        grid = np.zeros(_grid_shape(named_a))
        for name, d in result["difference"].items():
            grid[_cell(name)] = d
        head_heatmap(out / "compare.png", grid, f"retrieval score B - A ({Path(b).name} - {Path(a).name})",
                     diverging=True)
        write_manifest(out / "manifest.json", command="heads --compare", settings=settings,
                       statistics={k: result[k] for k in ("retrieval_heads_a", "retrieval_heads_b")})
    if args.quiet:
        return result
    print(f"retrieval heads (> {args.threshold}): A {result['retrieval_heads_a']}, B {result['retrieval_heads_b']}, "
          f"shared {len(result['shared'])}, only A {len(result['only_a'])}, only B {len(result['only_b'])}")
    for name, d in result["largest_changes"][:10]:
        print(printable(f"  {name}: {named_a[name]:.3f} -> {named_b[name]:.3f} ({d:+.3f})"))
    return result


def retrieval_heads(model, out, **options) -> dict:
    """`nextlong heads MODEL --out OUT` from Python (model None with compare=(RUN_A, RUN_B) for `--compare`), with
    the same options (see HeadsOptions), checks and files; returns what heads.json (compare.json) holds."""
    return strict_json(run_heads(HeadsOptions.from_keywords("retrieval_heads", model, out, options)))[0]


def journal_fingerprint(lm, args: HeadsOptions, lengths, depths, needles: int, trials=(), layers=None) -> str:
    """What the finished trials in `.progress.jsonl` depend on: a rerun with another value scores them again.
    `trials`: the run's, whose prompts decide whether the encoding's revision applies; `layers`: those scored
    (H.attention_layers), named only when some layer is left out (before, such a model's scores were wrong)."""
    import hashlib

    from ..model_folder import has_sliding_window
    from .model import ENCODING_REVISION, read_specials_before

    identity = {"model": lm.identity, "lengths": lengths, "depths": depths, "needles": needles,
                "max_new": args.max_new_tokens, "attn": lm.prefill_attn, "corpus": args.corpus,
                "text_field": args.text_field, "tokenizer": lm.tokenizer.fingerprint}
    if has_sliding_window(lm.model.config):  # scored by window offsets before (H.SLIDING_REVISION)
        identity["sliding_revision"] = H.SLIDING_REVISION
    if any(read_specials_before(lm.tokenizer, t.prompt) for t in trials):  # fed as other ids before
        identity["encoding_revision"] = ENCODING_REVISION
    if layers is not None and list(layers) != list(range(lm.num_layers)):
        identity["layers_scored"] = list(layers)
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_heads(args: HeadsOptions) -> dict:
    """Detect `args.model`'s retrieval heads, or compare two runs (`args.compare`); returns heads.json's
    (compare.json's) content."""
    if args.compare:
        if args.model:
            raise UsageError("give either MODEL or --compare RUN_A RUN_B, not both")
        return run_compare(args)
    if not args.model:
        raise UsageError("MODEL is required (or --compare RUN_A RUN_B)")

    from tqdm import tqdm

    from .haystack import essay_sentences
    from .model import check_lengths, load_model
    from .plots import head_heatmap

    lm = load_model(args.model, attn=args.attn, device=args.device, dtype=args.dtype,
                    trust_remote_code=args.trust_remote_code)
    if lm.num_layers < 1 or lm.num_heads < 1:
        raise ModelFolderError(f"{lm.folder}: config.json gives {lm.num_layers} layers of {lm.num_heads} attention "
                               "heads: no head to score")
    lengths = args.lengths or auto_lengths(lm.max_positions, args.num_lengths, args.max_new_tokens)
    for w in check_lengths(lengths, lm, args.allow_extrapolation, extra=args.max_new_tokens):
        print(f"nextlong heads: warning: {w}", file=sys.stderr)
    depths = linear_depths(args.depths)
    needles = H.NEEDLES[:args.needles]
    layers = H.attention_layers(lm)  # a hybrid's layers without attention weights are not scored
    unscored = [i for i in range(lm.num_layers) if i not in layers]
    if unscored:
        print(f"nextlong heads: warning: layers {', '.join(map(str, unscored))} ({len(unscored)} of {lm.num_layers}) "
              "return no attention weights; their heads are not scored", file=sys.stderr)
    if args.mask_heads > len(layers) * lm.num_heads // 2:
        raise UsageError(f"--mask-heads {args.mask_heads}: the model has only {len(layers) * lm.num_heads} heads "
                         "(top-K and K random others must not overlap)")
    essay = essay_sentences(list(corpus_texts(args.corpus, args.text_field, CHARS_PER_TOKEN_BUDGET * max(lengths))))
    trials = H.make_trials(lm.tokenizer, essay, lengths, depths, needles)
    out = Path(args.out)
    started = time.time()
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(args).items()} | {
        "lengths": lengths, "depths": depths, "prefill_attention": lm.prefill_attn}
    with output_lock(out, "heads", file=False), failure_recorded(out / "manifest.json"):
        write_running_manifest(out / "manifest.json", command="heads", seed=args.seed, settings=settings)
        import torch

        journal = ResultJournal(out, journal_fingerprint(lm, args, lengths, depths, len(needles), trials, layers))
        results = []
        # the trials an earlier run finished start the bar (they are not this run's work, nor in its rate), as
        # eval's samples do: iterating all of them counted the reused ones from 0 at their reading speed
        reused = sum(1 for t in trials if ("heads", t.length, t.depth, t.needle) in journal.done)
        bar = tqdm(total=len(trials), initial=reused, desc="heads trials", unit="trial", dynamic_ncols=True,
                   disable=args.no_progress or args.quiet)
        try:
            for t in trials:
                key = ("heads", t.length, t.depth, t.needle)
                rec = journal.done.get(key)
                if rec is None:
                    r = H.detect_trial(lm, t, max_new_tokens=args.max_new_tokens, layers=layers)
                    rec = {"task": "heads", "length": t.length, "depth": t.depth, "index": t.needle,
                           "scores": r.scores.tolist(), "response": r.response, "recall": r.recall,
                           "needle_span": list(t.span), "prompt_tokens": len(t.prompt_ids)}
                    journal.add(rec)
                    bar.update(1)
                results.append(H.TrialResult(torch.tensor(rec["scores"], dtype=torch.float64), [],
                                             rec["response"], rec["recall"]))
                results[-1].rec = rec
        finally:
            bar.close()
            journal.close()
        scores, counted = H.head_scores(results, args.all_trials, args.min_recall)
        named = H.as_named(scores)
        ranking = H.ranked(named)
        retrieval = [(name, s) for name, s in ranking if s > args.threshold]
        total_heads = len(layers) * lm.num_heads  # of the layers scored
        non_finite = write_strict_json(out / "head_scores.json", named)
        summary_data = {
            "model": str(args.model), "lengths": lengths, "depths": depths, "needles": len(needles),
            "trials": len(trials), "trials_counted": counted, "all_trials": args.all_trials,
            "min_recall": args.min_recall, "threshold": args.threshold, "layers": lm.num_layers,
            "heads_per_layer": lm.num_heads, "retrieval_heads": retrieval,
            "retrieval_fraction": round(len(retrieval) / total_heads, 6), "top_heads": ranking[:20],
            "niah_accuracy": round(sum(r.recall > args.min_recall for r in results) / len(results), 6),
            "layers_without_attention_weights": unscored,
        }
        with atomic_path(out / "trials.jsonl") as tmp:
            with open(tmp, "w") as fh:
                for r in results:
                    row = {k: v for k, v in r.rec.items() if k != "scores"} | {"counted": r.counted}
                    fh.write(json.dumps(row, sort_keys=True) + "\n")
        head_heatmap(out / "heads.png", scores.numpy(),
                     f"retrieval scores ({counted}/{len(trials)} trials counted; {len(retrieval)} heads > "
                     f"{args.threshold})")
        if args.mask_heads:
            summary_data["masking"] = H.mask_check(lm, trials, named, args.mask_heads, args.seed, args.min_recall,
                                                   max_new_tokens=args.max_new_tokens, layers=layers)
        non_finite += write_strict_json(out / "heads.json", summary_data)
        lines = [f"# nextlong heads: {args.model}", "",
                 f"{len(trials)} trials ({len(lengths)} lengths x {len(depths)} depths x {len(needles)} needles); "
                 f"{counted} counted ({'all trials' if args.all_trials else f'ROUGE-1 recall > {args.min_recall}'}); "
                 f"NIAH accuracy {100 * summary_data['niah_accuracy']:.1f}%.", "",
                 f"Retrieval heads (score > {args.threshold}): {len(retrieval)} of {total_heads} "
                 f"({100 * summary_data['retrieval_fraction']:.2f}%).", ""]
        if unscored:
            lines += [f"Not scored: layers {', '.join(map(str, unscored))} ({len(unscored)} of {lm.num_layers}), which "
                      "return no attention weights (their heads are 0 in head_scores.json); the fraction above is "
                      "of the other layers' heads.", ""]
        if counted == 0:
            lines += ["No trial was answered well enough to count; `--all-trials` scores every trial.", ""]
        if non_finite:
            lines += [f"> {non_finite_note(non_finite)}", ""]
        lines += ["| head (layer-head) | score |", "|---|---|"] + [f"| {n} | {s:.3f} |" for n, s in ranking[:10]]
        if args.mask_heads:
            m = summary_data["masking"]
            lines += ["", f"Masking {m['k']} heads: accuracy {100 * m['accuracy_unmasked']:.1f}% unmasked, "
                          f"{100 * m['accuracy_top_masked']:.1f}% with the top heads masked, "
                          f"{100 * m['accuracy_random_masked']:.1f}% with random heads masked."]
        summary = "\n".join(lines) + "\n"
        with atomic_path(out / "summary.md") as tmp:
            tmp.write_text(summary)
        write_manifest(out / "manifest.json", command="heads", seed=args.seed, settings=settings,
                       statistics={"trials": len(trials), "trials_counted": counted,
                                   "retrieval_heads": len(retrieval), "seconds": round(time.time() - started, 2)})
    if not args.quiet:
        print(printable(summary))
    return summary_data
