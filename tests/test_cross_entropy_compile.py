"""The Triton kernels compile for an H100 (sm_90) even on a machine without a GPU.

The interpreter used by the other tests cannot catch type or layout errors that only the real
compiler sees (bf16 dots, register allocation), so this compiles every kernel with the
configurations the launchers use, in a subprocess without TRITON_INTERPRET, down to a cubin.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

SCRIPT = textwrap.dedent('''
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from nextlong.kernels import _ce_triton as k

    target = GPUTarget("cuda", 90, 32)
    ptr = lambda dt: "*" + dt
    def build(fn, sig, consts, **opts):
        sig = dict(sig, **{name: "constexpr" for name in consts})
        c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                           options=opts)
        assert c.asm["cubin"], fn

    dt, prec = "bf16", k._precision(torch.bfloat16)
    bn, bv, bh, warps, stages = k._linear_blocks(torch.bfloat16)
    common = {"X": ptr(dt), "W": ptr(dt), "B": ptr(dt), "Y": "*i64"}
    dims = {"N": "i32", "V": "i32", "H": "i32", "stride_xn": "i32", "stride_wv": "i32"}
    fwd = dict(common, M_OUT="*fp32", S_OUT="*fp32", ZY_OUT="*fp32", SZ_OUT="*fp32", **dims,
               blocks_per_split="i32", num_v_blocks="i32", softcap="fp32")
    flags = {"HAS_BIAS": True, "HAS_CAP": True, "PRECISION": prec}
    build(k._flce_fwd_kernel, fwd, dict(flags, BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh),
          num_warps=warps, num_stages=stages)
    bwd = dict(common, LSE="*fp32", GA="*fp32", GB="*fp32", GC="*fp32", DX="*fp32", DW="*fp32",
               DB="*fp32", **dims, softcap="fp32")
    for cfg in k._flce_bwd_kernel.configs:
        build(k._flce_bwd_kernel.fn, bwd,
              dict(flags, NEED_DX=True, NEED_DW=True, NEED_DB=True, **cfg.kwargs),
              num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    lbn, lbv, lwarps = k._logits_blocks()
    ce = {"Z": ptr(dt), "Y": "*i64", "LSE": "*fp32"}
    build(k._ce_fwd_kernel, dict(ce, ZY="*fp32", SZ="*fp32", N="i32", V="i32", stride_zn="i32",
                                 softcap="fp32"),
          {"HAS_CAP": True, "BLOCK_N": lbn, "BLOCK_V": lbv}, num_warps=lwarps)
    build(k._ce_bwd_kernel, dict(ce, GA="*fp32", GB="*fp32", GC="*fp32", DZ=ptr(dt), N="i32",
                                 V="i32", stride_zn="i32", stride_dn="i32", softcap="fp32"),
          {"HAS_CAP": True, "BLOCK_N": lbn, "BLOCK_V": lbv}, num_warps=lwarps)
    print("compiled")
''')


@pytest.mark.skipif(not (Path(triton.__file__).parent / "backends/nvidia/bin/ptxas").exists(),
                    reason="triton's bundled ptxas is missing")
@pytest.mark.slow
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
