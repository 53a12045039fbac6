"""docs/benchmarks/gpu-runs.jsonl and the rows the GPU tables write to it: the committed file is well formed,
every table's row writer gives a row `gpu_runs.py` accepts (a crash there would cost a lease its section),
and appending checks every row, names a bad one by file and line, and refuses a lease twice."""

from __future__ import annotations

import json

import pytest

from tests.helpers import gpu_bench as bench  # noqa: F401  (the fixture)


def test_the_committed_runs_are_well_formed(bench):
    import gpu_runs

    rows = gpu_runs.read_rows(gpu_runs.RUNS)
    assert rows, "the two earlier leases are recorded"
    for lease in {r["lease"] for r in rows}:
        same = [r for r in rows if r["lease"] == lease]
        assert len({(r["date"], r["device"], r["torch"], r["triton"]) for r in same}) == 1, lease
    assert {r["op"] for r in rows} == {"cross_entropy", "attention", "prefill", "train_step"}


def test_every_table_writes_rows_the_checker_accepts(bench):
    import bench_attention
    import bench_cross_entropy
    import bench_eval
    import bench_train
    import gpu_runs

    bench_cross_entropy._record("nextlong_weighted", 16384, 4096, 131072, 0.09, 1280.0)
    bench_cross_entropy._record("liger", 65536, 4096, 131072, None, None)  # out of memory
    result = bench_attention.Result(seconds=0.01, peak_mib=65.0, cpu_seconds=None, lengths=[8192, 8192],
                                    first_seconds=0.02, max_diff=0.0)
    bench_attention._record("sdpa_flash", "fwd+bwd", 16384, 16, 128, result.lengths, result, 300.0)
    bench_attention._record("flex", "fwd", 16384, 16, 64, [16384], None)
    bench_eval._record("nextlong", 32768, 0.3, 3080.0)
    bench_train._record({"config": "varlen+liger", "median_step_s": 0.1, "peak_mib": 9000.0, "tflops": 140.0,
                         "hidden": 768}, 16384, 4096, 32768)
    bench_train._record({"config": "flex+liger", "seq": 65536, "error": "CUDA out of memory"}, 65536, 4096, 32768)
    rows = gpu_runs.read_rows(bench)
    assert [r["op"] for r in rows] == ["cross_entropy"] * 2 + ["attention"] * 2 + ["prefill"] + ["train_step"] * 2
    assert {r["lease"] for r in rows} == {"test-lease"}
    ce = rows[0]
    assert (ce["impl"], ce["weights"], ce["n"], ce["ms"]) == ("nextlong", True, 16384, 90.0)
    assert rows[1]["ms"] is None and rows[1]["tflops"] is None
    assert (rows[2]["impl"], rows[2]["docs"], rows[2]["kv_heads"], rows[2]["ms"]) == ("sdpa", 2, 16, 10.0)
    assert rows[5]["ms"] == pytest.approx(100.0) and rows[6]["ms"] is None


def test_append_checks_rows_and_refuses_a_lease_twice(bench, tmp_path):
    import gpu_runs
    from _measure import gpu_row

    target = tmp_path / "docs" / "gpu-runs.jsonl"
    good = gpu_row("attention", "fwd", "nextlong", seq=16384, docs=1, h=16, head_dim=128, kv_heads=4,
                   dtype="bfloat16", ms=3.1, peak_mib=65.0, tflops=353.0)
    source = tmp_path / "out.jsonl"
    source.write_text(json.dumps(good) + "\n")
    assert gpu_runs.append(source, target) == 1
    with pytest.raises(ValueError, match="already holds lease test-lease"):
        gpu_runs.append(source, target)
    for field, value, message in (("op", "matmul", "op must be one of"), ("ms", -1, "ms must be null"),
                                  ("seq", 1.5, "seq must be null or a positive integer")):
        bad = dict(good, lease="other", **{field: value})
        source.write_text(json.dumps(good | {"lease": "other"}) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=rf"out.jsonl:2: {message}"):
            gpu_runs.append(source, target)
    source.write_text("{not json\n")
    with pytest.raises(ValueError, match="out.jsonl:1: not JSON"):
        gpu_runs.append(source, target)
    assert len(gpu_runs.read_rows(target)) == 1  # nothing of a refused file was added
    assert "nextlong" in gpu_runs.show("attention", target)
