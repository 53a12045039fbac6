"""Retrieval-head detection (Wu et al.) on a tiny random Llama: the fast path against a slow reference
loop over eager attentions, trial filtering, masking, comparison and the CLI."""

from __future__ import annotations

import contextlib
import json
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from nextlong.cli import main  # noqa: E402
from nextlong.errors import NextlongError  # noqa: E402
from nextlong.eval import heads as H  # noqa: E402
from nextlong.eval.model import decode, load_model  # noqa: E402
from tests.eval_fixtures import one_thread, save_tiny_llama, sliding_window_model, train_tokenizer  # noqa: E402,F401


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    # A large init makes attention peaked, so top-1 positions are far from ties.
    return save_tiny_llama(tmp_path_factory.mktemp("model"), tok, init=0.5, seed=1)


@pytest.fixture(scope="module")
def lm(model_dir):
    return load_model(model_dir, attn="sdpa", device="cpu")


@pytest.fixture(scope="module")
def trials(lm):
    from nextlong.eval.haystack import essay_sentences
    from tests.helpers import corpus_texts

    essay = essay_sentences(corpus_texts(max_bytes=20_000))
    return H.make_trials(lm.tokenizer, essay, [256, 384], [0.0, 50.0, 100.0], H.NEEDLES[:1])


def reference_trial_scores(lm, trial, forced=None, max_new_tokens=50):
    """Wu et al.'s rule, written out: recompute the whole sequence with eager attention at every step
    and loop over layers and heads in Python."""
    layers, heads = lm.num_layers, lm.num_heads
    scores = [[0.0] * heads for _ in range(layers)]
    start, end = trial.span
    seq = list(trial.prompt_ids)
    generated = []
    lm.model.config._attn_implementation = "eager"
    try:
        steps = max_new_tokens if forced is None else min(max_new_tokens, len(forced))
        with torch.no_grad():
            for step in range(steps):
                out = lm.model(torch.tensor([seq]), output_attentions=True)
                nxt = int(out.logits[0, -1].argmax()) if forced is None else int(forced[step])
                for layer in range(layers):
                    for head in range(heads):
                        row = out.attentions[layer][0, head, -1].tolist()
                        pos = max(range(len(row)), key=row.__getitem__)
                        if start <= pos < end and trial.prompt_ids[pos] == nxt:
                            scores[layer][head] += 1 / (end - start)
                generated.append(nxt)
                if "\n" in decode(lm.tokenizer, [nxt]):
                    break
                seq.append(nxt)
    finally:
        lm.model.config._attn_implementation = "sdpa"
    return scores, generated


def test_needle_token_span_covers_the_needle(lm, trials):
    for t in trials:
        start, end = t.span
        text = decode(lm.tokenizer, t.prompt_ids[start:end])
        assert t.reference in text and len(text) <= len(t.reference) + 4
        assert abs(len(t.prompt_ids) + lm.tokenizer.count_tokens(" " + t.reference) - t.length) <= 0.1 * t.length


@pytest.mark.slow
def test_retrieval_scores_equal_a_slow_reference_loop(lm, trials):
    total = 0.0
    for t in trials:
        forced = [int(i) for i in lm.tokenizer.encode(" " + t.reference)]  # copy the needle: hits happen
        fast = H.detect_trial(lm, t, forced=forced)
        ref, generated = reference_trial_scores(lm, t, forced=forced)
        assert fast.generated == generated
        assert torch.allclose(fast.scores, torch.tensor(ref, dtype=torch.float64), atol=1e-9), t
        total += float(fast.scores.sum())
    assert total > 0  # the comparison saw copying heads, not only zeros
    print(f"summed retrieval score over {len(trials)} forced trials: {total:.3f}")
    # greedy decoding, as in detection proper (two trials, 12 steps each, to stay fast)
    for t in trials[:2]:
        fast = H.detect_trial(lm, t, max_new_tokens=12)
        ref, generated = reference_trial_scores(lm, t, max_new_tokens=12)
        assert fast.generated == generated
        assert torch.allclose(fast.scores, torch.tensor(ref, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("kind", ["mistral", "gemma2"])
def test_retrieval_scores_on_a_sliding_window_model_equal_the_reference(lm, kind):
    """A sliding-window layer's cache holds only its last window, so its attention row covers those keys only:
    the top-1 index is an offset into the window, not a prompt position. It was read as a prompt position
    (Mistral: a head attending inside its window was scored as if it pointed at the prompt's first tokens, where
    a needle at depth 0 sits), and Gemma 2's local and global rows of different lengths could not be stacked
    (RuntimeError). Checked against the full recompute, whose rows span every position."""
    from pathlib import Path

    from nextlong.eval.haystack import essay_sentences
    from nextlong.eval.model import LoadedModel
    from tests.helpers import corpus_texts

    model = sliding_window_model(kind, lm.tokenizer.vocab_size + 1)
    model.config._attn_implementation = "sdpa"
    swa = LoadedModel(model, lm.tokenizer, Path("."), "test", 2048, "sdpa", (0,))
    essay = essay_sentences(corpus_texts(max_bytes=20_000))
    for t in H.make_trials(lm.tokenizer, essay, [256], [0.0, 100.0], H.NEEDLES[:1]):
        start, end = t.span
        forced = t.prompt_ids[start:end]  # copy the needle: a head attending at it scores
        fast = H.detect_trial(swa, t, forced=forced)
        ref, generated = reference_trial_scores(swa, t, forced=forced)
        assert fast.generated == generated
        assert torch.allclose(fast.scores, torch.tensor(ref, dtype=torch.float64), atol=1e-9), (kind, t.depth)


def test_head_scores_count_only_trials_that_answer_unless_all_trials():
    a = H.TrialResult(torch.tensor([[1.0, 0.0]], dtype=torch.float64), [], "x", recall=0.9)
    b = H.TrialResult(torch.tensor([[0.0, 1.0]], dtype=torch.float64), [], "y", recall=0.5)  # not > 0.5
    scores, counted = H.head_scores([a, b])
    assert counted == 1 and scores.tolist() == [[1.0, 0.0]]
    scores, counted = H.head_scores([a, b], all_trials=True)
    assert counted == 2 and scores.tolist() == [[0.5, 0.5]]
    scores, counted = H.head_scores([b])
    assert counted == 0 and scores.tolist() == [[0.0, 0.0]]
    named = H.as_named(torch.tensor([[0.2, 0.05], [0.3, 0.0]]))
    assert named == {"0-0": 0.2, "0-1": 0.05, "1-0": 0.3, "1-1": 0.0}
    assert [n for n, _ in H.ranked(named)] == ["1-0", "0-0", "0-1", "1-1"]


def test_masking_zeroes_exactly_the_given_heads(lm, trials):
    ids = torch.tensor([trials[0].prompt_ids])
    with torch.no_grad():
        base = lm.model(ids).logits
        with H.masked_heads(lm, []):
            same = lm.model(ids).logits
        with H.masked_heads(lm, [(1, 2)]):
            masked = lm.model(ids).logits
            o_proj = lm.model.model.layers[1].self_attn.o_proj
            seen = {}
            handle = o_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
            lm.model(ids)
            handle.remove()
        after = lm.model(ids).logits
    dim = lm.model.config.hidden_size // lm.num_heads
    assert torch.equal(base, same) and torch.equal(base, after)
    assert not torch.allclose(base, masked)
    x = seen["x"]
    assert torch.count_nonzero(x[..., 2 * dim:3 * dim]) == 0 and torch.count_nonzero(x[..., :dim]) > 0


def test_compare_counts_and_differences():
    a = {"0-0": 0.5, "0-1": 0.05, "1-0": 0.2}
    b = {"0-0": 0.4, "0-1": 0.3, "1-0": 0.0}
    c = H.compare(a, b)
    assert (c["retrieval_heads_a"], c["retrieval_heads_b"]) == (2, 2)
    assert c["shared"] == ["0-0"] and c["only_a"] == ["1-0"] and c["only_b"] == ["0-1"]
    assert c["difference"] == {"0-0": -0.1, "0-1": 0.25, "1-0": -0.2}
    assert c["largest_changes"][0] == ("0-1", 0.25)
    with pytest.raises(ValueError, match="different heads"):
        H.compare(a, {"0-0": 1.0})


@pytest.fixture
def copying(monkeypatch):
    """Every trial's answer forced to be the needle's own tokens (the teacher-forced probe of the same rule): a
    random model copies nothing, so its heads all score 0 and any scoring code, a broken one too, would give
    "the same scores" twice. The decoding budgets asked for are recorded."""
    budgets = []
    real = H.detect_trial

    def forced(lm, trial, *, max_new_tokens=H.MAX_NEW_TOKENS, forced=None, layers=None):
        budgets.append(max_new_tokens)
        start, end = trial.span
        return real(lm, trial, max_new_tokens=max_new_tokens, forced=trial.prompt_ids[start:end], layers=layers)

    monkeypatch.setattr(H, "detect_trial", forced)
    return budgets


@pytest.mark.slow
def test_heads_cli_outputs_mask_check_and_compare(tmp_path, model_dir, capsys, copying):
    args = ["heads", str(model_dir), "--lengths", "320", "--depths", "2", "--needles", "1", "--all-trials",
            "--max-new-tokens", "40"]
    assert main(args + ["--out", str(tmp_path / "a"), "--mask-heads", "1"]) == 0
    # detection and each of the three masking passes decode with --max-new-tokens (the masking used 50)
    assert copying == [40] * 2 * 4
    out = tmp_path / "a"
    scores = json.loads((out / "head_scores.json").read_text())
    assert sorted(scores) == sorted(f"{l}-{h}" for l in range(2) for h in range(4))
    assert any(v > 0 for v in scores.values()), scores  # the equalities below can fail
    info = json.loads((out / "heads.json").read_text())
    assert info["trials"] == 2 and info["trials_counted"] == 2
    assert set(info["masking"]) >= {"accuracy_unmasked", "accuracy_top_masked", "accuracy_random_masked"}
    assert info["masking"]["top_heads"] != info["masking"]["random_heads"]
    for name in ("heads.png", "summary.md", "manifest.json", "trials.jsonl"):
        assert (out / name).is_file()
    assert "heads trials" in capsys.readouterr().err
    # the same run again writes the same scores; --no-progress drops the bar, not the summary
    assert main(args + ["--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "b" / "head_scores.json").read_text()) == scores
    bare = capsys.readouterr()
    assert "heads trials" not in bare.err and "Retrieval heads" in bare.out
    assert main(["heads", "--compare", str(out), str(tmp_path / "b"), "--out", str(tmp_path / "q"), "--quiet"]) == 0
    assert capsys.readouterr().out == "" and (tmp_path / "q" / "compare.json").is_file()
    assert main(["heads", "--compare", str(out), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 0
    comparison = json.loads((tmp_path / "c" / "compare.json").read_text())
    before = (out / "manifest.json").read_bytes()
    assert main(["heads", "--compare", str(out), str(tmp_path / "b"), "--out", str(out)]) == 2  # not into a run
    assert "is one of the runs compared" in capsys.readouterr().err and (out / "manifest.json").read_bytes() == before
    assert all(d == 0 for d in comparison["difference"].values())
    assert (tmp_path / "c" / "compare.png").is_file()
    capsys.readouterr()
    assert main(["heads", "--out", str(tmp_path / "d")]) == 2
    assert "MODEL is required" in capsys.readouterr().err
    assert main(["heads", str(model_dir), "--compare", str(out), str(out), "--out", str(tmp_path / "d")]) == 2
    assert main(["heads", "--compare", str(tmp_path / "nope"), str(out), "--out", str(tmp_path / "d")]) == 1
    assert "no head_scores.json" in capsys.readouterr().err
    # names far apart (a 10,000 x 10,000 plot) or a score outside [0, 1]: refused before anything is written
    for name, data, message in (("sparse", {"9999-9999": 0.5, "0-0": 0.1}, "every head of 10000 layers"),
                                ("range", {"0-0": -1e308, "0-1": 0.5}, "lie in \\[0, 1000\\]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "head_scores.json").write_text(json.dumps(data))
        assert main(["heads", "--compare", str(tmp_path / name), str(tmp_path / name), "--out",
                     str(tmp_path / "e")]) == 1
        assert re.search(message, capsys.readouterr().err)
        assert not (tmp_path / "e").exists()
    assert main(["heads", str(model_dir), "--lengths", "5000", "--out", str(tmp_path / "d")]) == 2
    assert "beyond the model's 4096 positions" in capsys.readouterr().err


def _ctrl_c_at_trial(n: int):
    """heads' detect_trial, raising KeyboardInterrupt (Ctrl-C) at its n-th call instead."""
    real, calls = H.detect_trial, []

    def detect(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    return detect


def test_a_stopped_heads_run_leaves_a_manifest_saying_so(tmp_path, model_dir, monkeypatch, capsys):
    """`nextlong heads` wrote its manifest only at the end: a run stopped after some trials left their
    records and no manifest saying what ran. It says "running" from the start, "interrupted" once Ctrl-C
    stopped it; the rerun finishes it."""
    args = ["heads", str(model_dir), "--lengths", "320", "--depths", "2", "--needles", "1", "--all-trials",
            "--max-new-tokens", "6", "--out", str(tmp_path / "a")]
    real = H.detect_trial
    monkeypatch.setattr(H, "detect_trial", _ctrl_c_at_trial(2))
    assert main(args) == 130  # the CLI's exit status after Ctrl-C
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["command"] == "heads" and manifest["statistics"] == {"status": "interrupted",
                                                                         "error": "KeyboardInterrupt"}
    assert manifest["settings"]["lengths"] == [320]
    monkeypatch.setattr(H, "detect_trial", real)
    assert main(args) == 0
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["statistics"]["trials"] == 2
    capsys.readouterr()


def test_a_resumed_heads_run_counts_only_the_trials_it_runs(tmp_path, model_dir, monkeypatch, capsys):
    """The bar of a resumed `nextlong heads` started at 0 and counted the trials an earlier run had finished as
    this run's, at their reading speed (measured: killed at 4 of 24, the rerun's bar went 0/24 -> 7/24 in a
    second). They now start the bar, as eval's samples do, and only the trials run are counted."""
    import tqdm

    from tests.helpers import BarRecorder

    args = ["heads", str(model_dir), "--lengths", "320", "--depths", "3", "--needles", "1", "--all-trials",
            "--max-new-tokens", "4", "--out", str(tmp_path / "a")]
    real = H.detect_trial
    monkeypatch.setattr(H, "detect_trial", _ctrl_c_at_trial(3))
    assert main(args) == 130
    monkeypatch.setattr(H, "detect_trial", real)
    monkeypatch.setattr(tqdm, "tqdm", BarRecorder)
    BarRecorder.seen = []
    assert main(args) == 0
    (bar,) = [b for b in BarRecorder.seen if b.desc == "heads trials"]
    assert (bar.initial, bar.n, bar.total) == (2, 3, 3)  # 2 reused, 1 run
    capsys.readouterr()


def test_the_python_api_is_the_cli(tmp_path, model_dir, capsys, copying):
    """nextlong.eval.retrieval_heads: `nextlong heads` with its options as keywords, the same checks and files
    (with answers that copy the needle, so the scores compared are not all 0)."""
    from nextlong.errors import UsageError
    from nextlong.eval import retrieval_heads

    assert main(["heads", str(model_dir), "--lengths", "320", "--depths", "2", "--needles", "1", "--all-trials",
                 "--max-new-tokens", "40", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    import numpy as np

    info = retrieval_heads(model_dir, tmp_path / "py", lengths=np.array([320]), depths=2, needles=np.int64(1),
                           all_trials=True, max_new_tokens=40, quiet=True)
    assert capsys.readouterr().out == ""
    assert any(v > 0 for v in json.loads((tmp_path / "cli" / "head_scores.json").read_text()).values())
    for name in ("head_scores.json", "heads.json"):
        assert (tmp_path / "py" / name).read_text() == (tmp_path / "cli" / name).read_text(), name
    assert info["trials"] == 2
    assert info == json.loads((tmp_path / "py" / "heads.json").read_text())  # its top_heads were tuples, not lists
    compared = retrieval_heads(None, tmp_path / "c", compare=(tmp_path / "cli", tmp_path / "py"), quiet=True)
    assert all(d == 0 for d in compared["difference"].values())
    assert compared == json.loads((tmp_path / "c" / "compare.json").read_text())
    for options, message in (({"needles": 4}, "--needles must be 1, 2 or 3, got 4"),
                             ({"threshold": float("nan")}, "--threshold must be a finite number"),
                             ({"compare": "ab"}, "--compare must be two run folders"),
                             ({"compare": (x for x in "ab")}, "--compare must be two run folders"),
                             ({"lengths": iter([256])}, "--lengths must be a list of positive integers"),
                             ({"min_recall": 1.0}, "--min-recall must be in [0, 1)"),
                             ({"mask_head": 1}, "retrieval_heads: unknown option 'mask_head'")):
        with pytest.raises(UsageError, match=re.escape(message)):
            retrieval_heads(model_dir, tmp_path / "bad", **options)
    assert not (tmp_path / "bad").exists()


def test_compare_takes_scores_above_1_of_a_model_that_repeats_the_needle(tmp_path, capsys):
    """Wu et al.'s rule adds 1/len(needle) per copying step, so a needle copied twice scores up to 2: such a run
    was refused by --compare as out of range."""
    for name, score in (("a", 1.5), ("b", 0.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "head_scores.json").write_text(json.dumps({"0-0": score, "0-1": 0.0}))
    assert main(["heads", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "c" / "compare.json").read_text())["difference"]["0-0"] == -1.25


def test_a_resume_decodes_again_after_new_weights_or_another_dtype(tmp_path, copying):
    """The trials' journal keyed results on the model folder's path: new weights saved into the folder, or another
    --dtype, reused the old trials' answers (outside audit). Each now decodes every trial again."""
    tok = train_tokenizer(tmp_path / "tok.json")
    model = save_tiny_llama(tmp_path / "m", tok, init=0.5, seed=1)
    args = ["heads", str(model), "--lengths", "320", "--depths", "2", "--needles", "1", "--all-trials",
            "--max-new-tokens", "6", "--out", str(tmp_path / "h"), "--quiet"]

    def decoded(*extra) -> int:
        copying.clear()
        assert main(args + list(extra)) == 0
        return len(copying)

    assert decoded() == 2 and decoded() == 0  # the same run again reuses both trials
    assert decoded("--dtype", "bfloat16") == 2
    save_tiny_llama(tmp_path / "m", tok, init=0.5, seed=2)
    assert decoded("--dtype", "bfloat16") == 2 and decoded("--dtype", "bfloat16") == 0


def test_a_sliding_window_models_trials_are_scored_again_others_resume(monkeypatch):
    """Trials of a model with a sliding window, scored by window offsets before 2026-12-07, are not reused; the
    journal of any other model keeps its fingerprint (the formula before, written out here)."""
    import hashlib
    from types import SimpleNamespace

    from nextlong.eval import heads_run
    from nextlong.eval.options import HeadsOptions

    args = HeadsOptions(model="m", out="o")
    tokenizer = SimpleNamespace(fingerprint="tok")

    def fake(window):
        return SimpleNamespace(identity={"folder": "m"}, prefill_attn="sdpa", tokenizer=tokenizer,
                               model=SimpleNamespace(config=SimpleNamespace(sliding_window=window)))

    old = json.dumps({"model": {"folder": "m"}, "lengths": [256], "depths": [50.0], "needles": 1,
                      "max_new": args.max_new_tokens, "attn": "sdpa", "corpus": args.corpus,
                      "text_field": args.text_field, "tokenizer": "tok"}, sort_keys=True, default=str)
    full = heads_run.journal_fingerprint(fake(None), args, [256], [50.0], 1)
    assert full == hashlib.sha256(old.encode()).hexdigest()[:16]
    sliding = heads_run.journal_fingerprint(fake(4096), args, [256], [50.0], 1)
    assert sliding != full
    monkeypatch.setattr(H, "SLIDING_REVISION", "an older rule")
    assert heads_run.journal_fingerprint(fake(4096), args, [256], [50.0], 1) != sliding
    assert heads_run.journal_fingerprint(fake(None), args, [256], [50.0], 1) == full


def test_a_window_in_a_nested_text_config_or_layer_types_is_a_sliding_window(monkeypatch):
    """Gemma 3 states its window in `text_config`, and a config may state it only in `layer_types`: such models'
    journals of the old rule were reused. Configs without a window keep their fingerprint."""
    from types import SimpleNamespace

    from transformers import Gemma3Config, LlamaConfig, Qwen2Config

    from nextlong.eval import heads_run
    from nextlong.eval.options import HeadsOptions

    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=8, vocab_size=64)
    gemma3 = Gemma3Config(text_config=dict(small, sliding_window=8),
                          vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2))
    assert getattr(gemma3, "sliding_window", None) is None  # only the text config states it
    layers_only = LlamaConfig(**small)
    layers_only.layer_types = ["full_attention", "sliding_attention"]
    windowed = [gemma3, layers_only, Qwen2Config(**small, use_sliding_window=True, sliding_window=16,
                                                 max_window_layers=1)]
    full = [LlamaConfig(**small), Qwen2Config(**small)]
    args = HeadsOptions(model="m", out="o")

    def fingerprints(configs):
        return [heads_run.journal_fingerprint(
            SimpleNamespace(identity={"folder": "m"}, prefill_attn="sdpa", tokenizer=SimpleNamespace(fingerprint="t"),
                            model=SimpleNamespace(config=c)), args, [256], [50.0], 1) for c in configs]

    before = fingerprints(windowed + full)
    monkeypatch.setattr(H, "SLIDING_REVISION", "an older rule")
    after = fingerprints(windowed + full)
    assert [a != b for a, b in zip(before, after)] == [True] * len(windowed) + [False] * len(full)


def _without_weights(monkeypatch, layers):
    """Llama attention that returns no weights in `layers` (as a hybrid's non-attention layers give none)."""
    from transformers.models.llama import modeling_llama

    real = modeling_llama.LlamaAttention.forward

    def forward(self, *args, **kwargs):
        out, weights = real(self, *args, **kwargs)
        return out, (None if self.layer_idx in layers else weights)

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", forward)


def test_a_layer_without_attention_weights_is_left_unscored(lm, trials, monkeypatch):
    """transformers leaves a layer that gives no weights out of `attentions`, so the scores of the layers that do
    were credited to it (broadcast over a 2-layer model) or the run stopped on a shape mismatch. Such layers are
    found before the work and left at 0; the others score as before."""
    trial = trials[1]
    start, end = trial.span
    forced = trial.prompt_ids[start:end]
    full = H.detect_trial(lm, trial, forced=forced).scores
    assert full[0].any(), full  # the equality below can fail
    _without_weights(monkeypatch, {1})
    assert H.attention_layers(lm) == [0]
    part = H.detect_trial(lm, trial, forced=forced, layers=[0]).scores
    assert part[0].tolist() == full[0].tolist() and not part[1].any()
    with pytest.raises(NextlongError, match="1 layers returned attention weights, expected 2"):
        H.detect_trial(lm, trial, forced=forced)


def test_heads_says_which_layers_it_left_unscored_and_refuses_a_model_without_weights(tmp_path, model_dir,
                                                                                      monkeypatch, capsys):
    from tests.helpers import assert_one_line_error

    args = ["heads", str(model_dir), "--lengths", "256", "--depths", "1", "--needles", "1", "--all-trials",
            "--max-new-tokens", "4", "--no-progress"]
    _without_weights(monkeypatch, {1})
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert "layers 1 (1 of 2) return no attention weights; their heads are not scored" in captured.err
    assert json.loads((tmp_path / "a" / "heads.json").read_text())["layers_without_attention_weights"] == [1]
    assert "Not scored: layers 1 (1 of 2), which return" in (tmp_path / "a" / "summary.md").read_text()
    _without_weights(monkeypatch, {0, 1})
    assert main(args + ["--out", str(tmp_path / "b")]) == 1
    line = assert_one_line_error(capsys.readouterr().err, "heads")
    assert "no layer of the model returns attention weights" in line and not (tmp_path / "b").exists()


def test_a_multimodal_gemma3_folder_is_scored_and_masked_on_its_text_layers(tmp_path, monkeypatch):
    """Gemma 3's released checkpoints are multimodal: their config names the layers and heads in text_config and the
    decoder layers lie under model.language_model. `heads` stopped with an AttributeError traceback ('Gemma3Config'
    object has no attribute 'num_hidden_layers'); it scores and masks the text model's heads."""
    from tests.eval_fixtures import multimodal_gemma3

    tok = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    vocab = len(json.loads(tok.read_text())["model"]["vocab"]) + 1
    folder = tmp_path / "gemma3"
    multimodal_gemma3(vocab, positions=1024).save_pretrained(folder)
    (folder / "tokenizer.json").write_bytes(tok.read_bytes())
    hooked, real = [], H.masked_heads

    @contextlib.contextmanager
    def recording(lm, heads):
        with real(lm, heads):  # the hooks on the text layer's output projection while the heads are masked
            hooked.append(len(H._layers(lm.model)[0].self_attn.o_proj._forward_pre_hooks))
            yield

    monkeypatch.setattr(H, "masked_heads", recording)
    assert main(["heads", str(folder), "--out", str(tmp_path / "out"), "--lengths", "256", "--depths", "1",
                 "--needles", "1", "--all-trials", "--max-new-tokens", "4", "--mask-heads", "1", "--no-progress"]) == 0
    assert sorted(json.loads((tmp_path / "out" / "head_scores.json").read_text())) == ["0-0", "0-1"]
    assert hooked == [1, 1]  # the top head, then a random other


@pytest.mark.parametrize("kind", ["gpt_neox", "falcon"])
def test_heads_are_masked_where_a_layers_attention_has_another_name(kind):
    """GPT-NeoX (Pythia) names a layer's attention `attention` and Falcon `self_attention`: --mask-heads stopped with
    an AttributeError traceback ('GPTNeoXLayer' object has no attribute 'attn'). Masking a head now changes the
    logits through that layer's output projection."""
    import transformers

    from nextlong.eval.model import LoadedModel

    config = (transformers.GPTNeoXConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2) if kind == "gpt_neox" else
              transformers.FalconConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    lm = LoadedModel(model, None, "model", "test", None, "sdpa", ())
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        plain = model(ids).logits
        with H.masked_heads(lm, [(1, 0)]):
            masked = model(ids).logits
        assert torch.equal(model(ids).logits, plain) and not torch.allclose(masked, plain)
