"""A seventh outside attack, on the counts of a synthesize work folder's stage and block records: a count
that is a string, negative, a float or 10**30, counts that are a list, a count its readers index missing.
Before, each reader indexed the counts as it found them: tracebacks (AttributeError, ValueError, KeyError)
or the crafted value copied into manifest.json. Now `read_done` takes such a record as no record (the
stage or block is made again), and a done stage's block record that does not read is one line naming it."""

from __future__ import annotations

import json
import shutil

import pytest

from nextlong.errors import CorruptFileError
from tests.helpers import RECORD_FAST as FAST
from tests.helpers import edit_json, finished_work_folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished folder (1 sample), and the statistics a rerun of it with 2 samples writes."""
    from nextlong import synthesize

    root = tmp_path_factory.mktemp("counts")
    done, corpus = finished_work_folder(root)
    shutil.copytree(done, root / "ref")
    synthesize(corpus, root / "ref", num_samples=2, **FAST)
    return done, corpus, _statistics(root / "ref")


def _statistics(out) -> dict:
    stats = json.loads((out / "manifest.json").read_text())["statistics"]
    return {k: v for k, v in stats.items() if k not in ("seconds", "seconds_this_run", "output_tokens_per_s")}


@pytest.fixture
def work(finished, tmp_path):
    out = tmp_path / "w"
    shutil.copytree(finished[0], out)
    return out, finished[1], finished[2]


def _edit(path, change) -> None:
    edit_json(path, lambda record: change(record, record["counts"]))


@pytest.mark.parametrize("counts, reads", [
    ({"blocks": 1, "rows": 248, "negative_sim_sum": -0.5, "max_length": "", "dtype": None}, True),
    ({"blocks": [{"docs": 14, "rows": 248}], "docs": 14, "reader": {"bytes": 5, "skipped_examples": []}}, True),
    ([1], False),
    ({"rows": "248"}, False),
    ({"rows": -1}, False),
    ({"rows": 248.0}, False),
    ({"rows": 10 ** 30}, False),
    ({"pairs": -4}, False),
    ({"negative_sim_sum": float("nan")}, False),
    ({"reader": [1]}, False),
    ({"blocks": [1]}, False),
    ({"partial_block": {"block": 0, "rows": -1}}, False),
])
def test_read_done_takes_counts_of_the_wrong_shape_as_no_record(tmp_path, counts, reads):
    """Before: read_done returned any object with a fingerprint, whatever its counts held."""
    from nextlong.synthesis.framework import read_done

    path = tmp_path / "_done.json"
    path.write_text(json.dumps({"fingerprint": "f", "counts": counts}))
    assert (read_done(path) is not None) == reads


CASES = {
    # before: AttributeError ('list' object has no attribute 'get') in the manifest's corpus_bytes
    "chunk reader a list": ("chunk/_done.json", lambda r, c: c.update(reader=[1]), ()),
    # before: corpus_bytes 'x' in manifest.json
    "chunk reader bytes a string": ("chunk/_done.json", lambda r, c: c["reader"].update(bytes="x"), ()),
    # before: near_duplicate_pairs_in_corpus 'x' / near_copy_families -4 in manifest.json
    "neardup pairs a string": ("neardup/_done.json", lambda r, c: c.update(pairs="x"), ()),
    "neardup families negative": ("neardup/_done.json", lambda r, c: c.update(near_copy_families=-4), ()),
    # before: ValueError (int('x')) / blank_documents_skipped 2 in manifest.json
    "units blank a string": ("units/_done.json", lambda r, c: c.update(blank_documents_skipped="x"), ()),
    "units blank a float": ("units/_done.json", lambda r, c: c.update(blank_documents_skipped=2.7), ()),
    # before: KeyError 'blocks' in Consolidate, which reads the chunk stage's block count
    "chunk blocks missing": ("chunk/_done.json", lambda r, c: c.pop("blocks"), ("chunks",)),
    # before: KeyError 'counts' in chain_work
    "assemble counts missing": ("assemble/_done.json", lambda r, c: r.pop("counts"), ()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_crafted_count_is_made_again_not_a_traceback_or_a_wrong_number(work, case):
    from nextlong import synthesize

    out, corpus, reference = work
    name, change, remove = CASES[case]
    _edit(out / name, change)
    for folder in remove:
        shutil.rmtree(out / folder)
    synthesize(corpus, out, num_samples=2, **FAST)
    assert _statistics(out) == reference


@pytest.mark.parametrize("change", [lambda r, c: c.update(windowed="x"), lambda r, c: c.update(windowed=-7),
                                    lambda r, c: r.update(counts=[1])])
def test_a_done_stages_block_record_that_does_not_read_is_one_line(work, change):
    """Before: GatherEmbeddings took the block's rows as 0 ("could not broadcast input array from shape
    (248,64) into shape (0,64)", a traceback). Now one line naming the block record."""
    from nextlong import synthesize

    out, corpus, _ = work
    path = out / "embed" / "_done" / "part-00000.json"
    _edit(path, change)
    shutil.rmtree(out / "embeddings")
    with pytest.raises(CorruptFileError) as info:
        synthesize(corpus, out, num_samples=2, **FAST)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: not a block record whose counts read")
    assert message.endswith(f"remove {out / 'embed'} to make the stage again")


@pytest.mark.parametrize("dropped", [{}, {"x": 1}])
def test_a_plan_records_dropped_that_is_an_object_is_no_record(work, dropped):
    """"dropped" is a number in synthesize's plan records and an object by reason in acer's assemble records,
    so read_done lets both through. Before: a plan block record's object was summed with numbers (TypeError in
    the statistics, or an object in the plan stage record). Now a plan record holding one is no record: the
    stage record and an unfinished stage's block are made again, a done stage's block record is one line."""
    from nextlong import synthesize

    out, corpus, reference = work
    block = out / "plan" / "_done" / "part-00000.json"
    _edit(out / "plan" / "_done.json", lambda r, c: c.update(dropped=dropped))
    synthesize(corpus, out, num_samples=2, **FAST)
    assert json.loads((out / "plan" / "_done.json").read_text())["counts"]["dropped"] == 0
    (out / "plan" / "_done.json").unlink()
    _edit(block, lambda r, c: c.update(dropped=dropped))
    synthesize(corpus, out, num_samples=2, **FAST)
    assert _statistics(out) == reference
    assert json.loads(block.read_text())["counts"]["dropped"] == 0
    _edit(block, lambda r, c: c.update(dropped=dropped))
    with pytest.raises(CorruptFileError) as info:  # all samples: block 0 is no longer cut, its counts are summed
        synthesize(corpus, out, **FAST)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{block}: not a block record whose counts read")


@pytest.mark.parametrize("reasons", [{"r": "x"}, {"r": 1.5}, {"r": True}, {"r": {"deep": 1}}, {"r": [1, 2]}])
def test_an_assemble_records_dropped_holds_whole_numbers_by_reason(reasons):
    """acer's assemble records count drops by reason: {"reason": n}. Before, counts_fit checked only that the
    value was an object, so a crafted stage record's {"r": "x"} (or 1.5, true, an object, a list) was taken as
    done and copied into manifest.json's samples_dropped. Now such a record does not fit: it is made again."""
    from nextlong.synthesis.acer.stages import AssembleStage
    from nextlong.synthesis.framework import counts_fit

    assert counts_fit(AssembleStage, {"dropped": {"cut": 2, "empty": 0}}) and counts_fit(AssembleStage, {"dropped": {}})
    assert not counts_fit(AssembleStage, {"dropped": reasons})


def test_whole_is_an_integer_as_json_gives_it():
    """The one check every reader of a count or an id uses: JSON's true/false are Python ints, and a crafted
    record may put them (or 3.0, "3") where a count belongs."""
    from nextlong.untrusted import whole

    assert whole(0) and whole(-5) and whole(3, 0) and whole(1, 1) and whole(2 ** 70)
    assert not any(whole(v) for v in (True, False, 3.0, "3", None, [3]))
    assert not whole(-1, 0) and not whole(0, 1) and not whole(True, 0)
