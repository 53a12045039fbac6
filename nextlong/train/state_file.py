"""Training state as one safetensors file: tensors stay tensors, everything else is JSON in its header.

Checkpoints travel between people and machines, so loading one must never run code. A pickle
(`torch.save`) runs whatever its author put in it; this format holds data only: dicts, lists,
tuples, str, int (any size), float, bool, None, torch tensors and numpy arrays. A tensor is stored
under its path in the state ("state/3/exp_avg"), so `safetensors.torch.load_file` reads the file
too. Tensors that share memory (tied embeddings) are stored once and share memory again when
loaded; the bytes of every tensor come back exactly.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..errors import NextlongError

_HEADER_KEY = "nextlong_state"
_MARKS = ("__tensor__", "__ndarray__", "__tuple__", "__items__")


def save_state(path: str | os.PathLike, state) -> None:
    """Write `state` to `path` (not atomically: checkpoints write into a folder renamed when done)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}  # a view's identity -> its name, so a tied weight is stored once
    storages: set[int] = set()

    def tensor(t: torch.Tensor, name: str) -> str:
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)
        if t.numel() and key in seen:
            return seen[key]
        storage = t.untyped_storage().data_ptr()
        if not t.is_contiguous() or (t.numel() and storage in storages):
            t = t.contiguous() if not t.is_contiguous() else t.clone()  # safetensors stores whole views only
        while name in tensors:
            name += "+"
        tensors[name] = t
        if t.numel():
            seen[key] = name
            storages.add(t.untyped_storage().data_ptr())
        return name

    def encode(obj, path: str):
        if isinstance(obj, torch.Tensor):
            return {"__tensor__": tensor(obj, path)}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                raise TypeError(f"{path}: object arrays cannot be stored")
            return {"__ndarray__": tensor(torch.from_numpy(np.ascontiguousarray(obj).copy()), path)}
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, tuple):
            return {"__tuple__": [encode(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [encode(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            if all(isinstance(k, str) and k not in _MARKS for k in obj):
                return {k: encode(v, f"{path}/{k}" if path else k) for k, v in obj.items()}
            return {"__items__": [[encode(k, f"{path}/key"), encode(v, f"{path}/{k}")] for k, v in obj.items()]}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"{path or 'state'}: {type(obj).__name__} cannot be stored in a checkpoint")

    header = json.dumps(encode(state, ""))
    save_file(tensors, os.fspath(path), metadata={_HEADER_KEY: header})


def load_state(path: str | os.PathLike):
    """Read what `save_state` wrote; anything else is a one-line NextlongError naming the file. The file
    must be a regular file, never a symbolic link (a checkpoint is read only from its own folder), and
    is checked on the open descriptor first, so a FIFO or device cannot hang or flood the reader."""
    from safetensors import safe_open

    from ..untrusted import fd_path, open_regular

    def refuse(message: str) -> NextlongError:
        return NextlongError(f"{message}; delete the checkpoint to resume from an older one")

    with open_regular(path, refuse, what="checkpoint file") as (fh, _):
        try:
            with safe_open(fd_path(fh, path), framework="pt") as f:
                header = (f.metadata() or {}).get(_HEADER_KEY)
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            if header is None:
                raise ValueError("no nextlong state in its header")
            return _decode(json.loads(header), tensors)
        except Exception as exc:  # safetensors' own errors, bad JSON, a header that names no stored tensor
            detail = " ".join(str(exc).split())
            raise refuse(f"{path}: unreadable checkpoint file ({type(exc).__name__}: {detail[:300]})") from None


def _decode(node, tensors: dict):
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__ndarray__" in node:
        return tensors[node["__ndarray__"]].numpy()
    if "__tuple__" in node:
        return tuple(_decode(v, tensors) for v in node["__tuple__"])
    if "__items__" in node:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in node["__items__"]}
    return {k: _decode(v, tensors) for k, v in node.items()}
