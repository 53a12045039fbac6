"""What `nextlong eval` leaves in its folder: corpus texts in, results.json, heat maps, summary out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

from ..atomic import atomic_path, write_json_atomic
from ..untrusted import strict_json
from .tasks import depths_for

CHARS_PER_TOKEN_BUDGET = 12  # corpus characters read per token of the longest length (generous)


def corpus_texts(corpus: str | None, text_field: str = "text", max_chars: int | None = None) -> Iterator[str]:
    """Texts of a local corpus, or of the embedded stdlib-docstring corpus when none is given."""
    if corpus is None:
        from ..synthesis.demo import iter_stdlib_documents

        for _, text in iter_stdlib_documents(max_bytes=max_chars):
            yield text
        return
    from ..corpus.reader import read_corpus

    total = 0
    for doc in read_corpus(corpus, text_field=text_field):
        yield doc.text
        total += len(doc.text)
        if max_chars is not None and total >= max_chars:
            return


def write_strict_json(path: Path, obj) -> list[str]:
    """Write `obj` as strict JSON: a NaN or infinite number (a model whose weights or config make it
    compute NaN) is written as null, never as the bare NaN that JSON parsers reject. Returns where."""
    clean, replaced = strict_json(obj)
    write_json_atomic(path, clean)
    return replaced


def non_finite_note(replaced: list[str]) -> str:
    """The warning that says which values were not finite (written as null)."""
    shown = ", ".join(replaced[:5]) + (f" and {len(replaced) - 5} more" if len(replaced) > 5 else "")
    return (f"{len(replaced)} value(s) were not finite numbers (NaN or infinite: the model computes NaN?) and are "
            f"written as null: {shown}")


def write_results(out_dir: Path, results: dict) -> None:
    """results.json, strict JSON; non-finite values are named in results["warnings"] (so in the summary)."""
    _, replaced = strict_json(results)
    if replaced:
        results.setdefault("warnings", []).append(non_finite_note(replaced))
    write_strict_json(out_dir / "results.json", results)


def write_samples(out_dir: Path, records: Sequence[dict]) -> None:
    with atomic_path(out_dir / "samples.jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(strict_json(r)[0], ensure_ascii=False, sort_keys=True) + "\n")


def draw_heatmaps(out_dir: Path, results: dict, lengths: Sequence[int], depths: Sequence[float]) -> list[str]:
    from .plots import length_depth_heatmap

    written = []
    for task, entry in results["tasks"].items():
        task_depths = depths_for(task, depths)
        cells = {(c["length"], c["depth"]): c for c in entry["cells"]}
        panels = {}
        for key, name in (("greedy", "greedy"), ("teacher_forced_em", "teacher-forced EM")):
            if any(key in c for c in entry["cells"]):
                panels[name] = [[cells[(n, d)].get(key) for d in task_depths] for n in lengths]
        if panels:
            path = length_depth_heatmap(out_dir / f"heatmap_{task}.png", task, lengths, task_depths, panels)
            written.append(path.name)
    return written


def summary_markdown(results: dict, lengths: Sequence[int]) -> str:
    lines = [f"# nextlong eval: {results['model']}", ""]
    if results.get("warnings"):
        lines += [f"> {w}" for w in results["warnings"]] + [""]
    if results.get("tasks"):
        lines += ["Scores 0-100 per task and length, averaged over depths and samples: greedy generation "
                  "(RULER's string match) / teacher-forced exact match of the gold answer; mean gold "
                  "log-prob per token in brackets.", ""]
        lines.append("| task | " + " | ".join(str(n) for n in lengths) + " |")
        lines.append("|---|" + "---|" * len(lengths))
        for task, entry in results["tasks"].items():
            row = []
            for n in lengths:
                s = entry["by_length"][str(n)]
                g = f"{s['greedy']:.1f}" if "greedy" in s else "-"
                t = f"{s['teacher_forced_em']:.1f}" if "teacher_forced_em" in s else "-"
                lp = f" ({s['teacher_forced_logprob_per_token']:.2f})" if "teacher_forced_logprob_per_token" in s else ""
                row.append(f"{g} / {t}{lp}")
            lines.append(f"| {task} | " + " | ".join(row) + " |")
        means = results.get("mean_over_tasks", {})
        if means:
            def score(m, key):  # "-" for a mode that was not run, as in the task rows (not "nan")
                if key in m.get("partial", {}):  # a mean over fewer tasks than other lengths have: say so
                    return f"{m['partial'][key]:.1f} ({m['tasks']} of {m['of_tasks']} tasks)"
                return f"{m[key]:.1f}" if key in m else "-"

            lines.append("| **mean** | " + " | ".join(
                f"{score(means[str(n)], 'greedy')} / {score(means[str(n)], 'teacher_forced_em')}"
                for n in lengths) + " |")
        lines.append("")
    lp = results.get("longppl")
    if lp:
        longppl = "n/a (no key tokens)" if lp["longppl"] is None else f"{lp['longppl']:.3f}"
        if lp["longppl"] is None and lp["short_window"] >= lp["length"] - 1:  # no token sees more than the window
            longppl = (f"n/a (no key tokens: the short window, {lp['short_window']} tokens, covers the documents' "
                       f"{lp['length']}; pass --short-window below the length, e.g. {max(1, lp['length'] // 4)})")
        lines += [f"LongPPL {longppl}, PPL {lp['ppl']:.3f} over {lp['documents']} documents of {lp['length']} "
                  f"tokens; {lp['key_tokens']} key tokens ({100 * lp['key_fraction']:.2f}%), short window "
                  f"{lp['short_window']}, chosen by "
                  + ("the model itself (this LongPPL does not compare models: each is scored on its own key tokens, "
                     "below e² by construction)" if lp.get("key_tokens_from", "self") == "self"
                     else f"the evaluator `{lp['key_tokens_from']}`") + ". Loss by position: `loss_by_position.png`.",
                  ""]
    rows = results.get("repeat")
    if rows:
        lines += ["Repeat probe (each segment fed twice; mean loss per token, second copy minus first: negative = "
                  "the model copies from that far back):", "", "| distance | first copy | second copy | gain |",
                  "|---|---|---|---|"]
        lines += [f"| {r['distance']} | {r['first']:.3f} | {r['second']:.3f} | {r['gain']:+.3f} |" for r in rows]
        lines += ["", "Plot: `repeat_gain.png`.", ""]
    return "\n".join(lines)
