"""What the stages leave in a work folder, and how a later stage (or acer, the rag evaluation, the mining
routes) opens it: the chunk table and its store, the blank documents, the embeddings, the embedder a
FitEmbedder stage prepared, and the check of a finished part before it is published as it is."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path as _Path

import numpy as np

from .. import checked_parquet
from ..corpus.reader import parquet_batches
from ..atomic import atomic_path as _atomic_path
from ..untrusted import whole
from ..mining.index_folder import EMBEDDINGS_FILE  # noqa: F401  (an index folder's name: --index reuses the stage's)

CHUNKS_FILE = "chunks.parquet"
STORE_DIR = "store"
DEFAULT_EMBEDDER_SPEC = "all-MiniLM-L6-v2"


def tokenizer_identity(spec) -> dict:
    """A tokenizer setting as its vocabulary's fingerprint (a spec string alone could name other files)."""
    from ..corpus.tokenizer import load_tokenizer

    tok = load_tokenizer(spec)
    return {"spec": spec, "name": getattr(tok, "name", None), "fingerprint": getattr(tok, "fingerprint", None)}


def cached_tokenizer_spec(stage_dir, spec):
    """`spec` as the cached stage in `stage_dir` recorded it, where both are built-in names (None being
    cl100k_base) of the same vocabulary: leaving --tokenizer out and naming the default are one setting,
    whichever of the two made the folder. Any other spec (a file) is returned as given."""
    from ..corpus.tokenizer import is_builtin_spec
    from .framework import recorded_settings

    if not is_builtin_spec(spec):
        return spec
    cached = (recorded_settings(_Path(stage_dir)) or {}).get("tokenizer")
    if (not isinstance(cached, dict) or cached.get("spec") == spec or not is_builtin_spec(cached.get("spec"))
            or cached.get("fingerprint") is None):
        return spec
    return cached["spec"] if cached["fingerprint"] == tokenizer_identity(spec)["fingerprint"] else spec


# The separator's ids are inside each chunk's ids (ChunkStage tokenizes a chunk and the separator after it
# together), so planning counts and assembly appends nothing more between pieces.
NO_SEPARATOR = np.zeros(0, np.uint32)


def load_stage_embedder(spec: str, threads: int | None, chunk_texts=None):
    """The embedder of `spec`; a lexical one is fitted on `chunk_texts()` (an iterable of texts, in chunk
    order: deterministic, so every worker fits the same weights)."""
    from ..mining.embedding import load_embedder

    embedder = load_embedder(None if spec == DEFAULT_EMBEDDER_SPEC else spec, **({"threads": threads} if threads else {}))
    if hasattr(embedder, "fit") and not getattr(embedder, "num_docs", 1) and chunk_texts is not None:
        embedder.fit(chunk_texts())
    return embedder


def chunk_texts(chunks_dir):
    """Texts of a consolidated chunk table, in chunk-id order (a generator factory)."""
    def gen():
        path = _Path(chunks_dir) / CHUNKS_FILE
        for b in parquet_batches(path, checked_parquet.open_file(path), columns=["text"], batch_size=4096):
            yield from b.column("text").to_pylist()
    return gen


def load_store(chunks_dir):
    from .store import ChunkStore

    return ChunkStore.load(_Path(chunks_dir) / STORE_DIR)


def count_repeated_ids(cfg, store) -> int:
    """`statistics.documents_with_repeated_id` of `nextlong synthesize` and `acer` (`cfg` their config): the
    documents of the corpus `store` whose id repeats an earlier one (ChunkStore.repeated_ids), with one warning
    line naming where the first lies (`document_place`), since segments' `doc_id` cannot tell such documents
    apart. Not refused: real corpora repeat ids. The warning is shown under --quiet too, as the corpus reader's
    are: it is about the data, not progress."""
    from ..untrusted import show

    repeats, first, at = store.repeated_ids()
    if repeats:
        where = document_place(cfg, int(store.doc_index[at])) or cfg.corpus
        print(f"warning: {where}: document id {show(first)} repeats an earlier document's ({repeats} document(s) "
              "of the corpus repeat one); the segments' doc_id names such documents alike", file=sys.stderr, flush=True)
    return repeats


def document_place(cfg, doc_index: int) -> str | None:
    """Where document `doc_index` of the corpus lies: "FILE:LINE" (a Parquet file's row, a .txt file alone), as the
    corpus reader's messages name it, else the file alone; None where the chunk stage's block records do not say.
    Each block record names its split's first file and the documents before the split (`numbering`), so only the
    document's split is read again, up to the document (a split is at most 64 MB of the corpus by default). A split
    that starts inside a cut file names that file alone: its line would take counting the file's lines before."""
    from ..corpus.reader import detect_format, list_corpus_files
    from ..corpus.split import SplitReader
    from ..errors import NextlongError
    from .framework import block_numbers, block_record_path, read_done

    chunk_dir = _Path(cfg.out_dir) / "chunk"
    try:
        splits: dict = {}  # split -> [documents before it, its first file's name, its documents]
        for j in block_numbers(chunk_dir):
            record = read_done(block_record_path(chunk_dir, j)) or {}
            numbering, split = record.get("numbering") or {}, (record.get("partition") or {}).get("split")
            entry = splits.setdefault(split, [int(numbering["doc_offset"]), str(numbering["name"]), 0])
            entry[2] += int(record["counts"]["docs"])
        s = next(s for s, (before, _, docs) in splits.items() if before <= doc_index < before + docs)
        before, name = splits[s][:2]
        files = list_corpus_files(cfg.corpus)
        start = next(i for i, (_, n) in enumerate(files) if n == name)
        if any(t < s and e[1] == name for t, e in splits.items()):  # a range of a cut file that starts inside it
            return str(files[start][0])
        pieces = [{"path": str(path), "name": n, "format": detect_format(path)} for path, n in files[start:]]
        reader = SplitReader(cfg.corpus, text_field=cfg.text_field, id_field=None, on_error=cfg.on_error)
        k = doc_index - before
        for batch in reader.split_batches(pieces):
            if k < batch.num_rows:
                place = batch.column("doc_id")[k].as_py()  # "<name>:<line>", or <name> for a .txt file
                path, n = next(f for f in files if place == f[1] or place.startswith(f[1] + ":"))
                return f"{path}{place[len(n):]}"
            k -= batch.num_rows
    except (NextlongError, OSError, ValueError, TypeError, KeyError, AttributeError, StopIteration):
        return None  # records of an older nextlong, or edited: the warning names the corpus instead
    return None


BLANK_DOCS_FILE = "blank_docs.npy"  # beside chunks.parquet: the dense numbers of the blank documents
BLANK_CHUNKS_FILE = "blank_chunks.npy"  # beside chunks.parquet: the numbers of the chunks of whitespace only


def recorded_rows(stage_dir, block: int) -> int:
    """The rows a finished map stage's block record counts (a record edited or damaged since is named)."""
    from ..errors import CorruptFileError
    from .framework import block_record_path, read_done

    path = block_record_path(stage_dir, block)
    record = read_done(path)
    counts = record.get("counts") if isinstance(record, dict) else None
    rows = counts.get("rows", 0) if isinstance(counts, dict) else None
    if not whole(rows, 0):
        said = "not a finished block's record (counts.rows)" if path.exists() else "missing, though its stage finished"
        raise CorruptFileError(f"{path}: {said}; delete {_Path(stage_dir)} to make that stage again")
    return rows


def check_part_rows(part, rows: int) -> None:
    """A finished stage's Parquet part, about to be published as it is: its footer must read and hold the
    rows its record counts (a part damaged since would be published, its stage marked done, and fail at
    every later read with pyarrow's traceback). Only the footer is read: damage inside a page shows where
    the part is read whole (read_part), not here."""
    from ..errors import CorruptFileError
    from .parts import part_rows

    if not _Path(part).exists():
        raise CorruptFileError(f"{part}: missing, though its stage recorded {rows} rows there; delete "
                               f"{_Path(part).parent} to make that stage again")
    have = part_rows(part)
    if have != rows:
        raise CorruptFileError(f"{part}: {have} rows where its stage recorded {rows}; delete {_Path(part).parent} "
                               "to make that stage again")


def blank_chunks(text) -> np.ndarray:
    """Per chunk: empty or whitespace only (Unicode White_Space)."""
    import pyarrow.compute as pc

    return pc.or_(pc.utf8_is_space(text), pc.equal(pc.utf8_length(text), 0)).to_numpy(zero_copy_only=False).astype(bool)


def blank_chunks_of(chunks_dir) -> np.ndarray:
    """blank_chunks of every row of a chunk table, its text column read in batches (memory bounded by a batch,
    not the corpus)."""
    path = _Path(chunks_dir) / CHUNKS_FILE
    text = parquet_batches(path, checked_parquet.open_file(path), columns=["text"], batch_size=1 << 16)
    blank = [blank_chunks(b.column(0)) for b in text]
    return np.concatenate(blank) if blank else np.zeros(0, bool)


def _blank_documents_of(store, blank_chunks: np.ndarray) -> np.ndarray:
    """The dense numbers of the documents whose every chunk is blank."""
    docs = np.ones(store.num_docs, bool)
    if blank_chunks.size:
        np.logical_and.at(docs, np.asarray(store.chunk_doc), blank_chunks)
    return np.flatnonzero(docs).astype(np.int64)


def save_blanks(out_dir, store, blank_chunks: np.ndarray) -> None:
    """BLANK_CHUNKS_FILE and BLANK_DOCS_FILE, written with the chunk table so that later stages (a planning or
    retrieval worker on each node) need not read the corpus's text again to find them."""
    for name, numbers in ((BLANK_CHUNKS_FILE, np.flatnonzero(blank_chunks).astype(np.int64)),
                          (BLANK_DOCS_FILE, _blank_documents_of(store, blank_chunks))):
        with _atomic_path(_Path(out_dir) / name) as tmp, open(tmp, "wb") as f:
            np.save(f, numbers)


def _saved_numbers(path, below: int):
    """The increasing numbers below `below` saved in `path`, or None for a folder chunked before the file."""
    from ..errors import CorruptFileError
    from ..untrusted import load_array

    if not (path.exists() or path.is_symlink()):
        return None
    numbers = load_array(path, CorruptFileError, mmap=False, kind="iu", ndim=1,
                         remedy=f"delete {path.parent} to chunk the corpus again")
    if numbers.size and (int(numbers.min()) < 0 or int(numbers.max()) >= below
                         or bool((np.diff(numbers) <= 0).any())):
        raise CorruptFileError(f"{path}: not increasing numbers below {below}; delete {path.parent} "
                               "to chunk the corpus again")
    return numbers


def blank_documents(chunks_dir, store) -> np.ndarray:
    """The dense numbers of the documents with no text but whitespace. They stay in the chunk table, as
    `nextlong chunk` keeps them (so an index built from it matches), but no output row is built from them:
    as a NExtLong anchor a blank document's vector ties with every chunk (zero under hashed-tfidf), so its
    negatives were the corpus's first chunks and its sample held nothing of its own; in the other methods it
    only added whitespace. Written with the chunk table; a work folder chunked before that (whose later
    stages, ACER's model-written ones included, stay valid) gets it from the table's text."""
    docs = _saved_numbers(_Path(chunks_dir) / BLANK_DOCS_FILE, store.num_docs)
    return _blank_documents_of(store, blank_chunks_of(chunks_dir)) if docs is None else docs


def empty_chunks(chunks_dir, store) -> np.ndarray:
    """(num_chunks,) bool: the chunks with no visible character (empty or whitespace only, blank_chunks) or no
    token: a blank document, or the lone "\\n" piece the cut of a long chunk can leave. Never a NExtLong
    negative nor an ACER passage: whitespace between meta-chunks or in a reader's prompt teaches nothing.
    Read from BLANK_CHUNKS_FILE, or for a folder chunked before it, from the table's text."""
    numbers = _saved_numbers(_Path(chunks_dir) / BLANK_CHUNKS_FILE, store.num_chunks)
    if numbers is None:
        empty = blank_chunks_of(chunks_dir)
    else:
        empty = np.zeros(store.num_chunks, bool)
        empty[numbers] = True
    return empty | (np.asarray(store.token_counts) == 0)


def ready_embedder(spec: str, fitted_dir, threads: int | None):
    """The embedder a FitEmbedder stage prepared: its saved folder when it wrote one, else `spec`."""
    from ..mining.embedding import load_embedder
    from ..mining.lexical_embedding import LEXICAL_STATE

    if (_Path(fitted_dir) / LEXICAL_STATE).exists():
        return load_embedder(str(fitted_dir))
    return load_stage_embedder(spec, threads)


def open_vectors(embeddings_dir, verify: bool = True, record: dict | None = None) -> np.ndarray:
    """embeddings.npy of a gathered stage (CRC32 checked against its record) or of a prebuilt index."""
    from ..mining.embed_store import open_embeddings
    from ..errors import CorruptFileError
    from ..untrusted import load_array, recorded_crc

    path = _Path(embeddings_dir) / EMBEDDINGS_FILE
    if record is None:
        return open_embeddings(path, verify=verify)
    counts = record.get("counts", {})
    return load_array(path, CorruptFileError, remedy="delete the folder to embed again (or pass --no-verify)",
                      crc32=recorded_crc(counts) if verify else None, kind="f",
                      shape=(counts.get("rows"), counts.get("dim")))


def document_texts(chunks_dir, store) -> list[str]:
    return list(iter_document_texts(chunks_dir, store))


def iter_document_texts(chunks_dir, store):
    """Each document's text (its chunks joined by "\n"), in order, one at a time: a reader of them all that
    keeps none (LiteLong's BM25 build) never holds the corpus. A document's chunks are contiguous (the store
    checks it)."""
    chunks = chunk_texts(chunks_dir)()
    for count in store.doc_num_chunks.tolist():
        yield "\n".join(itertools.islice(chunks, count))
