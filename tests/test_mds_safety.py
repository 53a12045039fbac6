"""An MDS folder is untrusted input (issue 24): index.json may name any path, any size, any field.

Opening a folder (`num_samples`, the trainer's `Source`) checks every field and every shard file
before a sample is read; reading checks every count and offset against the bytes. Each failure is
a one-line NextlongError naming the file and field, and never shows bytes of a file outside the
folder. A hang would be a failure too: the FIFO tests run under a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest

from nextlong import mds
from nextlong.errors import NextlongError
from nextlong.mds import TRAINING_COLUMNS, MDSWriter, num_samples, read_mds

SECRET = b"TOPSECRET-outside-the-dataset"
LEAKS = (SECRET[:4].decode(), str(int.from_bytes(SECRET[:4], "little")), f"{int.from_bytes(SECRET[:4], 'little'):,}")


def _write(folder, n=6, size_limit=400):
    """A small dataset: `n` samples of 8 + i tokens, several shards."""
    with MDSWriter(folder, TRAINING_COLUMNS, size_limit=size_limit) as w:
        for i in range(n):
            w.write({"input_ids": np.arange(8 + i, dtype=np.uint32), "indices": np.asarray([[0, 8 + i]], np.uint32)})
    return folder


@pytest.fixture
def ds(tmp_path):
    folder = _write(tmp_path / "ds")
    assert len(json.loads((folder / "index.json").read_text())["shards"]) >= 3
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.bin").write_bytes(SECRET)
    return folder


def _index(folder) -> dict:
    return json.loads((folder / "index.json").read_text())


def _save(folder, index) -> None:
    (folder / "index.json").write_text(json.dumps(index))


def _fails(fn, *fields) -> str:
    """fn() raises one NextlongError line naming every field, with no bytes of the outside file."""
    with pytest.raises(NextlongError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and all(f in msg for f in fields), msg
    assert not any(leak in msg for leak in LEAKS), msg
    return msg


def _opening_fails(folder, *fields) -> str:
    """Opening fails (before any sample is read), and so does reading."""
    msg = _fails(lambda: num_samples(folder), *fields)
    assert _fails(lambda: list(read_mds(folder)), *fields) == msg
    return msg


def _in_time(fn, seconds=20):
    """fn() in a daemon thread; fails the test (rather than hanging it) if it does not return in time."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # pytest.fail too: handed back to the test below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


# --- shard files outside the folder, or not files ----------------------------------------------


def test_absolute_shard_path_is_refused(ds):
    index = _index(ds)
    index["shards"][0]["raw_data"]["basename"] = str(ds.parent / "outside" / "secret.bin")
    _save(ds, index)
    _opening_fails(ds, "index.json", "shards[0].raw_data.basename", "outside the MDS folder")


def test_dotdot_shard_path_is_refused(ds):
    index = _index(ds)
    index["shards"][1]["raw_data"]["basename"] = "../outside/secret.bin"
    _save(ds, index)
    _opening_fails(ds, "shards[1].raw_data.basename", "outside the MDS folder")


def test_symlink_out_of_the_folder_is_refused(ds, tmp_path):
    """Into another dataset with the very same bytes (size checks cannot tell), or to any file."""
    other = _write(tmp_path / "other")
    shard = ds / "shard.00000.mds"
    assert shard.read_bytes() == (other / "shard.00000.mds").read_bytes()
    shard.unlink()
    shard.symlink_to(other / "shard.00000.mds")
    _opening_fails(ds, "shards[0].raw_data.basename", "link out of the MDS folder")
    shard.unlink()
    shard.symlink_to(tmp_path / "outside" / "secret.bin")
    _opening_fails(ds, "shards[0].raw_data.basename", "link out of the MDS folder")
    shard.unlink()
    shard.symlink_to(shard.name)  # a loop
    _opening_fails(ds, "shards[0].raw_data.basename", "cannot read")


def test_links_and_subfolders_inside_the_folder_are_fine(ds):
    """A merged index (mosaicml-streaming's merge_index) names shards in subfolders; links may stay inside."""
    expected = [s["input_ids"].tolist() for s in read_mds(ds)]
    (ds / "part").mkdir()
    os.replace(ds / "shard.00000.mds", ds / "part" / "shard.00000.mds")
    (ds / "shard.00001.mds").rename(ds / "moved.mds")
    (ds / "shard.00001.mds").symlink_to("moved.mds")
    index = _index(ds)
    index["shards"][0]["raw_data"]["basename"] = "part/shard.00000.mds"
    _save(ds, index)
    assert [s["input_ids"].tolist() for s in read_mds(ds)] == expected and num_samples(ds) == 6


def test_fifo_shard_does_not_hang(ds):
    shard = ds / "shard.00001.mds"
    shard.unlink()
    os.mkfifo(shard)
    _in_time(lambda: _opening_fails(ds, "shards[1].raw_data.basename", "is a FIFO"))
    # a FIFO swapped in after the check is not waited on either
    _in_time(lambda: _fails(lambda: mds._read(shard, 100), "shard.00001.mds", "is a FIFO"))


def test_fifo_index_does_not_hang(ds):
    index = ds / "index.json"
    index.unlink()
    os.mkfifo(index)
    _in_time(lambda: _opening_fails(ds, "index.json", "is a FIFO"))


def test_devices_are_refused(ds):
    index = _index(ds)
    index["shards"][0]["raw_data"]["basename"] = "/dev/zero"
    _save(ds, index)
    _opening_fails(ds, "shards[0].raw_data.basename", "outside the MDS folder")
    shutil.copy(ds / "shard.00000.mds", ds / "zero.mds")
    index["shards"][0]["raw_data"]["basename"] = "zero.mds"
    _save(ds, index)
    (ds / "zero.mds").unlink()
    (ds / "zero.mds").symlink_to("/dev/zero")
    _opening_fails(ds, "shards[0].raw_data.basename", "link out of the MDS folder")
    # a device swapped in after the check is never read (it would not end)
    _in_time(lambda: _fails(lambda: mds._read("/dev/zero", 100), "/dev/zero", "is a device"))


def test_shard_size_must_match_the_index(ds):
    shard = ds / "shard.00002.mds"
    shard.write_bytes(shard.read_bytes() + b"\0")
    msg = _opening_fails(ds, "shards[2].raw_data.bytes", "shard.00002.mds")
    index = _index(ds)
    index["shards"][2]["raw_data"]["bytes"] += 1
    _save(ds, index)
    assert num_samples(ds) == 6 and msg


def test_a_missing_later_shard_fails_when_the_dataset_is_opened(ds, tmp_path, capsys):
    """Issue 24 item 7: not after training on the shards before it."""
    from nextlong.cli import main
    from nextlong.train.sources import Source

    last = sorted(ds.glob("shard.*.mds"))[-1]
    last.unlink()
    _opening_fails(ds, last.name, "is missing")
    _fails(lambda: Source(str(ds)), last.name, "is missing")
    run = tmp_path / "run"
    assert main(["train", str(ds), "--out", str(run), "--steps", "2", "--quiet", "--threads", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nextlong train: error: ") and last.name in err and "\n" not in err, err
    assert not run.exists()  # refused before any work: no folder, no empty metrics.jsonl


# --- malformed index.json fields -----------------------------------------------------------------


def _set(shard, path, value):
    """Returns an edit of index.json: shards[shard][path...] = value (`None` path: the whole entry)."""
    def edit(index):
        obj = index["shards"]
        keys = [shard, *path]
        for key in keys[:-1]:
            obj = obj[key]
        obj[keys[-1]] = value
    return edit


def _drop(shard, key):
    return lambda index: index["shards"][shard].pop(key)


BAD_FIELDS = {
    "samples not a number": (_set(0, ["samples"], "abc"), "shards[0].samples"),
    "samples negative": (_set(1, ["samples"], -1), "shards[1].samples"),
    "samples a float": (_set(1, ["samples"], 2.0), "shards[1].samples"),
    "samples huge": (_set(0, ["samples"], 10**30), "shards[0].samples"),
    "entry not an object": (_set(1, [], "shard.00001.mds"), "shards[1]: expected an object"),
    "shards not a list": (lambda index: index.update(shards={"0": 1}), "'shards' list"),
    "raw_data missing": (_drop(0, "raw_data"), "shards[0].raw_data"),
    "bytes a string": (_set(0, ["raw_data", "bytes"], "100"), "shards[0].raw_data.bytes"),
    "bytes negative": (_set(0, ["raw_data", "bytes"], -5), "shards[0].raw_data.bytes"),
    "basename missing": (_set(0, ["raw_data", "basename"], None), "shards[0].raw_data.basename"),
    "basename the folder": (_set(0, ["raw_data", "basename"], "."), "shards[0].raw_data.basename"),
    "basename a NUL": (_set(0, ["raw_data", "basename"], "shard\0.mds"), "shards[0].raw_data.basename"),
    "two entries, one file": (lambda index: index["shards"][1].update(raw_data=index["shards"][0]["raw_data"]),
                              "shards[1].raw_data.basename: names the file of shards[0] again"),
    "column_sizes missing": (_drop(0, "column_sizes"), "column_sizes"),
    "column lists mismatched": (_set(2, ["column_encodings"], ["ndarray:uint32"]), "column_encodings"),
    "column names repeated": (_set(0, ["column_names"], ["input_ids", "input_ids"]), "shards[0].column_names"),
    "column name not a string": (_set(0, ["column_names"], [1, 2]), "shards[0].column_names"),
    "zero column size": (_set(0, ["column_sizes"], [0, None]), "shards[0].column_sizes[0]"),
    "size given for a variable column": (_set(0, ["column_sizes"], [8, None]), "shards[0].column_sizes[0]"),
    "pickle encoding": (_set(0, ["column_encodings"], ["pkl", "ndarray:uint32"]), "shards[0].column_encodings[0]"),
    "negative ndarray dim": (_set(0, ["column_encodings"], ["ndarray:uint32:-2", "ndarray:uint32"]),
                             "shards[0].column_encodings[0]"),
    "encoding not a string": (_set(0, ["column_encodings"], [None, "ndarray:uint32"]), "shards[0].column_encodings[0]"),
    "format": (_set(0, ["format"], "json"), "shards[0].format"),
    "compressed": (_set(0, ["compression"], "zstd"), "shards[0]: compressed"),
}


@pytest.mark.parametrize("case", BAD_FIELDS)
def test_malformed_index_fields_are_one_line_errors(ds, case):
    edit, field = BAD_FIELDS[case]
    index = _index(ds)
    edit(index)
    _save(ds, index)
    _opening_fails(ds, "index.json", field)


@pytest.mark.parametrize("text", ["{", "[" * 100_000, '{"shards": [' + "9" * 5000 + "]}", "\udcff"])
def test_index_json_that_does_not_parse(ds, text):
    (ds / "index.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    _opening_fails(ds, "index.json", "not valid JSON")


# --- malformed shard bytes (inside the folder, of the recorded size) -----------------------------


def _one_shard(folder):
    """A one-shard dataset of two samples, and where its parts are: (path, bytearray, offsets)."""
    _write(folder, n=2, size_limit=None)
    path = folder / "shard.00000.mds"
    data = bytearray(path.read_bytes())
    return path, data, np.frombuffer(bytes(data), "<u4", 3, 4).tolist()


def _u32(data, at, value):
    data[at:at + 4] = np.uint32(value).tobytes()


# sample 0: [indices size][input_ids size][indices: shape byte, 2 dims, 8 bytes][input_ids: ...]
BAD_SHARDS = {
    "count": (lambda d, o: _u32(d, 0, 7), "holds 7 samples"),
    "offsets not monotonic": (lambda d, o: (_u32(d, 4, o[1]), _u32(d, 8, o[0])), "sample offsets"),
    "offset past the end": (lambda d, o: _u32(d, 8, len(d) + 10), "sample offsets"),
    "offset into the header": (lambda d, o: _u32(d, 4, 0), "sample offsets"),
    "zero variable size": (lambda d, o: _u32(d, o[0], 0), "sample 0 column 'indices'"),
    "variable size past the sample": (lambda d, o: _u32(d, o[0] + 4, 1 << 31), "sample 0 column 'input_ids'"),
    "bad ndim byte": (lambda d, o: d.__setitem__(o[0] + 8, 63 << 2 | 3), "sample 0 column 'indices': ndarray shape"),
    "shape and values disagree": (lambda d, o: d.__setitem__(o[0] + 9, 5), "sample 0 column 'indices': ndarray of"),
}


@pytest.mark.parametrize("case", BAD_SHARDS)
def test_malformed_shard_bytes_are_one_line_errors(tmp_path, case):
    edit, what = BAD_SHARDS[case]
    path, data, offsets = _one_shard(tmp_path)
    edit(data, offsets)
    path.write_bytes(bytes(data))
    assert num_samples(tmp_path) == 2  # the index and the size still agree: caught while reading
    _fails(lambda: list(read_mds(tmp_path)), "shard.00000.mds", what)


def test_training_rows_need_integer_ids_and_paired_spans(tmp_path):
    from nextlong.train.sources import Source

    with MDSWriter(tmp_path / "f", {"input_ids": "ndarray:float32", "indices": "ndarray:uint32"}) as w:
        w.write({"input_ids": np.ones(8, np.float32), "indices": np.asarray([[0, 8]], np.uint32)})
    _fails(lambda: Source(str(tmp_path / "f")).sample(0, "sample"), "sample 0", "input_ids")
    with MDSWriter(tmp_path / "odd", TRAINING_COLUMNS) as w:
        w.write({"input_ids": np.arange(8, dtype=np.uint32), "indices": np.asarray([0, 4, 8], np.uint32)})
    _fails(lambda: Source(str(tmp_path / "odd")).sample(0, "sample"), "sample 0", "indices")


@pytest.mark.parametrize("dtype, value", [("uint64", (1 << 32) + 7), ("int64", -4294967000), ("int64", -1)])
def test_input_ids_wider_than_32_bits_are_refused(tmp_path, dtype, value):
    """Before: ndarray:uint64 ids 2**32+7 were read as 7 and int64 -4294967000 as 296 (a silent wrap into
    uint32), and training ran on them. Now, as for JSONL and Parquet, one line naming the shard and sample."""
    from nextlong.train.sources import Source

    folder = tmp_path / "wide"
    with MDSWriter(folder, {"input_ids": f"ndarray:{dtype}"}) as w:
        w.write({"input_ids": np.arange(5, dtype=dtype)})  # in range: read as it is
        w.write({"input_ids": np.array([3, value, 4], dtype)})
    source = Source(folder)
    assert source.sample(0, "none").ids.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(NextlongError) as info:
        source.sample(1, "none")
    message = str(info.value)
    assert "\n" not in message and message.endswith("sample 1: input_ids outside 0..2**32-1")
