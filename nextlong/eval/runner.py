"""Run the recall tasks on a model: prefill, score teacher-forced, decode greedily, aggregate.

Per sample: one prefill of the prompt (our attention kernel, SDPA or eager) into a KV cache; the
gold answer tokens are then fed over that cache to get their log-probabilities (teacher-forced
score: total log-prob, and exact match = every gold token is the top choice); the cache is cut
back (sliding-window layers are told to keep their past first, `model.keep_past`; a cache that cannot
be cut back is rebuilt by a second prefill) and the model decodes greedily (RULER's way) until a
newline after some text, an end-of-text id, `max_new_tokens`, or the model's positions (`model.greedy_ids`). Finished samples are appended to
`DIR/.progress.jsonl`, so a stopped run resumes where it was.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import scoring
from ..model_folder import positions_in_text_config
from .model import (DECODING_REVISION, ENCODING_REVISION, POSITIONS_REVISION, LoadedModel, attention, decode,
                    decoded_alike, forward, greedy_ids, keep_past, prompt_ids, read_specials_before, rewind_cache)
from .samples import ANSWER_MARGIN
from .tasks import PREFIXED_TASKS, PREFIXED_TASKS_REVISION, TASKS_REVISION, Sample, depths_for, make_sample

PROGRESS = ".progress.jsonl"


@dataclass
class EvalSettings:
    tasks: list[str]
    lengths: list[int]
    depths: list[float]
    samples: int = 2
    seed: int = 0
    greedy: bool = True
    teacher_forced: bool = True
    max_new_tokens: int | None = None  # None: per task (answer tokens + a margin)
    dump: bool = False
    progress: bool = True  # bars only: not part of the fingerprint
    extra: dict = field(default_factory=dict)

    def fingerprint(self, model_identity, prefixed: bool = False, reencoded: bool = False,
                    older_decoding: bool = False, nested_positions: bool = False) -> str:
        """`prefixed`: the tokenizer puts ids before a sequence (its cwe and fwe samples have their own revision);
        `reencoded`: some sample's text was fed as other ids before ENCODING_REVISION (`preflight` says);
        `older_decoding`: the fingerprint the same run had before DECODING_REVISION; `nested_positions`: only the
        model config's text_config names its positions (POSITIONS_REVISION)."""
        data = {k: v for k, v in self.__dict__.items() if k not in ("dump", "progress", "extra")}
        data["model"] = model_identity
        data.update(self.extra)
        data["tasks_revision"] = TASKS_REVISION  # records of older generators are not reused
        if prefixed and any(t in PREFIXED_TASKS for t in self.tasks):
            data["prefixed_tasks_revision"] = PREFIXED_TASKS_REVISION
        if reencoded:
            data["encoding_revision"] = ENCODING_REVISION
        if self.greedy and not older_decoding:  # nor greedy answers of an older rule (teacher-forced runs keep theirs)
            data["decoding_revision"] = DECODING_REVISION
            if nested_positions:
                data["positions_revision"] = POSITIONS_REVISION
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(settings: EvalSettings) -> list[tuple[str, int, float | None, int]]:
    """Every (task, length, depth, index) the run scores, in order."""
    return [(task, length, depth, index)
            for task in settings.tasks
            for length in settings.lengths
            for depth in depths_for(task, settings.depths)
            for index in range(settings.samples)]


def evaluate_sample(lm: LoadedModel, sample: Sample, *, greedy: bool = True, teacher_forced: bool = True,
                    max_new_tokens: int | None = None) -> dict:
    """Score one sample; returns its record (no prompt)."""
    import torch

    tok, model = lm.tokenizer, lm.model
    prompt = prompt_ids(tok, sample.prompt)  # after the tokenizer's BOS, if any; the text as counted
    gold_ids = prompt_ids(tok, sample.gold, prefix=False)
    decode_attn = "eager" if lm.prefill_attn == "eager" else "sdpa"
    record = {"task": sample.task, "length": sample.length, "depth": sample.depth, "index": sample.index,
              "prompt_tokens": len(prompt), "answer_tokens": len(gold_ids), "answers": sample.answers}
    with torch.no_grad():
        ids = torch.tensor([prompt], dtype=torch.long, device=lm.device)
        with attention(model, lm.prefill_attn):
            logits, cache, _ = forward(model, ids, last_only=True)
        last = logits[0, -1].float()
        if teacher_forced:
            steps = [last]
            if len(gold_ids) > 1:
                gold = torch.tensor([gold_ids[:-1]], dtype=torch.long, device=lm.device)
                keep_past(cache, len(gold_ids) - 1)  # else a sliding-window layer cannot be cut back
                with attention(model, decode_attn):
                    more, cache, _ = forward(model, gold, cache=cache)
                steps.extend(more[0].float())
                if greedy and not rewind_cache(cache, len(prompt)):
                    cache = None  # freed before the second prefill builds its own
                    with attention(model, lm.prefill_attn):  # a cache that cannot be cut back: prefill again
                        _, cache, _ = forward(model, ids, last_only=True)
            table = torch.stack(steps).log_softmax(-1)
            target = torch.tensor(gold_ids, device=table.device)
            logp = table.gather(1, target[:, None])[:, 0]
            record["teacher_forced_logprob"] = float(logp.sum())
            record["teacher_forced_em"] = float(bool((table.argmax(-1) == target).all()))
        if greedy:
            with attention(model, decode_attn):  # never fed past the model's positions (greedy_ids)
                out = greedy_ids(lm, cache, int(last.argmax()), len(prompt),
                                 max_new_tokens or sample.max_new_tokens)
            prediction = decode(tok, out)
            record["prediction"] = prediction
            record["greedy"] = scoring.score(sample.metric, prediction, sample.answers)
    return record


def _cell_stats(records: Sequence[dict]) -> dict:
    out = {"n": len(records)}
    for key in ("greedy", "teacher_forced_em"):
        vals = [r[key] for r in records if key in r]
        if vals:
            out[key] = round(100 * sum(vals) / len(vals), 4)
    vals = [r["teacher_forced_logprob"] for r in records if "teacher_forced_logprob" in r]
    if vals:
        out["teacher_forced_logprob"] = round(sum(vals) / len(vals), 4)
        toks = sum(r["answer_tokens"] for r in records if "teacher_forced_logprob" in r)
        out["teacher_forced_logprob_per_token"] = round(sum(vals) / max(toks, 1), 4)
    return out


def aggregate(records: Sequence[dict], settings: EvalSettings, metrics: dict[str, str]) -> dict:
    """results.json's "tasks": per task, every (length, depth) cell, per length, and overall."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    tasks = {}
    for task in settings.tasks:
        recs = by_task.get(task, [])
        cells = defaultdict(list)
        for r in recs:
            cells[(r["length"], r["depth"])].append(r)
        per_length = defaultdict(list)
        for r in recs:
            per_length[r["length"]].append(r)
        tasks[task] = {
            "metric": metrics.get(task),
            "cells": [dict(length=length, depth=depth, **_cell_stats(cells[(length, depth)]))
                      for length in settings.lengths for depth in depths_for(task, settings.depths)],
            "by_length": {str(length): _cell_stats(per_length[length]) for length in settings.lengths},
            "overall": _cell_stats(recs),
        }
    return {"tasks": tasks, "mean_over_tasks": mean_over_tasks(tasks, settings)}


def mean_over_tasks(tasks: dict, settings: EvalSettings) -> dict:
    """Per length: the mean over tasks of each mode's score and how many tasks it averages ("tasks").

    A task × length cell can be skipped (too short for the task), and a mean over fewer tasks is not
    comparable with the other lengths' means. Where a length lacks a task that some other length has,
    its means move under "partial" (beside "tasks" and "of_tasks", the number scored at any length), and
    the summary's mean row prints them with "(k of n tasks)"."""
    keys = ("greedy", "teacher_forced_em")
    present = {length: {key: [t for t in settings.tasks if key in tasks[t]["by_length"][str(length)]]
                        for key in keys}
               for length in settings.lengths}
    means = {}
    for length in settings.lengths:
        entry: dict = {}
        for key in keys:
            scored = present[length][key]
            if not scored:
                continue
            value = round(sum(tasks[t]["by_length"][str(length)][key] for t in scored) / len(scored), 4)
            anywhere = {t for n in settings.lengths for t in present[n][key]}
            if set(scored) == anywhere:
                entry[key] = value
            else:
                entry.setdefault("partial", {})[key] = value
                entry["of_tasks"] = len(anywhere)
            entry["tasks"] = len(scored)
        means[str(length)] = entry
    return means


def _header_fingerprint(line: str):
    """The fingerprint a progress file's first line records, or None (torn or foreign)."""
    try:
        header = json.loads(line)
    except ValueError:
        return None
    return header.get("fingerprint") if isinstance(header, dict) else None


class ResultJournal:
    """The resume journal (DIR/.progress.jsonl): an append-only record of finished samples, headed by the
    settings' fingerprint; a re-run with the same settings reuses them. A journal headed by `older`, the same
    settings' fingerprint under an older rule, gives the records `keep` says that rule could not have changed."""

    def __init__(self, out_dir: Path, fingerprint: str, older: str | Sequence[str | None] | None = None, keep=None):
        self.path = Path(out_dir) / PROGRESS
        self.fingerprint = fingerprint
        self.done: dict[tuple, dict] = {}
        kept = []
        if self.path.is_file():
            lines = self.path.read_bytes().decode("utf-8", errors="replace").splitlines()
            header = _header_fingerprint(lines[0]) if lines else None
            olders = (older,) if isinstance(older, str) else tuple(older or ())
            if header is not None and (header == fingerprint or header in olders):
                for line in lines[1:]:
                    try:
                        r = json.loads(line)
                        key = self.key(r)
                    except (ValueError, TypeError, KeyError):
                        break  # a line torn by a kill or a full disk: what follows was appended after it
                    if header == fingerprint or self._keeps(keep, r):
                        self.done[key] = r
                        kept.append(line)
        # written back without a torn tail (atomically), so the records appended now stay readable
        from ..atomic import atomic_path

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text("\n".join([json.dumps({"fingerprint": fingerprint})] + kept) + "\n", encoding="utf-8")
        self._fh = open(self.path, "a", encoding="utf-8")

    @staticmethod
    def _keeps(keep, record) -> bool:
        try:
            return bool(keep(record))
        except (TypeError, KeyError, ValueError):  # a record without the fields the check reads
            return False

    @staticmethod
    def key(r) -> tuple:
        return (r["task"], r["length"], r["depth"], r["index"])

    def add(self, record: dict) -> None:
        self.done[self.key(record)] = record
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def preflight(tokenizer, jobs, seed: int, essay, progress: bool = True) -> tuple[dict[tuple[str, int], str], bool]:
    """Build every sample once before any model work (seconds, against minutes of scoring each), so
    a corpus that is too small, or a length too short for a task's prompt, stops or skips at once
    rather than after hours. A (task, length) cell where any sample's fixed parts alone exceed the
    length (e.g. cwe's solved example at 1K with a small vocabulary; its word lists differ from
    sample to sample, so checking the first one is not enough) is returned with the reason, to be
    skipped and reported rather than failing the whole run. Also returned: whether any sample's text
    was fed as other ids before ENCODING_REVISION (special-token strings in an essay corpus)."""
    from tqdm import tqdm

    from .haystack import LengthTooShortError

    skipped, reencoded = {}, False
    for task, length, depth, index in tqdm(jobs, desc="eval: building samples", unit="sample", dynamic_ncols=True,
                                           leave=False, disable=not progress or len(jobs) < 50):
        if (task, length) not in skipped:
            try:
                sample = make_sample(tokenizer, task, length, depth, index, seed, essay)
            except LengthTooShortError as exc:
                skipped[(task, length)] = str(exc)
                continue
            reencoded = reencoded or any(read_specials_before(tokenizer, t) for t in (sample.prompt, sample.gold))
    return skipped, reencoded


def run_tasks(lm: LoadedModel, settings: EvalSettings, out_dir: Path,
              essay: Sequence[str] | None) -> tuple[list[dict], dict[str, str], int, dict]:
    """Score every planned sample (resuming finished ones). Returns (records, metric per task, reused,
    {(task, length): reason} of the cells skipped because the length is too short for the task)."""
    from tqdm import tqdm

    jobs = plan(settings)
    skipped, reencoded = preflight(lm.tokenizer, jobs, settings.seed, essay, progress=settings.progress)
    if skipped and len(skipped) == len({(t, n) for t, n, _, _ in jobs}):
        from .haystack import LengthTooShortError

        raise LengthTooShortError("; ".join(skipped.values()))
    jobs = [j for j in jobs if (j[0], j[1]) not in skipped]
    prefixed = bool(getattr(lm.tokenizer, "prefix_ids", ()))
    nested = positions_in_text_config(lm.model.config)
    older = []  # journals whose greedy records were decoded with no stop at the positions
    if settings.greedy:
        older.append(settings.fingerprint(lm.identity, prefixed, reencoded, older_decoding=True))
        if nested:  # before POSITIONS_REVISION such a model's positions were not known
            older.append(settings.fingerprint(lm.identity, prefixed, reencoded))
    current = settings.fingerprint(lm.identity, prefixed, reencoded, nested_positions=nested)
    journal = ResultJournal(out_dir, current, older,
                            lambda r: decoded_alike(lm.max_positions, r["prompt_tokens"],
                                                    settings.max_new_tokens or r["answer_tokens"] + ANSWER_MARGIN))
    reused = sum(1 for j in jobs if j in journal.done)
    metrics: dict[str, str] = {}
    records = []
    # the samples an earlier run finished start the bar (they are not this run's work, nor in its rate)
    bar = tqdm(total=len(jobs), initial=reused, desc="eval samples", unit="sample", dynamic_ncols=True,
               disable=not settings.progress)
    try:
        for task, length, depth, index in jobs:
            key = (task, length, depth, index)
            record = journal.done.get(key)
            computed = record is None
            if record is None or (settings.dump and "prompt" not in record):
                sample = make_sample(lm.tokenizer, task, length, depth, index, settings.seed, essay)
                metrics[task] = sample.metric
                if record is None:
                    record = evaluate_sample(lm, sample, greedy=settings.greedy,
                                             teacher_forced=settings.teacher_forced,
                                             max_new_tokens=settings.max_new_tokens)
                    record["metric"] = sample.metric
                if depth is not None:
                    record["depth_actual"] = sample.depth_actual
                if settings.dump:
                    record.update(prompt=sample.prompt, gold=sample.gold, context_span=list(sample.context_span),
                                  needle_spans=[list(s) for s in sample.needle_spans])
                journal.add(record)
            metrics[task] = record.get("metric", metrics.get(task))
            records.append(record)
            if computed:
                bar.update(1)
    finally:
        bar.close()
        journal.close()
    return records, metrics, reused, skipped

