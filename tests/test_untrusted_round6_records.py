"""A sixth outside attack, on the JSON records of a synthesize work folder: a stage record nested too deep
(a RecursionError), one whose counts are a list or whose windowed count is a string (tracebacks, or the
string copied into manifest.json), and one that lists a file under thousands of spellings (each read and
CRC'd again). Each is taken as no record, or refused in one line naming it."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from nextlong.errors import CorruptFileError
from tests.helpers import RECORD_FAST as FAST
from tests.helpers import edit_json, finished_work_folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return finished_work_folder(tmp_path_factory.mktemp("records"))


@pytest.fixture
def work(finished, tmp_path):
    out = tmp_path / "w"
    shutil.copytree(finished[0], out)
    return out, finished[1]


def test_a_record_nested_too_deep_is_no_record(work):
    """Before: RecursionError at read_done (it caught OSError and ValueError only), reached through
    check_cached. Now it is unreadable like any record that is not JSON: the stage is made again."""
    from nextlong import synthesize
    from nextlong.synthesis.framework import read_done

    out, corpus = work
    path = out / "chunks" / "_done.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert read_done(path) is None
    synthesize(corpus, out, num_samples=1, **FAST)
    assert read_done(path) is not None


def test_a_file_listed_under_two_spellings_is_refused(work):
    """Before: each spelling (./store//tokens.npy/, ...) was CRC'd again, 20,000 of them read a 1.7 MB file
    20,000 times (21.5 s against 3.1 s). Now a second spelling of a listed file is refused in one line."""
    from nextlong import synthesize

    out, corpus = work
    path = out / "chunks" / "_done.json"
    edit_json(path, lambda r: r["files"].update({"./store//tokens.npy/": r["files"]["store/tokens.npy"]}))
    with pytest.raises(CorruptFileError) as info:
        synthesize(corpus, out, num_samples=1, **FAST)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: the file entry './store//tokens.npy/' names "
                                                      "store/tokens.npy a second time")
    # and under another name: a hard link to it (3,000 of them were each read whole)
    edit_json(path, lambda r: r["files"].pop("./store//tokens.npy/"))
    os.link(out / "chunks" / "store" / "tokens.npy", out / "chunks" / "store" / "again.npy")
    edit_json(path, lambda r: r["files"].update({"store/again.npy": r["files"]["store/tokens.npy"]}))
    with pytest.raises(CorruptFileError) as info:
        synthesize(corpus, out, num_samples=1, **FAST)
    assert str(info.value).startswith(f"{path}: the file entry 'store/again.npy' is a file already listed under "
                                      "another name")


@pytest.mark.parametrize("change", [
    lambda r: r.update(counts=[1]),
    lambda r: r["counts"].update(windowed="x"),
    lambda r: r["counts"].update(windowed=-5),
])
def test_an_embeddings_record_of_the_wrong_shape_is_no_record(work, change):
    """Before: "counts": [1] was an AttributeError in open_vectors, and "windowed": "x" or -5 went into
    manifest.json as chunks_windowed. The merged fix made each one line; now (round 7, read_done's counts
    check) the record counts as no record, so the embeddings are gathered again and the manifest says 0."""
    from nextlong import synthesize
    from nextlong.synthesis.framework import read_done

    out, corpus = work
    path = out / "embeddings" / "_done.json"
    edit_json(path, change)
    assert read_done(path) is None
    synthesize(corpus, out, num_samples=2, **FAST)
    assert read_done(path)["counts"]["windowed"] == 0
    assert json.loads((out / "manifest.json").read_text())["statistics"]["embedding"]["chunks_windowed"] == 0
