#!/usr/bin/env bash
# Issue 25's `--scale lease`: the whole experiment (pre-training to the copy gate, every arm x 3 seeds,
# evaluation, report) in one device call on one H100/H200.
#
# The lent machine runs Python 3.12 with torch, Triton, transformers, pyarrow, numba, tokenizers,
# matplotlib and the build tools our native module needs (pybind11, scikit-build-core, CMake, ninja), as
# the device tool's KINDS.md lists them, and can fetch nothing. It lacks model2vec and the MiniLM package
# the static embedder is distilled from. So, once, on a machine that reaches PyPI (this one):
#
#     bash benchmarks/experiments/lease_run.sh prepare
#
# puts in .lease/ (git-ignored): the model2vec wheel (pure Python; its own needs are in the image) and the
# distilled static embedder (15 MB; distilled here first if it is not cached). Then one device call:
#
#     run(command="bash benchmarks/experiments/lease_run.sh run", carry=[".lease"], timeout_s=600)
#
# Measured on 2026-12-06 (one H100, a fresh machine): the machine started in about 30 s, the native build took
# 18 s and the whole lease scale 8 min 25 s (pre-training 2 min 12 s), within the default CAP.
#
# It builds the native module into /tmp/nextlong-site (19 s on 2 cores here), runs nextlong_vs_standard.py
# --scale lease with its work folder in lease-work/ (git-ignored and not carried, so a warm machine keeps
# it and a second call resumes where a cut one stopped), stops the experiment at CAP seconds (default 540)
# so what is finished comes back, and leaves in $OUT: device.txt, the log, the report's page, report.tgz (the
# page, its PNGs and results.json: the device tool brings back 8 files at most, and the first full run's
# results.json was left behind as a ninth) and records.tgz (every stage's completion record and the small JSON
# outputs, no checkpoints: `tar xzf records.tgz -C lease-work` here, then --report-only regenerates the page).
# The corpus is the lent machine's own standard library (Python 3.12: not the CPU run's 3.11).
# VARIANTS="short-docs longce-self" runs those variants instead of the main run (each page its own), and
# VARIANTS="main longce-self" the main run and then a variant, all within CAP.
set -euo pipefail
cd "$(dirname "$0")/../.."
LEASE=.lease
SCALE=${SCALE:-lease}  # SCALE=smoke EXTRA=--skip-gate: the same steps in a minute, to check the script itself
EXTRA=${EXTRA:-}

case "${1:-}" in
  prepare)
    mkdir -p "$LEASE"
    version=$(python3 -c 'import importlib.metadata as m; print(m.version("model2vec"))')
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 -d "$LEASE" "model2vec==$version"
    python3 - "$LEASE/static" <<'PY'
import shutil, sys
from nextlong.mining.static_embedding import static_model_dir
shutil.copytree(static_model_dir(), sys.argv[1], dirs_exist_ok=True)  # the cached distillation
PY
    du -sh "$LEASE"
    ;;
  run)
    : "${OUT:?run this through the device tool, which sets OUT}"
    [ -d "$LEASE/static" ] || { echo "no $LEASE/static: run 'lease_run.sh prepare' here and carry $LEASE"; exit 2; }
    SITE=/tmp/nextlong-site
    export PYTHONUNBUFFERED=1
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"; } \
      | tee "$OUT/device.txt"
    python3 -c "import sys, torch, triton, transformers; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"
    if ! ls "$SITE"/nextlong/_native*.so >/dev/null 2>&1; then  # a warm machine keeps the build
      t0=$(date +%s)
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$LEASE"/*.whl
      python3 -m pip install -q --no-build-isolation --no-deps --no-index --no-cache-dir --target "$SITE" .
      echo "native module built in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/device.txt"
    fi
    export PYTHONPATH="$SITE"
    REPORT=/tmp/lease-report
    rm -rf "$REPORT"
    # VARIANTS="short-docs longce-self": those variants one after the other instead of the main run (they share
    # its corpus, tokenizer and base, made by the first); CAP bounds them all together
    export SCALE EXTRA REPORT EMBEDDER="$PWD/$LEASE/static"
    read -r -a runs <<< "${VARIANTS:-main}"
    experiment='for v in "$@"; do
        python3 benchmarks/experiments/nextlong_vs_standard.py --scale "$SCALE" --out lease-work \
          --embedder "$EMBEDDER" --report-dir "$REPORT" $EXTRA $([ "$v" = main ] || echo --variant "$v") "${REPORT_ONLY[@]}" \
          || exit $?
      done'
    set +e
    timeout --kill-after=10 "${CAP:-540}" bash -c "REPORT_ONLY=(); $experiment" _ "${runs[@]}" 2>&1 | tee "$OUT/exp25.log"
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then  # cut or failed: the report of what finished (a re-run resumes the rest)
      bash -c "REPORT_ONLY=(--report-only); $experiment" _ "${runs[@]}" 2>&1 | tail -3 || true
    fi
    (cd lease-work && find . \( -name '*.json' -o -name '*.jsonl' \) -size -4M -not -path '*/checkpoints/*' -print0 \
      | tar --null -czf "$OUT/records.tgz" -T -) || true
    if [ -d "$REPORT" ]; then
      tar -czf "$OUT/report.tgz" -C "$REPORT" . && cp "$REPORT"/*.md "$OUT"/ || true
    fi
    echo "experiment exit status $status"
    exit "$status"
    ;;
  *)
    echo "usage: bash benchmarks/experiments/lease_run.sh prepare|run"
    exit 2
    ;;
esac
