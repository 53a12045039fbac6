"""The benchmarks' peers compute what our kernels compute: a ratio against a peer that gives other
outputs would mean nothing. Tiny CPU inputs, a few seconds (the benchmarks themselves are not run)."""

from benchmarks import bench_attention


def test_attention_benchmark_peers_give_our_outputs():
    """SDPA per document (torch.split), SDPA with a dense mask, FlexAttention with the block mask the
    benchmark builds from document lengths (and varlen / flash-attn where CUDA has them)."""
    bench_attention.check_peers_agree_with_nextlong()
