"""The prompt templates of ACER, as files a user can replace (`--prompts DIR`).

Shipped in nextlong/acer/prompts/; a file of the same name in DIR replaces one (the others stay):

    rank.txt      the ranker's multiple-choice prompt: {passage}, {question}; option A = helpful, B = not
    read.txt      the reader's prompt: {passages}, {question}
    read_cot.txt  the reader's prompt with --chain-of-thought: {passages}, {question}
    passage.txt   one passage inside {passages}: {passage}, optional {n} (1-based rank); joined by a blank line
    question.txt  --generate-questions: {passage}
    sample.txt    what follows the chunks in a training sample: {question}; the answer comes right after

A template is rendered straight to token ids, piece by piece: its literal text is encoded with special
tokens allowed (a chat model's markers can be written in it), a value with no special-token parsing
(data never becomes a control token), and a passage is the chunk's own ids. So a prompt's length is
exactly the sum of its pieces' lengths, which is what the context checks add up. A literal that ends
in one space before a text value gives that space to the value (`Question: {question}` encodes
" What ..." as the model would have seen it in running text). One trailing newline of a file (the one
editors add) is not part of the template. A field that the template is never given (`{n}` outside
passage.txt, `{passages}` in sample.txt) is refused when the templates are read, not met mid-run; any
other `{word}` is literal text (code or LaTeX in a prompt).
"""

from __future__ import annotations

import os

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import UsageError

SHIPPED = Path(__file__).resolve().parent / "prompts"
# template name -> the placeholders it must hold
REQUIRED = {
    "rank": ("passage", "question"),
    "read": ("passages", "question"),
    "read_cot": ("passages", "question"),
    "passage": ("passage",),
    "question": ("passage",),
    "sample": ("question",),
}
FIELDS = {"passage", "passages", "question", "n"}
# template name -> every placeholder it is given when rendered (any other would fail mid-run)
GIVEN = {name: set(fields) | ({"n"} if name == "passage" else set()) for name, fields in REQUIRED.items()}
PASSAGE_JOINER = "\n\n"
HELPFUL, NOT_HELPFUL = " A", " B"  # the ranker's options, as the model continues "Answer:"
_FIELD = re.compile(r"\{(" + "|".join(sorted(FIELDS)) + r")\}")


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    path: str  # where it was read from (for messages and the manifest)

    def pieces(self) -> list[tuple[str, str]]:
        """("text", literal) and ("field", name) in order."""
        out, at = [], 0
        for m in _FIELD.finditer(self.text):
            if m.start() > at:
                out.append(("text", self.text[at:m.start()]))
            out.append(("field", m.group(1)))
            at = m.end()
        if at < len(self.text):
            out.append(("text", self.text[at:]))
        return out

    def render(self, tokenizer, **values) -> np.ndarray:
        """Token ids (uint32) of the template with `values`: a str is text (encoded without special tokens),
        anything else a sequence of token ids used as they are."""
        parts: list[np.ndarray] = []
        pieces = self.pieces()
        for k, (kind, value) in enumerate(pieces):
            if kind == "text":
                nxt = pieces[k + 1] if k + 1 < len(pieces) else None
                if nxt is not None and isinstance(values.get(nxt[1]), str) and _gives_space(pieces[k]):
                    value = value[:-1]  # the space goes with the value
                if value:
                    parts.append(np.asarray(tokenizer.encode(value), np.uint32))
                continue
            if value not in values:
                raise KeyError(f"{self.name} template: no value for {{{value}}}")
            v = values[value]
            if isinstance(v, str):
                if k and _gives_space(pieces[k - 1]):
                    v = " " + v
                parts.append(np.asarray(tokenizer.encode_ordinary(v), np.uint32))
            else:
                parts.append(np.asarray(v, np.uint32).reshape(-1))
        return np.concatenate(parts) if parts else np.zeros(0, np.uint32)


    def value_prefixes(self, field: str) -> list[str]:
        """What `render` puts before a text value of `field`, once per place the field appears: " " after a literal
        ending in one space, else "" ("Question:{question}"). A value's ids in the prompt are then those of each
        prefix + value, which is what the checks before work measure questions by."""
        pieces = self.pieces()
        return [" " if k and _gives_space(pieces[k - 1]) else "" for k, piece in enumerate(pieces)
                if piece == ("field", field)]


def _gives_space(piece: tuple[str, str]) -> bool:
    """A literal that ends in one space gives it to the text value after it (two or more stay literal)."""
    return piece[0] == "text" and piece[1].endswith(" ") and not piece[1].endswith("  ")


TEMPLATE_LIMIT = 1 << 20  # bytes of one prompt template at most


def _read(path: Path, name: str) -> Template:
    from ...untrusted import read_bytes

    # a regular file of the folder itself: not a link out of it, not a FIFO that would block the read
    data = read_bytes(path, UsageError, limit=TEMPLATE_LIMIT, follow=False, what="prompt template")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: the {name} prompt template is not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start})") from None
    if text.endswith("\n"):
        text = text[:-1]
    template = Template(name, text, str(path))
    unknown = sorted({m.group(1) for m in _FIELD.finditer(text)} - GIVEN[name])
    if unknown:
        raise UsageError(f"{path}: the {name} prompt template uses {{{unknown[0]}}}, which it is never given "
                         f"(its fields: {', '.join(f'{{{f}}}' for f in sorted(GIVEN[name]))})")
    missing = [f for f in REQUIRED[name] if f"{{{f}}}" not in text]
    if missing:
        raise UsageError(f"{path}: the {name} prompt template must contain "
                         + " and ".join(f"{{{f}}}" for f in missing))
    return template


def load_templates(prompts_dir=None) -> dict[str, Template]:
    """The templates: the shipped ones, each replaced by DIR/<name>.txt when that file exists."""
    own = None
    if prompts_dir is not None:
        own = Path(prompts_dir)
        if not own.is_dir():
            raise UsageError(f"{own}: --prompts must be a folder holding some of "
                             + ", ".join(f"{n}.txt" for n in REQUIRED))
        # a name that exists is read as a template whatever it is: a FIFO, a folder or a link is refused by
        # _read in one line, never replaced by the shipped template behind the user's back
        if not any(os.path.lexists(own / f"{n}.txt") for n in REQUIRED):
            raise UsageError(f"{own}: --prompts holds none of " + ", ".join(f"{n}.txt" for n in REQUIRED))
    out = {}
    for name in REQUIRED:
        mine = own / f"{name}.txt" if own is not None else None
        path = mine if mine is not None and os.path.lexists(mine) else SHIPPED / f"{name}.txt"
        out[name] = _read(path, name)
    return out


def option_ids(tokenizer) -> tuple[int, int]:
    """First token ids of the ranker's two options (" A": helpful, " B": not); they must differ."""
    a, b = (np.asarray(tokenizer.encode_ordinary(s), np.int64) for s in (HELPFUL, NOT_HELPFUL))
    if a.size == 0 or b.size == 0 or a[0] == b[0]:
        raise UsageError(f"the model's tokenizer cannot tell the ranker's options {HELPFUL!r} and {NOT_HELPFUL!r} "
                         "apart by their first token")
    return int(a[0]), int(b[0])


def passages_ids(templates: dict, tokenizer, passages: list) -> np.ndarray:
    """The {passages} value: each passage (token ids) in passage.txt, numbered from 1, joined by a blank line."""
    joiner = np.asarray(tokenizer.encode(PASSAGE_JOINER), np.uint32)
    parts = []
    for n, ids in enumerate(passages, 1):
        if parts:
            parts.append(joiner)
        parts.append(templates["passage"].render(tokenizer, passage=ids, n=str(n)))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint32)


def context_pieces(tokenizer, chunks: list, separator: str) -> list[np.ndarray]:
    """Each chunk (its token ids) of a long context with the separator after it, tokenized as the text the two
    make together, as a tokenizer writes running text: cl100k and Llama-3 write ".\n\n" as one token, which
    tokenizing the chunk and the separator apart splits into "." + "\n\n" at every chunk boundary, a mark no
    ordinary text carries. Ids that do not decode to whole characters keep their own ids, then the separator's,
    as does a chunk whose joint tokenization would be longer (cl100k: "print(x)\r\n" + "\n\n" gives 5 ids, not
    3 + 1): a piece is never longer than the two side by side, the bound the checks before work count with."""
    sep = np.asarray(tokenizer.encode_ordinary(separator), np.uint32)
    texts, whole = [], []
    for ids in chunks:
        try:
            texts.append(tokenizer.decode_bytes(ids).decode("utf-8") + separator)
            whole.append(True)
        except UnicodeDecodeError:
            texts.append("")
            whole.append(False)
    encoded = tokenizer.encode_ordinary_batch(texts, num_threads=1)
    return [np.asarray(e, np.uint32) if ok and len(e) <= len(ids) + sep.size
            else np.concatenate([np.asarray(ids, np.uint32), sep]) for ids, e, ok in zip(chunks, encoded, whole)]
