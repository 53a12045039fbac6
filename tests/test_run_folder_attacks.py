"""`nextlong train` given run folders and data folders made by someone else (SECURITY.md): links out of the
run folder, FIFOs where files belong, crafted checkpoints and manifests, a tokenizer named outside the data
folder. Each is refused in one line before any work: nothing outside is read, deleted or written, nothing
hangs, nothing is loaded in part. The cases are the attack reproducers of issue 24's review."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import nextlong.train.checkpoint as ckpt
from nextlong.cli import main
from nextlong.errors import NextlongError
from nextlong.train import train
from tests.train_support import corpus_and_tokenizer, synthesized

FAST = dict(model="tiny", progress=False, num_threads=1)
STEPS = 6
HANG = 120  # seconds: a command that has not ended by then hangs (it takes a few seconds)


@pytest.fixture(scope="module")
def data():
    return synthesized("standard")


@pytest.fixture(scope="module")
def base(data, tmp_path_factory):
    """A run stopped after 2 of 6 steps: RUN/checkpoints/step-00000002."""
    run = tmp_path_factory.mktemp("base") / "run"
    train(data, run, steps=STEPS, stop_after=2, **FAST)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000002"]
    return run


def _copy(base: Path, tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(base, run, symlinks=True)
    return run, run / "checkpoints" / "step-00000002"


def _resume_argv(data, run) -> list[str]:
    return ["train", str(data), "--out", str(run), "--resume", "--quiet", "--threads", "1"]


def _one_line(capsys, status: int, code: int = 1) -> str:
    err = capsys.readouterr().err.strip()
    assert status == code, err
    assert err.startswith("nextlong train: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _steps_logged(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def _cli(argv: list[str]) -> subprocess.CompletedProcess:
    """The command in a process of its own, killed after HANG seconds: a FIFO read must never hang CI."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        return subprocess.run([sys.executable, "-m", "nextlong", *argv], env=env, capture_output=True, text=True,
                              timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"nextlong {' '.join(argv[:2])} hung (killed after {HANG} s)")


def _assert_one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 1, err[-2000:]
    assert err.startswith("nextlong train: error: ") and "\n" not in err and "Traceback" not in err, err[-2000:]
    for word in words:
        assert word in err, err
    return err


# --- links out of the run folder -----------------------------------------------------------------


def test_checkpoints_folder_linked_out_of_the_run_is_refused_and_nothing_outside_is_deleted(data, base, tmp_path,
                                                                                              capsys):
    victim = tmp_path / "victim"
    for name in ("step-00000000", "step-00000001"):
        (victim / name).mkdir(parents=True)
        (victim / name / "precious.txt").write_text("someone else's data")
    shutil.copytree(base / "checkpoints" / "step-00000002", victim / "step-00000002")  # a valid checkpoint
    run = tmp_path / "run"
    run.mkdir()
    for name in ("manifest.json", "metrics.jsonl"):
        shutil.copy(base / name, run / name)
    (run / "checkpoints").symlink_to("../victim")
    capsys.readouterr()
    err = _one_line(capsys, main(_resume_argv(data, run)))
    assert "checkpoints: is a symbolic link, not a folder of the run" in err
    assert sorted(p.name for p in victim.iterdir()) == ["step-00000000", "step-00000001", "step-00000002"]
    assert (victim / "step-00000000" / "precious.txt").read_text() == "someone else's data"
    assert _steps_logged(run) == [1, 2]  # nothing trained, nothing rewritten


def test_a_checkpoint_linked_from_elsewhere_is_not_resumed(data, base, tmp_path, capsys):
    run, checkpoint = _copy(base, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(checkpoint, elsewhere)
    checkpoint.symlink_to(elsewhere)
    capsys.readouterr()
    err = _one_line(capsys, main(_resume_argv(data, run)))
    assert "step-00000002: is a symbolic link, not a checkpoint folder of the run" in err
    assert _steps_logged(run) == [1, 2]


@pytest.mark.parametrize("name", ["step-00000006", ".tmp-step-00000006"])
def test_the_next_checkpoints_name_linked_out_is_refused_and_its_target_kept(data, base, tmp_path, capsys, name):
    """step-<last> (replaced when saved) and .tmp-step-<last> (cleared when saved) as links to a folder
    elsewhere: the save would delete it, or write the checkpoint into it (a traceback before)."""
    run, checkpoint = _copy(base, tmp_path)
    victim = tmp_path / "victim_ck"
    shutil.copytree(checkpoint, victim)
    (run / "checkpoints" / name).symlink_to(victim)
    capsys.readouterr()
    err = _one_line(capsys, main(_resume_argv(data, run)))
    assert f"{name}: is a symbolic link" in err
    assert sorted(p.name for p in victim.iterdir()) == sorted(p.name for p in checkpoint.iterdir())


@pytest.mark.parametrize("name", ["step-\u00b2", "step-\uff13", "step-2", "step-3", "step-000000003"])
def test_a_step_folder_named_with_other_digits_is_not_a_checkpoint(data, base, tmp_path, capsys, name):
    """'²' and '３' are digits to str.isdigit(): int('²') raised a ValueError traceback, and 'step-３' was read as
    step 3. 'step-2' beside step-00000002 was a second checkpoint of step 2 (resume read either, rotation deleted
    either), and 'step-3' or 'step-000000003' the newest, read and refused. nextlong names a checkpoint `step-` and
    8 ASCII digits (more past step 99,999,999) only; anything else is not one of its checkpoints."""
    run, checkpoint = _copy(base, tmp_path)
    shutil.copytree(checkpoint, run / "checkpoints" / name)
    assert ckpt.list_checkpoints(run) == [checkpoint]
    capsys.readouterr()
    # --keep-checkpoints 1: saving step 3 deletes step 2
    assert main([*_resume_argv(data, run), "--stop-after", "1", "--keep-checkpoints", "1"]) == 0, \
        capsys.readouterr().err
    assert _steps_logged(run) == [1, 2, 3]
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000003"]
    assert (run / "checkpoints" / name).is_dir()  # not ours: neither read nor deleted


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_the_data_subfolder_of_a_data_folder_is_read_only_inside_it(data, tmp_path, capsys, target):
    """DATA/data as a symbolic link: each Parquet file was checked to lie in the folder the link points to, so a
    data folder handed over could make the run train on files anywhere on the disk. A link within DATA is its own."""
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    moved = tmp_path / "elsewhere" if target == "outside" else folder / "parts"
    shutil.move(folder / "data", moved)
    (folder / "data").symlink_to(moved)
    capsys.readouterr()
    status = main(["train", str(folder), "--out", str(tmp_path / "run"), "--steps", "1", "--quiet", "--threads", "1"])
    if target == "inside":
        assert status == 0, capsys.readouterr().err
        return
    err = _one_line(capsys, status)
    assert f"{folder / 'data'}: a symbolic link out of the data folder" in err, err
    assert not (tmp_path / "run").exists()


def test_a_metrics_file_linked_out_is_never_written_through(data, tmp_path, capsys):
    """A fresh run into a folder whose metrics.jsonl links elsewhere: the file was truncated through the link."""
    victim = tmp_path / "notes.txt"
    victim.write_text("")  # empty: no finished step, so the folder counted as holding no run
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(victim)
    capsys.readouterr()
    err = _one_line(capsys, main(["train", str(data), "--out", str(run), "--steps", "1", "--quiet", "--threads", "1"]))
    assert "metrics.jsonl: is a symbolic link, not a regular file" in err
    assert (run / "metrics.jsonl").is_symlink() and victim.read_text() == ""


# --- FIFOs where files belong: refused, never waited on --------------------------------------------


@pytest.mark.parametrize("where", ["trainer.json", "rank-0.safetensors", "model.safetensors", "run manifest.json"])
def test_a_fifo_in_the_run_folder_never_hangs_resume(data, base, tmp_path, where):
    run, checkpoint = _copy(base, tmp_path)
    path = run / "manifest.json" if where == "run manifest.json" else checkpoint / where
    path.unlink()
    os.mkfifo(path)
    _assert_one_line(_cli(_resume_argv(data, run)), "FIFO")


@pytest.mark.slow  # a training run and a resume in a process of its own: about 10 s
@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_a_finished_runs_model_metadata_is_never_waited_on(data, tmp_path, kind):
    """Resuming a finished run reads RUN/model/nextlong.json (which step the export holds): it was read with
    read_text(), so a FIFO there hung the resume (SIGTERM only noted, as in the step loop) and a link to /dev/zero
    filled the memory. Now an unreadable one is no export: the checkpoint's model is exported again."""
    run = tmp_path / "run"
    train(data, run, steps=2, **FAST)
    meta = run / "model" / "nextlong.json"
    meta.unlink()
    os.mkfifo(meta) if kind == "fifo" else meta.symlink_to("/dev/zero")
    proc = _cli(["train", str(data), "--out", str(run), "--resume", "--quiet", "--threads", "1"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ckpt.exported_step(run) == 2 and (run / "model" / "nextlong.json").is_file()


@pytest.mark.parametrize("where", ["manifest.json", "data/part-00000.parquet"])
def test_a_fifo_in_the_data_folder_never_hangs_train(data, tmp_path, where):
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    (folder / where).unlink()
    os.mkfifo(folder / where)
    proc = _cli(["train", str(folder), "--out", str(tmp_path / "run"), "--steps", "1", "--quiet", "--threads", "1"])
    _assert_one_line(proc, "FIFO")


# --- crafted checkpoints: one line, never loaded in part --------------------------------------------


def _edit_trainer(fn):
    def edit(checkpoint: Path):
        state = json.loads((checkpoint / "trainer.json").read_text())
        fn(state)
        (checkpoint / "trainer.json").write_text(json.dumps(state))
    return edit


def _edit_rank(fn):
    """Edit the JSON state in rank-0.safetensors' header (the data position, the RNG states)."""
    def edit(checkpoint: Path):
        path = checkpoint / "rank-0.safetensors"
        raw = path.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        state = json.loads(header["__metadata__"]["nextlong_state"])
        fn(state)
        header["__metadata__"]["nextlong_state"] = json.dumps(state)
        head = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n:])
    return edit


def _edit_optimizer(change):
    """Edit optimizer.safetensors' tensors in place: change(tensors)."""
    def edit(checkpoint: Path):
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        path = checkpoint / "optimizer.safetensors"
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        tensors = load_file(path)
        change(tensors)
        save_file(tensors, path, metadata=meta)
    return edit


def _wrong_shape(tensors):
    import torch

    tensors[next(k for k in tensors if k.endswith("exp_avg"))] = torch.zeros(3)


_optimizer_wrong_shape = _edit_optimizer(_wrong_shape)


def _negative_second_moment(tensors):
    """AdamW divides by sqrt(exp_avg_sq): the resumed run's first update made every weight NaN, and the next step
    was reported as a diverged run ("lower --lr"), the crafted checkpoint loaded."""
    name = next(k for k in tensors if k.endswith("exp_avg_sq"))
    tensors[name] = -tensors[name] - 1e-3


def _history_nan(checkpoint: Path):
    """A bare NaN (Python's json reads it; it is not JSON) as a loss in the history."""
    text = (checkpoint / "trainer.json").read_text()
    at = text.index('"loss": ', text.index('"history"'))
    (checkpoint / "trainer.json").write_text(text[:at] + '"loss": NaN, "was": ' + text[at + len('"loss": '):])


def _step_too_far(checkpoint: Path):
    _edit_trainer(lambda t: t.update(step=10**12))(checkpoint)
    checkpoint.rename(checkpoint.with_name(f"step-{10**12:08d}"))


CRAFTED = {
    "trainer_deep_json": (lambda c: (c / "trainer.json").write_text("[" * 100000 + "]" * 100000), "nested too deeply"),
    "trainer_5000_digit_int": (lambda c: (c / "trainer.json").write_text('{"step": ' + "1" * 5000 + "}"),
                               "more than 4,300 digits"),
    "trainer_no_step": (_edit_trainer(lambda t: t.pop("step")), "step must be an integer >= 0"),
    "trainer_step_string": (_edit_trainer(lambda t: t.update(step="two")), "step must be an integer >= 0"),
    "trainer_step_negative": (_edit_trainer(lambda t: t.update(step=-3)), "step must be an integer >= 0"),
    "trainer_step_past_steps": (_step_too_far, "step must be at most --steps (6)"),
    "trainer_cwd_relative": (_edit_trainer(lambda t: t.update(cwd="elsewhere")), "cwd must be an absolute path"),
    "trainer_cwd_not_string": (_edit_trainer(lambda t: t.update(cwd=["/"])), "cwd must be an absolute path"),
    "trainer_history_not_list": (_edit_trainer(lambda t: t.update(history={"a": 1})), "history must be a list"),
    "trainer_history_NaN": (_history_nan, "NaN is not a JSON number"),
    # a history row is copied into metrics.jsonl and summed into the manifest: only the trainer's keys and numbers
    "trainer_history_extra_key": (_edit_trainer(lambda t: t["history"][1].update(note="<script>")),
                                  "history[1] has the key 'note', which the trainer never writes"),
    "trainer_history_count_past_int64": (_edit_trainer(lambda t: t["history"][0].update(loss_tokens=10**30)),
                                         "history[0].loss_tokens must be an integer from 0 to 9223372036854775807"),
    "trainer_history_count_negative": (_edit_trainer(lambda t: t["history"][0].update(padding_tokens=-1)),
                                       "history[0].padding_tokens must be an integer from 0"),
    "trainer_history_time_negative": (_edit_trainer(lambda t: t["history"][1].update(step_s=-1e300)),
                                      "history[1].step_s must be a number >= 0, got -1e+300"),
    "trainer_history_lr_string": (_edit_trainer(lambda t: t["history"][0].update(lr="fast")),
                                  "history[0].lr must be a number >= 0, got 'fast'"),
    "scheduler_last_epoch_string": (_edit_trainer(lambda t: t["scheduler"].update(last_epoch="x")),
                                    "scheduler.last_epoch"),
    "pending_ids_past_vocabulary": (_edit_rank(lambda s: s["data"].update(pending=[[[999999] * 10, "x"]])),
                                    "pending[0] ids must be token ids in 0..1023"),
    "pending_ids_negative": (_edit_rank(lambda s: s["data"].update(pending=[[[-1] * 10, "x"]])),
                             "pending[0] ids must be token ids in 0..1023"),
    "drawn_empty": (_edit_rank(lambda s: s["data"]["stream"].update(drawn=[])), "stream drawn must be one count"),
    "optimizer_state_wrong_shape": (_optimizer_wrong_shape, "has shape (3,), expected"),
    "optimizer_second_moment_negative": (_edit_optimizer(_negative_second_moment), "is not a second moment"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_checkpoint_is_refused_in_one_line_before_any_step(data, base, tmp_path, capsys, case):
    run, checkpoint = _copy(base, tmp_path)
    craft, words = CRAFTED[case]
    craft(checkpoint)
    before = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    err = _one_line(capsys, main(_resume_argv(data, run)))
    assert words in err and "delete" in err, err
    assert (run / "metrics.jsonl").read_bytes() == before  # not rewritten (with NaN), no step taken
    assert len(ckpt.list_checkpoints(run)) == 1


@pytest.mark.parametrize("field, value, words", [
    ("betas", "ab", "betas must be a pair of numbers, got 'ab'"),
    ("betas", [0.9, 1.5], "betas must be two numbers in [0, 1) (AdamW's), got (0.9, 1.5)"),
    ("lr", "fast", "--lr must be a number or null, got 'fast'"),
])
def test_a_crafted_setting_in_the_runs_manifest_is_one_line(data, base, tmp_path, capsys, field, value, words):
    """--resume takes the settings the command line leaves out from RUN/manifest.json. `betas` has no option, so
    the command line's own checks never saw it: a string reached AdamW ('<=' between a float and a str, a
    traceback), and the Python API passed every recorded setting on unchecked (the same for lr='fast')."""
    run, _ = _copy(base, tmp_path)
    _edit_manifest(lambda m: m["settings"].update({field: value}))(run)
    capsys.readouterr()
    if field == "betas":
        err = _one_line(capsys, main(_resume_argv(data, run)), code=2)
        assert err.endswith(f"{words} (from the run's manifest)"), err
    with pytest.raises(NextlongError, match=re.escape(f"{words} (from the run's manifest)")):
        train(data, run, resume=True, progress=False, num_threads=1)
    assert _steps_logged(run) == [1, 2]


def test_a_wrongly_shaped_optimizer_state_loads_nothing(data, base, tmp_path, monkeypatch):
    """Refused at load, before any tensor is copied into the model or the optimizer (torch itself would
    load it and fail only at the first step)."""
    from nextlong.train.config import TrainConfig
    from nextlong.train.trainer import Trainer

    run, checkpoint = _copy(base, tmp_path)
    _optimizer_wrong_shape(checkpoint)
    cfg = TrainConfig(data=[str(data)], out=str(run), steps=STEPS, resume=True, **FAST).validate()
    trainer = Trainer(cfg)
    loaded = []
    monkeypatch.setattr(ckpt, "load_full_state_dicts", lambda *a, **k: loaded.append(a))
    with pytest.raises(NextlongError, match="exp_avg"):
        trainer.run()
    assert not loaded and not trainer.optimizer.state and trainer.packer.stream.index == 0


# --- crafted training data ------------------------------------------------------------------------


def _edit_manifest(fn):
    def edit(folder: Path):
        manifest = json.loads((folder / "manifest.json").read_text())
        fn(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return edit


def _parquet_ids(make):
    def edit(folder: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "data" / "part-00000.parquet"
        table = pq.read_table(path)
        table = table.set_column(table.schema.get_field_index("input_ids"), "input_ids", make(pa, table.num_rows))
        pq.write_table(table, path)
    return edit


def _every_part(change):
    """Rewrite every Parquet part of the data with change(pa, table)."""
    def edit(folder: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        for path in sorted((folder / "data").glob("*.parquet")):
            pq.write_table(change(pa, pq.read_table(path)), path)
    return edit


def _drop_segments(folder: Path):
    """One part without its `segments` column: with --attention-spans document, every part's samples were read
    as one span each (the source's segments were taken from its last file's schema), without a word."""
    import pyarrow.parquet as pq

    path = sorted((folder / "data").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(path).drop_columns(["segments"]), path)


BAD_DATA = {
    "manifest_deep_json": (lambda d: (d / "manifest.json").write_text("[" * 100000 + "]" * 100000),
                           "nested too deeply"),
    "manifest_is_a_list": (lambda d: (d / "manifest.json").write_text("[1]"), "expected an object, got an array"),
    "manifest_settings_a_list": (_edit_manifest(lambda m: m.update(settings=[1])), "settings must be a JSON object"),
    "manifest_target_length_string": (_edit_manifest(lambda m: m["settings"].update(target_length="256")),
                                      "settings.target_length must be a token count"),
    "input_ids_strings": (_parquet_ids(lambda pa, n: pa.array(["abc"] * n)), "input_ids must be lists of integer"),
    "input_ids_null": (_parquet_ids(lambda pa, n: pa.array([None] * n, pa.list_(pa.uint32()))), "input_ids is null"),
    "input_ids_floats": (_parquet_ids(lambda pa, n: pa.array([[1.7] * 256] * n, pa.list_(pa.float64()))),
                         "input_ids must be lists of integer"),
    # a struct's cells have no `values` array: an AttributeError traceback at the first row read
    "loss_mask_structs": (_every_part(lambda pa, t: t.append_column("loss_mask", pa.array([{"a": 1}] * t.num_rows))),
                          "loss_mask must be lists of 0/1 per token (list<uint8>), got struct"),
    "segments_in_some_parts": (_drop_segments, "some files have a `segments` column"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_crafted_training_data_is_refused_in_one_line(data, tmp_path, capsys, case):
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    craft, words = BAD_DATA[case]
    craft(folder)
    capsys.readouterr()
    err = _one_line(capsys, main(["train", str(folder), "--out", str(tmp_path / "run"), "--steps", "1", "--quiet",
                                  "--threads", "1"]))
    assert words in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_jsonl_row_nested_too_deep_is_one_line(data, tmp_path, capsys):
    """Python's JSON parser raises RecursionError, not ValueError, on deep nesting: a traceback before."""
    folder = tmp_path / "rows"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"input_ids": [5, 6, 7, 8]}\n' + "[" * 100000 + "]" * 100000 + "\n")
    capsys.readouterr()
    err = _one_line(capsys, main(["train", str(folder), "--out", str(tmp_path / "run"), "--tokenizer",
                                  str(corpus_and_tokenizer()[1]), "--seq-len", "4", "--steps", "2", "--quiet",
                                  "--threads", "1"]))
    assert "a.jsonl row 1: not valid JSON (maximum recursion depth exceeded" in err, err


@pytest.mark.parametrize("ids, shape", [("[[5, 6], [7, 8]]", "(2, 2)"), ("5", "()")])
def test_jsonl_input_ids_that_are_not_a_flat_list_are_one_line(data, tmp_path, capsys, ids, shape):
    """A list of lists (or one number) was flattened into a row of token ids without a word."""
    folder = tmp_path / "rows"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"input_ids": [5, 6, 7, 8]}\n{"input_ids": ' + ids + "}\n")
    capsys.readouterr()
    err = _one_line(capsys, main(["train", str(folder), "--out", str(tmp_path / "run"), "--tokenizer",
                                  str(corpus_and_tokenizer()[1]), "--seq-len", "4", "--steps", "2", "--quiet",
                                  "--threads", "1"]))
    assert f"a.jsonl row 1: input_ids must be a flat list of token ids, got a value of shape {shape}" in err, err


def test_a_learning_rate_that_overflows_the_optimizer_is_refused_as_an_option(data, tmp_path, capsys):
    capsys.readouterr()
    err = _one_line(capsys, main(["train", str(data), "--out", str(tmp_path / "run"), "--lr", "1e39", "--steps",
                                  "1", "--quiet", "--threads", "1"]), code=2)
    assert "--lr must be > 0 and at most" in err


# --- the data's tokenizer: its own copy, a built-in name, or the user's --tokenizer ----------------


@pytest.fixture()
def bare_data(data, tmp_path):
    """The synthesize output without its tokenizer/ copy, and a tokenizer file outside it."""
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    shutil.rmtree(folder / "tokenizer")
    secret = tmp_path / "SECRET_tokenizer.json"
    shutil.copy(corpus_and_tokenizer()[1], secret)
    return folder, secret


@pytest.mark.parametrize("copy", ["../SECRET_tokenizer.json", "ABSOLUTE", "tokenizer/link.json"])
def test_tokenizer_copy_must_be_a_file_of_the_data_folder(bare_data, tmp_path, capsys, copy):
    folder, secret = bare_data
    if copy == "ABSOLUTE":
        copy = str(secret)
    if copy == "tokenizer/link.json":
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "link.json").symlink_to(secret)
    _edit_manifest(lambda m: m["settings"].update(tokenizer_copy=copy))(folder)
    capsys.readouterr()
    run = tmp_path / "run"
    err = _one_line(capsys, main(["train", str(folder), "--out", str(run), "--steps", "1", "--quiet", "--threads",
                                  "1"]))
    assert "settings.tokenizer_copy" in err and ("outside the data folder" in err or "link out" in err), err
    assert not (run / "model").exists()


def test_a_tokenizer_path_outside_the_data_folder_needs_the_users_tokenizer_option(bare_data, tmp_path, capsys):
    folder, secret = bare_data
    _edit_manifest(lambda m: m["settings"].update(tokenizer=str(secret), tokenizer_copy=None))(folder)
    argv = ["train", str(folder), "--steps", "1", "--quiet", "--threads", "1"]
    capsys.readouterr()
    err = _one_line(capsys, main(argv + ["--out", str(tmp_path / "refused")]))
    assert "outside its folder" in err and "--tokenizer PATH" in err
    assert not (tmp_path / "refused" / "model").exists()
    # the user names it: trusted, and recorded in the exported model
    assert main(argv + ["--out", str(tmp_path / "run"), "--tokenizer", str(secret)]) == 0
    spec = json.loads((tmp_path / "run" / "model" / "nextlong.json").read_text())["tokenizer"]
    assert spec == secret.name
    # another tokenizer than the data was made with is still refused
    capsys.readouterr()
    err = _one_line(capsys, main(argv + ["--out", str(tmp_path / "other"), "--tokenizer", "cl100k_base"]))
    assert "is not the tokenizer the data was made with" in err


# --- nextlong plot reads the run folder's metrics.jsonl ---------------------------------------------


def test_plot_refuses_crafted_metrics_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": "one", "loss": 1.0, "lr": 0.1}\n')
    capsys.readouterr()
    assert main(["plot", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert "metrics.jsonl:1: expected an object" in err and "\n" not in err and "Traceback" not in err
