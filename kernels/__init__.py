"""Triton training kernels, importable as `nextlong.kernels` and usable in any training stack.

Each op lives in its own module with a pure-PyTorch fallback of identical semantics that is chosen
automatically when no GPU is present.
"""
