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
# atomic writes skip their fsync here (nextlong.atomic.fsync_path): the suite writes thousands of tiny files,
# and the flushes doubled the time of the synthesis tests; tests/test_reliability.py checks that they happen
os.environ.setdefault("NEXTLONG_FSYNC", "0")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_terminal_summary(terminalreporter):
    """The versions this run resolved (printed even under -q): CI installs the newest each time, so a
    failure's log says what changed upstream."""
    import importlib.metadata

    names = ("torch", "transformers", "kernels", "triton", "tokenizers", "usearch", "numba", "pyarrow", "ray",
             "matplotlib", "accelerate", "model2vec")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} -")
    terminalreporter.write_line("versions: " + ", ".join(found))
