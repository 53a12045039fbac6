"""The mini-scale experiment (benchmarks/experiments/nextlong_vs_standard.py): its smoke scale runs
end to end (corpus, tokenizer, pre-training, synthesis, two arms, evaluation, report) and writes
results.json in the documented shape; the report is recomputable from results and finished stages."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import EXPERIMENT_SCRIPT as SCRIPT
from tests.helpers import load_experiment_script as load_script

ROOT = Path(__file__).resolve().parents[1]


def test_summary_statistics_match_a_direct_computation():
    X = load_script()
    vals = [1.0, 2.0, 4.0]
    s = X.summarize(vals)
    mean = 7 / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
    assert s["n"] == 3 and s["mean"] == pytest.approx(mean) and s["std"] == pytest.approx(std)
    half = 4.303 * std / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert s["ci95"] == pytest.approx([mean - half, mean + half])
    assert X.summarize([None, 5.0]) == {"n": 1, "mean": 5.0, "std": None, "ci95": None}
    assert X.summarize([]) == {"n": 0}


def test_heldout_documents_never_reach_training(tmp_path):
    X = load_script()
    sc = X.SCALES["smoke"]
    rec = X.build_corpus(tmp_path, sc)
    train = {json.loads(line)["id"] for line in open(tmp_path / "corpus" / "train.jsonl")}
    held = [json.loads(line) for line in open(tmp_path / "corpus" / "heldout.jsonl")]
    assert len(held) == sc.heldout_docs and not train & {h["id"] for h in held}
    assert all(len(h["text"]) >= 5 * sc.long_len for h in held)
    assert rec["train_chars"] <= sc.corpus_max_bytes and rec["train_docs"] > 10
    # a second call finds the completion record and does not rewrite the files
    mtime = (tmp_path / "corpus" / "train.jsonl").stat().st_mtime_ns
    X.build_corpus(tmp_path, sc)
    assert (tmp_path / "corpus" / "train.jsonl").stat().st_mtime_ns == mtime


def test_split_text_gives_back_the_text_in_pieces_within_the_limit():
    X = load_script()
    rng = __import__("random").Random(3)
    lines = ["x" * rng.randint(0, 90) + ("\n" if rng.random() < 0.95 else "\r\n") for _ in range(400)]
    lines[17] = "y" * 500 + "\n"  # one line longer than the limit is a piece of its own
    text = "".join(lines) + "no final newline"
    pieces = X.split_text(text, 200)
    assert "".join(pieces) == text
    assert all(len(p) <= 200 or p == lines[17] for p in pieces)
    assert all(p.endswith("\n") for p in pieces[:-1])
    # greedy: no piece could have taken the next piece's first line
    for p, q in zip(pieces, pieces[1:]):
        assert len(p) + len(q.splitlines(keepends=True)[0]) > 200
    assert X.split_text("", 10) == [] and X.split_text("abc", 10) == ["abc"]


def test_the_copy_gate_passes_a_model_that_copies_and_fails_a_random_one(tmp_path):
    """The gate reads the repeat probe at D = base length / 2: a model that copies from exactly D back (an
    induction head by construction) passes it, a randomly initialised Llama does not, and a missing or NaN
    gain never passes."""
    from types import SimpleNamespace

    import torch

    from nextlong.eval.model import load_model
    from nextlong.eval.repeat import repeat_losses
    from tests.eval_fixtures import CopyModel, save_tiny_llama, train_tokenizer

    X = load_script()
    C = X.C
    base_len = 128
    D = C.gate_distance(base_len)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, 256, (300,), generator=g).tolist() for _ in range(4)]
    copier = SimpleNamespace(model=CopyModel(vocab=256, period=D), prefill_attn="eager", device=torch.device("cpu"))
    tok = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    random_lm = load_model(str(save_tiny_llama(tmp_path / "model", tok)), attn="sdpa", device="cpu")
    copies = repeat_losses(copier, docs, [D], progress=False)[0].gain
    random = repeat_losses(random_lm, [[t % 1000 for t in d] for d in docs], [D], progress=False)[0].gain
    assert copies < -3 and C.gate_passes(copies)
    assert abs(random) < 0.5 and not C.gate_passes(random)
    assert not C.gate_passes(None) and not C.gate_passes(float("nan")) and C.gate_passes(C.GATE_NATS)
    # the script reads the gain at exactly D from the base's repeat probe
    sc = X.replace(X.SCALES["smoke"], base_len=base_len)
    probe = tmp_path / "eval" / "base" / "repeat" / "repeat.json"
    for gain, passed in ((copies, True), (random, False)):
        X.write_json(probe, {"distances": [{"distance": 16, "gain": -9.0}, {"distance": D, "gain": gain}]})
        assert X.copy_gate(tmp_path, sc) == {"distance": D, "gain": gain, "threshold": C.GATE_NATS, "passed": passed}


def test_copy_rows_hold_exact_copies_in_their_own_spans():
    X = load_script()
    C = X.C
    docs = [list(range(1000, 1000 + n)) for n in (300, 700, 90)]
    rows, segs, stats = C.copy_rows(docs, 2048, rows=20, seq_len=256, span_min=4, span_max=64, random_share=0.5,
                                    seed=3)
    assert len(rows) == 20 and all(len(r) == 256 for r in rows)
    episodes = 0
    for row, spans in zip(rows, segs):
        assert spans[0]["start"] == 0 and spans[-1]["end"] == 256
        assert all(a["end"] == b["start"] for a, b in zip(spans, spans[1:]))  # they tile the row
        for sp in spans:
            if sp["doc_id"].endswith("-fill"):
                continue
            n = (sp["end"] - sp["start"]) // 2
            assert 4 <= n <= 64 and row[sp["start"]:sp["start"] + n] == row[sp["start"] + n:sp["end"]]
            episodes += 1
    assert episodes == stats["episodes"] and stats["random_episodes"] and stats["text_episodes"]
    assert C.natural_rows([[1, 2, 3], [4, 5]], 3, 0) == [[1, 2, 3], [0, 4, 5]]  # the tail [0] is dropped


@pytest.mark.slow
def test_smoke_scale_runs_end_to_end_and_reports(tmp_path):
    out, report = tmp_path / "exp", tmp_path / "report"
    cmd = [sys.executable, str(SCRIPT), "--scale", "smoke", "--out", str(out), "--report-dir", str(report),
           "--threads", "1"]
    # the smoke base (6 pre-training steps) cannot copy: the script stops at the gate, says so, trains no arm
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "copy gate: FAILED" in proc.stderr and not (out / "runs").exists()
    page = (report / "nextlong-vs-standard.md").read_text()
    assert "the base failed the copy gate" in page and "no arm was trained" in page
    assert "The base was pre-trained on " in page and " CPU capability " in page  # the processor that made it
    gated = json.loads((report / "nextlong-vs-standard" / "results.json").read_text())
    assert gated["gate"]["passed"] is False and gated["base_length"] == 256 and "standard" not in gated["arms"]
    assert [r["step"] for r in gated["copy_curve"]["stage A: copy episodes"]] == [3]

    # --skip-gate trains the arms anyway, to test the pipeline; the page says their numbers answer nothing
    cmd.append("--skip-gate")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "their numbers answer nothing" in (report / "nextlong-vs-standard.md").read_text()
    results = json.loads((report / "nextlong-vs-standard" / "results.json").read_text())
    assert set(results["arms"]) == {"base", "standard", "nextlong", "nextlong+longce"}
    assert results["missing"] == []
    assert results["primary"] == ["repeat_gain_512", "niah_single_tf_logprob_at_1024",
                                  "niah_multikey_tf_logprob_at_1024"]
    for arm in ("standard", "nextlong", "nextlong+longce"):
        metrics = results["arms"][arm]["seeds"]["0"]
        for name in results["primary"] + ["niah_single_tf_acc", "vt_tf_logprob", "json_kv_tf_acc", "ppl_long",
                                          "long_context_gain", "short_ppl", "retrieval_heads", "repeat_gain_128"]:
            assert isinstance(metrics[name], (int, float)) and math.isfinite(metrics[name]), (arm, name)
        assert 1 < metrics["ppl_long"] < 2048 * 4  # a trained model: far below nothing-learned x4
    # the arms trained from one base with the same budget
    runs = {arm: json.loads((out / "runs" / arm / "seed-0" / ".done.json").read_text())["settings"]
            for arm in ("standard", "nextlong", "nextlong+longce")}
    same = ("model", "batch_tokens", "steps", "lr", "warmup", "rope_theta", "seed", "seq_len")
    assert {k: runs["standard"][k] for k in same} == {k: runs["nextlong"][k] for k in same} \
        == {k: runs["nextlong+longce"][k] for k in same}
    # the LongCE arm: the NExtLong arm's data, weighted against the base as the short-context scorer
    assert runs["nextlong+longce"]["data"] == runs["nextlong"]["data"] and "token_weighting" not in runs["nextlong"]
    assert runs["nextlong+longce"]["token_weighting"] == "longce" and runs["nextlong+longce"]["scorer"] == str(out / "base")
    # the exported models keep the tokenizer of the model folder they started from (plain Parquet data
    # has no synthesis manifest to name one)
    assert json.loads((out / "base" / "model" / "nextlong.json").read_text())["tokenizer"] == "tokenizer.json"
    for p in ("loss_by_position.png", "answer_logprob_by_length.png", "retrieval_heads.png", "repeat_probe.png",
              "copy_curve.png", "answer_logprob_by_depth.png"):
        assert (report / "nextlong-vs-standard" / p).stat().st_size > 1000

    # resumable: a second run finds every stage done; --report-only recomputes the same table
    md = (report / "nextlong-vs-standard.md").read_text()
    (report / "nextlong-vs-standard.md").unlink()
    proc = subprocess.run(cmd + ["--report-only"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = (report / "nextlong-vs-standard.md").read_text()
    table = lambda text: [l for l in text.splitlines() if l.startswith("|")]  # noqa: E731
    assert table(again) == table(md) and len(table(md)) > 10
    proc = subprocess.run(cmd + ["--no-report"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and ": start" not in proc.stderr, proc.stderr[-3000:]

    # a variant runs beside it in the same folder: it reuses the corpus, tokenizer and base model (no stage of
    # theirs starts again), keeps its own runs, and the main page links its paired result
    proc = subprocess.run(cmd + ["--variant", "short-docs"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for shared in ("corpus", "tokenizer", "pre-training stage A", "pre-training stage B", "evaluate base"):
        assert f"] {shared}: start" not in proc.stderr, proc.stderr[-3000:]
    assert "split corpus: start" in proc.stderr
    variant = json.loads((report / "nextlong-vs-standard-short-docs" / "results.json").read_text())
    assert variant["variant"] == "short-docs" and variant["missing"] == []
    assert set(variant["arms"]) == {"base", "standard", "nextlong"}
    assert variant["arms"]["base"] == results["arms"]["base"]
    for arm in ("standard", "nextlong"):
        assert variant["arms"][arm]["seeds"]["0"] != results["arms"][arm]["seeds"]["0"]
        settings = json.loads((out / "variants" / "short-docs" / "synth" / arm / "seed-0" / ".done.json")
                              .read_text())["settings"]
        assert settings["corpus"] == str(out / "variants" / "short-docs" / "corpus" / "train.jsonl")
    assert "## Variant `short-docs`" in (report / "nextlong-vs-standard-short-docs.md").read_text()
    proc = subprocess.run(cmd + ["--report-only"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    main_page = (report / "nextlong-vs-standard.md").read_text()
    assert "## What else was tried" in main_page and "nextlong − standard over 1 paired seed(s) (0)" in main_page
    assert "## Paired: nextlong − standard" in main_page and "## Paired: nextlong+longce − nextlong" in main_page
    assert table(main_page) == table(md)  # the main table does not change


@pytest.mark.slow
def test_training_plain_parquet_from_a_model_folder_keeps_its_tokenizer(tmp_path):
    """Plain Parquet data has no synthesis manifest to name a tokenizer: the exported RUN/model must keep the
    starting folder's, or `nextlong eval RUN` cannot load it (it exported {"tokenizer": null} before)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    from nextlong.eval.model import load_model
    from nextlong.train import train

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["def f(x):\n    return x + 1\n"] * 50, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    folder = tmp_path / "init"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                                 tie_word_embeddings=True)).save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    rows = [np.random.default_rng(i).integers(0, 300, 100).astype(np.uint32).tolist() for i in range(4)]
    pq.write_table(pa.table({"input_ids": pa.array(rows, type=pa.list_(pa.uint32()))}), tmp_path / "docs.parquet")

    train(str(tmp_path / "docs.parquet"), tmp_path / "run", model=str(folder), seq_len=64, steps=1, lr=1e-3,
          split_spans=True, progress=False)
    meta = json.loads((tmp_path / "run" / "model" / "nextlong.json").read_text())
    assert meta["tokenizer"] == "tokenizer.json"
    lm = load_model(str(tmp_path / "run"))
    assert lm.tokenizer.vocab_size == tok.get_vocab_size()


def test_eval_summary_marks_a_mode_not_run_with_a_dash_not_nan():
    """The experiment scores teacher-forced only; the eval summary's mean row printed "nan / 0.0" then."""
    from nextlong.eval.report import summary_markdown

    results = {"model": "m", "tasks": {"vt": {"by_length": {"1024": {"n": 1, "teacher_forced_em": 0.0,
                                                                    "teacher_forced_logprob_per_token": -7.0}}}},
               "mean_over_tasks": {"1024": {"teacher_forced_em": 0.0}}}
    text = summary_markdown(results, [1024])
    assert "| **mean** | - / 0.0 |" in text and "nan" not in text


def test_report_follows_the_numbers():
    """The report module reads results.json only: probe table, "no signal", paired verdicts with the general
    loss gap beside them, and the answer (which starts from the gate)."""
    load_script()
    R = sys.modules["experiment_report"]

    def results(gains):
        return {"arms": {arm: {"seeds": {str(i): {f"repeat_gain_{d}": g for d, g in per.items()}
                                         for i, per in enumerate(seeds)}} for arm, seeds in gains.items()}}

    none = "\n".join(R.probe_lines(results({"base": [{256: 0.01, 1024: 0.1}], "standard": [{256: -0.02}, {256: -0.04}]})))
    assert "No model copies" in none and "| standard | -0.030 | – |" in none and "| base | 0.010 | 0.100 |" in none
    some = "\n".join(R.probe_lines(results({"base": [{256: -2.0, 1024: 0.1}], "nextlong": [{1024: -0.7}]})))
    assert "No model copies" not in some and "copy (gain below −0.5) at some distance: base, nextlong." in some
    assert R.probe_lines({"arms": {"base": {"seeds": {"0": {"ppl_long": 3.0}}}}}) == []

    # three seeds: nextlong copies further at 2048 on every seed, is 1% worse overall, and has accuracy 0 like
    # every model
    seeds = lambda rows: {"seeds": {str(i): r for i, r in enumerate(rows)}}  # noqa: E731
    res = {"arms": {
        "standard": seeds([{"repeat_gain_2048": -0.5 + e, "ppl_long": 10.0 + e, "niah_single_tf_acc": 0.0}
                           for e in (0.0, 0.1, -0.1)]),
        "nextlong": seeds([{"repeat_gain_2048": -1.5 + e, "ppl_long": 10.1 * (1 + e / 10), "niah_single_tf_acc": 0.0}
                           for e in (0.02, 0.1, -0.07)])},
        "primary": ["repeat_gain_2048"], "gate": {"passed": True, "gain": -2.5, "distance": 256, "threshold": -1.0}}
    assert R.no_signal(res) == ["niah_single_tf_acc"]
    c = R.compare(res, "nextlong", "standard")
    assert c["seeds"] == ["0", "1", "2"] and ("repeat_gain_2048", True) in c["resolved"]
    assert "niah_single_tf_acc" not in dict(c["resolved"])
    assert c["gap"]["mean"] == pytest.approx(sum(math.log(10.1 * (1 + e / 10)) - math.log(10.0 + f)
                                                 for e, f in ((0.02, 0.0), (0.1, 0.1), (-0.07, -0.1))) / 3)
    answer = "\n".join(R.answer_lines(res))
    assert "The base copies" in answer and "better `repeat_gain_2048` -0.983 [" in answer and "general loss gap" in answer
    failed = "\n".join(R.answer_lines(res | {"gate": {"passed": False, "gain": -0.2, "distance": 256, "threshold": -1.0}}))
    assert "failed the copy gate" in failed and "repeat_gain_2048" not in failed


def test_the_lease_scale_trains_a_step_in_one_forward_pass_and_cpu_scales_keep_their_settings():
    """On a GPU a small model's step of 32 sequences would be 32 launches-bound passes (the lease budget);
    the micro-batch covers the step. CPU scales add no setting, so their finished runs stay valid."""
    mod = load_script()
    lease, cpu = mod.SCALES["lease"], mod.SCALES["cpu"]
    assert mod.micro_batch(lease, lease.base_len, lease.base_batch_tokens) == {"micro_batch": 32}
    assert mod.micro_batch(lease, lease.long_len, lease.batch_tokens) == {"micro_batch": 8}
    assert mod.micro_batch(lease, lease.base_len, lease.batch_tokens) == {"micro_batch": 64}  # the short arm
    assert mod.micro_batch(cpu, cpu.base_len, cpu.base_batch_tokens) == mod.micro_batch(cpu, cpu.long_len,
                                                                                         cpu.batch_tokens) == {}
    odd = dataclasses.replace(lease, micro_tokens=3 * lease.long_len)  # the largest divisor of 8 that fits in 3
    assert mod.micro_batch(odd, odd.long_len, odd.batch_tokens) == {"micro_batch": 2}


def test_each_scale_page_has_its_own_name_and_a_design_in_its_own_numbers():
    """The design text was written for the cpu scale; the lease page printed "extended from 512 to 4,096" and a
    gate at D = 256 beside a 1,024 -> 8,192 run. Now it is written from the scale, and the lease page is its own."""
    mod = load_script()
    R = sys.modules["experiment_report"]
    assert R.report_stem(None, "cpu") == "nextlong-vs-standard" == R.report_stem(None, "smoke")
    assert R.report_stem(None, "lease") == "nextlong-vs-standard-lease"
    assert R.report_stem("short-docs", "lease") == "nextlong-vs-standard-lease-short-docs"
    pages = {}
    for name in ("cpu", "lease"):
        sc = dataclasses.asdict(mod.SCALES[name])
        corpus = {"train_docs": 7, "train_chars": 2_500_000, "heldout_chars": 1_000_000,
                  "heldout_ids": ["a.py", "idlelib/idle_test/test_format.py"]}
        raw = "\n".join(R.design_lines({"scale": sc, "corpus": corpus, "machine": {"python": "3.99.1"}}))
        assert "  " not in raw and "\n " not in raw  # no gap left by an empty optional part
        pages[name] = text = " ".join(raw.split())  # the checks below ignore where lines break
        base, long_ = sc["base_len"], sc["long_len"]
        assert f"extended from {base:,} to {long_:,} tokens" in text
        assert f"at D = {base // 2:,} (half the base length)" in text
        assert f"`niah_multikey` at {long_:,} tokens" in text and f"window W = {sc['ppl_window']:,}" in text
        far = [d for d in sc["repeat_distances"] if d > base]
        assert "Primary: the repeat gain at D = " + ", ".join(f"{d:,}" for d in far[:-1]) + f" and {far[-1]:,}" in text
        assert f"{R.llama_params(sc) / 1e6:.2f} M-parameter" in text and "(3.99.1 here)" in text
        assert "one held-out module, `idlelib/idle_test/test_format.py`, is a test file" in text
    assert "1.05 M-parameter" in pages["cpu"] and "1,210 standard-library files" in pages["cpu"]
    assert "1,210" not in pages["lease"] and "first lease" in pages["lease"] and "D = 256" not in pages["lease"]


def test_a_page_made_from_results_json_reads_as_the_one_made_at_the_end_of_the_run():
    """results.json is saved with sorted keys; a page regenerated from it listed the arms alphabetically (knn
    first, the plan's order lost) and the metrics in another order than the page the run wrote."""
    load_script()
    R = sys.modules["experiment_report"]
    results = json.loads((ROOT / "docs" / "experiments" / "nextlong-vs-standard-lease" / "results.json").read_text())
    shuffled = dict(results, arms={a: dict(v, seeds={s: dict(reversed(list(m.items()))) for s, m in v["seeds"].items()})
                                   for a, v in reversed(list(results["arms"].items()))})
    page = R.render_markdown(results, [], "nextlong-vs-standard-lease")
    assert R.render_markdown(shuffled, [], "nextlong-vs-standard-lease") == page
    header = next(line for line in page.splitlines() if line.startswith("| metric | base"))
    assert header == "| metric | base | standard | nextlong | nextlong+longce | standard+longce | short |"
    table = page.split("## Results")[1].split("\n## ")[0]
    rows = [line.split(" |")[0][2:] for line in table.splitlines() if line.startswith("| ")]
    assert rows[1:6] == [f"{m} (primary)" for m in results["primary"]] and rows[-1] == "repeat_gain_512"


def test_self_scored_longce_arms_train_without_a_scorer_and_base_scored_ones_with_the_base(tmp_path, monkeypatch):
    """`+longce` is scored against the base (the pre-registered arm); `+longce-self` is Fang et al.'s LongCE, the model in
    training scoring its own short windows: the same settings but no --scorer."""
    mod = load_script()
    seen = {}
    monkeypatch.setattr(mod, "train_run", lambda folder, settings, name, **kw: seen.__setitem__(name, kw))
    sc = mod.SCALES["cpu"]
    for arm in ("nextlong", "nextlong+longce", "nextlong+longce-self", "standard+longce-self"):
        mod.arm_run(tmp_path, tmp_path, sc, arm, 0, tmp_path / "data")
    plain, base, own = (seen[f"train {a} seed 0"] for a in ("nextlong", "nextlong+longce", "nextlong+longce-self"))
    assert "token_weighting" not in plain and base["scorer"] == str(tmp_path / "base") and "scorer" not in own
    assert own["token_weighting"] == base["token_weighting"] == "longce"
    assert own["short_window"] == base["short_window"] == sc.base_len // 2
    assert {k: v for k, v in own.items() if k not in ("token_weighting", "short_window", "short_stride")} == plain
    assert mod.arm_method("standard+longce-self") == "standard" and "nextlong+longce-self" in mod.OPTIONAL_ARMS


def _paired(rows_by_arm: dict, train_tokens: int | None = None) -> dict:
    """A results.json-shaped dict: {arm: [metrics of seed 0, seed 1, ...]}, each arm trained on `train_tokens`."""
    arms = {}
    for arm, rows in rows_by_arm.items():
        arms[arm] = {"seeds": {str(i): r for i, r in enumerate(rows)}}
        if train_tokens:
            arms[arm]["train"] = {str(i): {"tokens": train_tokens} for i in range(len(rows))}
    return {"arms": arms, "primary": ["repeat_gain_2048"], "scale": {"long_len": 8192, "base_len": 1024},
            "gate": {"passed": True, "gain": -2.5, "distance": 512, "threshold": -1.0}}


def test_a_comparison_whose_arms_repeat_their_data_unequally_says_so():
    """The lease's standard arm went 5.1 times over its 126 samples, nextlong 1.8 times over its 360, and no page
    said so: the page now shows the epochs of every arm and seed, and the Answer marks the comparison."""
    load_script()
    R = sys.modules["experiment_report"]
    res = _paired({"standard": [{"repeat_gain_2048": -0.5 + e, "ppl_long": 10.0} for e in (0.0, 0.01, -0.01)],
                   "nextlong": [{"repeat_gain_2048": -0.4 + e, "ppl_long": 10.0} for e in (0.0, 0.02, 0.01)],
                   "nextlong+longce": [{"repeat_gain_2048": -0.6 + e, "ppl_long": 10.0} for e in (0.0, 0.02, 0.01)]},
                  train_tokens=80 * 65536)
    res["synthesis"] = {f"{m} seed-{s}": {"samples": n} for m, n in (("standard", 126), ("nextlong", 360))
                        for s in range(3)}
    assert R.epochs(res, "standard", "0") == pytest.approx(80 * 65536 / (126 * 8192))
    assert R.epochs(res, "nextlong+longce", "2") == pytest.approx(80 * 65536 / (360 * 8192))  # nextlong's data
    table = "\n".join(R.synthesis_lines(res))
    assert "| standard | 5.08 | 5.08 | 5.08 |" in table and "| nextlong+longce | 1.78 | 1.78 | 1.78 |" in table
    answer = [line for line in R.answer_lines(res) if line.startswith("- ")]
    assert "worse `repeat_gain_2048`" in answer[0] and "confounded: standard 5.1 epochs vs nextlong 1.8" in answer[0]
    assert "confounded" not in answer[1]  # nextlong+longce − nextlong: the same data, the same epochs
    assert "confounded: standard 5.1 epochs vs nextlong 1.8" in "\n".join(R.comparison_lines(res))
    # under 1.5x apart (1.11 against 0.99 on the cpu page), or an arm without synthesized data: no mark
    res["synthesis"] |= {f"standard seed-{s}": {"samples": 269} for s in range(3)}
    res["synthesis"] |= {f"nextlong seed-{s}": {"samples": 302} for s in range(3)}
    assert R.epoch_confound(res, "nextlong", "standard", ["0", "1", "2"]) is None
    assert R.epoch_confound(res, "short", "standard", ["0", "1", "2"]) is None


def test_longppl_is_never_called_better_or_worse():
    """Each model picks its own key tokens, so the pages call `longppl` descriptive, yet listed "nextlong+longce
    better `longppl` −0.384": LongPPL and its counts are now neither better, worse nor "no difference"."""
    load_script()
    R = sys.modules["experiment_report"]
    res = _paired({"standard": [{"longppl": 3.0 + e, "key_tokens": 100 + i, "key_token_fraction": 0.01 + e,
                                 "ppl_long": 10.0 + e} for i, e in enumerate((0.0, 0.01, -0.01))],
                   "nextlong": [{"longppl": 2.0 + e, "key_tokens": 200 + i, "key_token_fraction": 0.02 + e,
                                 "ppl_long": 11.0 + e} for i, e in enumerate((0.0, 0.02, 0.01))]})
    assert dict(R.compare(res, "nextlong", "standard")["resolved"]) == {"ppl_long": False}
    text = "\n".join(R.comparison_lines(res))
    verdicts = [line for line in text.splitlines() if line.startswith("- ")]
    for name in R.DESCRIPTIVE:
        assert f"| {name} |" in text  # its differences are still shown, as numbers
        assert not any(f"`{name}`" in line for line in verdicts)
    assert {"longppl", "key_tokens", "key_token_fraction"} <= R.DESCRIPTIVE


def test_the_budget_counts_the_runs_that_finished_not_the_scales_default_arms():
    """The cpu page said "15 runs (5 arms x 3 seeds) = 18.4 M tokens" for a run with --arms adding quest and knn:
    21 runs, 25.8 M tokens."""
    mod = load_script()
    R = sys.modules["experiment_report"]
    sc = dataclasses.asdict(mod.SCALES["cpu"])
    arms = ["standard", "nextlong", "nextlong+longce", "standard+longce", "short", "quest", "knn"]
    res = {"scale": sc, "seeds": [0, 1, 2], "arms": {"base": {"seeds": {"0": {}}}} | {
        a: {"seeds": {s: {} for s in "012"}} for a in arms}}
    assert len(sc["arms"]) == 5
    assert "21 runs finished (7 arms x 3 seeds) = 25.8 M tokens" in "\n".join(R.budget_lines(res))
    del res["arms"]["knn"]["seeds"]["2"]
    assert "20 runs finished (seed 0: 7 arms, seed 1: 7 arms, seed 2: 6 arms) = 24.6 M tokens" in \
        "\n".join(R.budget_lines(res))


def test_a_synthesis_statistic_no_method_reports_is_left_out():
    load_script()
    R = sys.modules["experiment_report"]
    res = {"arms": {}, "synthesis": {"nextlong seed-0": {"samples": 3, "mean_dependency_distance_tokens": 420.0},
                                     "standard seed-0": {"samples": 4, "mean_dependency_distance_tokens": 0.0}}}
    header = R.synthesis_lines(res)[2]
    assert header == "| method seed | samples | mean dependency distance tokens |"


def test_seeds_that_give_one_data_set_are_named():
    """At lease scale NExtLong's three seeds gave equal statistics to the last digit (every anchor used once, each
    meta-chunk's top negatives): three seeds of one data set, which the page did not say."""
    load_script()
    R = sys.modules["experiment_report"]
    same = {"samples": 360, "source_documents_used": 360, "already_long": 70, "negatives_per_meta_chunk_mean": 1.585,
            "anchor_negative_similarity_mean": 0.79362675, "mean_dependency_distance_tokens": 420.09,
            "random_chunk_pair_similarity_mean": 0.54}
    synth = {"nextlong seed-0": same, "nextlong seed-1": {**same, "random_chunk_pair_similarity_mean": 0.55},
             "standard seed-0": {"samples": 126}, "standard seed-1": {"samples": 126, "source_documents_used": 359}}
    (line, _) = R.same_data_lines(synth)
    assert line.startswith("The seeds of `nextlong` give the same statistics") and "`standard`" not in line
    synth["nextlong seed-1"] = {**same, "anchor_negative_similarity_mean": 0.79362676}
    assert R.same_data_lines(synth) == []


def test_equal_statistics_of_standard_seeds_prove_nothing():
    """`standard` reports only samples and documents used (the rest None): seeds that pack every document into the
    same sample count give equal values although each seed packs other documents together, which the page called
    "the same samples in another order". Only a method reporting every compared statistic is judged."""
    load_script()
    R = sys.modules["experiment_report"]
    standard = {"samples": 126, "source_documents_used": 360, "mean_dependency_distance_tokens": 0.0}
    synth = {f"standard seed-{s}": dict(standard, random_chunk_pair_similarity_mean=0.5 + s / 100) for s in range(3)}
    assert R.same_data_lines(synth) == []
    # one nextlong seed lacking a statistic is not judged either
    full = {"samples": 360, "source_documents_used": 360, "already_long": 70, "negatives_per_meta_chunk_mean": 1.585,
            "anchor_negative_similarity_mean": 0.79362675, "mean_dependency_distance_tokens": 420.09}
    synth |= {"nextlong seed-0": full, "nextlong seed-1": full}
    (line, _) = R.same_data_lines(synth)
    assert "`nextlong`" in line and "`standard`" not in line
    synth["nextlong seed-1"] = {**full, "already_long": None}
    synth["nextlong seed-0"] = {**full, "already_long": None}
    assert R.same_data_lines(synth) == []


def finished_eval(X, folder: Path, settings: dict, **extra) -> None:
    """An evaluation folder as a finished stage leaves it: outputs, a nested stage with its own record, the record."""
    (folder / "heads").mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    (folder / "heads" / "x.json").write_text("{}")
    (folder / "repeat").mkdir()
    X.mark_done(folder / "repeat", {"distances": [8]}, 1.0)
    X.mark_done(folder, settings, 1.0, **extra)


def test_stale_evaluation_sweep_removes_only_a_changed_model_with_these_settings(tmp_path, capsys):
    """The sweep ran before the settings check and deleted a folder finished with other settings (which done()
    refuses with "use another --out"). Now it removes only a record with these settings and another fingerprint, or
    none (written before fingerprints: which model it measured is unknown); the rest are left to done()."""
    X = load_script()
    settings, other = {"model": "m", "lengths": [512]}, {"model": "m", "lengths": [8192]}
    f = tmp_path / "other"
    finished_eval(X, f, other, model_fingerprint="fp-old")
    X.forget_stale_evaluation(f, settings, "fp-now")
    assert (f / "metrics.json").exists() and (f / X.DONE).exists()
    with pytest.raises(SystemExit, match="finished with other settings"):
        X.done(f, settings)

    f = tmp_path / "predates"
    finished_eval(X, f, settings)  # no fingerprint: which model it measured is unknown (the attack: trusted, a
    X.forget_stale_evaluation(f, settings, "fp-now")  # retrained model kept its first metrics for good)
    assert sorted(p.name for p in f.iterdir()) == ["repeat"] and X.done(f, settings) is None
    assert "predates model fingerprints" in capsys.readouterr().err

    f = tmp_path / "same"
    finished_eval(X, f, settings, model_fingerprint="fp-now")
    X.forget_stale_evaluation(f, settings, "fp-now")
    assert (f / "metrics.json").exists() and X.done(f, settings) is not None

    f = tmp_path / "changed"
    finished_eval(X, f, settings, model_fingerprint="fp-old")
    X.forget_stale_evaluation(f, settings, "fp-now")
    assert sorted(p.name for p in f.iterdir()) == ["repeat"] and (f / "repeat" / X.DONE).exists()
    assert X.done(f, settings) is None


@pytest.mark.parametrize("text,kind", [("[1]", "a JSON list"), ("{", "not JSON")])
def test_a_record_that_is_not_an_object_gets_one_line(tmp_path, text, kind):
    """A .done.json holding a list gave AttributeError and a broken one JSONDecodeError, from the sweep and from
    done(). The sweep leaves it; done() refuses it in one line naming the file."""
    X = load_script()
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / X.DONE).write_text(text)
    X.forget_stale_evaluation(tmp_path, {"model": "m"}, "fp")
    assert (tmp_path / "metrics.json").exists() and (tmp_path / X.DONE).exists()
    with pytest.raises(SystemExit) as e:
        X.done(tmp_path, {"model": "m"})
    assert str(tmp_path / X.DONE) in str(e.value) and kind in str(e.value) and "\n" not in str(e.value)


PAGES = ("nextlong-vs-standard", "nextlong-vs-standard-short-docs", "nextlong-vs-standard-longce-self",
         "nextlong-vs-standard-lease", "nextlong-vs-standard-equal-samples",
         "nextlong-vs-standard-equal-samples-short-docs")


@pytest.mark.parametrize("stem", PAGES)
def test_each_committed_page_is_what_the_code_writes_from_its_results(stem):
    """The committed pages had drifted from the report code (a column of dashes, another Answer order, stale
    wording): each is now regenerated from its results.json, and must stay so."""
    load_script()
    R = sys.modules["experiment_report"]
    report_dir = ROOT / "docs" / "experiments"
    assert (report_dir / f"{stem}.md").read_text(encoding="utf-8") == R.page_from_results(report_dir, stem)


@pytest.mark.parametrize("stem", PAGES)
def test_every_page_a_committed_page_links_exists(stem):
    """A page listed its variants with links to their pages whether they had run or not: three links of the lease
    and equal-samples pages led nowhere. A variant that has not run is named without a link."""
    import re

    report_dir = ROOT / "docs" / "experiments"
    text = (report_dir / f"{stem}.md").read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)#]+\.md)\)", text) if "://" not in t]
    missing = [t for t in targets if not (report_dir / t).exists()]
    assert not missing, missing


def test_the_pages_say_what_their_records_cannot():
    """The main page came from code before the determinism fix and cannot be reproduced (a rerun's base: −2.174
    against −2.360), and its results.json cannot show the `longce-self` variant; the longce-self text said it ran
    "from the main run's base", which was false."""
    mod = load_script()
    R = sys.modules["experiment_report"]
    assert "main run's base" not in mod.VARIANTS["longce-self"]["why"]
    main = R.page_from_results(ROOT / "docs" / "experiments", "nextlong-vs-standard")
    note = main.split("**About these records.**")[1].split("\n")[0]
    assert "1109db3" in note and "−2.174" in note and "−2.360" in note and "`longce-self`" in note
    assert main.index("**About these records.**") < main.index("## Answer")
    results = json.loads((ROOT / "docs" / "experiments" / "nextlong-vs-standard" / "results.json").read_text())
    rerun = R.render_markdown(results | {"generated": "2027-01-01T00:00:00Z"}, [], "nextlong-vs-standard")
    assert "About these records" not in rerun  # a new run's records carry no note about the old ones


def test_standard_minus_short_is_read_with_shorts_untrained_positions_in_mind():
    """`short`'s repeat gain of +0.91 at D = 2,048 is its loss at positions it never trained on; the Answer now says
    that `standard − short` there mixes that breakdown with copying."""
    load_script()
    R = sys.modules["experiment_report"]
    res = _paired({"short": [{"repeat_gain_2048": 0.9 + e} for e in (0.0, 0.01, -0.01)],
                   "standard": [{"repeat_gain_2048": -0.1 + e} for e in (0.0, 0.02, 0.01)]})
    answer = "\n".join(R.answer_lines(res))
    assert "positions it never trained on" in answer and "past 1,024" in answer
    assert "never trained on" not in "\n".join(R.answer_lines(_paired({"standard": [{}], "nextlong": [{}]})))


def test_a_model_trained_again_is_evaluated_again(tmp_path, monkeypatch):
    """The evaluation stages were keyed on the model's path only: a run trained again at the same path kept the old
    model's metrics. Their records now hold the model's fingerprint; a changed model is measured again, and the
    repeat probe nested in eval/NAME survives its parent stage being redone."""
    import nextlong.eval
    import nextlong.eval.model
    import nextlong.eval.repeat

    mod = load_script()
    sc = mod.SCALES["smoke"]
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights one")
    calls = {"evaluate": 0, "repeat": 0}

    class Row:
        def summary(self):
            return {"distance": 4, "gain": -1.0, "first": 2.0, "second": 1.0}

    def fake_evaluate(model_dir, folder, **kw):
        calls["evaluate"] += 1
        Path(folder).mkdir(parents=True, exist_ok=True)

    def fake_repeat(*a, **kw):
        calls["repeat"] += 1
        return [Row()]

    monkeypatch.setattr(nextlong.eval, "evaluate", fake_evaluate)
    monkeypatch.setattr(nextlong.eval, "retrieval_heads", lambda *a, **kw: None)
    monkeypatch.setattr(nextlong.eval.model, "load_model", lambda *a, **kw: type("LM", (), {"tokenizer": None}))
    monkeypatch.setattr(nextlong.eval.repeat, "repeat_losses", fake_repeat)
    monkeypatch.setattr(mod, "heldout_tokens", lambda out, tok: [[1, 2, 3]])
    monkeypatch.setattr(mod, "document_metrics", lambda *a, **kw: {"metrics": {}})
    monkeypatch.setattr(mod, "collect_metrics", lambda folder: {})

    def evaluate_as_the_script_does():  # the base's order: the repeat probe first, then the evaluation
        mod.repeat_probe(tmp_path, sc, "m", tmp_path / "run")
        mod.evaluate_model(tmp_path, sc, "m", tmp_path / "run")

    evaluate_as_the_script_does()
    evaluate_as_the_script_does()
    assert calls == {"evaluate": 1, "repeat": 1}  # the same model: both stages are kept
    (model / "model.safetensors").write_bytes(b"weights two")  # trained again, same path and size
    evaluate_as_the_script_does()
    assert calls == {"evaluate": 2, "repeat": 2}
    assert (tmp_path / "eval" / "m" / "repeat" / mod.DONE).exists()  # the nested stage's fresh record stays
    evaluate_as_the_script_does()
    assert calls == {"evaluate": 2, "repeat": 2}


def test_every_arm_gets_as_many_samples_as_standards_data_holds(tmp_path):
    """The lease's arms went 5.1 (standard) and 1.8 (nextlong) times over their data: since 2026-12-07 each
    method's data is cut to standard's sample count for the seed (at most one epoch's worth), standard packs with
    --overflow carry, and the page's design says which of the two designs its run had."""
    X = load_script()
    R = sys.modules["experiment_report"]
    sc = X.SCALES["lease"]
    assert (sc.samples, sc.overflow) == ("standard", "carry") and X.samples_needed(sc) == 642
    corpus, tok = tmp_path / "train.jsonl", tmp_path / "tokenizer.json"
    std = tmp_path / "synth" / "standard" / "seed-1"
    std.mkdir(parents=True)
    settings = X.synth_settings(sc, corpus, tok, "standard", 1, 642)
    assert settings["overflow"] == "carry" and "overflow" not in X.synth_settings(sc, corpus, tok, "nextlong", 1, 9)
    X.mark_done(std, settings, 1.0, samples=235)  # standard's data for seed 1: 235 samples
    assert X.arm_samples(tmp_path, sc, corpus, tok, "nextlong", 1) == 235
    assert X.arm_samples(tmp_path, sc, corpus, tok, "standard", 1) == 642  # asks for one epoch, gets what it holds
    X.mark_done(std, settings, 1.0, samples=900)
    assert X.arm_samples(tmp_path, sc, corpus, tok, "nextlong", 1) == 642  # never more than one epoch
    old = dataclasses.replace(sc, samples="epoch")
    assert X.arm_samples(tmp_path / "nowhere", old, corpus, tok, "nextlong", 1) == 642  # standard not consulted
    new_design = R.data_design(dataclasses.asdict(sc), 8192)
    assert "same number of distinct samples" in new_design and "--overflow carry" in new_design
    assert "every training module's tokens once" not in new_design  # untrue once one epoch's worth caps standard
    assert "--overflow carry" in R.data_design({"samples": "epoch", "overflow": "carry"}, 8192)
    recorded = {k: v for k, v in dataclasses.asdict(sc).items() if k not in ("samples", "overflow")}  # a page of before
    assert "not the epochs" in R.data_design(recorded, 8192) and "dropping the tail" in R.data_design(recorded, 8192)


def test_a_variant_in_a_folder_without_a_base_says_it_builds_one(tmp_path, monkeypatch, capsys):
    """A variant reuses the main experiment's corpus, tokenizer and base from --out; given a fresh --out it built
    them all without a word (a new base, not the one the main page's numbers come from)."""
    X = load_script()

    def stop(*_):
        raise SystemExit("stopped before the corpus")

    monkeypatch.setattr(X, "build_corpus", stop)
    for out, said in ((tmp_path / "fresh", True), (tmp_path / "main", False)):
        if not said:
            X.mark_done(out / "base", {"any": 1}, 1.0)
        with pytest.raises(SystemExit, match="stopped before the corpus"):
            X.main(["--out", str(out), "--scale", "smoke", "--variant", "short-docs"])
        assert ("holds no finished base: the corpus, tokenizer and base are built here" in capsys.readouterr().err) \
            is said


def test_the_hardware_line_names_every_thread_count_the_run_used(tmp_path, monkeypatch, capsys):
    """experiment.json was rewritten by each invocation, so a run resumed with --threads 1 after one on all cores
    said "torch threads 1" for timings made with both: every count seen is kept and the page names them."""
    import torch

    X = load_script()
    R = sys.modules["experiment_report"]

    def stop(*_):
        raise SystemExit("stopped before the corpus")

    monkeypatch.setattr(X, "build_corpus", stop)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            with pytest.raises(SystemExit):
                X.main(["--out", str(tmp_path), "--scale", "smoke", "--threads", str(threads)])
    finally:
        torch.set_num_threads(before)
    record = json.loads((tmp_path / "experiment.json").read_text())
    assert record["torch_threads"] == 1 and record["torch_threads_seen"] == [1, 2]
    assert "torch threads 1, 2 (the invocations that made this run differed; the last used 1)" in R.hardware_line(record)
    record.pop("torch_threads_seen")  # a run recorded before: one count, as before
    assert "torch threads 1, Python" in R.hardware_line(record)


def test_a_page_of_data_made_before_overflow_keeps_the_old_design(tmp_path):
    """--report-only on an --out from before 2026-12-07 (or its lease records.tgz unpacked, as lease_run.sh says)
    took the design from today's scale: its page said `standard` carried cut documents over and every arm had as
    many samples as standard's, while its standard had dropped their rest and the epochs differed. The records say
    which design made the data."""
    X = load_script()
    R = sys.modules["experiment_report"]
    sc = X.SCALES["smoke"]
    corpus, tok = tmp_path / "train.jsonl", tmp_path / "tokenizer.json"
    old = {k: v for k, v in X.synth_settings(sc, corpus, tok, "standard", 0, 10).items() if k != "overflow"}
    X.mark_done(tmp_path / "synth" / "standard" / "seed-0", old, 1.0, samples=10)
    X.mark_done(tmp_path / "synth" / "nextlong" / "seed-0", X.synth_settings(sc, corpus, tok, "nextlong", 0, 10), 1.0,
                samples=10)
    scale = X.gather(tmp_path, tmp_path, sc, [0], ["standard", "nextlong"])["scale"]
    assert "samples" not in scale and "overflow" not in scale
    assert "not the epochs" in R.data_design(scale, sc.long_len)
    X.mark_done(tmp_path / "synth" / "standard" / "seed-0", X.synth_settings(sc, corpus, tok, "standard", 0, 10), 1.0,
                samples=10)
    scale = X.gather(tmp_path, tmp_path, sc, [0], ["standard", "nextlong"])["scale"]
    assert (scale["samples"], scale["overflow"]) == ("standard", "carry")
    assert "same number of distinct samples" in R.data_design(scale, sc.long_len)


def test_a_run_is_tied_to_the_data_it_trained_on(tmp_path, monkeypatch):
    """A run's record names its data by path only: data made again differently in the same folder (synth/ removed,
    the arm synthesized anew with another cap) left the run trained on the old data standing beside it. A finished
    run is now checked against the data's fingerprint its own manifest recorded: other data is refused, the same
    data made again keeps the run, and a run without that record is refused rather than trusted."""
    X = load_script()
    from nextlong.train.sources import open_sources

    C = sys.modules["copy_curriculum"]
    trained = []
    monkeypatch.setattr(X, "train_run", lambda folder, settings, name, **kw: trained.append(folder))
    sc = X.SCALES["smoke"]
    data = tmp_path / "synth" / "standard" / "seed-0"
    run = tmp_path / "runs" / "standard" / "seed-0"
    C.write_rows(data / "data.parquet", [[1, 2, 3, 4]] * 6)
    X.arm_run(tmp_path, tmp_path, sc, "standard", 0, data)  # not finished yet: trains
    X.write_json(run / X.DONE, {"settings": {}, "seconds": 1.0})
    with pytest.raises(SystemExit, match="no record of the data the run trained on"):
        X.arm_run(tmp_path, tmp_path, sc, "standard", 0, data)
    recorded = json.loads(json.dumps([s.fingerprint() for s in open_sources([str(data)])]))
    X.write_json(run / "manifest.json", {"settings": {"data_fingerprint": recorded}})
    C.write_rows(data / "data.parquet", [[1, 2, 3, 4]] * 6)  # the same data made again
    X.arm_run(tmp_path, tmp_path, sc, "standard", 0, data)
    assert trained == [run, run]
    C.write_rows(data / "data.parquet", [[1, 2, 3, 4]] * 5)  # made again with another cap
    with pytest.raises(SystemExit, match=f"{run}: trained on other data than"):
        X.arm_run(tmp_path, tmp_path, sc, "standard", 0, data)


def test_a_run_finished_with_the_data_made_key_is_kept(tmp_path, monkeypatch):
    """Runs finished between the commit that put the data's completion time in a run's settings (data_made) and the
    one that replaced it with the manifest's data fingerprint hold data_made in their record: they were refused as
    "finished with other settings" (the settings asked had no data_made), though the fingerprint check ties them
    to their data as it does every other run."""
    X = load_script()
    from nextlong.train.sources import open_sources

    C = sys.modules["copy_curriculum"]
    asked = []
    monkeypatch.setattr(X, "train_run", lambda folder, settings, name, **kw: asked.append(settings))
    sc = X.SCALES["smoke"]
    data, run = tmp_path / "synth" / "standard" / "seed-0", tmp_path / "runs" / "standard" / "seed-0"
    C.write_rows(data / "data.parquet", [[1, 2, 3, 4]] * 6)
    X.arm_run(tmp_path, tmp_path, sc, "standard", 0, data)
    monkeypatch.undo()
    X.write_json(run / X.DONE, {"settings": dict(asked[0], data_made="2026-12-07T09:00:00Z"), "seconds": 1.0})
    recorded = json.loads(json.dumps([s.fingerprint() for s in open_sources([str(data)])]))
    X.write_json(run / "manifest.json", {"settings": {"data_fingerprint": recorded}})
    import nextlong.train

    monkeypatch.setattr(nextlong.train, "train", lambda **kw: pytest.fail("a finished run trained again"))
    assert X.arm_run(tmp_path, tmp_path, sc, "standard", 0, data) == run
    C.write_rows(data / "data.parquet", [[1, 2, 3, 4]] * 5)  # other data: still refused
    with pytest.raises(SystemExit, match=f"{run}: trained on other data than"):
        X.arm_run(tmp_path, tmp_path, sc, "standard", 0, data)


def test_the_page_names_the_processor_that_made_the_base(tmp_path):
    """The same settings pre-trained bases with copy gates -2.360, -2.174 and -2.369 on three sessions' machines,
    and nothing recorded which processor (or which CPU kernels torch chose) made each. Every stage record and
    experiment.json now say, and the page names them; a run recorded before keeps its text."""
    import torch

    X = load_script()
    R = sys.modules["experiment_report"]
    cpu = X.cpu_identity()
    assert f"torch {torch.__version__} CPU capability {torch.backends.cpu.get_cpu_capability()}" in cpu
    X.mark_done(tmp_path / "base", {}, 1.0, train={"steps": 3})
    assert X.read_record(tmp_path / "base")["made_on"] == X.made_on() == cpu  # no GPU here: the processor
    machine = {"cpus": 2, "machine": "x86_64", "python": "3.11.7", "torch_threads": 1, "cpu": cpu}
    assert f"2 CPU cores (x86_64, {cpu}), torch threads 1" in R.hardware_line(machine)
    assert "2 CPU cores (x86_64), torch" in R.hardware_line({k: v for k, v in machine.items() if k != "cpu"})
    gate = {"gate": {"distance": 256, "gain": -2.3, "threshold": -1.0, "passed": True}}
    assert f"The base was pre-trained on {cpu} (" in "\n".join(R.gate_lines(gate | {"pretrain": {"made_on": cpu}}))
    assert "pre-trained on" not in "\n".join(R.gate_lines(gate | {"pretrain": {"seconds": 1.0}}))
