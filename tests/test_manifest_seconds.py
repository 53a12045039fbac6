"""What a synthesize folder's manifest says the data cost: each stage's seconds as recorded when it was made,
whichever run made it, beside what the run that wrote the manifest spent (`seconds_this_run`)."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers import RECORD_FAST, corpus_head, edit_json, write_jsonl

OPTS = dict(RECORD_FAST, num_samples=7, shard_size=2, seed=5)
STAGE_GROUPS = ("chunk", "near_dup_graph", "embed", "index", "synthesize")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", corpus_head(120_000))


def _stage_seconds(out) -> dict:
    return {p.parent.name: json.loads(p.read_text()).get("seconds") for p in sorted(out.glob("*/_done.json"))}


def test_a_rerun_that_finds_every_stage_done_keeps_what_the_data_cost(corpus, tmp_path, monkeypatch):
    from nextlong import synthesize
    from nextlong.synthesis.pipeline import summary
    from nextlong.synthesis.stages import UnitsStage

    real_build = UnitsStage.build

    def slow_build(self, ctx):  # the first run's units take 0.6 s more: more than a cached rerun takes in all
        time.sleep(0.6)
        return real_build(self, ctx)

    monkeypatch.setattr(UnitsStage, "build", slow_build)
    first = synthesize(corpus, tmp_path / "out", **OPTS)["statistics"]
    monkeypatch.setattr(UnitsStage, "build", real_build)
    recorded = _stage_seconds(tmp_path / "out")
    assert first["seconds"]["synthesize"] >= 0.6 and first["output_tokens_per_s"] is not None

    again = synthesize(corpus, tmp_path / "out", **OPTS)
    s = again["statistics"]
    assert {k: s["seconds"][k] for k in STAGE_GROUPS} == {k: first["seconds"][k] for k in STAGE_GROUPS}
    assert all(isinstance(s, float) and s >= 0 for s in recorded.values()), recorded
    assert _stage_seconds(tmp_path / "out") == recorded, "a cached stage's record is not rewritten"
    # the total is the stages' recorded seconds plus this run's own statistics and format
    assert s["seconds"]["total"] >= sum(s["seconds"][k] for k in STAGE_GROUPS)
    assert s["output_tokens_per_s"] == pytest.approx(first["output_tokens_per_s"], rel=0.5)  # not this run's
    # what this run spent: finding every stage done
    assert s["seconds_this_run"]["total"] < first["seconds"]["total"] - 0.5
    assert all(s["seconds_this_run"][k] < 0.1 for k in STAGE_GROUPS)
    lines = summary(again).splitlines()
    assert lines[-2].startswith("  seconds to make the data: chunk ")
    assert lines[-1].startswith("  this run: ") and "earlier runs" in lines[-1]


def test_a_run_killed_then_resumed_adds_up_the_seconds_of_both(corpus, tmp_path, monkeypatch):
    from nextlong import synthesize
    from nextlong.synthesis.stages import AssembleStage, PlanStage

    # run 1: each plan block takes 0.4 s more; killed in the third assemble block, after every stage before
    # them and plan's first three blocks and assemble's first two are done
    real_plan, real_assemble, calls = PlanStage.__call__, AssembleStage.__call__, {"n": 0}

    def slow_plan(self, block, **kw):
        time.sleep(0.4)
        return real_plan(self, block, **kw)

    def dying(self, block):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_assemble(self, block)

    monkeypatch.setattr(PlanStage, "__call__", slow_plan)
    monkeypatch.setattr(AssembleStage, "__call__", dying)
    out, opts = tmp_path / "out", dict(OPTS, num_samples=None)  # every block: plan and assemble get their records
    with pytest.raises(KeyboardInterrupt):
        synthesize(corpus, out, **opts)
    killed = _stage_seconds(out)
    plan_blocks = {p.name: json.loads(p.read_text()).get("seconds") for p in (out / "plan" / "_done").glob("*.json")}

    # run 2: plan at its own speed
    monkeypatch.setattr(PlanStage, "__call__", real_plan)
    monkeypatch.setattr(AssembleStage, "__call__", real_assemble)
    s = synthesize(corpus, out, **opts)["statistics"]
    made = s["seconds"]["synthesize"]
    assert made >= 1.2 and made >= s["seconds_this_run"]["synthesize"] + 1.2 - 0.05, s
    assert s["seconds"]["chunk"] == pytest.approx(killed["chunk"] + killed["chunks"], abs=0.002)
    assert s["seconds_this_run"]["chunk"] < 0.1  # found done
    assert {"chunk", "chunks", "embed", "units"} <= set(killed) and "plan" not in killed
    assert len(plan_blocks) == 3 and all(s >= 0.4 for s in plan_blocks.values())
    after = _stage_seconds(out)
    assert {k: after[k] for k in killed} == killed, "the stages run 1 finished keep their seconds"
    for name, seconds in plan_blocks.items():
        assert json.loads((out / "plan" / "_done" / name).read_text())["seconds"] == seconds
    assert after["plan"] >= 1.2, "run 1's blocks count in the record run 2 wrote"
    from nextlong.synthesis.framework import stage_seconds

    assert made == pytest.approx(sum(stage_seconds(out / k) for k in ("units", "plan", "assemble", "data")), abs=0.002)


def test_stages_recorded_before_they_kept_seconds_are_not_recorded_and_not_redone(corpus, tmp_path, capsys):
    from nextlong import synthesize
    from nextlong.synthesis.pipeline import summary

    out = tmp_path / "out"
    first = synthesize(corpus, out, **OPTS)
    for record in list(out.glob("neardup/_done.json")) + list(out.glob("neardup/_done/*.json")):
        edit_json(record, lambda r: r.pop("seconds", None))
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/_done.json")}
    again = synthesize(corpus, out, **OPTS)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/_done.json")} == before, "no stage is made again"
    assert again["settings"]["stage_fingerprints"] == first["settings"]["stage_fingerprints"]
    s = again["statistics"]
    assert s["seconds"]["near_dup_graph"] is None and s["seconds"]["total"] is None
    assert s["output_tokens_per_s"] is None
    assert s["seconds"]["chunk"] == first["statistics"]["seconds"]["chunk"]
    text = summary(again)
    assert "near_dup_graph not recorded" in text and "total not recorded" in text
    assert "  this run: " in text


@pytest.mark.parametrize("seconds", ["1.5", -1.0, float("nan"), float("inf"), 1e300, True, [1.0], None])
def test_crafted_seconds_in_a_record_are_not_recorded(tmp_path, seconds):
    """A record is as untrusted as its folder: seconds that are not a finite non-negative number read as not
    recorded, never a traceback or a number copied into manifest.json (1e300 + 1e300 would be inf)."""
    from nextlong.synthesis.framework import DONE_FILE, stage_seconds, write_done

    write_done(tmp_path / "s" / DONE_FILE, stage="s", fingerprint="f", seconds=seconds)
    assert stage_seconds(tmp_path / "s") is None
    write_done(tmp_path / "s" / DONE_FILE, stage="s", fingerprint="f", seconds=2.5)
    assert stage_seconds(tmp_path / "s") == 2.5
