"""The benchmarks' peers compute what our kernels compute: a ratio against a peer that gives other
outputs would mean nothing. Tiny CPU inputs, a few seconds (the benchmarks themselves are not run)."""

import pytest

from benchmarks import bench_attention


@pytest.mark.parametrize("kv_heads", [None, 1, 2], ids=["mha", "gqa4:1", "gqa2:1"])
def test_attention_benchmark_peers_give_our_outputs(kv_heads):
    """SDPA per document (torch.split), SDPA with a dense mask, FlexAttention with the block mask the
    benchmark builds from document lengths (and varlen / flash-attn where CUDA has them)."""
    bench_attention.check_peers_agree_with_nextlong(kv_heads)
