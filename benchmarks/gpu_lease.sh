#!/usr/bin/env bash
# The GPU tables in one pass on one H100/H200: fused CE, training step, attention (with its peers:
# PyTorch varlen, flash-attn varlen, the SDPA loop, then compiled FlexAttention), eval prefill (and
# its attention alone at two head shapes), tile sweep. Each section has its own time cap, so a slow
# one costs only itself; everything printed is also written to $OUT. All caps at their defaults add
# up to about 16 minutes (the extra sections ce-64k, ce-accuracy, train-1b and attention-odd, 7 more, are not in
# the default list): more than a 15-minute lease, so pick sections or lower caps
# (CAP_CE, CAP_TRAIN, CAP_TRAIN_LONG, CAP_ATTN, CAP_FLEX, CAP_EVAL, CAP_TILES) to fit.
#
# A plan for one 15-minute lease (900 s of device time, machine start and idle included; one command at most
# 600 s; the machine stays warm 30 s after a call, so a second call must follow at once). Call 1:
#   NEXTLONG_LEASE=<date>-h100 CAP_CE=100 CAP_TRAIN=170 CAP_TRAIN_LONG=100 CAP_ATTN=150 \
#     bash benchmarks/gpu_lease.sh ce train attention-peers                    (at most 520 s; timeout_s 580)
# call 2, at once on the warm machine, with what is left (about 250 s):
#   NEXTLONG_LEASE=<the same id> CAP_FLEX=150 CAP_EVAL=80 bash benchmarks/gpu_lease.sh attention-flex eval
# Everything printed goes to $OUT/sections.log (one file: the device tool brings back 8 files at most, and a
# file per section would pass that), beside $OUT/device.txt and $OUT/gpu-runs.jsonl.
#
# Every timed ce and attention row is checked against the same inputs in fp32 (`error ... ok|WRONG`; a WRONG
# row is recorded with ms null, and the section ends with a WRONG line naming it): read those before a ratio.
#
# Usage (repo root, on the GPU machine):  bash benchmarks/gpu_lease.sh [SECTION ...]
# Sections: ce train attention eval tiles (default: all, in that order; also ce-64k, ce-accuracy, train-1b,
# attention-odd); `attention` runs the
# subsections attention-peers and attention-flex, each also a section of its own; `flex` is
# attention-flex.
#
# The machine needs torch + triton + transformers (a GPU image has them). The package runs from the
# source tree copied to a site folder (no native build: the kernels and the model code are pure
# Python). Peers missing there can be brought as wheels in .whl/ (liger-kernel, cut-cross-entropy);
# a missing peer is reported as skipped in its table. flash-attn has no binary wheel on PyPI. To
# fetch the two wheels (py3-none-any, no dependencies beyond torch/triton), on a machine with PyPI:
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl liger-kernel cut-cross-entropy
#
# Lessons from the 2026-11-27 lease (docs/benchmarks.md): run `python3 -c` from benchmarks/ (from the
# repo root the source `nextlong/`, without its native module, shadows the site copy); FlexAttention's
# first compile took minutes, so it runs in its own subsection (its own cap) after the other peers.
# The FlexAttention block mask is now built from the document lengths (no create_block_mask compile);
# the "1st ms" column is flex_attention's compile.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
# Every measured row also goes to $OUT/gpu-runs.jsonl (benchmarks/_measure.record_gpu_row), stamped with this
# lease's id; after the lease: python3 benchmarks/gpu_runs.py append gpu-out/gpu-runs.jsonl
# the model word of the name: "NVIDIA H100 80GB HBM3" -> h100, "NVIDIA H200" -> h200
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 \
  | grep -oE '\b[A-Z][0-9]{2,4}\b' | head -1 | tr '[:upper:]' '[:lower:]')
export NEXTLONG_LEASE=${NEXTLONG_LEASE:-$(date -u +%Y-%m-%dT%H%MZ)-${GPU_NAME:-gpu}}
export NEXTLONG_GPU_RUNS="$OUT/gpu-runs.jsonl"
SITE=/tmp/nextlong-site
rm -rf "$SITE" && mkdir -p "$SITE"
cp -r nextlong "$SITE/nextlong" && rm -f "$SITE"/nextlong/*.so
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$SITE:$PWD/benchmarks"
cd benchmarks

section() {  # section NAME SECONDS COMMAND...
  local name=$1 cap=$2
  shift 2
  echo "=== $name (cap ${cap}s) $(date +%T)" | tee -a "$OUT/sections.log"
  timeout --kill-after=5 "$cap" "$@" 2>&1 | tee -a "$OUT/sections.log"
  echo "=== $name: exit ${PIPESTATUS[0]} $(date +%T)" | tee -a "$OUT/sections.log"
}

run() {
  case $1 in
    # Fused CE at 16K tokens (H 4096, V 128K): ours (dW summed in place in bf16, the default for bf16 weights;
    # with an fp32 accumulator; with per-token weights), our Triton kernels, and the peers. ce-64k: the same at
    # 64K beside the fastest peers; ce-accuracy: the two dW sums against fp64. Neither is in the default list.
    ce) section ce "${CAP_CE:-100}" python3 -c "
import bench_cross_entropy as b
b.GPU_TOKENS = (16384,); b.GPU_VOCABS = (131072,)
b._table('gpu')" ;;
    ce-64k) section ce-64k "${CAP_CE_LONG:-90}" python3 -c "
import bench_cross_entropy as b
b.GPU_TOKENS = (65536,); b.GPU_VOCABS = (131072,)
b.GPU_IMPLS = ('nextlong', 'nextlong_fp32acc', 'nextlong_weighted', 'liger', 'cce', 'compile')
b._table('gpu')" ;;
    ce-accuracy) section ce-accuracy "${CAP_CE_ACC:-60}" python3 -c "
import bench_cross_entropy as b
b.print_weight_grad_errors([(16384, 4096, 32768, None), (16384, 4096, 32768, 256)], 'cuda')" ;;
    # Every configuration at 16K (the dense-mask ones run out of memory at 64K), then ours against the
    # fair peer stacks (varlen + Liger, FlexAttention + Liger, flash-attn + Liger) at 64K.
    train)
      section train "${CAP_TRAIN:-200}" python3 bench_train.py gpu --seq 16384 --steps 5
      section train-64k "${CAP_TRAIN_LONG:-120}" python3 bench_train.py gpu --seq 65536 --steps 5 \
        --configs nextlong+fused,varlen+liger,flex+liger,flash-attn-varlen+liger ;;
    # The 1B-class step (Llama-3.2-1B's shape, 128K vocabulary) at 16K against the fair peer stacks; 64K of
    # activations without checkpointing would not fit beside its 19 GB of weights and AdamW state.
    train-1b) section train-1b "${CAP_TRAIN_1B:-150}" python3 bench_train.py gpu --preset 1b --vocab 128256 \
        --seq 16384 --steps 3 --configs nextlong+fused,varlen+liger,flex+liger,flash-attn-varlen+liger ;;
    attention) run attention-peers; run attention-flex ;;
    # Issue 28's shapes: 16 query heads over 4 kv heads (GQA 4:1), head dim 128 then 64.
    attention-peers) section attention-peers "${CAP_ATTN:-150}" python3 -c "
import bench_attention as b
b.GPU_SEQLENS = (16384, 65536); b.GPU_FWD_ONLY_SEQLENS = (262144,); b.KV_HEADS = 4
b.GPU_IMPLS = ('nextlong', 'varlen', 'flash_attn', 'sdpa_flash')
for b.GPU_DIM in (128, 64):
    b._table('gpu')" ;;
    # Head dims that are not a power of two (Phi-2's 80, Phi-3's 96), padded to 128 inside our kernels; not in
    # the default list: no GPU figure yet for them, run it when a lease has time left.
    attention-odd) section attention-odd "${CAP_ATTN_ODD:-100}" python3 -c "
import bench_attention as b
b.GPU_SEQLENS = (16384,); b.GPU_FWD_ONLY_SEQLENS = (); b.KV_HEADS = 4
b.GPU_IMPLS = ('nextlong', 'varlen', 'flash_attn')
for b.GPU_DIM in (96, 80):
    b._table('gpu')" ;;
    attention-flex|flex) section attention-flex "${CAP_FLEX:-180}" python3 -c "
import bench_attention as b
b.GPU_SEQLENS = (16384, 65536); b.GPU_FWD_ONLY_SEQLENS = (); b.MASKS = ('docs',); b.KV_HEADS = 4
b.GPU_IMPLS = ('nextlong', 'flex', 'varlen')
for b.GPU_DIM in (128, 64):
    b._table('gpu')" ;;
    eval) section eval "${CAP_EVAL:-120}" python3 -c "
import bench_eval as b
b.GPU_LENGTHS = (32768, 131072)
b.print_table(b.run_gpu())
b.print_attention(b.attention_only_gpu())" ;;
    tiles) section tiles "${CAP_TILES:-100}" python3 tune_attention_tiles.py --dim 128 --seq 32768 ;;
    *) echo "unknown section $1" ;;
  esac
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"
for s in "${@:-ce train attention eval tiles}"; do
  for one in $s; do run "$one"; done
done
