"""The Triton attention kernels compile for a real GPU target (sm_90, H100) on a machine without one.

CI runs the kernels only in the interpreter, which accepts code the GPU compiler rejects (removed
APIs, layout or shared-memory limits). This compiles the production configurations ahead of time
through Triton's NVIDIA backend, down to a cubin with the bundled ptxas, in a subprocess (the
interpreter replaces `triton.jit` at import time, so it must be off there). Run as a script it prints
ptxas' register and spill report per kernel, which is how the tile sizes were chosen.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# (kernel, head_dim, dtype, causal, left, right): the training case, and a windowed non-causal one.
FAST_CASES = [("fwd", 128, "bf16", True, -1, -1), ("dkdv", 128, "bf16", True, -1, -1),
              ("dq", 128, "bf16", True, -1, -1)]
SLOW_CASES = [(k, 64, "fp16", False, 100, 30) for k in ("fwd", "dkdv", "dq")]
SLOW_CASES += [(k, 256, "bf16", True, 500, -1) for k in ("fwd", "dkdv", "dq")]
SLOW_CASES += [(k, 128, "bf16", True, -1, -1, True) for k in ("fwd", "dkdv", "dq")]  # 64-bit tile offsets
# Head dims padded inside the kernels (masked head-dim columns): Phi-3's 96, and 72 (rows not 16-byte aligned).
SLOW_CASES += [(k, 96, "bf16", True, -1, -1) for k in ("fwd", "dkdv", "dq")]
SLOW_CASES += [(k, 72, "fp16", True, 100, -1) for k in ("fwd", "dkdv", "dq")]


def _compile(case, report=False):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from nextlong.kernels import _attn_triton as K

    name, dim, dtype, causal, left, right = case[:6]
    big = len(case) > 6 and case[6]
    fn = {"fwd": K._fwd_kernel, "dkdv": K._dkdv_kernel, "dq": K._dq_kernel}[name]
    bm, bn, warps, stages = {"fwd": K._FWD, "dkdv": K._DKDV, "dq": K._DQ}[name][K.block_d(dim)]
    consts = dict(GROUP=4, CAUSAL=causal, LEFT=left, RIGHT=right, HEAD_DIM=dim, BLOCK_D=K.block_d(dim), IEEE=False,
                  BIG=big,
                  BLOCK_M=bm, BLOCK_N=bn)
    fp32_ptrs = {"LSE", "DELTA"}
    i32_ptrs = {"CU", "BLK_DOC", "BLK_IDX"}
    sig = {}
    for arg in fn.arg_names:
        if arg in consts:
            sig[arg] = "constexpr"
        elif arg in fp32_ptrs:
            sig[arg] = "*fp32"
        elif arg in i32_ptrs:
            sig[arg] = "*i32"
        elif arg.isupper():
            sig[arg] = "*" + dtype
        elif arg in ("qk_scale", "sm_scale"):
            sig[arg] = "fp32"
        else:
            sig[arg] = "i32"
    # What Triton's launcher specialises at run time: 16-aligned pointers, and strides when the head dim is
    # a multiple of 16 (a head dim of 72 leaves them unaligned).
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if sig[a].startswith("*") or (a.startswith("stride") and dim % 16 == 0)}
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps, "num_stages": stages})
    assert compiled.asm.get("cubin"), f"{case}: no cubin produced"
    if report:
        import re
        import tempfile

        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(compiled.asm["ptx"])
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True,
                             text=True).stderr
        regs = re.search(r"Used (\d+) registers", out)
        spill = re.search(r"(\d+) bytes spill stores", out)
        print(case, (bm, bn, warps, stages), "registers", regs and regs.group(1), "spill bytes",
              spill and spill.group(1), "shared", compiled.metadata.shared)


def _run(cases):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    code = "import tests.test_attention_compile as t; [t._compile(c) for c in %r]" % (cases,)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # `tests` is a package under it
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _nvidia_backend_available():
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
        import triton
    except Exception:
        return False
    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))


needs_backend = pytest.mark.skipif(not _nvidia_backend_available(),
                                   reason="triton's NVIDIA backend (with its bundled ptxas) is not installed")


@needs_backend
@pytest.mark.slow
def test_training_kernels_compile_for_sm90():
    _run(FAST_CASES)


@needs_backend
@pytest.mark.slow
def test_windowed_and_other_head_dims_compile_for_sm90():
    _run(SLOW_CASES)


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    for c in FAST_CASES + SLOW_CASES:
        _compile(c, report=True)
