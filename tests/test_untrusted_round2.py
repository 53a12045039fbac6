"""Untrusted folders, second round (issue 24 follow-up): what an attacker found after the first round.

1. A crafted usearch graph, with the CRC beside it updated, crashed `search` (SIGSEGV): the whole file
   is now checked before usearch reads it (nextlong/mining/usearch_file.py).
2. Names in a folder's own files reached outside it: nextlong.json's tokenizer, a corpus folder's
   symbolic link, an index's file names, an embedder's module paths.
3. Broken JSON files (tokenizer.json, index.json, modules.json, config.json) and an MDS shape gave
   tracebacks instead of one line.
4. Control characters of corpus text reached the terminal through `inspect` and `search`.
5. `eval` wrote bare NaN into results.json.

Whatever could crash the interpreter runs in a subprocess with a timeout."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nextlong.errors import EmbedderError, IndexFileError, TokenizerError
from nextlong.mining.index import ChunkIndex
from tests.helpers import (
    assert_one_line_error,
    bytelevel_json,
    run_cli,
    split_pre_tokenizer,
)

ESC = "\x1b]0;PWNED\x07\x1b[31mRED\x1b[0m\r\x1b[2K"
REPO = Path(__file__).resolve().parents[1]


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --- 1. usearch files ---------------------------------------------------------------------------


def _small_index(folder: Path, n: int = 400, dim: int = 16, **options) -> Path:
    """A saved index of n random unit vectors; connectivity 4 gives it several levels."""
    rng = np.random.default_rng(0)
    vecs = _unit(rng.standard_normal((n, dim)))
    options.setdefault("connectivity", 4)
    index = ChunkIndex.build(vecs, np.arange(n), np.arange(n) // 4, text_hashes=np.arange(n, dtype=np.uint64),
                             embedder="test-embedder", threads=1, **options)
    index.save(folder)
    return folder


def _layout(b: bytes) -> dict:
    """Where things are in a usearch file (usearch 2.x, 32-bit matrix dimensions): written from the
    format, independently of nextlong/mining/usearch_file.py."""
    rows, cols = struct.unpack_from("<II", b, 0)
    head = 8 + rows * cols
    graph = head + 64
    n, conn, base, max_level, entry = struct.unpack_from("<5Q", b, graph)
    levels = np.frombuffer(b, "<i2", n, graph + 40).astype(np.int64)
    sizes = 10 + (4 + 4 * base) + levels * (4 + 4 * conn)
    offsets = graph + 40 + 2 * n + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return dict(rows=rows, cols=cols, head=head, graph=graph, n=n, conn=conn, base=base, max_level=max_level,
                entry=entry, levels=levels, offsets=offsets)


def _list_at(L, node: int, level: int) -> int:
    """Byte offset of node's neighbour list (u32 count, then slots) on `level`."""
    at = int(L["offsets"][node]) + 10
    return at if level == 0 else at + 4 + 4 * L["base"] + (level - 1) * (4 + 4 * L["conn"])


def _first_with_neighbours(b, L, level: int) -> int:
    for node in np.flatnonzero(L["levels"] >= level):
        if struct.unpack_from("<I", b, _list_at(L, int(node), level))[0]:
            return int(node)
    raise AssertionError(f"no node with neighbours on level {level}")


def _neighbour_past_the_end(b, L):
    node = _first_with_neighbours(b, L, 0)
    struct.pack_into("<I", b, _list_at(L, node, 0) + 4, 0xFFFFFFF0)
    return "is not a node"


def _count_past_the_list(b, L):
    struct.pack_into("<I", b, _list_at(L, 0, 0), L["base"] + 1000)
    return "has room for"


def _upper_neighbour_too_low(b, L):
    node = _first_with_neighbours(b, L, 1)
    low = int(np.flatnonzero(L["levels"] == 0)[0])
    struct.pack_into("<I", b, _list_at(L, node, 1) + 4, low)
    return "does not reach that level"


def _node_level_lies(b, L):
    node = int(np.flatnonzero(L["levels"] == 0)[0])
    struct.pack_into("<h", b, int(L["offsets"][node]) + 8, 3)  # its list area is sized for level 0
    return "the level table says"


def _entry_past_the_end(b, L):
    struct.pack_into("<Q", b, L["graph"] + 32, L["n"] + 7)
    return "entry node"


def _max_level_raised(b, L):
    struct.pack_into("<Q", b, L["graph"] + 24, L["max_level"] + 5)
    return "max level"


def _nan_vector(b, L):
    struct.pack_into("<H", b, 8 + 5 * L["cols"], 0x7E00)  # f16 NaN in row 5
    return "not finite"


def _matrix_width(b, L):
    struct.pack_into("<I", b, 4, L["cols"] + 2)
    return "matrix"


def _header_dimensions(b, L):
    struct.pack_into("<Q", b, L["head"] + 33, 999)
    return "dimensions"


def _half_ff(b, L):  # the attacker's reproducer (repro/index_segfault.sh)
    b[len(b) // 2:] = b"\xff" * (len(b) - len(b) // 2)
    return "not a usearch index"


CRAFTED = [_neighbour_past_the_end, _count_past_the_list, _upper_neighbour_too_low, _node_level_lies,
           _entry_past_the_end, _max_level_raised, _nan_vector, _matrix_width, _header_dimensions, _half_ff]

_VIEW_AND_SEARCH = """
import sys
import numpy as np
from nextlong.errors import IndexFileError
from nextlong.mining.index import ChunkIndex
try:
    index = ChunkIndex.view(sys.argv[1])
    index.search(np.random.default_rng(1).standard_normal((64, index.dim)), 20)
    index.search(np.random.default_rng(2).standard_normal((8, index.dim)), 5, exclude_doc_ids=[0] * 8)
except IndexFileError as exc:
    print("REFUSED", exc)
    sys.exit(3)
print("SEARCHED")
"""


def _view_in_subprocess(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _VIEW_AND_SEARCH, str(folder)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    return _small_index(tmp_path_factory.mktemp("idx") / "idx")


@pytest.mark.parametrize("craft", CRAFTED, ids=lambda f: f.__name__.strip("_"))
def test_a_crafted_usearch_file_is_refused_before_usearch_reads_it(craft, small_index, tmp_path):
    """The CRC in index.json is updated to match, as an attacker would: only the structure check stops
    these (before it, the first and last crashed the process with SIGSEGV)."""
    folder = tmp_path / "idx"
    shutil.copytree(small_index, folder)
    path = folder / "index.usearch"
    b = bytearray(path.read_bytes())
    L = _layout(bytes(b))
    assert L["max_level"] >= 1, "the test index needs an upper level"
    reason = craft(b, L)
    path.write_bytes(bytes(b))
    info = json.loads((folder / "index.json").read_text())
    info["index_file"]["crc32"] = zlib.crc32(bytes(b))
    (folder / "index.json").write_text(json.dumps(info))
    done = _view_in_subprocess(folder)
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "REFUSED" in done.stdout and reason in done.stdout and "Traceback" not in done.stderr


def test_the_reproducer_is_one_line_from_the_cli(small_index, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(small_index, folder)
    path = folder / "index.usearch"
    b = bytearray(path.read_bytes())
    _half_ff(b, None)
    path.write_bytes(bytes(b))
    info = json.loads((folder / "index.json").read_text())
    info["index_file"]["crc32"] = zlib.crc32(bytes(b))
    (folder / "index.json").write_text(json.dumps(info))
    (folder / "lexical_embedder.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "nextlong", "search", str(folder), "query"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert_one_line_error(done.stderr, "search")


@pytest.mark.parametrize("options", [{}, {"dtype": "f32"}, {"dtype": "i8"}, {"dtype": "bf16"}, {"metric": "ip"},
                                     {"shards": 3}, {"connectivity": 32}], ids=str)
def test_indexes_nextlong_writes_pass_the_check(options, tmp_path):
    folder = _small_index(tmp_path / "idx", n=300, **options)
    for opener in (ChunkIndex.view, ChunkIndex.load):
        index = opener(folder)
        ids, _ = index.search(np.random.default_rng(1).standard_normal((10, 16)), 5)
        assert (ids >= 0).all()


def test_an_empty_and_a_one_vector_index_pass_the_check(tmp_path):
    for n in (0, 1):
        folder = tmp_path / f"idx{n}"
        ChunkIndex.build(np.ones((n, 8), np.float32), np.arange(n), np.arange(n), embedder="e").save(folder)
        assert len(ChunkIndex.view(folder)) == n


def _edit_info(folder: Path, edit) -> None:
    info = json.loads((folder / "index.json").read_text())
    edit(info)
    (folder / "index.json").write_text(json.dumps(info))


@pytest.mark.parametrize("name, message", [
    ("/etc/passwd", "outside the index folder"),
    ("../elsewhere/index.usearch", "outside the index folder"),
    ("sub/index.usearch", "expected a file name"),
    ("", "expected a file name"),
    (5, "expected a file name"),
])
def test_index_file_names_stay_in_the_folder(name, message, small_index, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(small_index, folder)
    _edit_info(folder, lambda info: info["index_file"].update(name=name))
    with pytest.raises(IndexFileError, match=message):
        ChunkIndex.view(folder)


def test_a_sharded_index_names_its_shards_inside_the_folder(tmp_path):
    folder = _small_index(tmp_path / "idx", n=200, shards=2)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(folder / "index-001.usearch", outside / "index-001.usearch")
    _edit_info(folder, lambda info: info["index_files"][1].update(name=str(outside / "index-001.usearch")))
    with pytest.raises(IndexFileError, match=r"index_files\[1\].name: .* is outside the index folder"):
        ChunkIndex.view(folder)
    _edit_info(folder, lambda info: info["index_files"][1].update(name="index-001.usearch"))
    (folder / "index-001.usearch").symlink_to(outside / "index-001.usearch")
    with pytest.raises(IndexFileError, match="link out of the index folder"):
        ChunkIndex.view(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda i: i.__setitem__("embedder", [1]), "embedder: expected an object"),
    (lambda i: i["embedder"].__setitem__("dim", "16"), "embedder.dim"),
    (lambda i: i["counts"].__setitem__("chunks", -1), "counts.chunks"),
    (lambda i: i.__setitem__("dtype", "f64"), "dtype"),
    (lambda i: i.__setitem__("doc_key", "x"), "doc_key"),
    (lambda i: i["index_file"].__setitem__("bytes", None), "index_file.bytes"),
    (lambda i: i["settings"].__setitem__("expansion_search", 1 << 40), "settings.expansion_search"),
], ids=["embedder", "dim", "chunks", "dtype", "doc_key", "bytes", "ef"])
def test_index_json_fields_are_checked(edit, message, small_index, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(small_index, folder)
    _edit_info(folder, edit)
    with pytest.raises(IndexFileError, match=message):
        ChunkIndex.view(folder)


def test_a_deep_or_huge_index_json_is_one_line(small_index, tmp_path, capsys):
    folder = tmp_path / "idx"
    shutil.copytree(small_index, folder)
    (folder / "index.json").write_text("[" * 100000 + "]" * 100000)
    code, _, err = run_cli(["search", folder, "query"], capsys)
    assert code == 1 and "nested too deeply" in assert_one_line_error(err, "search")
    (folder / "index.json").write_text('{"format": ' + "1" * 5000 + "}")
    code, _, err = run_cli(["search", folder, "query"], capsys)
    assert code == 1 and "4,300 digits" in assert_one_line_error(err, "search")


def test_the_chunk_table_beside_the_index_must_match_its_keys(small_index, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(small_index, folder)
    meta = pq.read_table(folder / "chunks.parquet")
    ids = meta.column("chunk_id").to_numpy().copy()
    ids[3] = 10**9  # a key search would return that names no row
    pq.write_table(meta.set_column(0, "chunk_id", pa.array(ids)), folder / "chunks.parquet")
    with pytest.raises(IndexFileError, match="not the keys"):
        ChunkIndex.view(folder)
    pq.write_table(meta.set_column(0, "chunk_id", pa.array([str(i) for i in ids])), folder / "chunks.parquet")
    with pytest.raises(IndexFileError, match="column chunk_id"):
        ChunkIndex.view(folder)


# --- 2. reads outside the folder ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    from tests.helpers import save_small_llama

    return save_small_llama(tmp_path_factory.mktemp("model") / "model")


@pytest.mark.parametrize("command", ["eval", "heads"])
@pytest.mark.parametrize("spec", ["../SECRET_tokenizer.json", "/etc/SECRET_tokenizer.json", "sub/../../x.json"])
def test_nextlong_json_names_no_tokenizer_outside_the_model_folder(command, spec, small_model, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(small_model, folder)
    (tmp_path / "SECRET_tokenizer.json").write_text("{}")
    (folder / "nextlong.json").write_text(json.dumps({"tokenizer": spec}))
    code, _, err = run_cli([command, folder, "--out", tmp_path / "out"], capsys)
    line = assert_one_line_error(err, command)
    assert code == 1 and "outside the model folder" in line and "nextlong.json" in line
    assert not (tmp_path / "out" / "results.json").exists()


def test_nextlong_json_may_name_a_file_inside_or_a_built_in_tokenizer(small_model, tmp_path):
    from nextlong.model_folder import ModelFolderError, tokenizer_spec

    folder = tmp_path / "model"
    shutil.copytree(small_model, folder)
    assert tokenizer_spec(folder) == "cl100k_base"
    (folder / "tok.json").write_text("{}")
    (folder / "nextlong.json").write_text(json.dumps({"tokenizer": "tok.json"}))
    assert tokenizer_spec(folder) == str(folder / "tok.json")
    (folder / "nextlong.json").write_text(json.dumps({"tokenizer": "gpt9_base"}))
    with pytest.raises(ModelFolderError, match="neither a file in the model folder nor a built-in"):
        tokenizer_spec(folder)
    (folder / "nextlong.json").write_text("[" * 50000 + "]" * 50000)
    with pytest.raises(ModelFolderError, match="nested too deeply"):
        tokenizer_spec(folder)


def test_a_corpus_folder_link_out_of_the_folder_is_refused(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET\n")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("hello world\n")
    (corpus / "b.txt").symlink_to(secret)
    tok = bytelevel_json(tmp_path, split_pre_tokenizer(r"\w+|\s+"))
    code, out, err = run_cli(["tokenize", corpus, "--tokenizer", tok, "--out", tmp_path / "t.parquet",
                              "--no-progress"], capsys)
    line = assert_one_line_error(err, "tokenize")
    assert code == 1 and "b.txt" in line and "outside the corpus folder" in line and "TOPSECRET" not in out + err
    (corpus / "b.txt").unlink()
    (corpus / "c.txt").symlink_to(corpus / "a.txt")  # a link inside the folder is one of its files
    from nextlong.corpus.reader import list_corpus_files

    assert [name for _, name in list_corpus_files(corpus)] == ["a.txt", "c.txt"]


def _st_folder(tmp_path: Path, modules) -> Path:
    folder = tmp_path / "emb"
    folder.mkdir()
    (folder / "modules.json").write_text(json.dumps(modules) if not isinstance(modules, str) else modules)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    return folder


@pytest.mark.parametrize("path", ["../emb_elsewhere", "/etc", "1_Pooling/../../x"])
def test_an_embedder_module_path_stays_in_the_folder(path, tmp_path):
    from nextlong.mining.embedding import _sentence_transformers_layout

    folder = _st_folder(tmp_path, [{"idx": 0, "name": "0", "path": path,
                                    "type": "sentence_transformers.models.Transformer"}])
    with pytest.raises(EmbedderError, match="outside the model folder"):
        _sentence_transformers_layout(folder)


@pytest.mark.parametrize("modules, message", [
    ("[5]", "entry 0: expected an object"),
    ('{"a": 1}', "expected an array"),
    ("[" * 50000 + "]" * 50000, "nested too deeply"),
    ('[{"type": 7}]', "entry 0"),
])
def test_a_broken_modules_json_is_one_error(modules, message, tmp_path):
    from nextlong.mining.embedding import load_embedder

    folder = _st_folder(tmp_path, modules)
    with pytest.raises(EmbedderError, match=message):
        load_embedder(folder)


def test_a_deep_embedder_config_json_is_one_error(tmp_path):
    from nextlong.mining.embedding import load_embedder

    folder = tmp_path / "emb"
    folder.mkdir()
    (folder / "config.json").write_text("[" * 50000 + "]" * 50000)
    with pytest.raises(EmbedderError, match="config.json: not valid JSON"):
        load_embedder(folder)


def _refused_in_subprocess(code: str, error: str, message: str) -> None:
    """Run `code` in a fresh interpreter (what it tests could hang or crash this one): it must raise
    `error` (a class name from nextlong.errors) with `message`, within a minute."""
    script = f"import sys\nfrom nextlong.errors import {error}\ntry:\n" + "".join(
        f"    {line}\n" for line in code.strip().splitlines()) + f"except {error} as exc:\n    print('REFUSED', exc)\n"
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: {code.strip()}")
    assert done.returncode == 0 and "REFUSED" in done.stdout and message in done.stdout, (done.stdout,
                                                                                         done.stderr[-2000:])


def test_a_saved_lexical_embedder_is_checked(tmp_path):
    from nextlong.mining.embedding import HashedLexicalEmbedder

    HashedLexicalEmbedder(16, buckets_log2=8).save(tmp_path)
    assert HashedLexicalEmbedder.load(tmp_path).dim == 16
    state = json.loads((tmp_path / "lexical_embedder.json").read_text())
    (tmp_path / "lexical_embedder.json").write_text(json.dumps({**state, "buckets_log2": 62}))
    load = f"from nextlong.mining.embedding import HashedLexicalEmbedder\nHashedLexicalEmbedder.load({str(tmp_path)!r})"
    _refused_in_subprocess(load, "EmbedderError", "buckets_log2")  # 2**62 buckets: memory
    (tmp_path / "lexical_embedder.json").write_text(json.dumps(state))
    os.unlink(tmp_path / "lexical_idf.npy")
    os.mkfifo(tmp_path / "lexical_idf.npy")  # would hang a plain np.load
    _refused_in_subprocess(load, "EmbedderError", "not a regular file")


# --- 3. one line instead of a traceback ---------------------------------------------------------


@pytest.fixture(scope="module")
def base_tokenizer(tmp_path_factory) -> dict:
    path = bytelevel_json(tmp_path_factory.mktemp("tok"), split_pre_tokenizer(r"\w+|\s+"))
    return json.loads(path.read_text())


def _split(pattern):
    pre = split_pre_tokenizer("x")
    pre["pretokenizers"][0]["pattern"] = pattern
    return {"pre_tokenizer": pre}


TOKENIZER_FILES = {
    "deep_json": (None, "nested too deeply"),
    "5000_digit_id": ('{"model": {"type": "BPE", "vocab": {"a": ' + "1" * 5000 + "}}}", "4,300 digits"),
    "model_is_list": ({"model": [1]}, "model must be an object"),
    "regex_is_number": (_split({"Regex": 5}), "Regex must be a string"),
    "pattern_is_list": (_split(["Regex"]), "pattern must be an object"),
    "pretokenizers_int": ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": 5}}, "must be an array"),
    "pretokenizers_object": ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": {"a": 1}}},
                             "must be an array"),
    "pretokenizers_of_ints": ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [1, 2]}},
                              r"pretokenizers\[0\] must be an object"),
    "normalizers_int": ({"normalizer": {"type": "Sequence", "normalizers": 5}}, "must be an array"),
    "normalizer_type_list": ({"normalizer": {"type": ["NFC"] * 1000}}, "unsupported normalizer"),
    "vocab_lone_surrogate": ("surrogate", "lone surrogate"),
    "added_lone_surrogate": ({"added_tokens": [{"id": 300, "content": "\udc80"}]}, "lone surrogate"),
}


@pytest.mark.parametrize("case", TOKENIZER_FILES)
def test_a_broken_tokenizer_json_is_one_short_line(case, base_tokenizer, tmp_path, capsys):
    from nextlong.corpus.tokenizer import Tokenizer

    edit, message = TOKENIZER_FILES[case]
    if edit is None:
        text = "[" * 100000 + "]" * 100000
    elif isinstance(edit, str) and edit == "surrogate":
        text = json.dumps(base_tokenizer).replace('"vocab": {', '"vocab": {"\\udc80x": 1030, ', 1)
    elif isinstance(edit, str):
        text = edit
    else:
        text = json.dumps({**base_tokenizer, **edit})
    path = tmp_path / "tokenizer.json"
    path.write_text(text)
    with pytest.raises(TokenizerError, match=message) as exc:
        Tokenizer.from_file(path)
    assert len(str(exc.value)) < 300 and str(path) in str(exc.value)  # no vocabulary dumped into it
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "hello world"}\n')
    code, _, err = run_cli(["tokenize", corpus, "--tokenizer", path, "--out", tmp_path / "t.parquet",
                            "--no-progress", "--quiet"], capsys)
    assert code == 1 and message.split("\\")[0].split("(")[0] in assert_one_line_error(err, "tokenize")


def test_a_tokenizer_fifo_is_refused_not_read(tmp_path):
    os.mkfifo(tmp_path / "tokenizer.json")
    _refused_in_subprocess(f"from nextlong.corpus.tokenizer import Tokenizer\n"
                           f"Tokenizer.from_file({str(tmp_path / 'tokenizer.json')!r})", "TokenizerError",
                           "not a regular file")


@pytest.mark.parametrize("shape", [(0, 2**64 - 1), (2**63, 0), (0,) * 3 + (2**40,) * 2])
def test_an_mds_shape_numpy_cannot_make_is_an_mds_error(shape):
    from nextlong.mds import MDSFormatError, decode

    data = bytes([len(shape) << 2 | 3]) + np.asarray(shape, "<u8").tobytes()
    with pytest.raises(MDSFormatError, match="shape"):
        decode("ndarray:uint32", data)


# --- 4. control characters from files are shown escaped -----------------------------------------


def test_printable_keeps_lines_and_tabs_and_escapes_the_rest():
    from nextlong.untrusted import one_line, printable

    assert printable("a\tb\nc") == "a\tb\nc"
    assert printable(ESC + "x") == "\\x1b]0;PWNED\\x07\\x1b[31mRED\\x1b[0m\\r\\x1b[2Kx"
    assert printable("\x9b31m \u202eevil") == "\\x9b31m \\u202eevil"
    assert one_line("a\nb\tc\x1b") == "a b\\tc\\x1b"


@pytest.fixture(scope="module")
def escape_run(tmp_path_factory):
    """A synthesize output and an index whose corpus text carries terminal escape sequences."""
    from tests.helpers import corpus_head, write_jsonl

    root = tmp_path_factory.mktemp("esc")
    docs = [(f"{ESC}doc{i}", ESC + text) for i, (_, text) in enumerate(corpus_head(limit=40))]
    corpus = write_jsonl(root / "esc.jsonl", docs)
    tok = train_tok(root)
    out = root / "syn"
    from nextlong.cli import main

    assert main(["synthesize", "--corpus", str(corpus), "--method", "standard", "--tokenizer", str(tok),
                 "--target-length", "256", "--chunk-size", "256", "--out", str(out), "--id-field", "id",
                 "--quiet"]) == 0
    assert main(["index", str(out / "chunks" / "chunks.parquet"), "--out", str(root / "idx"), "--embedder",
                 "hashed-tfidf:64", "--no-progress"]) == 0
    return out, root / "idx"


def train_tok(root: Path) -> Path:
    from tests.eval_fixtures import train_tokenizer

    return train_tokenizer(root / "tok" / "tokenizer.json")


def _no_controls(text: str) -> None:
    bad = [c for c in text if not (c.isprintable() or c in "\n\t")]
    assert not bad, f"raw control characters reach the terminal: {bad[:5]}"


def test_inspect_shows_corpus_text_escaped(escape_run, capsys):
    out, _ = escape_run
    code, text, err = run_cli(["inspect", out, "--color", "never"], capsys)
    assert code == 0, err
    _no_controls(text)
    assert "\\x1b]0;PWNED\\x07" in text


@pytest.mark.parametrize("json_out", [False, True])
def test_search_shows_corpus_text_escaped(escape_run, json_out, capsys):
    _, idx = escape_run
    code, text, err = run_cli(["search", idx, "PWNED RED", "-k", "3"] + (["--json"] if json_out else []), capsys)
    assert code == 0, err
    _no_controls(text)
    if json_out:
        rows = [json.loads(line) for line in text.splitlines()]
        assert rows and all(r["doc_id"].startswith(ESC) for r in rows)  # the file's text, once decoded
    else:
        assert "\\x1b[31mRED" in text


def test_search_reads_the_recorded_chunk_table_only_if_it_is_the_indexs_own(escape_run, tmp_path, capsys):
    _, idx = escape_run
    folder = tmp_path / "idx"
    shutil.copytree(idx, folder)
    table = pq.read_table(json.loads((folder / "index.json").read_text())["chunks_path"])
    other = table.set_column(table.column_names.index("text"), "text",
                             pa.array(["ANOTHER FILE"] * table.num_rows))
    other = other.set_column(other.column_names.index("text_hash"), "text_hash",
                             pa.array(np.arange(table.num_rows, dtype=np.uint64)))
    pq.write_table(other, tmp_path / "victim.parquet")
    _edit_info(folder, lambda info: info.update(chunks_path=str(tmp_path / "victim.parquet")))
    code, text, err = run_cli(["search", folder, "anything", "-k", "2"], capsys)
    assert code == 0, err
    assert "ANOTHER FILE" not in text and "is not the one the index was built from" in text


# --- 5. strict JSON from eval -------------------------------------------------------------------


def test_a_model_config_with_nan_is_refused(small_model, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(small_model, folder)
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": NaN'))
    assert "NaN" in (folder / "config.json").read_text()
    code, _, err = run_cli(["eval", folder, "--out", tmp_path / "out"], capsys)
    assert code == 1 and "NaN is not a JSON number" in assert_one_line_error(err, "eval")


@pytest.mark.slow
def test_eval_of_a_nan_model_writes_strict_json(tmp_path, capsys):
    """Weights that make the model compute NaN (no config check can see them): results.json is strict
    JSON, with null where the numbers were NaN, and the summary says so."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.eval_fixtures import save_tiny_llama

    run = save_tiny_llama(tmp_path / "run", train_tok(tmp_path), run_layout=True)
    weights = run / "model" / "model.safetensors"
    state = load_file(weights)
    state["model.norm.weight"] = torch.full_like(state["model.norm.weight"], float("nan"))
    save_file(state, weights, metadata={"format": "pt"})
    code, out, err = run_cli(["eval", run, "--out", tmp_path / "out", "--tasks", "niah_single_1", "--lengths", "256",
                              "--depths", "1", "--samples", "1", "--device", "cpu"], capsys)
    assert code == 0, err
    text = (tmp_path / "out" / "results.json").read_text()

    def refuse(constant):
        raise AssertionError(f"bare {constant} in results.json")

    results = json.loads(text, parse_constant=refuse)
    assert any("not finite" in w for w in results["warnings"])
    assert "not finite" in (tmp_path / "out" / "summary.md").read_text() and "not finite" in out
