"""Folders handed to `synthesize --index` and `inspect` (a fourth outside attack): the index folder's
embeddings.npy, which synthesis reads instead of embedding again, and an output folder's data shards
must be regular files of their folder (a FIFO hung both commands; a link out was read), and what they
hold is checked before use (NaN vectors gave garbage negatives and a NaN manifest; crafted rows gave
tracebacks). Shard names in a model folder's weight index stay in the folder (see also
test_untrusted_models.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nextlong.errors import CorruptFileError, IndexFileError
from tests.helpers import assert_one_line_error, corpus_head, run_cli, write_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory):
    """(corpus, a `nextlong index` folder built from the corpus's chunks with a fast lexical embedder)."""
    from nextlong.cli import main

    work = tmp_path_factory.mktemp("index")
    corpus = write_jsonl(work / "docs.jsonl", corpus_head(60_000))
    chunks = work / "chunks.parquet"
    assert main(["chunk", str(corpus), "--out", str(chunks), "--no-progress"]) == 0
    folder = work / "idx"
    assert main(["index", str(chunks), "--out", str(folder), "--embedder", "hashed-tfidf:32", "--no-progress"]) == 0
    assert (folder / "embeddings.npy").is_file()
    return corpus, folder


def damaged_copy(folder: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "idx"
    shutil.copytree(folder, copy)
    damage(copy / "embeddings.npy")
    return copy


def test_an_index_whose_embeddings_are_a_fifo_stops_synthesize_in_one_line(index_folder, tmp_path):
    corpus, folder = index_folder

    def fifo(path):
        path.unlink()
        os.mkfifo(path)

    copy = damaged_copy(folder, tmp_path, fifo)
    proc = subprocess.run([sys.executable, "-m", "nextlong", "synthesize", "--corpus", str(corpus), "--out",
                           str(tmp_path / "out"), "--index", str(copy), "--target-length", "1024", "--quiet"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert "is a FIFO, not a regular file" in assert_one_line_error(proc.stderr, "synthesize")


def _link_out(path: Path) -> None:
    outside = path.parent.parent / "elsewhere.npy"
    shutil.copyfile(path, outside)
    path.unlink()
    path.symlink_to(outside)


def _nan(path: Path) -> None:
    vectors = np.load(path)
    vectors[3] = np.nan
    np.save(path, vectors)
    Path(str(path) + ".progress.json").unlink()  # no record: nothing to check a CRC against


def _fewer_rows(path: Path) -> None:
    np.save(path, np.load(path)[:5])
    Path(str(path) + ".progress.json").unlink()


def _other_width(path: Path) -> None:
    np.save(path, np.ones((np.load(path).shape[0], 7), np.float32))
    Path(str(path) + ".progress.json").unlink()


def _strings(path: Path) -> None:
    np.save(path, np.array([["a"]] * np.load(path).shape[0]))
    Path(str(path) + ".progress.json").unlink()


def _record_not_json(path: Path) -> None:
    Path(str(path) + ".progress.json").write_text("[1, 2")


def _record_a_list(path: Path) -> None:
    Path(str(path) + ".progress.json").write_text("[1, 2]")


DAMAGED = {  # damage: what the refusal says
    "link out of the folder": (_link_out, "is a link out of the folder"),
    "a NaN row": (_nan, "the embedding of chunk 3 is not finite"),
    "fewer rows than the index": (_fewer_rows, "embeddings of shape (5, 32), but the index holds"),
    "another dimension": (_other_width, "but the index holds"),
    "not floats": (_strings, "expected a 2-d float array"),
    "progress record not JSON": (_record_not_json, "embeddings.npy.progress.json:1: not valid JSON"),
    "progress record not an object": (_record_a_list, "expected an object, got an array"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_the_index_embeddings_are_checked_before_synthesis_uses_them(index_folder, tmp_path, case):
    from nextlong.mining.index import ChunkIndex
    from nextlong.synthesis.pipeline import check_index_vectors

    _, folder = index_folder
    damage, says = DAMAGED[case]
    copy = damaged_copy(folder, tmp_path, damage)
    index = ChunkIndex.view(copy, verify=False)
    with pytest.raises((IndexFileError, CorruptFileError)) as caught:
        check_index_vectors(copy / "embeddings.npy", len(index), index.dim)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_undamaged_index_embeddings_pass(index_folder):
    from nextlong.mining.index import ChunkIndex
    from nextlong.synthesis.pipeline import check_index_vectors

    _, folder = index_folder
    index = ChunkIndex.view(folder)
    check_index_vectors(folder / "embeddings.npy", len(index), index.dim)


# --- inspect ------------------------------------------------------------------------------------


def output_folder(tmp_path: Path, rows: list[dict] | pa.Table) -> Path:
    """A folder shaped like `nextlong synthesize --out`: manifest.json and data/part-00000.parquet."""
    folder = tmp_path / "out"
    (folder / "data").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"command": "synthesize", "settings": {
        "tokenizer": "cl100k_base"}, "statistics": {"documents_built": len(rows)}}))
    pq.write_table(rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows),
                   folder / "data" / "part-00000.parquet")
    return folder


def good_row(**changes) -> dict:
    row = {"input_ids": [9906, 1917, 13, 220], "method": "nextlong", "anchor_doc_id": "doc",
           "segments": [{"start": 0, "end": 2, "role": "anchor", "doc_id": "doc", "chunk_index": 0},
                        {"start": 2, "end": 4, "role": "negative", "doc_id": "other", "chunk_index": 3}]}
    row.update(changes)
    return row


def test_inspect_shows_a_well_formed_row(tmp_path, capsys):
    code, out, err = run_cli(["inspect", output_folder(tmp_path, [good_row()]), "--color", "never"], capsys)
    assert code == 0, err
    assert "[A] doc#0 tokens 0-2" in out and "[N] other#3 tokens 2-4" in out and "Hello world" in out


BAD_ROWS = {  # the row: what the one line says
    "ids too large": (good_row(input_ids=[1 << 40]), "input_ids must be a list of token ids"),
    "a negative id": (good_row(input_ids=[-1, 5]), "input_ids must be a list of token ids"),
    "no input_ids": ({k: v for k, v in good_row().items() if k != "input_ids"}, "input_ids must be a list"),
    "id outside the vocabulary": (good_row(input_ids=[9906, 999_999, 13, 220]), "not in the vocabulary"),
    "a segment without start": (good_row(segments=[{"end": 2, "role": "anchor"}]), "segments must be a list"),
    "a negative start": (good_row(segments=[{"start": -2, "end": 2, "role": "anchor"}]), "segments must be a list"),
    "an end past the ids": (good_row(segments=[{"start": 0, "end": 9, "role": "anchor"}]), "start <= end <= 4"),
    "segments null": (good_row(segments=None), "segments must be a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_inspect_refuses_a_crafted_row_in_one_line(tmp_path, capsys, case):
    row, says = BAD_ROWS[case]
    code, _, err = run_cli(["inspect", output_folder(tmp_path, [row])], capsys)
    assert code == 1
    line = assert_one_line_error(err, "inspect")
    assert says in line and "part-00000.parquet row 0" in line


@pytest.mark.parametrize("damage", ["fifo", "link out", "not parquet"])
def test_inspect_reads_only_regular_parquet_shards_of_the_folder(tmp_path, capsys, damage):
    folder = output_folder(tmp_path, [good_row()])
    shard = folder / "data" / "part-00000.parquet"
    if damage == "fifo":
        shard.unlink()
        os.mkfifo(shard)
    elif damage == "link out":
        outside = tmp_path / "other.parquet"
        pq.write_table(pa.Table.from_pylist([good_row(anchor_doc_id="SECRET")]), outside)
        shard.unlink()
        shard.symlink_to(outside)
    else:
        shard.write_bytes(b"not parquet at all")
    proc = subprocess.run([sys.executable, "-m", "nextlong", "inspect", str(folder)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 1
    line = assert_one_line_error(proc.stderr, "inspect")
    assert {"fifo": "is a FIFO", "link out": "is a link out of the output folder",
            "not parquet": "not a readable Parquet file"}[damage] in line
    assert "SECRET" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_inspect_reads_the_data_subfolder_only_inside_the_folder(tmp_path, capsys, target):
    """DIR/data as a symbolic link: each shard was checked to lie in the folder the link points to, so a folder
    handed over could show text from anywhere on the disk. A link within DIR is its own."""
    folder = output_folder(tmp_path, [good_row(anchor_doc_id="SECRET")])
    moved = tmp_path / "elsewhere" if target == "outside" else folder / "parts"
    shutil.move(folder / "data", moved)
    (folder / "data").symlink_to(moved)
    code, out, err = run_cli(["inspect", folder, "--color", "never"], capsys)
    if target == "inside":
        assert code == 0 and "SECRET" in out, err
        return
    assert code == 1 and "SECRET" not in out + err
    line = assert_one_line_error(err, "inspect")
    assert f"{folder / 'data'}: a symbolic link out of the output folder" in line


# --- model folders: weight index shard names -----------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.safetensors", "sub/../../x.safetensors"])
def test_a_weight_index_naming_a_file_outside_the_folder_is_refused_before_opening_it(tmp_path, name):
    from nextlong.model_folder import ModelFolderError, _weight_files

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": name}}))
    with pytest.raises(ModelFolderError, match="outside the model folder"):
        _weight_files(folder)


def test_a_weight_index_naming_files_of_the_folder_is_accepted(tmp_path):
    from nextlong.model_folder import _weight_files

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-1.safetensors", "b": "shards/model-2.safetensors", "c": "model-1.safetensors"}}))
    assert _weight_files(folder) == ("safetensors", [folder / "model-1.safetensors",
                                                     folder / "shards" / "model-2.safetensors"])

