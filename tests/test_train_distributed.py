"""torchrun data parallelism on CPU (gloo, 2 processes): the loss curve equals the single-process run
with the same global batch, for DDP and for FSDP2 (`--fsdp`), and each rank reads its own share."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nextlong.train import train
from tests.train_support import SAMPLE_LEN, metrics, synthesized

pytestmark = pytest.mark.slow

STEPS = 4


def _torchrun(data, run, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "nextlong", "train", str(data), "--out", str(run), "--steps", str(STEPS), "--seq-len",
           str(SAMPLE_LEN), "--batch-tokens", str(4 * SAMPLE_LEN), "--attention-spans", "document", "--quiet",
           "--threads", "1", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    data = synthesized("nextlong")
    run = tmp_path_factory.mktemp("single") / "run"
    # 4 sequences per step: one process accumulates 4 micro-batches, two processes 2 each
    train(data, run, model="tiny", steps=STEPS, seq_len=SAMPLE_LEN, batch_tokens=4 * SAMPLE_LEN,
          attention_spans="document", progress=False, num_threads=1)
    return data, metrics(run)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_give_the_single_process_loss_curve(single, tmp_path, mode):
    data, reference = single
    run = tmp_path / mode
    _torchrun(data, run, *(["--fsdp"] if mode == "fsdp" else []))
    got = metrics(run)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for a, b in zip(got, reference):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)
        assert a["tokens"] == b["tokens"]
    assert (run / "model" / "config.json").exists() and len(list((run / "checkpoints").iterdir())) == 1
