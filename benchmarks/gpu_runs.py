"""docs/benchmarks/gpu-runs.jsonl: every GPU figure, one JSON object per measured row, across leases.

A lease's tables write their rows to $OUT/gpu-runs.jsonl (gpu_lease.sh sets NEXTLONG_GPU_RUNS and
NEXTLONG_LEASE; `_measure.record_gpu_row` writes them). After the lease:

    python3 benchmarks/gpu_runs.py append gpu-out/gpu-runs.jsonl   # checks every row, then appends
    python3 benchmarks/gpu_runs.py show cross_entropy               # one op's rows, grouped by shape
    python3 benchmarks/gpu_runs.py check                            # the committed file is well formed

Fields (`_measure.GPU_ROW_FIELDS`): lease, date, device, torch, triton, op (cross_entropy, attention,
prefill, train_step), pass (fwd, fwd+bwd), impl, the shape (seq, docs, n, h, v, head_dim, kv_heads,
weights, dtype; null where it does not apply, equal for rows that measure the same work), ms (null: out
of memory or failed), peak_mib, tflops.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

try:
    from _measure import GPU_OPS, GPU_ROW_FIELDS
except ModuleNotFoundError:
    from benchmarks._measure import GPU_OPS, GPU_ROW_FIELDS

RUNS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "gpu-runs.jsonl"
SHAPE = ("seq", "docs", "n", "h", "v", "head_dim", "kv_heads", "weights", "dtype")
NUMBERS = ("ms", "peak_mib", "tflops")


def check_row(row, where: str) -> None:
    """Raise ValueError naming `where` (file:line) and the field when `row` is not a well-formed row."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [f for f in GPU_ROW_FIELDS if f not in row]
    extra = [f for f in row if f not in GPU_ROW_FIELDS]
    if missing or extra:
        raise ValueError(f"{where}: fields missing {missing}, unknown {extra}")
    for f in ("lease", "date", "device", "torch", "impl"):
        if not isinstance(row[f], str) or not row[f]:
            raise ValueError(f"{where}: {f} must be a non-empty string, got {row[f]!r}")
    if row["op"] not in GPU_OPS:
        raise ValueError(f"{where}: op must be one of {GPU_OPS}, got {row['op']!r}")
    if row["pass"] not in ("fwd", "fwd+bwd"):
        raise ValueError(f"{where}: pass must be fwd or fwd+bwd, got {row['pass']!r}")
    for f in NUMBERS:
        v = row[f]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v < 0):
            raise ValueError(f"{where}: {f} must be null or a finite number >= 0, got {v!r}")
    for f in ("seq", "docs", "n", "h", "v", "head_dim", "kv_heads"):
        v = row[f]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ValueError(f"{where}: {f} must be null or a positive integer, got {v!r}")
    if row["weights"] is not None and not isinstance(row["weights"], bool):
        raise ValueError(f"{where}: weights must be null or true/false, got {row['weights']!r}")


def read_rows(path: Path) -> list[dict]:
    """Every row of a runs file, checked; a bad line is named as path:line."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not JSON ({exc.msg})") from None
            check_row(row, f"{path}:{i}")
            rows.append(row)
    return rows


def append(source: Path, target: Path = RUNS) -> int:
    """Append a lease's rows to `target` after checking all of them; a lease already in `target` is refused
    (appending the same output twice would count its figures twice). Returns the number of rows added."""
    new = read_rows(source)
    if not new:
        raise ValueError(f"{source}: no rows")
    old = read_rows(target) if target.exists() else []
    repeated = sorted({r["lease"] for r in new} & {r["lease"] for r in old})
    if repeated:
        raise ValueError(f"{target}: already holds lease {', '.join(repeated)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    text = target.read_text() if target.exists() else ""
    tmp.write_text(text + "".join(json.dumps(r, allow_nan=False) + "\n" for r in new))
    os.replace(tmp, target)
    return len(new)


def show(op: str, path: Path = RUNS) -> str:
    """The rows of one op as a plain table, grouped by shape, so a figure reads beside the same work in
    other leases and beside its peers."""
    rows = [r for r in read_rows(path) if r["op"] == op]
    rows.sort(key=lambda r: (json.dumps([r[f] for f in SHAPE]), r["pass"], r["impl"], r["lease"]))
    lines = [f"{'shape':<58} {'pass':<8} {'impl':<26} {'lease':<18} {'ms':>9} {'peak MiB':>9} {'TFLOP/s':>8}"]
    for r in rows:
        shape = " ".join(f"{f}={r[f]}" for f in SHAPE if r[f] is not None)
        ms = "OOM/fail" if r["ms"] is None else f"{r['ms']:.1f}"
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        tf = "-" if r["tflops"] is None else f"{r['tflops']:.0f}"
        lines.append(f"{shape:<58} {r['pass']:<8} {r['impl']:<26} {r['lease']:<18} {ms:>9} {peak:>9} {tf:>8}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["append"] and len(argv) == 2:
            print(f"{append(Path(argv[1]))} rows appended to {RUNS}")
        elif argv[:1] == ["show"] and len(argv) == 2:
            print(show(argv[1]))
        elif argv == ["check"]:
            print(f"{RUNS}: {len(read_rows(RUNS))} rows, well formed")
        else:
            print(__doc__.strip().splitlines()[0] + "\nusage: gpu_runs.py append FILE | show OP | check",
                  file=sys.stderr)
            return 2
    except (ValueError, OSError) as exc:
        print(f"gpu_runs: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
