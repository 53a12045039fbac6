"""Writes the shards that tests/test_formats.py compares nextlong's MDS writer with, made by
mosaicml-streaming's own MDSWriter (0.13.0 on 2026-12-06). Its pip dependencies would replace the test
machine's packages, so the shards are kept here and made again only by hand, in a venv of their own:

    python3 -m venv /tmp/mdsv && /tmp/mdsv/bin/pip install -c constraints.txt mosaicml-streaming numpy
    /tmp/mdsv/bin/python tests/data/mds_streaming/make_fixture.py

(`streaming` imports torchvision at import time; with the CPU build of torch here a torchvision wheel
does not load, so stub modules stand in for it: the writer does not use it.)"""

import importlib.machinery
import shutil
import sys
import types
from pathlib import Path

import numpy as np


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})


for _name in ("torchvision", "torchvision.datasets", "torchvision.datasets.utils", "torchvision.datasets.vision",
              "torchvision.transforms", "torchvision.transforms.functional", "torchvision.io"):
    if _name not in sys.modules:
        _m = _Stub(_name)
        _m.__spec__, _m.__path__ = importlib.machinery.ModuleSpec(_name, None), []
        sys.modules[_name] = _m

import streaming  # noqa: E402
from streaming import MDSWriter  # noqa: E402

COLUMNS = {"input_ids": "ndarray:uint32", "indices": "ndarray:uint32"}  # nextlong.mds.TRAINING_COLUMNS


def samples():
    """The same samples as tests/test_formats.py's pinned_samples()."""
    rng = np.random.default_rng(0)
    return [{"input_ids": rng.integers(0, 2**32 - 1, int(rng.integers(1, 200)), dtype=np.uint32),
             "indices": np.asarray([[0, 100]] * (i % 5 + 1), np.uint32)} for i in range(24)]


if __name__ == "__main__":
    here = Path(__file__).parent
    for name, limit in (("many", 2000), ("one", 1 << 26)):
        out = here / name
        shutil.rmtree(out, ignore_errors=True)
        with MDSWriter(out=str(out), columns=COLUMNS, compression=None, size_limit=limit) as w:
            for s in samples():
                w.write(s)
    print("streaming", streaming.__version__, sorted(p.name for p in (here / "many").iterdir()))
