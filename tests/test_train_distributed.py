"""torchrun on CPU (gloo): data parallelism (2 processes) and Ulysses sequence parallelism
(`--seq-parallel`, 2 and 4 processes, alone and with data parallelism) give the single-process loss
curve with the same global batch, for DDP and for FSDP2 (`--fsdp`); each data-parallel rank reads its
own share, and a sequence-parallel run resumes exactly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nextlong.train import train
from tests.train_support import SAMPLE_LEN, metrics, synthesized

pytestmark = pytest.mark.slow

STEPS = 4


def _torchrun(data, run, *extra, nproc=2, program=("-m", "nextlong")):
    proc = _torchrun_process(data, run, *extra, nproc=nproc, program=program)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _torchrun_process(data, run, *extra, nproc=2, program=("-m", "nextlong")) -> subprocess.CompletedProcess:
    """`nextlong train` on `nproc` ranks; `program`: what torchrun starts instead of `-m nextlong` (a launcher
    script and its arguments, which then runs the CLI)."""
    return subprocess.run(**_torchrun_command(data, run, *extra, nproc=nproc, program=program), capture_output=True,
                          text=True, timeout=600)


def _torchrun_command(data, run, *extra, nproc=2, program=("-m", "nextlong")) -> dict:
    """The args and env of _torchrun_process (for a Popen)."""
    # faulthandler: a rank that dies of a signal prints where each of its threads was
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           *program, "train", str(data), "--out", str(run), "--steps", str(STEPS), "--seq-len",
           str(SAMPLE_LEN), "--batch-tokens", str(4 * SAMPLE_LEN), "--attention-spans", "document", "--quiet",
           "--threads", "1", *extra]
    return {"args": cmd, "env": env}


def _same_steps(got: list[dict], want: list[dict], *extra: str) -> None:
    """The steps of two runs of one global batch agree: loss (and `extra` columns) to 1e-5, the gradient norm
    before clipping to 1e-5 relative (Adam and clipping hide a gradient scaled by the world size from the
    loss), the learning rate, and the token counts exactly."""
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    for a, b in zip(got, want):
        for key in ("loss", *extra):
            assert abs(a[key] - b[key]) <= 1e-5, (key, a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), (a, b)
        assert a["lr"] == b["lr"] and a["tokens"] == b["tokens"] and a["loss_tokens"] == b["loss_tokens"], (a, b)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    data = synthesized("nextlong")
    run = tmp_path_factory.mktemp("single") / "run"
    # 4 sequences per step: one process accumulates 4 micro-batches, two processes 2 each
    train(data, run, model="tiny", steps=STEPS, seq_len=SAMPLE_LEN, batch_tokens=4 * SAMPLE_LEN,
          attention_spans="document", progress=False, num_threads=1)
    return data, metrics(run)


RANK_ENDS_TO = """import sys
import nextlong.cli as cli
import nextlong.train.checkpoint as ckpt
gathers, real_gather = [], ckpt.full_state_dicts
def gather(*args, **kwargs):
    gathers.append(args)
    return real_gather(*args, **kwargs)
ckpt.full_state_dicts = gather
real_end = cli._end_torchrun_rank
def end(code):
    with open({!r}, "a") as f:
        f.write(f"{{code}} {{len(gathers)}}\\n")
    real_end(code)
cli._end_torchrun_rank = end
sys.exit(cli.main(sys.argv[1:]))
"""


def _recording_launcher(folder) -> tuple[tuple[str], object]:
    """(torchrun's program, the file it fills): a launcher of the CLI that writes a line per rank as it ends: its
    exit status (torchrun stopped by a signal reports none) and how many times it gathered the full state dicts."""
    launcher, ends = folder / "launch.py", folder / "ends"
    launcher.write_text(RANK_ENDS_TO.format(str(ends)))
    return (str(launcher),), ends


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_give_the_single_process_loss_curve(single, tmp_path, mode):
    """The one save (the final one) gathers the full state dicts once: under FSDP the checkpoint and the model
    export gathered every shard each."""
    data, reference = single
    run = tmp_path / mode
    program, ends = _recording_launcher(tmp_path)
    _torchrun(data, run, *(["--fsdp"] if mode == "fsdp" else []), program=program)
    _same_steps(metrics(run), reference)
    assert (run / "model" / "config.json").exists() and len(list((run / "checkpoints").iterdir())) == 1
    assert ends.read_text().split() == ["0", "1"] * 2


def test_a_rank_that_refuses_its_settings_exits_with_the_usage_status(single, tmp_path):
    """Ranks leave through os._exit (cli._end_torchrun_rank): the status and the one-line error survive it."""
    data, _ = single
    proc = _torchrun_process(data, tmp_path / "run", "--fsdp", "--token-weighting", "longce")
    assert proc.returncode != 0
    assert "exitcode  : 2" in proc.stderr, proc.stderr[-4000:]
    assert "nextlong train: error: --fsdp with --token-weighting needs a separate --scorer" in proc.stderr


def _with_bad_row(data, tmp_path, row: int):
    """A copy of a data folder whose global row `row` holds a token id past the 1K vocabulary."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad-data"
    shutil.copytree(data, bad)
    first = 0
    for part in sorted((bad / "data").glob("*.parquet")):
        table = pq.read_table(part)
        if first <= row < first + table.num_rows:
            ids = table.column("input_ids").to_pylist()
            ids[row - first][5] = 5000
            column = pa.array(ids, table.schema.field("input_ids").type)
            pq.write_table(table.set_column(table.schema.get_field_index("input_ids"), "input_ids", column), part)
            return bad
        first += table.num_rows
    raise AssertionError(f"no row {row}")


def test_a_bad_row_read_by_one_rank_stops_every_rank_with_its_message(tmp_path):
    """Rank 1 alone reads global row 5 (one source: rank r reads rows r, r + 2, ...), at step 2. The other rank
    learned of it only when its next collective broke: rank 0's manifest recorded gloo's "Connection reset by
    peer" (or stayed "running"), with a 38-line traceback. Now the ranks agree on the failure before the step:
    rank 0 records rank 1's message, the steps before it are saved, and the error is printed once."""
    data, run, proc, stats = _failed_on_row_5_at_step_2(tmp_path, "--save-every", "0")
    assert stats["error"].startswith("rank 1: ") and "token id 5000 is outside the model's vocabulary" in stats["error"]
    assert "[rank0]: Traceback" not in proc.stderr and "Connection reset" not in proc.stderr
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]


def _failed_on_row_5_at_step_2(tmp_path, *extra):
    """(data, run, torchrun's result, the manifest's statistics) of a 2-rank run on data whose row 5, read at
    step 2, holds an id past the vocabulary: it must have failed there, recorded so, printed the error once."""
    import json

    data = _with_bad_row(synthesized("standard"), tmp_path, 5)
    run = tmp_path / "run"
    proc = _torchrun_process(data, run, *extra)
    assert proc.returncode != 0
    stats = json.loads((run / "manifest.json").read_text())["statistics"]
    assert stats["status"] == "failed" and stats["steps"] == 1, stats
    assert proc.stderr.count("token id 5000 is outside") == 1, proc.stderr[-4000:]
    return data, run, proc, stats


def test_a_bad_row_read_by_a_whole_sequence_parallel_group_is_printed_once(tmp_path):
    """Both ranks of a --seq-parallel 2 group read row 5 (at step 2) and fail alike: rank 0 prints and records
    it, rank 1 stops without printing it again."""
    data, _, _, stats = _failed_on_row_5_at_step_2(tmp_path, "--seq-parallel", "2")
    assert stats["error"].startswith(str(data)) and "token id 5000 is outside" in stats["error"]


def test_a_bad_row_in_rank_1s_first_step_leaves_nothing(tmp_path):
    """Refused in setup on rank 1 only: rank 0 used to go on, write its manifest and metrics, and fail at the
    first collective; now every rank stops in setup and --out is left as it was (not made)."""
    data = _with_bad_row(synthesized("standard"), tmp_path, 1)
    run = tmp_path / "run"
    proc = _torchrun_process(data, run)
    assert proc.returncode != 0 and not run.exists(), sorted(p.name for p in run.iterdir())
    assert proc.stderr.count("token id 5000 is outside") == 1, proc.stderr[-4000:]


RANK_1_FAILS = """import os, sys
import nextlong.train.trainer as trainer
from nextlong.errors import NextlongError
where = sys.argv.pop(1)
if os.environ.get("RANK") == "1":  # this rank alone meets a failure in setup
    def fail(*args, **kwargs):
        raise NextlongError("rank 1 alone cannot go on")
    setattr(trainer, where, fail)
from nextlong.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("where", ["open_sources", "build_model"])
def test_a_setup_failure_on_one_rank_stops_every_rank_with_its_message(single, tmp_path, where):
    """Rank 1 fails reading its data (open_sources) or loading its model (build_model); rank 0 went on to its
    next collective and met a broken connection there (or waited in it). Now both parts of
    setup end in an agreement: every rank stops, the message is printed once, --out is left as it was."""
    data, _ = single
    launcher = tmp_path / "launch.py"
    launcher.write_text(RANK_1_FAILS)
    run = tmp_path / "run"
    proc = _torchrun_process(data, run, program=(str(launcher), where))
    assert proc.returncode != 0
    assert proc.stderr.count("nextlong train: error: rank 1 alone cannot go on") == 1, proc.stderr[-4000:]
    assert "[rank0]: Traceback" not in proc.stderr and "Connection reset" not in proc.stderr, proc.stderr[-4000:]
    assert not run.exists(), sorted(p.name for p in run.iterdir())


@pytest.mark.parametrize("case", ["seq-parallel", "attention-dropout"])
def test_a_setting_every_rank_refuses_is_printed_once(single, tmp_path, case):
    """`--seq-parallel 3` on 2 ranks was refused by each rank outside setup's agreements, so its line was printed
    twice; a model with attention dropout under our attention failed at step 1 with a traceback on each rank.
    Both are refused in setup's agreements now: one line, --out not made."""
    data, _ = single
    if case == "seq-parallel":
        extra, line = ("--seq-parallel", "3"), "nextlong train: error: --seq-parallel 3: "
    else:
        from tests.train_support import dropout_model

        model = dropout_model(tmp_path / "model")
        extra, line = ("--model", str(model)), f"--model {model}: its config sets attention_dropout = 0.5"
    run = tmp_path / "run"
    proc = _torchrun_process(data, run, *extra)
    assert proc.returncode != 0 and "[rank0]: Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert proc.stderr.count(line) == 1, proc.stderr[-4000:]
    assert not run.exists()


@pytest.fixture(scope="module")
def gqa_model(tmp_path_factory):
    """A Llama with 4 query heads over 2 kv heads (the tiny preset has 2 over 1): SP = 4 needs 4 heads."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.train_support import corpus_and_tokenizer

    folder = tmp_path_factory.mktemp("gqa") / "model"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=128, max_position_embeddings=SAMPLE_LEN,
                                 tie_word_embeddings=True)).save_pretrained(folder)
    shutil.copy2(corpus_and_tokenizer()[1], folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def gqa_single(gqa_model, tmp_path_factory):
    """The single-process loss curve of gqa_model on NExtLong data, one for every sequence-parallel layout
    below (their extra flags go to the torchrun run only): made once, not once per layout."""
    reference = tmp_path_factory.mktemp("gqa-single") / "run"
    train(synthesized("nextlong"), reference, model=str(gqa_model), steps=STEPS, seq_len=SAMPLE_LEN,
          batch_tokens=4 * SAMPLE_LEN, attention_spans="document", progress=False, num_threads=1)
    return metrics(reference)


@pytest.mark.parametrize("nproc,sp,extra", [(2, 2, ()), (4, 4, ()), (4, 2, ()), (2, 2, ("--fsdp",)),
                                            (2, 2, ("--grad-checkpointing",)), (2, 2, ("--micro-batch", "2"))])
def test_sequence_parallel_gives_the_single_process_loss_curve(gqa_model, gqa_single, tmp_path, nproc, sp, extra):
    """Each sequence's tokens split over `sp` ranks (document boundaries fall inside and across the slices);
    world 4 with sp 2 is 2-way data parallel on top."""
    run = tmp_path / "sp"
    _torchrun(synthesized("nextlong"), run, "--model", str(gqa_model), "--seq-parallel", str(sp), *extra, nproc=nproc)
    _same_steps(metrics(run), gqa_single)


@pytest.mark.parametrize("nproc,sp,scheme", [(2, 2, "longce"), (4, 2, "dense"), (4, 4, "sparse")])
def test_sequence_parallel_token_weighting_gives_the_single_process_loss_curve(gqa_model, tmp_path, nproc, sp,
                                                                               scheme):
    """Each rank scores its own targets (the short pass in 16-token blocks after a 64-token window, so blocks
    and the head pass straddle the slice boundaries) and the group assembles whole rows: dense weights need
    each row's mean, sparse its ranking; world 4 with sp 2 adds data parallelism."""
    data = synthesized("nextlong")
    weighting = dict(token_weighting=scheme, short_stride=16)
    reference = tmp_path / "single"
    train(data, reference, model=str(gqa_model), steps=STEPS, seq_len=SAMPLE_LEN, batch_tokens=4 * SAMPLE_LEN,
          attention_spans="document", progress=False, num_threads=1, **weighting)
    run = tmp_path / "sp"
    _torchrun(data, run, "--model", str(gqa_model), "--seq-parallel", str(sp), "--token-weighting", scheme,
              "--short-stride", "16", nproc=nproc)
    got, want = metrics(run), metrics(reference)
    _same_steps(got, want, "ce")


def test_sequence_parallel_resumes_exactly(tmp_path):
    data = synthesized("nextlong")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _torchrun(data, whole, "--seq-parallel", "2")
    _torchrun(data, cut, "--seq-parallel", "2", "--stop-after", "2")
    assert len(metrics(cut)) == 2
    _torchrun(data, cut, "--seq-parallel", "2", "--resume")
    assert [r["loss"] for r in metrics(cut)] == [r["loss"] for r in metrics(whole)]


RANK_1_KILLED_AT_STEP_3 = """import os, signal, sys
import nextlong.train.trainer as trainer
real = trainer.Trainer.step
def step(self, batches):
    if os.environ["RANK"] == "1" and len(self.history) == 2:  # killed as the out-of-memory killer would
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, batches)
trainer.Trainer.step = step
from nextlong.cli import main
sys.exit(main(sys.argv[1:]))
"""



@pytest.fixture(scope="module")
def killed(single, tmp_path_factory):
    """(data, run, torchrun's result) of a 2-rank run whose rank 1 is SIGKILLed in step 3 of 4, with --save-every 1:
    the tests below resume copies of it."""
    data, _ = single
    folder = tmp_path_factory.mktemp("killed")
    launcher = folder / "launch.py"
    launcher.write_text(RANK_1_KILLED_AT_STEP_3)
    run = folder / "run"
    return data, run, _torchrun_process(data, run, "--save-every", "1", program=(str(launcher),))


def test_a_rank_killed_mid_run_leaves_one_line_and_the_checkpoints(killed):
    """Rank 1 is SIGKILLed in step 3: rank 0 printed a 40-line traceback of gloo's "Connection reset by peer",
    which its manifest recorded as the cause. Now it says in one line that another process stopped, and the
    checkpoints of steps 1 and 2 are complete."""
    import json

    _, run, proc = killed
    line = "nextlong train: error: another process of the run stopped after step 2"
    assert proc.returncode != 0 and "]: Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert proc.stderr.count(line) == 1 and "exitcode  : -9" in proc.stderr, proc.stderr[-4000:]
    stats = json.loads((run / "manifest.json").read_text())["statistics"]
    assert stats["status"] == "failed" and stats["error"].startswith("another process of the run stopped"), stats
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]


def _swap_rank_files(checkpoint) -> None:
    (checkpoint / "rank-0.safetensors").rename(checkpoint / "rank-x")
    (checkpoint / "rank-1.safetensors").rename(checkpoint / "rank-0.safetensors")
    (checkpoint / "rank-x").rename(checkpoint / "rank-1.safetensors")


@pytest.mark.parametrize("case,damage,line", [
    ("swapped", _swap_rank_files, "does not fit this run (rank-0.safetensors was written by rank 1: its data position "
                                  "is another rank's)"),
    ("rank 1's missing", lambda c: (c / "rank-1.safetensors").unlink(),
     "rank-1.safetensors: checkpoint file not found"),
    ("no --resume", None, "already holds a training run; pass --resume"),
])
def test_a_checkpoint_that_does_not_fit_two_ranks_is_refused_once_before_any_step(killed, tmp_path, case, damage,
                                                                                     line):
    """Rank files swapped between the ranks were resumed without a word, each rank reading on from the other's data
    position (steps 3 and 4 then differed from the uninterrupted run); a missing rank file was "missing from the
    checkpoint not found"; a refusal every rank meets alike (a run given again without --resume, a damaged
    trainer.json or model file) was printed by every rank. Now the ranks agree on it before any step: the line is
    printed once (by each rank only where the ranks' causes differ, as swapped files do), and the run is left as it
    was."""
    import shutil

    data, killed_run, _ = killed
    run = tmp_path / "run"
    shutil.copytree(killed_run, run)
    if damage is not None:
        damage(run / "checkpoints" / "step-00000002")
    proc = _torchrun_process(data, run, *([] if damage is None else ["--resume"]))
    assert proc.returncode != 0 and "]: Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert proc.stderr.count(line) == 1 and "Connection reset" not in proc.stderr, proc.stderr[-4000:]
    assert len(metrics(run)) == 2


CANNOT_WRITE_STEP_2 = """import errno, os, sys
import nextlong.train.checkpoint as ckpt
what = sys.argv.pop(1)  # "checkpoint": rank 1 cannot write its file of checkpoint 2; "model": rank 0 cannot export it
real = {"checkpoint": ckpt.save_state, "model": ckpt.export_model}[what]
def fail(path, *args, **kwargs):
    if what == "checkpoint" and os.environ["RANK"] == "1" and "step-00000002" in str(path) or (
            what == "model" and os.environ["RANK"] == "0" and kwargs.get("step") == 2):
        raise OSError(errno.EACCES, "Permission denied", str(path / "model" if what == "model" else path))
    return real(path, *args, **kwargs)
setattr(ckpt, "save_state" if what == "checkpoint" else "export_model", fail)
from nextlong.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("what,line,rank", [("checkpoint", "rank-1.safetensors: Permission denied", 1),
                                            ("model", "run/model: Permission denied", 0)])
def test_a_file_of_step_2_that_one_rank_cannot_write_is_said_once_and_recorded(single, tmp_path, what, line, rank):
    """Rank 1 cannot write its checkpoint file: it printed its error and rank 0 a second one, "another process
    failed to write its part of this checkpoint", which rank 0's manifest also recorded as the cause. Rank 0
    cannot export RUN/model: rank 1 went on to step 3 and died there with a gloo traceback. Now the ranks agree on
    the failure: it is printed once and recorded (as "rank 1: ..." for rank 1's), and a half-written
    checkpoint is gone while the one before stays."""
    import json

    data, _ = single
    launcher = tmp_path / "launch.py"
    launcher.write_text(CANNOT_WRITE_STEP_2)
    run = tmp_path / "run"
    proc = _torchrun_process(data, run, "--save-every", "1", program=(str(launcher), what))
    assert proc.returncode != 0 and "another process failed" not in proc.stderr, proc.stderr[-4000:]
    assert "]: Traceback" not in proc.stderr and proc.stderr.count(line) == 1, proc.stderr[-4000:]
    stats = json.loads((run / "manifest.json").read_text())["statistics"]
    assert stats["status"] == "failed" and stats["steps"] == 2, stats
    assert stats["error"].startswith("rank 1: " if rank else "[Errno 13] Permission denied"), stats
    assert stats["error"].endswith(("rank-1.safetensors'", "run/model'")[rank == 0]), stats
    saved = ["step-00000001"] + ([] if rank else ["step-00000002"])  # the export follows a complete checkpoint
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == saved


def test_a_signal_forwarded_to_every_rank_is_said_once(tmp_path):
    """torchrun forwards SIGTERM to every rank: each printed its own "SIGTERM: stopping after this step" and its
    own "interrupted ... --resume" line (16 lines for one stop of 8 processes). Now the lowest rank signalled says
    them; every rank still stops at the same step, saves it, and exits 130."""
    import signal
    import time

    data, run = synthesized("nextlong"), tmp_path / "run"
    program, ends = _recording_launcher(tmp_path)
    proc = subprocess.Popen(**_torchrun_command(data, run, "--steps", "1000", program=program),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    log = run / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None and not (log.is_file() and log.stat().st_size):
        time.sleep(0.02)  # the first step is taken
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 1 and [line.split()[0] for line in ends.read_text().splitlines()] == ["130"] * 2, \
        err[-4000:]
    assert err.count("SIGTERM: stopping after this step") == 1, err[-4000:]
    assert err.count("checkpoint is saved: run the same command with --resume") == 1, err[-4000:]
    steps = len(metrics(run))
    assert 1 <= steps < 1000 and [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{steps:08d}"]


IN_SETUP_UNTIL_SIGNALLED = """import os, time
from pathlib import Path
import nextlong.train.trainer as trainer
def setup(self):  # a slow setup (a large checkpoint read, say): the test signals it here
    Path({!r}, f"in-setup-{{os.environ['RANK']}}").touch()
    time.sleep(120)
trainer.Trainer.setup = setup
"""


def test_a_signal_during_setup_is_said_once(tmp_path):
    """Ctrl-C while the ranks are still in setup (torchrun forwards SIGINT to every rank): each rank printed its
    own "interrupted before training started" line (8 lines for one Ctrl-C of 8 processes). Before the loop
    there is no collective to agree on the lowest rank signalled, so the node's first rank says it; every rank
    still exits 130, and --out is not created."""
    import signal
    import time

    data, run = synthesized("nextlong"), tmp_path / "run"
    program, ends = _recording_launcher(tmp_path)
    launcher = tmp_path / "launch.py"
    launcher.write_text(IN_SETUP_UNTIL_SIGNALLED.format(str(tmp_path)) + launcher.read_text())
    proc = subprocess.Popen(**_torchrun_command(data, run, program=program), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(tmp_path.glob("in-setup-*"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert [line.split()[0] for line in ends.read_text().splitlines()] == ["130"] * 2, err[-4000:]
    assert err.count("nextlong train: interrupted before training started; nothing was written") == 1, err[-4000:]
    assert not run.exists()


RANK_1_HANGS_AT_STEP_2 = """import os, signal, sys, time
import nextlong.cli as cli
import nextlong.train.trainer as trainer
folder = {!r}
real_step, real_end = trainer.Trainer.step, cli._end_torchrun_rank
def step(self, batches):
    if os.environ["RANK"] == "1" and len(self.history) == 1:  # stopped as a stuck file system would leave it
        with open(os.path.join(folder, "stopped"), "w") as f:
            f.write(f"{{os.getpid()}} {{time.time()}}")
        os.kill(os.getpid(), signal.SIGSTOP)
    return real_step(self, batches)
def end(code):
    with open(os.path.join(folder, "rank-" + os.environ["RANK"]), "w") as f:
        f.write(f"{{code}} {{time.time()}}")
    real_end(code)
trainer.Trainer.step, cli._end_torchrun_rank = step, end
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_rank_that_hangs_ends_the_run_after_the_collective_timeout_in_one_line(single, tmp_path):
    """Rank 1 stops itself (SIGSTOP) before step 2: torchrun does not see it, and rank 0 waited in its next
    collective for torch's default timeout (30 minutes with gloo). With --collective-timeout 3 it ends within
    seconds, saying in one line that a process stopped answering."""
    import json
    import signal
    import time

    data, _ = single
    (tmp_path / "launch.py").write_text(RANK_1_HANGS_AT_STEP_2.format(str(tmp_path)))
    run, stopped, rank_0 = tmp_path / "run", tmp_path / "stopped", tmp_path / "rank-0"
    proc = subprocess.Popen(**_torchrun_command(data, run, "--collective-timeout", "3", "--save-every", "1",
                                                program=(str(tmp_path / "launch.py"),)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not rank_0.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:  # torchrun cannot end a stopped worker (its SIGTERM waits for a SIGCONT)
        if stopped.exists():
            os.kill(int(stopped.read_text().split()[0]), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    assert rank_0.exists() and stopped.exists(), stderr[-4000:]
    code, ended = rank_0.read_text().split()
    waited = float(ended) - float(stopped.read_text().split()[1])
    line = ("nextlong train: error: another process of the run stopped answering after step 1: a collective "
            "waited --collective-timeout 3 s for it")
    assert code == "1" and 3 <= waited < 20 and "]: Traceback" not in stderr, (code, waited, stderr[-4000:])
    assert stderr.count(line) == 1, stderr[-4000:]
    stats = json.loads((run / "manifest.json").read_text())["statistics"]
    assert stats["status"] == "failed" and stats["error"].startswith("another process of the run stopped answ"), stats
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]
