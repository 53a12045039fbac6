"""Untrusted model folders (issue 24): `eval`, `heads` and `train --model` never run a folder's Python
code without --trust-remote-code (and never ask on stdin), never unpickle its weights beyond torch's
weights_only loader, and report every broken folder in one line naming the file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import assert_one_line_error, run_cli, save_small_llama

COMMANDS = ("eval", "heads", "train")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    return save_small_llama(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tokens.parquet"
    pq.write_table(pa.table({"input_ids": [list(range(i, i + 16)) for i in range(8)]}), path)
    return path


def model_copy(base_model: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(base_model, folder)
    return folder


def command_args(command: str, folder: Path, out: Path, data: Path) -> list[str]:
    """`nextlong COMMAND` on the model `folder`; the model is loaded before any other work."""
    if command == "train":
        return ["train", str(data), "--model", str(folder), "--out", str(out), "--seq-len", "8", "--steps", "1",
                "--quiet"]
    return [command, str(folder), "--out", str(out)]


def marker_writer(marker: Path) -> str:
    return f"import pathlib; pathlib.Path({str(marker)!r}).write_text('the folder ran code')\n"


class _RunsCode:
    """Unpickling this runs code: what a malicious pytorch_model.bin holds."""

    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return exec, (self.source,)


# ---------------------------------------------------------------- remote code


def remote_code_folder(folder: Path, marker: Path) -> Path:
    """A model folder whose config.json maps its classes to evil.py, which writes `marker` on import,
    beside a pickled pytorch_model.bin that writes it when unpickled."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}}))
    (folder / "evil.py").write_text(marker_writer(marker))
    (folder / "nextlong.json").write_text(json.dumps({"tokenizer": "cl100k_base"}))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _RunsCode(marker_writer(marker))}))
    return folder


@pytest.mark.slow  # two subprocesses: stdin must be a pipe that answers "y"
@pytest.mark.parametrize("command", COMMANDS)
def test_a_folders_code_runs_only_with_trust_remote_code(command, tmp_path, train_data):
    """`yes | nextlong heads MODEL` ran the folder's auto_map module: transformers asked on stdin."""
    marker = tmp_path / "marker"
    folder = remote_code_folder(tmp_path / "evil", marker)
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "nextlong", *command_args(command, folder, tmp_path / "out",
                                                                              train_data), *extra],
                              input="y\n" * 10, capture_output=True, text=True, env=env, timeout=300)

    refused = run()
    assert not marker.exists(), refused.stderr
    assert refused.returncode == 1
    line = assert_one_line_error(refused.stderr, command)
    assert "config.json" in line and "evil.py" in line and "--trust-remote-code" in line

    trusted = run("--trust-remote-code")  # the flag reaches transformers: the folder's module is imported
    assert marker.read_text() == "the folder ran code"
    assert trusted.returncode == 1  # evil.py defines no model, which is reported in one line
    assert_one_line_error(trusted.stderr, command)


# ---------------------------------------------------------------- pickles


@pytest.mark.parametrize("writer", ("pickle", "torch.save"))
@pytest.mark.parametrize("command", COMMANDS)
def test_pickled_weights_are_refused_unrun(command, writer, base_model, train_data, tmp_path, capsys):
    """A pytorch_model.bin holding code: torch's weights_only loader refuses it (UnpicklingError, a
    traceback before); nothing in it runs."""
    import torch

    folder = model_copy(base_model, tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "marker"
    weights = {"lm_head.weight": _RunsCode(marker_writer(marker))}
    if writer == "pickle":
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(weights))
    else:
        torch.save(weights, folder / "pytorch_model.bin")
    code, _, err = run_cli(command_args(command, folder, tmp_path / "out", train_data), capsys)
    assert not marker.exists()
    assert code == 1
    line = assert_one_line_error(err, command)
    assert str(folder / "pytorch_model.bin") in line and "weights_only" in line


# ---------------------------------------------------------------- corrupt and broken folders


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3000])


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _lying_header(path: Path) -> None:
    """The header claims one tensor reaches far past the end of the file."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 1 << 30
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


@pytest.mark.parametrize("damage", (_truncate, _random_bytes, _lying_header), ids=("truncated", "random", "lying"))
@pytest.mark.parametrize("command", COMMANDS)
def test_a_corrupt_safetensors_file_is_one_line(command, damage, base_model, train_data, tmp_path, capsys):
    folder = model_copy(base_model, tmp_path)
    damage(folder / "model.safetensors")
    code, _, err = run_cli(command_args(command, folder, tmp_path / "out", train_data), capsys)
    assert code == 1
    line = assert_one_line_error(err, command)
    assert str(folder / "model.safetensors") in line and "not a valid safetensors file" in line


def _edit_config(**changes):
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | changes))
    return edit


def _old_style_rope_theta(value):
    """config.json as transformers before 5 wrote it: a top-level rope_theta, no rope_parameters."""
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.pop("rope_parameters", None)
        (folder / "config.json").write_text(json.dumps(config | {"rope_theta": value}))
    return edit


def _uneven_key_value_heads(folder: Path) -> None:
    """4 attention heads and 3 key/value heads, weights of those shapes: transformers builds the model, and its
    first forward pass raised a traceback."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=3, head_dim=8))
    with contextlib.redirect_stderr(io.StringIO()):  # its "Writing model shards" bar is not the command's output
        model.save_pretrained(folder)


def _config_directory(folder: Path) -> None:
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()


def _drop_a_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.0.mlp.down_proj.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def _weights_from_dev_zero(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to("/dev/zero")


def _bad_shard_index(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": [1]}')


BROKEN = {  # case: (damage, what the one line must say)
    "config not JSON": (lambda f: (f / "config.json").write_text("{not json"), "config.json:1: not valid JSON"),
    "config a list": (lambda f: (f / "config.json").write_text("[1, 2]"), "config.json: expected an object, got an array"),
    "config nested too deep": (lambda f: (f / "config.json").write_text("[" * 100_000), "config.json: not valid JSON"),
    "nextlong.json nested too deep": (lambda f: (f / "nextlong.json").write_text("[" * 100_000),
                                      "nextlong.json: not valid JSON"),
    "shard index not a map": (_bad_shard_index, "model.safetensors.index.json: expected a JSON object"),
    "config a directory": (_config_directory, "config.json"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), "no weights"),
    "weights a device": (_weights_from_dev_zero, "model.safetensors: missing or not a regular file"),
    "wrong shapes": (_edit_config(hidden_size=64, intermediate_size=128), "do not fit config.json"),
    "a tensor missing": (_drop_a_tensor, "lack 1 of the model's tensors (e.g. model.layers.0.mlp.down_proj"),
    "zero heads": (_edit_config(num_attention_heads=0), "ZeroDivisionError"),
    "fewer layers than the weights": (_edit_config(num_hidden_layers=0),
                                      "the model of config.json does not have (e.g. model.layers.0."),
    "vocabulary a string": (_edit_config(vocab_size="many"), "vocab_size"),
    # the norm's square root of variance + eps is NaN: train called it a diverged step 1 ("lower --lr")
    "a negative norm epsilon": (_edit_config(rms_norm_eps=-1.0), "config.json: rms_norm_eps must be >= 0"),
    # RoPE's frequencies are powers of its base: at 0 or below the model computes NaN (the same two symptoms)
    # (as transformers 5 writes it, and 4 reads it)
    "a RoPE base of 0": (_edit_config(rope_parameters={"rope_type": "default", "rope_theta": 0.0}, rope_theta=0.0),
                         "rope_theta must be > 0 (RoPE's base"),
    "a negative RoPE base, older config": (_old_style_rope_theta(-1.0), "rope_theta must be > 0"),
    "key/value heads that do not divide the heads": (_uneven_key_value_heads, "config.json: num_key_value_heads must "
                                                                              "be a divisor of num_attention_heads = 4"),
}


@pytest.mark.parametrize("case", BROKEN)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_broken_model_folder_is_one_line(command, case, base_model, train_data, tmp_path, capsys):
    damage, expected = BROKEN[case]
    folder = model_copy(base_model, tmp_path)
    damage(folder)
    code, _, err = run_cli(command_args(command, folder, tmp_path / "out", train_data), capsys)
    assert code == 1
    line = assert_one_line_error(err, command)
    assert str(folder) in line and expected in line


@pytest.mark.parametrize("command", ("eval", "heads"))
def test_a_non_positive_position_limit_is_one_line(command, base_model, train_data, tmp_path, capsys):
    folder = model_copy(base_model, tmp_path)
    _edit_config(max_position_embeddings=-5)(folder)
    code, _, err = run_cli(command_args(command, folder, tmp_path / "out", train_data), capsys)
    assert code == 1
    assert "max_position_embeddings must be a positive number of positions" in assert_one_line_error(err, command)


def test_what_transformers_computes_from_a_config_is_not_refused(base_model, tmp_path):
    """The refusals above stop at values that compute NaN or fail: a RoPE base below 1 still gives finite
    frequencies, a top-level rope_theta that transformers 5 does not use (rope_parameters holds the one it
    does) is its business, and one key/value head serves any number of heads."""
    import torch
    from transformers import LlamaForCausalLM

    from nextlong.model_folder import read_config

    for edit in (_old_style_rope_theta(0.5), _edit_config(num_attention_heads=4, num_key_value_heads=1)):
        folder = model_copy(base_model, tmp_path / str(id(edit)))
        edit(folder)
        logits = LlamaForCausalLM(read_config(folder))(torch.arange(8)[None]).logits
        assert bool(torch.isfinite(logits).all())


def test_a_multimodal_config_gives_its_text_models_positions(tmp_path):
    """Gemma 3's and Llava's configs name the positions only in `text_config`: reading the top level alone found no
    limit, and eval's and acer's length checks were skipped for such models."""
    from transformers import Gemma3Config

    from nextlong.model_folder import ModelFolderError, max_positions_of

    config = Gemma3Config(text_config={"max_position_embeddings": 4096})
    assert getattr(config, "max_position_embeddings", None) is None
    assert max_positions_of(config, tmp_path) == 4096
    broken = Gemma3Config(text_config={"max_position_embeddings": 0})
    with pytest.raises(ModelFolderError, match=r"text_config\.max_position_embeddings must be a positive"):
        max_positions_of(broken, tmp_path)


def test_symlinked_files_are_followed(base_model, tmp_path):
    """A Hugging Face cache snapshot is all symlinks into blobs/ outside it: they load (reading runs nothing)."""
    import torch

    from nextlong.model_folder import load_causal_lm, read_config

    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    shutil.copytree(base_model, blobs)
    snapshot.mkdir()
    for f in blobs.iterdir():
        (snapshot / f.name).symlink_to(f)
    model = load_causal_lm(snapshot, read_config(snapshot), dtype=torch.float32)
    assert model.config.hidden_size == 32


def test_a_pytorch_model_bin_of_plain_tensors_still_loads(base_model, tmp_path):
    """Pickled weights are not refused as such: torch's weights_only loader reads tensors and nothing else."""
    import torch
    from safetensors.torch import load_file

    from nextlong.model_folder import load_causal_lm, read_config

    folder = model_copy(base_model, tmp_path)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    model = load_causal_lm(folder, read_config(folder), dtype=torch.float32)
    assert torch.equal(model.model.embed_tokens.weight, weights["model.embed_tokens.weight"])


def test_an_embedder_folder_gets_the_same_care(tmp_path):
    """`--embedder FOLDER` loads an encoder through the same loader: a pickle holding code is refused
    unrun (it was an UnpicklingError traceback)."""
    from nextlong.mining.embedding import EmbedderError, default_model_path, load_embedder

    folder = tmp_path / "encoder"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(default_model_path() / name, folder / name)
    marker = tmp_path / "marker"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _RunsCode(marker_writer(marker))}))
    with pytest.raises(EmbedderError, match="pytorch_model.bin: refused: a pickle"):
        load_embedder(str(folder), device="cpu")
    assert not marker.exists()
