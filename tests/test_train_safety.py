"""nextlong train with untrusted folders and bad luck: checkpoints that could run code, a run that diverges,
a run that fails early or is killed while exporting, a full disk, an impossible --seq-len, no matplotlib, a
synthesize output read from another folder."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

import nextlong.train.checkpoint as ckpt
from nextlong.atomic import FILE_MODE
from nextlong.cli import main
from nextlong.errors import DiskFullError, NextlongError, UsageError
from nextlong.train import train
from nextlong.train.state_file import load_state
from tests.train_support import SAMPLE_LEN, corpus_and_tokenizer, dropout_model, synthesized

FAST = dict(model="tiny", progress=False, num_threads=1)


@pytest.fixture(scope="module")
def data():
    return synthesized("standard")


def _rows(run) -> list[dict]:
    """metrics.jsonl read as strict JSON (NaN or Infinity is an error)."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line, parse_constant=refuse) for line in lines if line]


def _one_error_line(capsys, command="train") -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nextlong {command}: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# --- checkpoints never run code --------------------------------------------------------------


class _Payload:
    """A pickle that creates `marker` when it is loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _to_pickle_format(checkpoint: Path) -> None:
    """Rewrite a checkpoint the way nextlong wrote them before: torch.save pickles, no "format"."""
    for f in sorted(checkpoint.glob("*.safetensors")):
        torch.save(load_state(f), f.with_suffix(".pt"))
        f.unlink()
    state = json.loads((checkpoint / "trainer.json").read_text())
    state.pop("format")
    (checkpoint / "trainer.json").write_text(json.dumps(state))


def test_a_pickle_planted_in_a_checkpoint_never_runs(data, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    opts = dict(steps=3, stop_after=2, **FAST)
    train(data, run, **opts)
    (checkpoint,) = ckpt.list_checkpoints(run)
    # beside the checkpoint's own files: never read
    for name in ("rank-0.pt", "model.pt", "optimizer.pt"):
        torch.save(_Payload(marker), checkpoint / name)
    train(data, run, resume=True, **opts)
    assert not marker.exists() and len(_rows(run)) == 3

    # a checkpoint of pickles only (as nextlong wrote them before): refused, the payload never runs
    run2 = tmp_path / "run2"
    train(data, run2, **opts)
    (checkpoint,) = ckpt.list_checkpoints(run2)
    state = json.loads((checkpoint / "trainer.json").read_text())
    state.pop("format", None)
    (checkpoint / "trainer.json").write_text(json.dumps(state))
    for name in ("rank-0", "model", "optimizer"):
        torch.save(_Payload(marker), checkpoint / f"{name}.pt")
    with pytest.raises(NextlongError, match="can run any code.*--trust-checkpoint"):
        train(data, run2, resume=True, **opts)
    argv = ["train", str(data), "--out", str(run2), "--steps", "3", "--resume", "--quiet", "--threads", "1"]
    capsys.readouterr()
    assert main(argv) == 1
    assert "--trust-checkpoint" in _one_error_line(capsys)
    assert not marker.exists()


def test_a_damaged_checkpoint_file_is_refused_in_one_line(data, tmp_path, capsys):
    run = tmp_path / "run"
    train(data, run, steps=3, stop_after=2, **FAST)
    (checkpoint,) = ckpt.list_checkpoints(run)
    (checkpoint / "rank-0.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(run), "--steps", "3", "--resume", "--quiet", "--threads", "1"]) == 1
    assert "rank-0.safetensors: unreadable checkpoint file" in _one_error_line(capsys)


def test_trust_checkpoint_converts_an_old_checkpoint_and_resume_is_exact(data, tmp_path):
    opts = dict(steps=4, batch_tokens=2 * SAMPLE_LEN, save_every=2, **FAST)
    train(data, tmp_path / "whole", **opts)
    run = tmp_path / "cut"
    train(data, run, stop_after=2, **opts)
    (checkpoint,) = ckpt.list_checkpoints(run)
    _to_pickle_format(checkpoint)
    with pytest.raises(NextlongError, match="--trust-checkpoint"):
        train(data, run, resume=True, **opts)
    with pytest.raises(UsageError, match="only applies with --resume"):
        train(data, tmp_path / "other", trust_checkpoint=True, **opts)

    train(data, run, resume=True, trust_checkpoint=True, stop_after=1, **opts)
    assert sorted(p.name for p in checkpoint.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                            "rank-0.safetensors", "trainer.json"]
    assert json.loads((checkpoint / "trainer.json").read_text())["format"] == ckpt.FORMAT
    assert {f.stat().st_mode & 0o777 for f in checkpoint.iterdir()} == {FILE_MODE}  # not private to the writer
    train(data, run, resume=True, **opts)  # the converted checkpoint needs no trust any more
    timing = ("tokens_per_s", "step_s", "peak_memory_mb")
    assert [{k: v for k, v in r.items() if k not in timing} for r in _rows(run)] == [
        {k: v for k, v in r.items() if k not in timing} for r in _rows(tmp_path / "whole")]
    last = [load_state(ckpt.list_checkpoints(r)[-1] / "model.safetensors") for r in (run, tmp_path / "whole")]
    assert last[0].keys() == last[1].keys() and all(torch.equal(last[0][k], last[1][k]) for k in last[0])


# --- divergence --------------------------------------------------------------------------------


def test_a_diverging_run_stops_keeps_the_last_good_checkpoint_and_writes_json(data, tmp_path, capsys):
    run = tmp_path / "run"
    opts = dict(steps=6, lr=1e9, warmup=0, save_every=1, keep_checkpoints=1, **FAST)
    with pytest.raises(NextlongError, match=r"step 2: the loss is nan.*diverged.*step 1 is saved \(.*step-00000001\)"):
        train(data, run, **opts)
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["loss"] is None and rows[1]["skipped"]
    (good,) = ckpt.list_checkpoints(run)
    assert good.name == "step-00000001"
    weights = load_state(good / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(run / "model").state_dict()
    assert all(torch.equal(t, weights["lm." + k]) for k, t in exported.items())
    assert json.loads((run / "manifest.json").read_text())["statistics"]["status"] == "diverged"

    capsys.readouterr()
    argv = ["train", str(data), "--out", str(tmp_path / "cli"), "--steps", "6", "--lr", "1e9", "--warmup", "0",
            "--quiet", "--threads", "1"]
    assert main(argv) == 1
    assert "training diverged" in _one_error_line(capsys)


def test_a_diverged_run_saves_its_last_good_step_and_resumes_with_skip_step_exactly(data, tmp_path, capsys):
    """With --save-every 0 (the default) a run stopped at its first non-finite step lost every step before it.
    It now saves the step before, with the data position, schedule and history from before the diverged step,
    and the advice it prints, --resume --nan-policy skip-step, goes on exactly as a run with skip-step from the
    start. At --lr 15 the tiny model's gradient norm overflows at step 4 and the later steps train again."""
    timing = ("tokens_per_s", "step_s", "peak_memory_mb")

    def rows(run):
        return [{key: v for key, v in r.items() if key not in timing} for r in _rows(run)]

    settings = ["--steps", "8", "--lr", "15", "--warmup", "0", "--model", "tiny", "--quiet", "--threads", "1"]
    whole, run = tmp_path / "whole", tmp_path / "run"
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(run), *settings]) == 1
    err = _one_error_line(capsys)
    k = json.loads((run / "manifest.json").read_text())["statistics"]["diverged_at_step"]
    assert main(["train", str(data), "--out", str(whole), "--nan-policy", "skip-step", "--save-every", str(k - 1),
                 "--keep-checkpoints", "8", *settings]) == 0
    assert [r["step"] for r in _rows(whole) if r.get("skipped")][:1] == [k]
    assert k >= 3 and not _rows(whole)[-1].get("skipped")  # steps before it to keep, and after it to train

    assert f"step {k}: " in err and "training diverged" in err and f"step {k - 1} is saved" in err
    assert "--resume --nan-policy skip-step" in err and f"--model {run} and a lower --lr" in err
    (saved,) = ckpt.list_checkpoints(run)
    assert saved.name == f"step-{k - 1:08d}"
    # what the uninterrupted run saved after step k - 1: the same schedule, optimizer, data position and history
    ours, theirs = (json.loads((c / "trainer.json").read_text()) for c in (saved, whole / "checkpoints" / saved.name))
    for state in (ours, theirs):
        state["history"] = [{key: v for key, v in r.items() if key not in timing} for r in state["history"]]
    assert ours == theirs
    for name in ("optimizer.safetensors", "rank-0.safetensors"):
        a, b = (dict(_tensors(load_state(c / name))) for c in (saved, whole / "checkpoints" / saved.name))
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), name
        # and what is not a tensor: the optimizer's scheduled lr, the stream's counters and generator
        assert str(load_state(saved / name)) == str(load_state(whole / "checkpoints" / saved.name / name)), name
    assert json.loads((run / "model" / "nextlong.json").read_text())["step"] == k - 1
    stats = json.loads((run / "manifest.json").read_text())["statistics"]
    assert (stats["status"], stats["steps"], stats["diverged_at_step"]) == ("diverged", k - 1, k)

    assert main(["train", str(data), "--out", str(run), "--resume", "--nan-policy", "skip-step", "--quiet",
                 "--threads", "1"]) == 0
    assert rows(run) == rows(whole)
    last = [load_state(ckpt.list_checkpoints(r)[-1] / "model.safetensors") for r in (run, whole)]
    assert last[0].keys() == last[1].keys() and all(torch.equal(last[0][n], last[1][n]) for n in last[0])


def test_skip_step_goes_on_without_applying_the_bad_updates(data, tmp_path):
    run = tmp_path / "run"
    summary = train(data, run, steps=4, lr=1e9, warmup=0, save_every=1, keep_checkpoints=4,
                    nan_policy="skip-step", **FAST)
    rows = _rows(run)
    assert summary["status"] == "finished" and summary["skipped_steps"] == 3
    assert [r.get("skipped", False) for r in rows] == [False, True, True, True]
    # a skipped step still uses up its place in the schedule (no warm-up: cosine from lr to 0.1 lr)
    assert [r["lr"] for r in rows] == pytest.approx([1e9 * (0.1 + 0.45 * (1 + math.cos(math.pi * s / 3)))
                                                     for s in range(4)])
    first, *_, last = ckpt.list_checkpoints(run)
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_state(first / name), load_state(last / name)
        flat_a, flat_b = (dict(_tensors(x)) for x in (a, b))
        assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), name


def _tensors(tree, path=""):
    if torch.is_tensor(tree):
        yield path, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _tensors(v, f"{path}/{k}")


def test_weights_that_are_not_finite_are_never_saved(data, tmp_path, monkeypatch):
    from nextlong.train.trainer import Trainer

    real_step = Trainer.step

    def overflow(self, batches):
        out = real_step(self, batches)
        with torch.no_grad():
            next(self.lm.parameters()).fill_(float("inf"))  # an update that overflowed, with a finite loss
        return out

    monkeypatch.setattr(Trainer, "step", overflow)
    run = tmp_path / "run"
    with pytest.raises(NextlongError, match="weights are no longer finite"):
        train(data, run, steps=1, **FAST)
    assert ckpt.list_checkpoints(run) == [] and not (run / "model").exists()
    # step 2 then diverges: the state before it, step 1, is not saved either
    with pytest.raises(NextlongError, match=r"step 2: .*diverged.*the weights after step 1 are not finite, so they "
                                            r"are not saved; no checkpoint was saved before it; lower --lr"):
        train(data, tmp_path / "run2", steps=3, **FAST)
    assert ckpt.list_checkpoints(tmp_path / "run2") == [] and not (tmp_path / "run2" / "model").exists()


# --- runs that fail early, exports that are killed --------------------------------------------------


def test_a_run_that_failed_before_its_first_step_does_not_block_a_rerun(data, tmp_path, monkeypatch):
    from nextlong.train.trainer import Trainer

    def broken(self, batches):
        raise RuntimeError("out of memory at step 0")

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(Trainer, "step", broken)
        with pytest.raises(RuntimeError):
            train(data, run, steps=2, **FAST)
    manifest = json.loads((run / "manifest.json").read_text())  # written before the first step, then the failure
    assert manifest["command"] == "train" and manifest["statistics"]["status"] == "failed"
    assert manifest["statistics"]["error"] == "out of memory at step 0" and manifest["statistics"]["steps"] == 0
    assert train(data, run, steps=2, **FAST)["status"] == "finished"
    assert json.loads((run / "manifest.json").read_text())["statistics"]["status"] == "finished"


def test_a_kill_at_any_rename_of_the_model_export_leaves_a_complete_model(data, tmp_path, monkeypatch):
    from nextlong.eval.model import resolve_model_folder

    run = tmp_path / "run"
    train(data, run, steps=1, **FAST)
    before = (run / "model" / "model.safetensors").read_bytes()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "model")
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    real_replace = os.replace
    for killed_at in range(1, 10):  # interrupt the export at its first rename, then its second, ...
        calls = []

        def killed(src, dst):
            calls.append(dst)
            if len(calls) == killed_at:
                raise KeyboardInterrupt("kill -9")
            real_replace(src, dst)

        with monkeypatch.context() as m:
            m.setattr(os, "replace", killed)
            try:
                ckpt.export_model(run, model, tokenizer_spec=None)
                break  # it made fewer renames: done
            except KeyboardInterrupt:
                pass
        folder, _ = resolve_model_folder(run)  # what `nextlong eval RUN` opens
        assert (folder / "model.safetensors").read_bytes() == before, killed_at
    after = AutoModelForCausalLM.from_pretrained(run / "model")
    assert torch.equal(after.model.norm.weight, model.model.norm.weight)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".model")) == [os.readlink(run / "model")]


def test_resuming_a_run_killed_between_its_last_checkpoint_and_its_model_export_exports_it(data, tmp_path,
                                                                                           monkeypatch):
    """A kill after the last step's checkpoint but before its model export left RUN/model one step behind;
    --resume finds nothing to train and must still export the checkpoint's weights (it once kept the stale
    model: found by the random-kill test below, 1 run in 10)."""
    whole, run = tmp_path / "whole", tmp_path / "run"
    train(data, whole, steps=3, save_every=1, **FAST)
    real_export = ckpt.export_model

    def killed_at_the_last(*args, step=None, **kwargs):
        if step == 3:
            raise KeyboardInterrupt("kill -9")
        return real_export(*args, step=step, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(ckpt, "export_model", killed_at_the_last)
        with pytest.raises(KeyboardInterrupt):
            train(data, run, steps=3, save_every=1, **FAST)
    assert ckpt.exported_step(run) == 2 and ckpt.list_checkpoints(run)[-1].name.endswith("3")
    train(data, run, steps=3, save_every=1, resume=True, **FAST)
    assert ckpt.exported_step(run) == 3
    assert (run / "model" / "model.safetensors").read_bytes() == (whole / "model" / "model.safetensors").read_bytes()
    exports = []
    with monkeypatch.context() as m:  # a finished run resumed again has nothing to redo
        m.setattr(ckpt, "export_model", lambda *a, **k: exports.append(k))
        train(data, run, steps=3, save_every=1, resume=True, **FAST)
    assert exports == []


# --- a full disk ---------------------------------------------------------------------------------


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    import safetensors.torch

    run = tmp_path / "run"
    opts = dict(steps=4, save_every=2, **FAST)
    real_save_file, real_torch_save = safetensors.torch.save_file, torch.save

    def full(writer):
        def write(obj, path, *args, **kwargs):
            if ".tmp-step-00000004" in str(path):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return writer(obj, path, *args, **kwargs)
        return write

    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", full(real_save_file))
        m.setattr(torch, "save", full(real_torch_save))
        with pytest.raises(DiskFullError, match=r"checkpoints/step-00000004: no space left on device"):
            train(data, run, **opts)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    train(data, run, resume=True, **opts)  # the previous checkpoint is intact
    assert [r["step"] for r in _rows(run)] == [1, 2, 3, 4]


def test_a_full_disk_while_exporting_the_model_is_one_line(data, tmp_path, monkeypatch, capsys):
    from transformers import PreTrainedModel

    def full(self, folder, *args, **kwargs):  # what safetensors raises: not an OSError
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    capsys.readouterr()
    argv = ["train", str(data), "--out", str(tmp_path / "run"), "--steps", "1", "--quiet", "--threads", "1"]
    assert main(argv) == 1
    assert "no space left on device" in _one_error_line(capsys)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".model")]


# --- settings found impossible before the first step --------------------------------------------


def test_an_impossible_seq_len_is_refused_before_any_work(data, tmp_path, monkeypatch, capsys):
    import nextlong.train.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda device, local_world=1: 16 << 30)
    with pytest.raises(UsageError, match=r"--seq-len 99999999 = 99,999,999 tokens per forward pass need at least "
                                         r"[\d.,]+ GiB of main memory .* but 16.0 GiB is available"):
        train(data, tmp_path / "run", seq_len=99_999_999, **FAST)
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(tmp_path / "cli"), "--seq-len", "99999999", "--micro-batch", "2",
                 "--batch-tokens", "199999998", "--quiet"]) == 2
    assert "--seq-len 99999999 x --micro-batch 2" in _one_error_line(capsys)
    assert not (tmp_path / "cli" / "metrics.jsonl").exists()


def test_running_out_of_memory_in_a_step_is_one_line(data, tmp_path, monkeypatch, capsys):
    from nextlong.train.trainer import Trainer

    def too_big(self, batches):  # what the CPU allocator raises past the floor the check counts
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 25599999744 bytes. Error code 12")

    monkeypatch.setattr(Trainer, "step", too_big)
    capsys.readouterr()
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--steps", "1", "--quiet", "--threads", "1"]) == 1
    assert f"step 1: out of memory with --seq-len {SAMPLE_LEN} x --micro-batch 1" in _one_error_line(capsys)


def test_without_matplotlib_the_run_completes_and_skips_the_plot(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    run = tmp_path / "run"
    capsys.readouterr()
    assert train(data, run, steps=1, **FAST)["status"] == "finished"
    notice = capsys.readouterr().err.strip()
    assert notice.startswith("nextlong train: loss.png not drawn (") and "matplotlib" in notice
    assert "\n" not in notice
    assert json.loads((run / "manifest.json").read_text())["statistics"]["status"] == "finished"
    assert not (run / "loss.png").exists()
    assert main(["plot", str(run)]) == 1
    assert "'matplotlib'" in _one_error_line(capsys, "plot")


# --- the synthesize output names its tokenizer so that it resolves from anywhere ---------------------


def test_a_relative_tokenizer_path_resolves_from_another_folder(tmp_path, monkeypatch):
    import shutil

    from nextlong import synthesize

    corpus, tok = corpus_and_tokenizer()
    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    made.mkdir()
    elsewhere.mkdir()
    shutil.copy(tok, made / "tok1k.json")
    monkeypatch.chdir(made)
    synthesize(corpus, "syn", method="standard", tokenizer="tok1k.json", target_length=SAMPLE_LEN, chunk_size=256,
               num_samples=4, progress=False)
    monkeypatch.chdir(elsewhere)
    # the data and the manifest alone (as a script that copies them): the manifest's absolute path of the
    # tokenizer is outside the folder, so it is used only when the user names it (SECURITY.md)
    (elsewhere / "bare").mkdir()
    shutil.copytree(made / "syn" / "data", elsewhere / "bare" / "data")
    shutil.copy(made / "syn" / "manifest.json", elsewhere / "bare")
    with pytest.raises(NextlongError, match="outside its folder.*--tokenizer PATH"):
        train("bare", "run1", steps=1, **FAST)
    train("bare", "run1", steps=1, tokenizer=str(made / "tok1k.json"), **FAST)
    # the whole output moved, the file it was made with gone: the copy inside the output
    (made / "tok1k.json").unlink()
    shutil.move(made / "syn", elsewhere / "moved")
    train("moved", "run2", steps=1, **FAST)
    spec = json.loads((elsewhere / "run2" / "model" / "nextlong.json").read_text())["tokenizer"]
    assert spec == "tok1k.json" and (elsewhere / "run2" / "model" / spec).is_file()


# --- every rank takes the same decision ---------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_both_stop_at_a_non_finite_loss(tmp_path):
    import subprocess

    data = synthesized("standard")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "nextlong",
           "train", str(data), "--out", str(tmp_path / "run"), "--steps", "6", "--lr", "1e9", "--warmup", "0",
           "--quiet", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("nextlong train: error: step 2: the loss is nan") == 2, proc.stderr[-3000:]
    # step 1, saved by both processes together when step 2 diverged (--save-every 0)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-00000001"]
    assert [r["step"] for r in _rows(tmp_path / "run")] == [1, 2]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """Real SIGKILLs (not exceptions) while steps, checkpoints and model exports are being written."""
    import random
    import signal
    import subprocess
    import time

    data = synthesized("standard")
    argv = [sys.executable, "-m", "nextlong", "train", str(data), "--steps", "8", "--save-every", "1", "--quiet",
            "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(argv + ["--out", str(tmp_path / "whole")], env=env, check=True, capture_output=True, timeout=300)
    run, rng = tmp_path / "killed", random.Random(0)
    for after_step in (2, 4, 6):
        proc = subprocess.Popen(argv + ["--out", str(run)] + (["--resume"] if run.exists() else []), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= after_step):
            assert proc.poll() is None, "ended before it could be killed"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert (run / "model" / "config.json").is_file()  # a complete model at every moment
    subprocess.run(argv + ["--out", str(run), "--resume"], env=env, check=True, capture_output=True, timeout=300)
    whole, killed = _rows(tmp_path / "whole"), _rows(run)
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in killed] == [(r["step"], r["loss"], r["grad_norm"])
                                                                        for r in whole]
    assert (run / "model" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model" /
                                                                 "model.safetensors").read_bytes()


def _eight_steps(data) -> list[str]:
    """`nextlong train` of the tiny model for 8 steps on `data` in a fresh process (--out to be added)."""
    return [sys.executable, "-m", "nextlong", "train", str(data), "--model", "tiny", "--steps", "8", "--threads", "1",
            "--quiet"]


@pytest.fixture(scope="module")
def eight_steps_whole(data, tmp_path_factory):
    """The uninterrupted run of _eight_steps: one for both signals below, not one per signal."""
    import subprocess

    whole = tmp_path_factory.mktemp("eight-steps") / "whole"
    assert subprocess.run(_eight_steps(data) + ["--out", str(whole)], capture_output=True, timeout=600).returncode == 0
    return whole


@pytest.mark.parametrize("sig", ["SIGINT", pytest.param("SIGTERM", marks=pytest.mark.slow)])
def test_ctrl_c_or_sigterm_saves_the_step_it_stops_at_and_resume_is_exact(data, eight_steps_whole, tmp_path, sig):
    """With the default --save-every 0, Ctrl-C after 3 of 8 steps used to lose all 3 (no checkpoint) while
    saying "finished work is kept". The signal now stops the run at the end of its step, which is saved;
    --resume finishes it with the same weights as an uninterrupted run."""
    import signal
    import subprocess
    import time

    from safetensors.torch import load_file

    args, whole = _eight_steps(data), eight_steps_whole
    run = tmp_path / "cut"
    proc = subprocess.Popen(args + ["--out", str(run)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and (not (run / "metrics.jsonl").is_file()
                                       or (run / "metrics.jsonl").read_text().count("\n") < 3):
        time.sleep(0.02)
    proc.send_signal(getattr(signal, sig))
    err = proc.communicate(timeout=300)[1]
    steps = len(_rows(run))
    assert proc.returncode == 130, err
    assert 3 <= steps < 8 and f"after step {steps} of 8; its checkpoint is saved" in err.strip().splitlines()[-1]
    assert [p.name for p in ckpt.list_checkpoints(run)][-1:] == [f"step-{steps:08d}"]
    done = subprocess.run(args + ["--out", str(run), "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert [r["loss"] for r in _rows(run)] == [r["loss"] for r in _rows(whole)]
    a, b = load_file(whole / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the end of a run: a signal during the final save, a manifest left "running", a damaged --model ------------


def test_a_signal_during_the_final_save_is_noted_and_the_run_is_kept(data, tmp_path):
    """The signal handlers were given back before the final checkpoint: a first Ctrl-C or SIGTERM during it
    killed the run with its last steps unsaved (and the message said the checkpoints were kept)."""
    import subprocess

    run = tmp_path / "run"
    script = f"""
import os, signal
import nextlong.train.checkpoint as ckpt
from nextlong.train import train
real = ckpt.save_checkpoint
def save(*args, **kw):
    signal.raise_signal(signal.SIGTERM)  # arrives while the final checkpoint is written
    return real(*args, **kw)
ckpt.save_checkpoint = save
print(train({str(data)!r}, {str(run)!r}, steps=3, model="tiny", progress=False, num_threads=1)["status"])
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "finished", proc.stderr[-2000:]
    assert "SIGTERM" in proc.stderr
    assert ckpt.list_checkpoints(run)[-1].name.endswith("00000003") and (run / "model" / "model.safetensors").exists()
    assert json.loads((run / "manifest.json").read_text())["statistics"]["status"] == "finished"


def test_a_finished_run_whose_manifest_still_says_running_gets_its_final_manifest(data, tmp_path):
    """A kill while the final manifest was written left "running"; resuming the finished run kept it forever."""
    run = tmp_path / "run"
    train(data, run, steps=2, **FAST)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["statistics"] = {"status": "running", "steps": 0}
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert train(data, run, steps=2, resume=True, **FAST)["status"] == "finished"
    assert json.loads((run / "manifest.json").read_text())["statistics"]["status"] == "finished"


def test_a_model_with_a_nan_weight_is_refused_before_any_step(data, tmp_path):
    """It failed at step 1 with 'training diverged ... lower --lr'."""
    from safetensors.torch import load_file, save_file

    first = tmp_path / "first"
    train(data, first, steps=1, **FAST)
    weights = load_file(first / "model" / "model.safetensors")
    name = next(k for k in weights if k.endswith("down_proj.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, first / "model" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NextlongError, match=r"the weight .*down_proj.weight holds a NaN or an infinity"):
        train(data, tmp_path / "second", steps=1, **dict(FAST, model=str(first / "model")))
    assert not (tmp_path / "second").exists()  # refused in setup: nothing left behind


def test_a_resume_on_changed_data_says_so(tmp_path, capsys):
    """Only the data's path was compared: a run resumed on other rows went on silently, and its manifest's
    data fingerprint was replaced."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthesized("standard"), data)
    run = tmp_path / "run"
    train(data, run, steps=4, stop_after=2, **FAST)
    capsys.readouterr()
    shutil.rmtree(data)
    shutil.copytree(synthesized("nextlong"), data)  # the same length and tokenizer, other rows
    train(data, run, steps=4, resume=True, **FAST)
    assert "warning: the data changed since step 2 was saved" in capsys.readouterr().err
    assert json.loads((run / "manifest.json").read_text())["settings"]["data_changed_at_step"] == 2


def test_a_resume_with_a_changed_scorer_says_so(data, tmp_path, capsys):
    """Only --scorer's path was compared: a scorer folder that changed between the two invocations (a run
    folder trained on meanwhile) scored the resumed steps silently with other weights. The first change's
    step stays in the manifest through later resumes."""
    from safetensors.torch import load_file, save_file

    scorer = tmp_path / "scorer"
    train(data, scorer, steps=1, **FAST)
    run = tmp_path / "run"
    opts = dict(FAST, token_weighting="longce", scorer=str(scorer), short_window=64, short_stride=64)
    train(data, run, steps=6, stop_after=2, **opts)
    train(data, run, steps=6, stop_after=2, resume=True, **opts)  # unchanged: no warning
    assert "warning" not in capsys.readouterr().err
    weights = load_file(scorer / "model" / "model.safetensors")
    name = next(k for k in weights if k.endswith("down_proj.weight"))
    weights[name] *= 2
    save_file(weights, scorer / "model" / "model.safetensors", metadata={"format": "pt"})
    train(data, run, steps=6, stop_after=1, resume=True, **opts)
    err = capsys.readouterr().err
    assert f"warning: --scorer {scorer}: its files changed since step 4 was saved" in err
    settings = json.loads((run / "manifest.json").read_text())["settings"]
    assert settings["scorer_changed_at_step"] == 4 and "data_changed_at_step" not in settings
    (scorer / "model" / ".cache").mkdir()  # what loading does not read does not count
    (scorer / "model" / ".cache" / "lock").write_text("x")
    train(data, run, steps=6, resume=True, **opts)  # the same (changed) scorer: no new warning, the step kept
    assert "warning" not in capsys.readouterr().err
    settings = json.loads((run / "manifest.json").read_text())["settings"]
    assert settings["scorer_changed_at_step"] == 4 and settings["scorer_identity"]["files"] >= 2
    save_file(load_file(scorer / "model" / "model.safetensors"), scorer / "model" / "model.safetensors",
              metadata={"format": "pt"})
    train(data, run, steps=6, resume=True, **opts)  # finished: no step runs, so nothing to warn about
    assert "warning" not in capsys.readouterr().err


def test_a_bad_row_met_mid_run_keeps_the_steps_before_it(tmp_path):
    """A row that fails when read (here an id past the vocabulary) ended the run with every step since the
    last checkpoint lost (with --save-every 0, all of them). They are saved first, with the data position from
    before the failed read, so fixing the row and resuming gives exactly the uninterrupted run's weights."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    src = synthesized("standard")
    files = sorted((src / "data").glob("*.parquet"))
    table = pq.read_table(files[0])
    data = tmp_path / "data"
    for row in range(table.num_rows):  # the first row whose damage is met after a step, not in setup
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(src, data)
        ids = table.column("input_ids").to_pylist()
        ids[row][3] = 10**6
        column = pa.array(ids, table.schema.field("input_ids").type)
        pq.write_table(table.set_column(table.schema.get_field_index("input_ids"), "input_ids", column),
                       data / "data" / files[0].name)
        run = tmp_path / f"run-{row}"
        with pytest.raises(NextlongError, match="vocabulary|token id"):
            train(data, run, steps=6, **FAST)
        if (run / "metrics.jsonl").exists():  # a run refused in setup writes none
            break
    else:
        pytest.skip("every damaged row was read before the first step")
    done = _rows(run)[-1]["step"]
    assert ckpt.list_checkpoints(run)[-1].name == f"step-{done:08d}"  # kept, though --save-every is 0
    shutil.rmtree(data)
    shutil.copytree(src, data)  # the row fixed
    resumed = train(data, run, steps=6, resume=True, **FAST)
    whole = train(data, tmp_path / "whole", steps=6, **FAST)
    assert resumed["status"] == whole["status"] == "finished"
    assert (run / "model" / "model.safetensors").read_bytes() == \
        (tmp_path / "whole" / "model" / "model.safetensors").read_bytes()


def test_throughput_counts_real_tokens_not_padding(data, tmp_path):
    """With --seq-len 384 on 256-token samples a third of every step is padding; tokens_per_s counted it."""
    run = tmp_path / "run"
    summary = train(data, run, steps=2, seq_len=SAMPLE_LEN + SAMPLE_LEN // 2, **FAST)
    rows = _rows(run)
    seq = SAMPLE_LEN + SAMPLE_LEN // 2
    for r in rows:  # the padding closing each 384-token sequence after its one 256-token sample
        assert r["padding_tokens"] == r["tokens"] // r["step"] * (seq - SAMPLE_LEN) // seq
        assert r["tokens_per_s"] == pytest.approx((r["tokens"] // r["step"] - r["padding_tokens"]) / r["step_s"],
                                                  rel=0.01)
    assert summary["padding_tokens"] == sum(r["padding_tokens"] for r in rows) > 0
    packed = train(data, tmp_path / "packed", steps=2, **FAST)
    assert packed["padding_tokens"] == 0


def test_a_signal_repeated_at_once_is_one_request():
    """A scheduler that signals every process of a job (Slurm's scancel, a time limit) reaches a torchrun worker
    twice, directly and forwarded by torchrun: the second signal stopped the run at once, losing the steps
    since the last checkpoint. Within SAME_REQUEST_S it is the same request; a later one still acts at once."""
    import signal
    import time

    from nextlong.train.trainer import _StopRequest

    # raise_signal: to this thread, handled before the next line. os.kill to the process may reach another thread
    # of it, whose turn can come after a sleep of any length on a loaded machine (the test failed so, once).
    stop = _StopRequest()
    try:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        stop._at -= stop.SAME_REQUEST_S  # the window has passed: Ctrl-C now is a second request
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.05)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_during_setup_says_what_the_run_folder_holds(data, tmp_path, capsys, monkeypatch, request):
    """SIGTERM during train's setup (before its step loop takes signals) said "checkpoints are kept: run the
    same command with --resume" where nothing had been written and --out did not exist. Now the line says what
    is there: nothing, a run without a checkpoint, or the checkpoints --resume continues from."""
    import signal
    import time

    from nextlong.train.trainer import Trainer

    common = ["--steps", "2", "--quiet", "--threads", "1"]
    done = tmp_path / "done"
    assert main(["train", str(data), "--out", str(done), "--stop-after", "1", *common]) == 0
    bare = tmp_path / "bare"
    assert main(["train", str(data), "--out", str(bare), "--stop-after", "1", *common]) == 0
    import shutil

    shutil.rmtree(bare / "checkpoints")

    def setup(self):
        signal.raise_signal(signal.SIGTERM)
        time.sleep(5)  # the handler raises first
        raise AssertionError("SIGTERM was not taken")

    monkeypatch.setattr(Trainer, "setup", setup)
    # the CLI leaves an embedding program's own handler in place: an in-process Ray test run before this one
    # leaves ray.init's, so the process's default is put back for this test
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    request.addfinalizer(lambda: signal.signal(signal.SIGTERM, previous))
    new = tmp_path / "new"
    assert main(["train", str(data), "--out", str(new), *common]) == 143
    assert capsys.readouterr().err.strip() == ("nextlong train: terminated (SIGTERM) before training started; "
                                               "nothing was written: run the command again")
    assert not new.exists()
    new.mkdir()  # an empty folder of the user's: no run ever was there either
    assert main(["train", str(data), "--out", str(new), *common]) == 143
    assert capsys.readouterr().err.strip().endswith("before training started; nothing was written: run the command again")
    assert main(["train", str(data), "--out", str(bare), "--resume", *common]) == 143
    assert capsys.readouterr().err.strip() == (
        "nextlong train: terminated (SIGTERM) before the run's first checkpoint; nothing was saved to resume from: "
        "run the command again (with --resume, the run starts again from step 0)")
    assert main(["train", str(data), "--out", str(done), "--resume", *common]) == 143
    assert capsys.readouterr().err.strip() == ("nextlong train: terminated (SIGTERM); the run's checkpoints are kept: "
                                               "run the same command with --resume to continue")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_resume_does_not_follow_a_model_path_the_run_folder_names(data, tmp_path, capsys):
    """A run folder is untrusted: a manifest whose settings name a model at any path made `--resume` load it, train
    it and export its weights (a fresh run without a checkpoint). A preset name is still taken from the manifest;
    a path must be given again."""
    other = tmp_path / "elsewhere"
    train(data, other, steps=1, **FAST)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--steps", "2", "--stop-after", "1", "--quiet",
                 "--threads", "1", "--model", "tiny"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    for name, value in (("model", str(other)), ("scorer", str(other))):
        crafted = {**manifest, "settings": {**manifest["settings"], name: value,
                                            **({"token_weighting": "dense"} if name == "scorer" else {})}}
        (run / "manifest.json").write_text(json.dumps(crafted))
        assert main(["train", str(data), "--out", str(run), "--resume", "--quiet", "--threads", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == (f"nextlong train: error: {run / 'manifest.json'}: the run's --{name} is {str(other)!r}, a "
                       f"path, which a run folder's manifest cannot choose: give it again (--{name} PATH) to resume")
        with pytest.raises(UsageError, match=f"the run's --{name} is .*, a path"):
            train(data, run, resume=True, progress=False, num_threads=1)
    (run / "manifest.json").write_text(json.dumps(manifest))  # "tiny", a preset: taken from the manifest
    assert main(["train", str(data), "--out", str(run), "--resume", "--quiet", "--threads", "1"]) == 0


def test_a_bad_value_restored_from_the_run_is_named_as_the_runs():
    """TrainConfig.validate named a bad --lr (or --grad-clip, ...) that --resume took from a crafted or old manifest as
    if the user had typed it (attack s14 #2)."""
    from nextlong.train.config import TrainConfig

    for name, value in (("lr", 1e20), ("grad_clip", -1.0), ("min_lr_ratio", 2.0), ("micro_batch", 0)):
        for restored, tail in ((frozenset({name}), " (from the run's manifest)"), (frozenset(), "")):
            with pytest.raises(UsageError) as info:
                TrainConfig(data=["x"], out="o", restored=restored, **{name: value}).validate()
            assert str(info.value).startswith(f"--{name.replace('_', '-')} must") and str(info.value).endswith(
                f"got {value}{tail}"), str(info.value)


def test_the_collective_timeout_is_checked_and_may_change_on_resume():
    """--collective-timeout (seconds) from Python too: 0, a negative or an infinite wait is refused in one line;
    it bounds how long a run waits for a hung process, not what a step computes, so a resume may change it."""
    from nextlong.train.config import TrainConfig

    for value in (0, -1.0, float("inf")):
        with pytest.raises(UsageError, match="--collective-timeout must be a positive number of seconds"):
            TrainConfig(data=["x"], out="o", collective_timeout=value).validate()
    cfg = TrainConfig(data=["x"], out="o", collective_timeout=2.5).validate()
    assert cfg.to_dict()["collective_timeout"] == 2.5 and "collective_timeout" not in cfg.run_defining()


def test_python_resume_takes_the_recorded_settings(data, tmp_path):
    """train(data, run, resume=True) continues a run with its own settings, as `nextlong train DATA --out RUN
    --resume` does; it was refused ("cannot resume with other settings") unless every setting was repeated.
    A setting given anew that differs is still refused."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    settings = dict(steps=4, lr=3e-3, warmup=1, seed=5, **FAST)
    train(data, whole, **settings)
    train(data, cut, stop_after=2, **settings)
    done = train(data, cut, resume=True, progress=False, num_threads=1)
    assert done["status"] == "finished" and done["steps"] == 4
    assert [r["loss"] for r in _rows(cut)] == [r["loss"] for r in _rows(whole)]
    with pytest.raises(NextlongError, match=r"cannot resume with other settings \(seed: saved 5, now 6\)"):
        train(data, cut, resume=True, seed=6, progress=False)
    # a setting given anew is refused by name before the run's own settings are checked against it: the run's
    # batch_tokens (never given here) was named as if given, "--batch-tokens N must be a multiple of --seq-len 2N"
    seq_len = json.loads((cut / "manifest.json").read_text())["settings"]["seq_len"]
    with pytest.raises(NextlongError, match=rf"cannot resume with other settings \(seq_len: saved {seq_len}, now "
                                            rf"{2 * seq_len}; steps: saved 4, now 8\); to train on from it, start a new "
                                            rf"run with --model {cut} and another --out"):
        train(data, cut, resume=True, seq_len=2 * seq_len, steps=8, progress=False)
    # a run killed before its first checkpoint has nothing to resume: --resume starts it from step 0 with the
    # settings given (the early refusal above blocked it both ways: "already holds a training run" without
    # --resume, "cannot resume with other settings" with it)
    import shutil

    from nextlong.train.checkpoint import list_checkpoints

    for saved in list_checkpoints(cut):
        shutil.rmtree(saved)
    done = train(data, cut, resume=True, seed=6, steps=2, progress=False, num_threads=1)
    assert done["status"] == "finished" and done["steps"] == 2 and len(_rows(cut)) == 2


def test_a_setting_restored_before_the_first_checkpoint_is_named_as_the_runs(data, tmp_path, capsys):
    """Before its first checkpoint a run resumed with --resume starts from step 0, the options given anew
    replacing the recorded ones and the rest taken from its manifest. A restored setting that no longer fits a
    new one was named as if typed: "--batch-tokens 256 must be a multiple of --seq-len 512", with no
    --batch-tokens on the command line. Now it says where the value came from (CLI and Python)."""
    import shutil

    from nextlong.train.checkpoint import list_checkpoints

    run = tmp_path / "run"
    common = ["--quiet", "--threads", "1"]
    assert main(["train", str(data), "--out", str(run), "--steps", "3", "--stop-after", "1", *common]) == 0
    for saved in list_checkpoints(run):
        shutil.rmtree(saved)
    (run / "metrics.jsonl").unlink()  # as a run killed before its first checkpoint leaves it
    recorded = json.loads((run / "manifest.json").read_text())["settings"]
    seq, batch = recorded["seq_len"], recorded["batch_tokens"]
    assert batch == seq  # the default, one sequence per step, recorded resolved
    assert main(["train", str(data), "--out", str(run), "--resume", "--seq-len", str(2 * seq), *common]) == 2
    err = _one_error_line(capsys)
    assert f"--batch-tokens {batch} (from the run's manifest) must be a multiple of --seq-len {2 * seq}" in err, err
    with pytest.raises(UsageError, match=rf"^--batch-tokens {batch} \(from the run's manifest\) must be a multiple "
                                         rf"of --seq-len {2 * seq}$"):
        train(data, run, resume=True, seq_len=2 * seq, progress=False, num_threads=1)
    # a setting the user gives is named plainly, beside the run's
    with pytest.raises(UsageError, match=rf"^--batch-tokens {seq + 1} must be a multiple of --seq-len {seq} \(from "
                                         r"the run's manifest\)$"):
        train(data, run, resume=True, batch_tokens=seq + 1, progress=False, num_threads=1)
    # options given anew replace the recorded ones: the run starts again from step 0 with them
    done = train(data, run, resume=True, seq_len=2 * seq, batch_tokens=2 * seq, progress=False, num_threads=1)
    assert done["status"] == "finished" and [r["step"] for r in _rows(run)] == [1, 2, 3]
    settings = json.loads((run / "manifest.json").read_text())["settings"]
    assert (settings["seq_len"], settings["batch_tokens"]) == (2 * seq, 2 * seq) and "restored" not in settings


# --- what --out and --resume may be given ------------------------------------------------------------


def test_an_out_holding_another_commands_output_or_the_data_is_refused(data, tmp_path, capsys):
    """--out holding a `nextlong synthesize` output (the DATA folder itself, too) had its manifest replaced by
    the run's and checkpoints written among the data, with or without --resume; a plain Parquet folder given
    as DATA and --out got the run's files. Now each is one line before any work, and the folder is untouched."""
    import shutil

    other = tmp_path / "synthesized"
    shutil.copytree(data, other)
    before = (other / "manifest.json").read_bytes()
    common = ["--steps", "1", "--quiet", "--threads", "1"]
    for argv in (["train", str(data), "--out", str(other), *common],
                 ["train", str(data), "--out", str(other), "--resume", *common],
                 ["train", str(data), "--out", str(other), "--resume", "--quiet"],  # the short form
                 ["train", str(other), "--out", str(other), *common]):
        assert main(argv) == 1, argv
        err = _one_error_line(capsys)
        assert f"{other}: holds the output of a `nextlong synthesize` run (its manifest.json); give `nextlong train` " \
               "a new folder" in err, err
    assert (other / "manifest.json").read_bytes() == before
    assert not (other / "checkpoints").exists() and not (other / "metrics.jsonl").exists()

    plain = tmp_path / "plain"
    plain.mkdir()
    for part in sorted((data / "data").glob("*.parquet")):
        shutil.copy2(part, plain / part.name)
    argv = ["train", str(plain), "--out", f"{plain}/", "--seq-len", str(SAMPLE_LEN), "--tokenizer",
            str(corpus_and_tokenizer()[1]), *common]
    assert main(argv) == 1
    assert f"{plain} is the DATA folder {plain}: give --out a new folder" in _one_error_line(capsys)
    assert sorted(p.name for p in plain.iterdir()) == sorted(p.name for p in (data / "data").glob("*.parquet"))


def test_resume_of_a_run_killed_before_its_manifest_is_refused_in_the_short_form(data, tmp_path, capsys):
    """A run killed during setup leaves --out holding only its lock file. `--resume` without settings then
    trained a new run with the defaults ("no checkpoint ...; starting from step 0"), not the killed run's
    settings, which were never recorded. Now the short form is refused in one line (CLI and Python); a resume
    that gives settings starts from step 0 with them, and an --out that does not exist starts fresh."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".nextlong.lock").write_text("12345\n")  # what a kill -9 in setup leaves
    assert main(["train", str(data), "--out", str(run), "--resume", "--quiet", "--threads", "1"]) == 1
    err = _one_error_line(capsys)
    assert (f"{run} records no settings to resume from (it stopped before writing its manifest): give the "
            "settings again, or run without --resume") in err, err
    with pytest.raises(NextlongError, match="records no settings to resume from"):
        train(data, run, resume=True, progress=False, num_threads=1)
    assert sorted(p.name for p in run.iterdir()) == [".nextlong.lock"]

    assert main(["train", str(data), "--out", str(run), "--resume", "--steps", "3", "--lr", "0.003",
                 "--stop-after", "1", "--quiet", "--threads", "1"]) == 0
    settings = json.loads((run / "manifest.json").read_text())["settings"]
    assert settings["steps"] == 3 and settings["lr"] == 0.003
    # now recorded: the short form continues it
    assert main(["train", str(data), "--out", str(run), "--resume", "--quiet", "--threads", "1"]) == 0
    assert [r["step"] for r in _rows(run)] == [1, 2, 3]
    fresh = tmp_path / "fresh"  # job scripts pass --resume always
    assert main(["train", str(data), "--out", str(fresh), "--resume", "--stop-after", "1", "--quiet",
                 "--threads", "1"]) == 0
    assert [r["step"] for r in _rows(fresh)] == [1]


def test_errors_read_from_the_run_before_training_are_said_once_per_node(data, tmp_path, capsys, monkeypatch):
    """Under torchrun every rank reads the run's manifest before training: a rank other than a node's first
    exits with the error's status without printing it again."""
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr("nextlong.cli._end_torchrun_rank", lambda code: None)
    assert main(["train", str(data), "--out", str(run), "--resume", "--quiet"]) == 1
    assert capsys.readouterr().err == ""


def test_a_model_with_attention_dropout_under_our_attention_is_a_usage_error(data, tmp_path, capsys):
    """Our attention applies no dropout: the default --attention nextlong died at step 1 with a 93-line
    NotImplementedError traceback (and a `failed` manifest). Now it is refused at setup, naming the fix."""
    model = dropout_model(tmp_path / "model")
    capsys.readouterr()  # transformers' own save bar (shown unless an earlier test turned its bars off)
    run = tmp_path / "run"
    assert main(["train", str(data), "--model", str(model), "--out", str(run), "--steps", "1", "--quiet",
                 "--threads", "1"]) == 2
    err = _one_error_line(capsys)
    assert f"--model {model}: its config sets attention_dropout = 0.5" in err, err
    assert "pass --attention sdpa, or set attention_dropout to 0 in" in err and str(model / "config.json") in err
    assert not run.exists()


def test_the_summary_line_counts_skipped_steps(data, tmp_path, capsys):
    """A skip-step run whose later steps were all skipped printed `loss X -> X` (the last finite loss, step
    1's) with no hint that 3 steps were skipped."""
    run = tmp_path / "skip"
    assert main(["train", str(data), "--out", str(run), "--steps", "4", "--lr", "1e9", "--warmup", "0",
                 "--nan-policy", "skip-step", "--no-progress", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "finished: 4 steps" in err and " (3 skipped: not finite), " in err, err


def test_resume_takes_the_same_data_however_spelled(data, tmp_path, monkeypatch):
    """A resume refused the same data folder given relative or with a trailing '/' ("data: saved [...], now
    [...]"); another folder (even a copy) is still refused."""
    cut = tmp_path / "cut"
    settings = dict(steps=3, lr=3e-3, warmup=1, **FAST)
    train(str(data), cut, stop_after=1, **settings)
    monkeypatch.chdir(data.parent)
    train(data.name, cut, resume=True, stop_after=1, **settings)
    assert train(f"{data}/", cut, resume=True, **settings)["steps"] == 3
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    with pytest.raises(NextlongError, match=r"cannot resume with other settings \(data: saved"):
        train(copy, cut, resume=True, **settings)


def test_the_bar_shows_each_steps_own_loss(data, tmp_path, capsys, monkeypatch):
    """The postfix was set after update() had drawn the bar, so each drawing showed the step before (at 3/3,
    step 2's loss, until the bar closed)."""
    import tqdm

    class EveryStep(tqdm.tqdm):  # draws every step, however fast (the trainer imports tqdm when it runs)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mininterval=0, miniters=1, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", EveryStep)
    train(data, tmp_path / "r", steps=3, **dict(FAST, progress=True))
    drawn = capsys.readouterr().err.split("\r")
    losses = [f"{r['loss']:.4f}" for r in _rows(tmp_path / "r")]
    for step, loss in enumerate(losses, 1):
        frame = next(f for f in drawn if f" {step}/3 " in f)
        assert f"loss={loss}" in frame, (step, frame)
