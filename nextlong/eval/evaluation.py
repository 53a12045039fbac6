"""`nextlong eval` end to end: check the options, load the model, run tasks and LongPPL, write DIR."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from ..untrusted import printable
from ..errors import UsageError
from ..locking import output_lock
from ..manifest import failure_recorded, write_manifest, write_running_manifest
from . import report
from .options import EvalOptions
from .runner import EvalSettings, aggregate, plan, run_tasks
from .tasks import MEASURES, NEEDS_ESSAY, expand_tasks, linear_depths


def default_lengths(max_positions: int | None) -> list[int]:
    """1024, 2048, ... up to the model's positions (1024 alone when those are unknown or smaller)."""
    limit = max_positions or 1024
    lengths, n = [], 1024
    while n <= limit:
        lengths.append(n)
        n *= 2
    return lengths or [1024]


def check_measure_lengths(lm, lengths: list[int], longppl_length: int | None, repeat: bool) -> None:
    """Before any work: LongPPL's documents and the repeat probe's [x; x] must leave a token to score after the
    first (and after the tokenizer's prefix, which takes a place in them); a shorter one gave no number to report,
    and the run failed at its end on the missing value."""
    prefix = len(lm.tokenizer.prefix_ids)
    after = f" and the tokenizer's {prefix} prefix id(s)" if prefix else ""
    if longppl_length is not None and longppl_length - prefix < 2:
        raise UsageError(f"--longppl-length {longppl_length}: LongPPL needs documents of at least {2 + prefix} tokens "
                         f"(a predicted token after the first{after})")
    longest, least = max(lengths), max(4 + prefix, 3 + 2 * prefix)
    if repeat and longest - prefix - max(2, longest // 2) < 2:
        raise UsageError(f"--lengths: the repeat probe feeds [x; x] within the largest length, {longest}, which leaves "
                         f"no repeated token to score{after}; give a length of at least {least}")


def check_longppl_evaluator(path, lm, length: int, allow_extrapolation: bool, trust_remote_code: bool) -> list[str]:
    """Before any work: the evaluator must read the evaluated model's token ids (the same tokenizer: key
    tokens are positions in one token sequence) and reach `length`; returns the warnings to print."""
    from ..corpus.tokenizer import load_tokenizer
    from ..model_folder import max_positions_of, read_config, resolve_model_folder

    folder, spec = resolve_model_folder(path)
    if load_tokenizer(spec).fingerprint != lm.tokenizer.fingerprint:
        raise UsageError(f"--longppl-evaluator {path}: its tokenizer ({spec}) is not the evaluated model's "
                         f"({lm.tokenizer_spec}); key tokens are positions in one token sequence, so both models "
                         "must share a tokenizer")
    limit = max_positions_of(read_config(folder, trust_remote_code=trust_remote_code), folder)
    if limit is None or length <= limit:
        return []
    message = (f"--longppl-evaluator {path}: LongPPL length {length} is beyond its {limit} positions "
               "(max_position_embeddings)")
    if not allow_extrapolation:
        raise UsageError(message + "; pass --allow-extrapolation to run it anyway")
    return [message + "; running anyway (--allow-extrapolation)"]


def evaluate(model, out, **options) -> dict:
    """`nextlong eval MODEL --out OUT` from Python, with the same options (see EvalOptions), checks and files;
    returns what results.json holds."""
    from ..untrusted import strict_json

    return strict_json(run_eval(EvalOptions.from_keywords("evaluate", model, out, options)))[0]


def run_eval(args: EvalOptions) -> dict:
    """The whole evaluation of `args` (checked: EvalOptions.validate); returns what results.json holds."""
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    want_longppl, want_repeat, want_rag = "longppl" in names, "repeat" in names, "rag" in names
    names = [t for t in names if t not in MEASURES]
    tasks = expand_tasks(names) if names else []
    if not tasks and not want_longppl and not want_repeat and not want_rag:
        raise UsageError("--tasks: no task given")
    evaluator = args.longppl_evaluator
    if evaluator and not want_longppl:
        raise UsageError("--longppl-evaluator picks LongPPL's key tokens: add longppl to --tasks")
    rag_settings = rag_questions = None
    if want_rag:  # its options and questions file are checked before the model loads (nextlong.eval.rag)
        from .rag import read_rag_questions, settings_from_args

        rag_settings = settings_from_args(args, [], [])
        rag_settings.validate()
        rag_questions = read_rag_questions(rag_settings.questions)
    greedy = args.mode in ("both", "greedy")
    teacher_forced = args.mode in ("both", "teacher-forced")
    bars = not (args.no_progress or args.quiet)

    from .model import check_lengths, load_model

    lm = load_model(args.model, attn=args.attn, device=args.device, dtype=args.dtype,
                    trust_remote_code=args.trust_remote_code)
    lengths = args.lengths or default_lengths(lm.max_positions)
    longppl_length = args.longppl_length or max(lengths)
    warnings = check_lengths(sorted(set(lengths + ([longppl_length] if want_longppl else []))), lm,
                             args.allow_extrapolation)
    check_measure_lengths(lm, lengths, longppl_length if want_longppl else None, want_repeat)
    if evaluator:
        warnings += check_longppl_evaluator(evaluator, lm, longppl_length, args.allow_extrapolation,
                                            args.trust_remote_code)
    for w in warnings:
        print(f"nextlong eval: warning: {w}", file=sys.stderr)
    depths = linear_depths(args.depths)
    out = Path(args.out)
    settings = EvalSettings(tasks=tasks, lengths=lengths, depths=depths, samples=args.samples, seed=args.seed,
                            greedy=greedy, teacher_forced=teacher_forced, max_new_tokens=args.max_new_tokens,
                            dump=args.dump, progress=bars, extra={"corpus": args.corpus, "attn": lm.prefill_attn,
                                                                   "tokenizer": lm.tokenizer.fingerprint,
                                                                   "text_field": args.text_field})
    started = time.time()
    manifest_settings = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(args).items()} | {
        "tasks_expanded": tasks, "lengths": lengths, "depths": depths, "prefill_attention": lm.prefill_attn,
        "model_folder": str(lm.folder)}
    with output_lock(out, "eval", file=False), failure_recorded(out / "manifest.json"):
        earlier = earlier_outputs(out)  # before the running manifest replaces the record of what they are
        write_running_manifest(out / "manifest.json", command="eval", seed=args.seed, settings=manifest_settings)
        rag_plan = None
        if want_rag:  # chunk, retrieve and check every rag prompt before any scoring
            from .rag import prepare_rag

            rag_settings.lengths, rag_settings.depths = list(lengths), list(depths)
            rag_settings.progress = bars
            rag_plan = prepare_rag(lm, rag_settings, rag_questions, out)
        results = {"model": str(args.model), "tokenizer": lm.tokenizer_spec, "seed": args.seed,
                   "lengths": lengths, "depths": depths, "samples": args.samples,
                   "modes": [m for m, on in (("greedy", greedy), ("teacher_forced", teacher_forced)) if on],
                   "warnings": warnings}
        essay = None
        if any(t in NEEDS_ESSAY for t in tasks):
            from .haystack import essay_sentences

            budget = report.CHARS_PER_TOKEN_BUDGET * max(lengths)
            essay = essay_sentences(list(report.corpus_texts(args.corpus, args.text_field, budget)))
        reused = 0
        written = []
        dumped: list = []
        rag_answers = 0
        if tasks:
            records, metrics, reused, skipped = run_tasks(lm, settings, out, essay)
            for reason in skipped.values():
                warnings.append(f"skipped: {reason}")
                print(f"nextlong eval: warning: skipped: {reason}", file=sys.stderr)
            results.update(aggregate(records, settings, metrics))
            results["skipped"] = [{"task": t, "length": n, "reason": r} for (t, n), r in sorted(skipped.items())]
            if args.dump:
                dumped += records
            written += report.draw_heatmaps(out, results, lengths, depths)
        if rag_plan is not None:
            from . import rag

            rag_records = rag.run_rag(lm, rag_plan)
            rag_answers = len(rag_records)
            results["rag"] = rag.aggregate(rag_records, rag_plan)
            if results["rag"]["contexts_short_of_length"]:
                warnings.append(f"rag: {results['rag']['contexts_short_of_length']} long contexts ran out of retrieved "
                                "chunks before their length (raise --rag-retrieve)")
                print(f"nextlong eval: warning: {warnings[-1]}", file=sys.stderr)
            written += rag.draw_heatmap(out, results["rag"], lengths, depths)
            if args.dump:
                dumped += rag_records
        if args.dump and dumped:
            report.write_samples(out, dumped)
            written.append("samples.jsonl")
        if want_longppl:
            from .longppl import evaluate_longppl, long_documents
            from .plots import loss_by_position

            texts = report.corpus_texts(args.corpus, args.text_field, None)
            docs = long_documents(lm.tokenizer, texts, longppl_length, args.longppl_docs)
            masks = key_masks_from(evaluator, args, docs, progress=bars) if evaluator else None
            lp = evaluate_longppl(lm, docs, short_window=args.short_window, short_stride=args.short_stride, progress=bars,
                                  key_masks=masks, key_tokens_from=str(evaluator) if evaluator else "self")
            results["longppl"] = lp
            curve = lp["loss_by_position"]
            loss_by_position(out / "loss_by_position.png", curve["positions"], curve["loss"],
                             f"loss by position ({lp['documents']} docs x {lp['length']} tokens)",
                             window=args.short_window if args.short_window < lp["length"] else None)
            written.append("loss_by_position.png")
        if want_repeat:
            from .longppl import long_documents
            from .plots import repeat_gain
            from .repeat import repeat_losses

            distances = sorted({max(2, n // 2) for n in lengths})  # [x; x] fills each length
            texts = report.corpus_texts(args.corpus, args.text_field, None)
            docs = long_documents(lm.tokenizer, texts, max(distances), args.repeat_docs,
                                  what="repeat probe", option="--lengths (the probe needs half the largest)")
            # max_length: [x; x] fills the largest length; with a BOS-like prefix, x's copy is cut by its size
            results["repeat"] = [r.summary() for r in repeat_losses(lm, docs, distances, max_length=max(lengths),
                                                                    progress=bars)]
            repeat_gain(out / "repeat_gain.png", results["repeat"], f"repeat probe ({len(docs)} documents)")
            written.append("repeat_gain.png")
        report.write_results(out, results)
        summary = report.summary_markdown(results, lengths)
        if "rag" in results:
            from .rag import summary_section

            summary += "\n" + summary_section(results["rag"])
        from ..atomic import atomic_path

        with atomic_path(out / "summary.md") as tmp:
            tmp.write_text(summary + "\n", encoding="utf-8")
        for name in stale_outputs(out, written, earlier):  # an earlier run's, beside results that no longer mention them
            (out / name).unlink()
            print(f"nextlong eval: removed {out / name}, an earlier run's, which this run does not write", file=sys.stderr)
        write_manifest(out / "manifest.json", command="eval", seed=args.seed, settings=manifest_settings,
                       statistics={"samples": len(plan(settings)) if tasks else 0,
                           "samples_reused": reused, "rag_answers": rag_answers,
                           "seconds": round(time.time() - started, 2),
                           "files": ["results.json", "summary.md", "manifest.json"] + written})
    if not args.quiet:
        print(printable(summary))  # it quotes corpus-derived warnings and the tokenizer's name
    return results


EVAL_PICTURES = ("heatmap_*.png", "loss_by_position.png", "repeat_gain.png")


def earlier_outputs(out: Path) -> set[str]:
    """The files the finished eval in `out` listed as its own (its manifest's statistics.files), or none."""
    from ..manifest import read_manifest

    manifest = read_manifest(out / "manifest.json")
    files = (manifest.get("statistics") or {}).get("files") if manifest.get("command") == "eval" else None
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def stale_outputs(out: Path, written: list[str], earlier: set[str]) -> list[str]:
    """The pictures and sample dump the earlier eval in `out` wrote (`earlier`, its manifest's list) that this run
    did not: a rerun with fewer tasks left their heat maps beside a summary that no longer names them (an outside
    UX audit). Nothing else is touched: a user's file of the same name in a folder no eval finished in stays."""
    found = {p.name for pattern in EVAL_PICTURES + ("samples.jsonl",) for p in out.glob(pattern)
             if p.is_file() and not p.is_symlink()}
    return sorted((found & earlier) - set(written))


def key_masks_from(evaluator, args, docs, progress: bool = True) -> list:
    """The evaluator's key tokens in `docs`; it is loaded for this alone and freed before the evaluated
    model's own LongPPL pass, so the two never share the device's memory for long."""
    import gc

    import torch

    from .longppl import key_token_masks
    from .model import load_model

    ev = load_model(evaluator, attn=args.attn, device=args.device, dtype=args.dtype,
                    trust_remote_code=args.trust_remote_code)
    try:
        return key_token_masks(ev, docs, short_window=args.short_window, short_stride=args.short_stride,
                               progress=progress)
    finally:
        del ev
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
