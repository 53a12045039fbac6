"""Real-text chunk tables for the embedding/index tests and benchmarks (Python's docs, Debian python3.11-doc).

Until `nextlong chunk` exists these tables are built here with the paper's rule (split on "\\n", group
greedily up to `max_chars` characters, separators not counted) and nextlong.schema.CHUNK_SCHEMA; the
text hash is any 64-bit hash (blake2b-64 here): the code under test only compares hashes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nextlong.schema import CHUNK_SCHEMA

PYDOCS = Path("/usr/share/doc/python3.11/html/_sources")
needs_pydocs = pytest.mark.skipif(not PYDOCS.is_dir(), reason="Python docs (Debian python3.11-doc) not installed")


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def meta_chunks(text: str, max_chars: int) -> list[tuple[int, int]]:
    """(start, end) code-point spans of greedy paragraph groups; joining them with "\\n" gives `text`."""
    spans, start, pos, running = [], 0, 0, 0
    for para in text.split("\n"):
        if running and running + len(para) > max_chars:
            spans.append((start, pos - 1))
            start, running = pos, 0
        running += len(para)
        pos += len(para) + 1
    spans.append((start, len(text)))
    return spans


def pydocs_files(limit: int | None = None, subdir: str = "") -> list[Path]:
    files = sorted((PYDOCS / subdir).rglob("*.rst.txt"))
    return files[:limit] if limit else files


def chunk_table(files, max_chars: int = 2048, max_chunks: int | None = None, min_chars: int = 1) -> pa.Table:
    cols = {name: [] for name in CHUNK_SCHEMA.names}
    for doc_index, path in enumerate(files):
        text = Path(path).read_text(encoding="utf-8")
        chunk_index = 0
        for start, end in meta_chunks(text, max_chars):
            piece = text[start:end]
            if len(piece.strip()) < min_chars:
                continue
            cols["chunk_id"].append(len(cols["chunk_id"]))
            cols["doc_index"].append(doc_index)
            cols["doc_id"].append(str(Path(path).relative_to(PYDOCS)) if PYDOCS in Path(path).parents else str(path))
            cols["chunk_index"].append(chunk_index)
            cols["char_start"].append(start)
            cols["char_end"].append(end)
            cols["num_tokens"].append(None)
            cols["text_hash"].append(text_hash(piece))
            cols["text"].append(piece)
            chunk_index += 1
            if max_chunks and len(cols["chunk_id"]) >= max_chunks:
                return pa.table(cols, schema=CHUNK_SCHEMA)
    return pa.table(cols, schema=CHUNK_SCHEMA)


def write_chunk_table(table: pa.Table, path) -> Path:
    pq.write_table(table, path, row_group_size=max(1, table.num_rows // 3))
    return Path(path)


def test_meta_chunks_rejoin_to_the_document():
    text = "a" * 10 + "\n" + "b" * 5 + "\n\n" + "c" * 30 + "\n" + "d"
    spans = meta_chunks(text, 16)
    assert "\n".join(text[s:e] for s, e in spans) == text
    assert [text[s:e] for s, e in spans][0] == "a" * 10 + "\n" + "b" * 5 + "\n"


@needs_pydocs
def test_pydocs_chunk_table_matches_schema():
    table = chunk_table(pydocs_files(3, "library"), max_chars=512)
    assert table.schema.equals(CHUNK_SCHEMA)
    assert np.array_equal(table.column("chunk_id").to_numpy(), np.arange(table.num_rows))
    assert table.num_rows > 10
