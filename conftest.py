"""Shared by tests/ and benchmarks/: without a GPU, Triton runs in its interpreter; hubs stay offline."""

import os

# Triton kernels run in the interpreter on machines without a GPU (CI). Must be set before triton imports.
try:
    import torch

    _has_gpu = torch.cuda.is_available()
except ImportError:
    _has_gpu = False
if not _has_gpu:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
