"""A hostile tokenizer file must not crash, hang or corrupt the native tokenizer (issue 24, item 4).

Split patterns are bounded when loaded (nesting, size) and while matching (recursion depth, a step
budget linear in the text); ids and merges are checked when loaded. Every refusal is one
TokenizerError line naming the file or the pattern. Each test here failed (crashed, hung, or
accepted the file) before these checks.
"""

from __future__ import annotations

import base64
import json
import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nextlong.cli import main
from nextlong.errors import TokenizerError
from nextlong.corpus.tokenizer import (
    CL100K_PATTERN,
    GPT2_PATTERN,
    LLAMA3_PATTERN,
    O200K_PATTERN,
    QWEN2_PATTERN,
    Tokenizer,
)
from tests.helpers import bytelevel_json, split_pre_tokenizer


def _hf(tmp_path, pattern: str) -> Tokenizer:
    """A byte-level tokenizer.json splitting with `pattern` (read as Oniguruma, like HF)."""
    return Tokenizer.from_file(bytelevel_json(tmp_path, split_pre_tokenizer(pattern)))


def _rank_file(tmp_path, extra: str = "") -> Path:
    path = tmp_path / "bytes.tiktoken"
    path.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)) + extra)
    return path


def _tiktoken(tmp_path, pattern: str) -> Tokenizer:
    """Byte-level ranks with `pattern` (read as fancy-regex, like tiktoken)."""
    return Tokenizer.from_tiktoken(_rank_file(tmp_path), pattern=pattern)


def _one_line(exc: pytest.ExceptionInfo, limit: int = 400) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < limit, text
    return text


# --- patterns: refused when loaded ------------------------------------------------------------


@pytest.mark.parametrize("pattern, expected", [
    ("(" * 101 + "a" + ")" * 101, "nested more than 100 deep"),
    ("(?:" * 101 + "a" + ")" * 101, "nested more than 100 deep"),
    ("[" * 101 + "a" + "]" * 101, "nested more than 100 deep"),
    ("a" * 2600, "too large (more than 2500 elements)"),
])
def test_pattern_too_deep_or_large_is_refused_on_load(tmp_path, pattern, expected):
    for load in (_hf, _tiktoken):
        with pytest.raises(TokenizerError) as exc:
            load(tmp_path, pattern)
        line = _one_line(exc)
        assert expected in line and "..." in line  # the pattern is named, cut short


def test_patterns_within_the_bounds_load_and_match(tmp_path):
    assert _hf(tmp_path, "(" * 100 + "a" + ")" * 100).pretokenize("xaax") == ["x", "a", "a", "x"]
    # the largest pattern allowed still matches: one pass stays inside the recursion bound
    assert _tiktoken(tmp_path, "a" * 2400).pretokenize("a" * 2401) == ["a" * 2400]


def test_cli_tokenize_with_a_pattern_nested_20000_deep(tmp_path):
    """Crashed the process (rc 139) before: the parser recursed once per level."""
    tok = bytelevel_json(tmp_path, split_pre_tokenizer("(" * 20000 + "a" + ")" * 20000))
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(json.dumps({"text": "a b c"}) + "\n")
    argv = ["tokenize", str(corpus), "--out", str(tmp_path / "t.parquet"), "--tokenizer", str(tok), "--no-progress"]
    run = subprocess.run([sys.executable, "-m", "nextlong", *argv], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nextlong tokenize: error: "), run.stderr[-2000:]
    assert str(tok) in lines[0] and "nested more than 100 deep" in lines[0]


# --- matching: a step budget and a recursion bound ----------------------------------------------


@pytest.mark.parametrize("pattern, text, at", [
    (r"(a+)+$", "a" * 24 + "b", 0),       # exponential: took 0.41 s at 24 characters, x4 per 2 more
    (r"(?:a|aa)+c", "a" * 32, 0),          # exponential without nesting quantifiers directly
    (r"a*b|a", "a" * 20_000, None),        # quadratic: every position scans to the end
])
def test_catastrophic_backtracking_raises_one_line(tmp_path, pattern, text, at):
    for load in (_hf, _tiktoken):
        tok = load(tmp_path, pattern)
        with pytest.raises(TokenizerError) as exc:
            tok.encode(text)
        line = _one_line(exc)
        assert line.startswith("regex step budget exhausted") and f"pattern {pattern!r}" in line
        if at is not None:
            assert f"at byte {at} of the text (near 'aaaa" in line


def test_budget_errors_propagate_from_worker_threads(tmp_path):
    """encode_batch runs on the native pool with the GIL released; a bad text anywhere in the batch
    raises TokenizerError in the caller, and the pool keeps working."""
    tok = _hf(tmp_path, r"(a+)+$|\s+|[^a\s]+")
    good = ["word " * 1000 + "a"] * 40
    texts = good[:17] + ["x " * 3000 + "a" * 30 + "b"] + good[17:]
    for _ in range(3):
        with pytest.raises(TokenizerError, match=r"step budget exhausted at byte 6000 "):
            tok.encode_batch(texts, num_threads=2)
    with pytest.raises(TokenizerError, match="step budget"):
        tok.encode(texts[17])  # over 4096 bytes: encoded with the GIL released
    assert [len(ids) for ids in tok.encode_batch(good, num_threads=2)] == [len(tok.encode(t)) for t in good]


def test_a_pattern_padded_to_the_element_limit_fails_sooner(tmp_path):
    """The budget grew with the pattern's elements at 8 x elements per byte, so (?:a+)+$ padded with 1,240
    alternatives to ~2,500 elements ran 20,000 steps per byte before failing: 6.4 s at 30 KB and 14 s at 100 KB
    here, minutes per MB. It is now 256 + 2 x elements per byte (~5,000 here); a pattern of standard size fails
    at 256-odd (0.2 s at 100 KB)."""
    import time

    (tmp_path / "small").mkdir(), (tmp_path / "padded").mkdir()
    small = _hf(tmp_path / "small", r"(?:a+)+$")
    padded = _hf(tmp_path / "padded", r"(?:a+)+$" + "|\x01" * 1240)
    text = "a" * 100_000 + "!"
    t0 = time.perf_counter()
    with pytest.raises(TokenizerError, match="step budget exhausted"):
        small.encode(text)
    assert time.perf_counter() - t0 < 2.5
    n, nodes = len(text), padded.native.regex_nodes
    assert nodes > 2000
    for tok in (small, padded):
        assert tok.native.step_budget(n) == 2**16 + (256 + 2 * tok.native.regex_nodes) * n
    assert padded.native.step_budget(n) < 2**16 + 5300 * n < 8 * nodes * n  # the old budget's per-byte term


def test_a_pattern_of_many_keyword_alternatives_is_not_refused(tmp_path):
    """An attack on the first fix, a budget of 256 steps per byte whatever the pattern: Qwen2's pattern behind 120
    Python keyword alternatives (how a code tokenizer might split keywords first) takes 367 steps per byte on
    digits and was refused at byte 28,080 of 40 KB, where HF takes 0.06 s. Ids equal to HF's."""
    import builtins
    import keyword

    import tokenizers

    words = sorted(set(keyword.kwlist + [w for w in dir(builtins) if w.isidentifier() and not w.startswith("_")]))[:120]
    qwen2 = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    path = bytelevel_json(tmp_path, split_pre_tokenizer("(?:" + "|".join(" ?" + w for w in words) + r")(?!\p{L})|"
                                                        + qwen2))
    tok = Tokenizer.from_file(path)
    text = "3141592653589793238462643383279502884197" * 1000
    assert tok.native.regex_steps(text) > 300 * len(text)  # past what a fixed 256 per byte allowed
    assert tok.encode(text).tolist() == tokenizers.Tokenizer.from_file(str(path)).encode(text).ids


def test_segments_between_added_tokens_share_one_budget(tmp_path):
    """Each segment between added tokens had a budget of its own, base included, so a text of many short segments
    could take the base (2^20 steps, ~10 ms) per segment without failing. One encode now shares one budget:
    (a+)+$ takes 49,182 steps on 'a'*13 + '!' (within its own budget), and 1,000 of them between added tokens
    (17 KB, 49 million steps) fail."""
    path = bytelevel_json(tmp_path, split_pre_tokenizer(r"(a+)+$|[^a]"))
    _edit = json.loads(path.read_text())
    _add_token(_edit, "<s>", 257)
    path.write_text(json.dumps(_edit))
    tok = Tokenizer.from_file(path)
    unit = "a" * 13 + "!"
    assert len(tok.encode(unit)) == 14
    with pytest.raises(TokenizerError, match="step budget exhausted"):
        tok.encode("<s>".join([unit] * 1000))


def test_cli_tokenize_budget_error_is_one_line(tmp_path, capsys):
    tok = bytelevel_json(tmp_path, split_pre_tokenizer(r"(a+)+$|\s+|[^a\s]+"))
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["fine text"] * 50 + ["a" * 30 + "b"]))
    code = main(["tokenize", str(corpus), "--out", str(tmp_path / "t.parquet"), "--tokenizer", str(tok),
                 "--threads", "2", "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("nextlong tokenize: error: regex step budget exhausted"), lines


def test_deep_recursion_on_a_small_thread_stack_raises(tmp_path):
    """A 1 MiB stack (`ulimit -s 1024`: the main thread and every pool thread) overflowed before the
    recursion bound was reached; now the matcher stops at the stack's end and raises."""
    script = textwrap.dedent(f"""
        import threading
        from nextlong.errors import TokenizerError
        from nextlong.corpus.tokenizer import Tokenizer
        tok = Tokenizer.from_tiktoken({str(_rank_file(tmp_path))!r}, pattern=r"(?:ab)+|\\S")
        def encode(fn, arg):
            try:
                fn(arg)
            except TokenizerError as exc:
                print("raised:", exc)
        encode(tok.encode, "ab" * 100_000)  # the main thread
        encode(tok.encode_batch, ["ab" * 100_000] * 4)  # pool threads
        t = threading.Thread(target=encode, args=(tok.encode, "ab" * 100_000))  # a Python thread
        t.start()
        t.join()
    """)

    def small_stack():
        resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         preexec_fn=small_stack)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.count("raised: regex backtracking too deep") == 3, run.stdout


STANDARD = [("gpt2", GPT2_PATTERN, "oniguruma"), ("cl100k", CL100K_PATTERN, "fancy-regex"),
            ("cl100k", CL100K_PATTERN, "oniguruma"), ("o200k", O200K_PATTERN, "fancy-regex"),
            ("llama3", LLAMA3_PATTERN, "oniguruma"), ("qwen2", QWEN2_PATTERN, "oniguruma")]
# 1 MB runs of one character class, then 200 KB of the short units that cost the most steps per
# byte (many alternatives tried for each short piece). Each run ends in "x": a run of spaces then
# backtracks out of \s+(?!\S).
# The last units are the costliest per byte found by trying every unit of 1 to 3 characters drawn from letters,
# digits, spaces, tabs, line breaks, punctuation, quotes, marks and CJK (and of 4 from 9 of them): " \t'" takes
# Llama-3/Qwen2 38 steps per byte, "1 " 30, "/\n\n" GPT-2 29 (a 1 MB mixed soup and the shipped corpus less).
RUNS = {" ": 1_000_000, "7": 1_000_000, "a": 1_000_000, "\u65e5": 1_000_000, "\n": 1_000_000, "A": 200_000,
        "!": 200_000, "\r\n": 200_000, " \n": 200_000, "/\n": 200_000, "1a": 200_000, " !": 200_000,
        "'s": 200_000, "a\u0301": 200_000, " \t'": 200_000, "1 ": 200_000, "/\n\n": 200_000, "\r'\r'": 200_000,
        "A  1": 200_000}
# What the budget allows per byte (csrc/regex_engine.h kStepsPerByte), and the most the standard patterns may take:
# a margin of 5 below it.
BUDGET_PER_BYTE = 256
STANDARD_MAX_PER_BYTE = 48


@pytest.mark.parametrize("name, pattern, dialect", STANDARD, ids=[f"{n}-{d}" for n, _, d in STANDARD])
def test_standard_patterns_never_hit_the_budget(tmp_path, name, pattern, dialect):
    """The generic engine (not the hand-written cl100k/o200k scanners) on long runs, within a fifth of the budget."""
    tok = _hf(tmp_path, pattern) if dialect == "oniguruma" else _tiktoken(tmp_path, pattern)
    assert tok.native.step_budget(1_000_000) >= BUDGET_PER_BYTE * 1_000_000
    for unit, size in RUNS.items():
        for end in ("x", " "):
            text = unit * (size // len(unit.encode())) + end
            assert "".join(tok.native.pretokenize(text, generic=True)) == text
            assert tok.native.regex_steps(text) <= STANDARD_MAX_PER_BYTE * len(text.encode()), unit


# --- vocabularies: checked when loaded -----------------------------------------------------------


def _edit_json(tmp_path, edit) -> Path:
    path = bytelevel_json(tmp_path, split_pre_tokenizer(r"\S+|\s+"))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def _add_token(data, content, token_id):
    data["added_tokens"].append({"id": token_id, "content": content, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["model"]["vocab"].update({"xyz": 5_000_000}),
     "token 'xyz' has id 5000000, too large for a vocabulary of 258 tokens (ids must be below 1540)"),
    (lambda d: d["model"]["vocab"].update({"xyz": 2**40}), "token 'xyz' has id 1099511627776, too large"),
    (lambda d: d["model"]["vocab"].update({"xyz": -1}), "token 'xyz' has id -1; ids must be non-negative integers"),
    (lambda d: d["model"]["vocab"].update({"xyz": 3.0}), "token 'xyz' has id 3.0; ids must be"),
    (lambda d: d["model"]["vocab"].update({"xyz": 97}), "id 97 is given to two tokens, 'a' and 'xyz'"),
    (lambda d: d["model"]["vocab"].update({"x" * 500: 97}), "id 97 is given to two tokens, 'a' and 'xxxxxx"),
    # an added token's file id that clashes is not refused: HF gives it an id of its own (test_tokenizer.py's
    # test_added_token_ids_are_the_ones_hf_gives_not_the_files); a file id that is no id at all still is
    (lambda d: _add_token(d, "<s>", -3), "added_tokens[0] ('<s>') has id -3; ids must be non-negative integers"),
    (lambda d: _add_token(d, "<s>", "7"), "added_tokens[0] ('<s>') has id '7'; ids must be non-negative integers"),
    (lambda d: d["model"]["merges"].append(["a", "zz" * 400]), "uses a token missing from the vocabulary"),
])
def test_bad_vocab_is_refused_with_one_line(tmp_path, edit, expected):
    path = _edit_json(tmp_path, edit)
    with pytest.raises(TokenizerError) as exc:
        Tokenizer.from_file(path)
    line = _one_line(exc, limit=300)
    assert line.startswith(f"{path}: ") and expected in line, line


def test_consistent_added_tokens_and_a_few_unused_ids_load(tmp_path):
    """What real files do: an added token that is also in the vocab with the same id (GPT-2's <|endoftext|>), and
    specials past a gap of unused ids that are also vocab entries (cl100k's). A special listed past a gap but not in
    the vocab gets the next id from HF, not the file's, and the same from nextlong."""
    import tokenizers

    def edit(d):
        d["model"]["vocab"].update({"<|endoftext|>": 257, "<|im_end|>": 1100})
        _add_token(d, "<|endoftext|>", 257)
        _add_token(d, "<|im_end|>", 1100)
        _add_token(d, "<|fim|>", 1200)

    path = _edit_json(tmp_path, edit)
    tok = Tokenizer.from_file(path)
    text = "ab<|endoftext|><|im_end|><|fim|>"
    assert tok.encode(text).tolist() == [256, 257, 1100, 259]
    assert tokenizers.Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids == [256, 257, 1100, 259]


def test_duplicate_vocab_key_is_refused(tmp_path):
    """json.loads keeps the last of two equal keys: the first token's id silently vanished."""
    path = bytelevel_json(tmp_path, split_pre_tokenizer(r"\S+"))
    path.write_text(path.read_text().replace('"vocab": {', '"vocab": {"ab": 300, ', 1))
    with pytest.raises(TokenizerError) as exc:
        Tokenizer.from_file(path)
    assert _one_line(exc) == f"{path}: key 'ab' appears twice in one JSON object"


@pytest.mark.parametrize("extra, specials, expected", [
    ("YWI= -3\n", None, "token b'ab' has id -3; ids must be non-negative integers"),
    ("YWI= 99999999999\n", None, "token b'ab' has id 99999999999, too large"),
    ("YWI= 300\nYWI= 301\n", None, "token b'ab' has two ids, 300 and 301"),
    ("YWI= 97\n", None, "id 97 is given to two tokens, b'a' and b'ab'"),
    ("", {"<|end|>": 98}, "id 98 is given to two tokens, b'b' and '<|end|>'"),
])
def test_bad_ranks_are_refused_with_one_line(tmp_path, extra, specials, expected):
    path = _rank_file(tmp_path, extra)
    with pytest.raises(TokenizerError) as exc:
        Tokenizer.from_tiktoken(path, special_tokens=specials)
    line = _one_line(exc, limit=300)
    assert line.startswith(f"{path}: ") and expected in line, line


# --- bytes without a token: unk_token's id, or refused on load (never dropped in silence) ----------


def _without_bytes(data, chars, unk=None, fuse_unk=False):
    """Removes the byte tokens `chars` (renumbering the vocabulary densely) and sets unk_token."""
    vocab = {k: v for k, v in data["model"]["vocab"].items() if k not in chars}
    vocab = {k: i for i, k in enumerate(sorted(vocab, key=vocab.get))}
    if unk is not None:
        vocab[unk] = len(vocab)
    data["model"].update(vocab=vocab, unk_token=unk, fuse_unk=fuse_unk)


@pytest.mark.parametrize("fuse_unk", [False, True])
def test_a_byte_without_a_token_gives_unk_token_like_hf(tmp_path, fuse_unk):
    """HF tokenizers emits unk_token's id for a byte the vocabulary lacks; nextlong dropped the byte."""
    tokenizers = pytest.importorskip("tokenizers")
    path = _edit_json(tmp_path, lambda d: _without_bytes(d, "<=", "<unk>", fuse_unk))
    ours, ref = Tokenizer.from_file(path), tokenizers.Tokenizer.from_file(str(path))
    for text in ["a<b=c", "<<==ab", "x <= y", "ab<", "=", "<ab=ab<<"]:
        want = ref.encode(text, add_special_tokens=False).ids
        assert ours.encode(text).tolist() == want, text
        assert ours.encode_batch([text] * 3, num_threads=2)[2].tolist() == want


MISSING_BYTE = "text holds byte 0x3C, for which the tokenizer's vocabulary has no token and no unk_token"


def test_a_vocabulary_missing_a_byte_without_unk_refuses_text_holding_it(tmp_path):
    """A byte-level tokenizer.json trained by HF's BpeTrainer holds only the bytes its corpus held, and no
    unk_token: it loads and encodes text without those bytes exactly as HF does; text holding one is refused
    in one line (HF drops the byte from the ids, which then decode to other text; nextlong did the same)."""
    tokenizers = pytest.importorskip("tokenizers")
    path = _edit_json(tmp_path, lambda d: _without_bytes(d, "<"))
    ours, ref = Tokenizer.from_file(path), tokenizers.Tokenizer.from_file(str(path))
    assert ours.encode("a=b c").tolist() == ref.encode("a=b c", add_special_tokens=False).ids
    for encode in (lambda: ours.encode("a<b"), lambda: ours.encode_batch(["ab", "a<b"], num_threads=2)):
        with pytest.raises(TokenizerError) as exc:
            encode()
        assert _one_line(exc).startswith(MISSING_BYTE)
    # an unk_token that is not in the vocabulary is no unk_token (HF fails on the first such byte)
    path = _edit_json(tmp_path, lambda d: (_without_bytes(d, "<"), d["model"].update(unk_token="<nope>")))
    with pytest.raises(TokenizerError, match="no token for byte 0x3C|" + re.escape(MISSING_BYTE)):
        Tokenizer.from_file(path).encode("<")
    path = _edit_json(tmp_path, lambda d: d["model"].update(unk_token=["<unk>"]))
    with pytest.raises(TokenizerError, match=r"model.unk_token must be a string or null, got an array"):
        Tokenizer.from_file(path)


def test_a_rank_file_missing_a_byte_refuses_text_holding_it(tmp_path):
    """tiktoken panics on such a byte; nextlong dropped it from the ids."""
    path = tmp_path / "gap.tiktoken"
    path.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256) if b != 0x61))
    tok = Tokenizer.from_tiktoken(path)
    assert tok.encode("bcd").tolist() == list(b"bcd")
    with pytest.raises(TokenizerError) as exc:
        tok.encode("bad")
    assert _one_line(exc).startswith("text holds byte 0x61, for which the tokenizer's vocabulary has no token")
    # bytes that UTF-8 text never holds need no token
    path.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(0xF5)
                            if b not in (0xC0, 0xC1)))
    assert Tokenizer.from_tiktoken(path).encode("a\u00e9\U0001F600").tolist() == list("a\u00e9\U0001F600".encode())


def test_a_piece_over_16_mib_is_refused(tmp_path):
    """BPE of one pre-tokenized piece took ~32 bytes of memory per byte ('a' * 1 GiB: over 15 GB); a
    piece is now at most 16 MiB (no word comes near it), and a longer one is one TokenizerError line."""
    tok = _tiktoken(tmp_path, CL100K_PATTERN)
    with pytest.raises(TokenizerError) as exc:
        tok.encode_ordinary("a" * ((16 << 20) + 1))
    assert _one_line(exc).startswith("a piece of 16777217 bytes after pre-tokenization is longer than the 16 MiB")
    assert len(tok.encode_ordinary("hello " + "a" * 100_000 + " world")) == 100_000 + 12  # bytes only: no merges


def test_long_rank_file_tokens_are_refused(tmp_path):
    """Building the merge table of a tiktoken file hashes both halves of every split of every token:
    one 1 MB token took minutes. A token over 1,024 bytes is refused naming its line, and so are many
    long tokens whose total work would be as large."""
    long = base64.b64encode(b"a" * 1025).decode()
    path = _rank_file(tmp_path, f"{long} 256\n")
    with pytest.raises(TokenizerError) as exc:
        Tokenizer.from_tiktoken(path)
    assert _one_line(exc) == (f"{path}:257: a token of 1,025 bytes; tokens may be at most 1,024 bytes long "
                              "(cl100k's and o200k's longest hold 128)")
    many = "".join(f"{base64.b64encode(bytes([65 + i % 26]) * 1000 + i.to_bytes(3, 'big')).decode()} {256 + i}\n"
                   for i in range(1100))
    with pytest.raises(TokenizerError, match=r"bytes.tiktoken: the tokens are too long to build the merge table"):
        Tokenizer.from_tiktoken(_rank_file(tmp_path, many))
    assert Tokenizer.from_tiktoken(_rank_file(tmp_path, f"{base64.b64encode(b'a' * 1024).decode()} 256\n")
                                   ).encode("a" * 1024).tolist() == [256]


def test_a_class_with_many_items_costs_little_per_character(tmp_path):
    """Each character test walked every item of a class (9,000 items x 1M characters: ~20 s; a 6 MB
    class: hours), outside the step budget. Ranges are now binary-searched, and a pattern's classes
    hold at most 10,000 items."""
    import time

    items = "".join(chr(0x100 + i) for i in range(9000))
    tok = _hf(tmp_path, f"[{items}]+|\\S")
    start = time.perf_counter()
    pieces = tok.native.pretokenize("\u4e2d" * 1_000_000 + "\u0101\u0102", generic=True)
    assert len(pieces) == 1_000_001 and pieces[-1] == "\u0101\u0102"
    assert time.perf_counter() - start < 5
    with pytest.raises(TokenizerError) as exc:
        _hf(tmp_path, f"[{items}{items[:1001]}]|\\S")
    assert "too large (more than 10000 items" in _one_line(exc, limit=600)


def test_case_insensitive_non_ascii_ranges_load_fast(tmp_path):
    """(?i) scanned every code point of each non-ASCII range for a cased letter (3,000,000 CJK ranges:
    94 s); the check is now a binary search, and a cased letter is still refused."""
    import time

    start = time.perf_counter()
    _hf(tmp_path, "(?i)[" + "\u4e00-\u9fff" * 3000 + "]|\\S")
    assert time.perf_counter() - start < 2
    with pytest.raises(TokenizerError, match="case-insensitive matching of a non-ASCII cased letter"):
        _hf(tmp_path, "(?i)[\u4e00-\u9fff\u00c0-\u00ff]")


def test_many_added_tokens_with_one_first_byte_cost_little_per_byte(tmp_path):
    """Matching scanned every added token starting with the text's byte at each position (30,000 tokens 'a0',
    'a1', ... against 300,000 a's: about 9e9 comparisons); it now walks a byte trie, one step here. A token
    over 1,024 bytes is refused: the walk's cost per byte is bounded by the longest token."""
    import time

    def edit(d):
        for i in range(30_000):
            _add_token(d, f"a{i}", first + i)

    plain = Tokenizer.from_file(_edit_json(tmp_path, lambda d: None))
    first = plain.vocab_size  # the ids HF gives added tokens start there
    tok = Tokenizer.from_file(_edit_json(tmp_path, edit))
    text = "a" * 300_000 + " a17 a29999"
    start = time.perf_counter()
    ids = tok.encode(text).tolist()
    assert time.perf_counter() - start < 5
    assert ids == plain.encode("a" * 300_000 + " ").tolist() + [first + 17, plain.encode(" ").tolist()[0], first + 29999]
    with pytest.raises(TokenizerError) as exc:
        Tokenizer.from_file(_edit_json(tmp_path, lambda d: _add_token(d, "b" * 1025, first)))
    assert "an added token of 1025 bytes, over the 1024" in _one_line(exc)
    assert Tokenizer.from_file(_edit_json(tmp_path, lambda d: _add_token(d, "b" * 1024, first))).encode("b" * 1024)[0] == first
