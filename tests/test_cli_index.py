"""`nextlong index` and `nextlong search` end to end on a real chunk table."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from nextlong.cli import main
from nextlong.mining.index import ChunkIndex
from nextlong.mining.index_job import build_index_from_chunks
from tests.helpers import chunk_table, corpus_head, write_chunk_table, write_txt_folder


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chunks")
    table = chunk_table(corpus_head(limit=25), max_chars=600, max_chunks=300, min_chars=30)
    return write_chunk_table(table, folder / "chunks.parquet"), table


def test_index_then_search_lexical(tmp_path, chunks, capsys):
    path, table = chunks
    out = tmp_path / "idx"
    assert main(["index", str(path), "--out", str(out), "--embedder", "hashed-tfidf", "--no-progress"]) == 0
    assert "indexed" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "index" and manifest["statistics"]["chunks"] == table.num_rows
    info = json.loads((out / "index.json").read_text())
    assert info["chunks_path"] == str(path.resolve()) and info["doc_key"] == "doc_index"

    # a chunk's own text finds itself first, with its document and snippet
    target = 17
    text = table.column("text")[target].as_py()
    assert main(["search", str(out), text, "-k", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["chunk_id"] == target and rows[0]["similarity"] > 0.99
    assert rows[0]["doc_id"] == table.column("doc_id")[target].as_py() and rows[0]["text"] == text

    doc = table.column("doc_index")[target].as_py()
    assert main(["search", str(out), text, "-k", "5", "--exclude-doc", str(doc)]) == 0
    printed = capsys.readouterr().out
    results = [line for line in printed.splitlines() if line[:3].strip().isdigit()]
    assert len(results) == 5 and printed.splitlines()[0].split()[0] == "#"
    assert f"chunk {target:>8}" not in printed


def test_a_refused_rerun_leaves_the_index_as_it_was(tmp_path, chunks, capsys):
    """Issue 24: `--embedder hashed-tfidf:256` over a 512-dim index rewrote lexical_embedder.json before
    refusing, and `search` on the index failed from then on."""
    path, table = chunks
    out = tmp_path / "idx"
    assert main(["index", str(path), "--out", str(out), "--embedder", "hashed-tfidf", "--no-progress"]) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    capsys.readouterr()
    assert main(["index", str(path), "--out", str(out), "--embedder", "hashed-tfidf:256", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "embeddings were made with other settings" in err and "dim: on disk 512, asked 256" in err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    text = table.column("text")[17].as_py()
    assert main(["search", str(out), text, "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chunk_id"] == 17


@pytest.mark.slow
def test_index_default_embedder_matches_direct_build(tmp_path, chunks, capsys):
    """The CLI with the default MiniLM gives the same neighbours as embedding + ChunkIndex.build by hand."""
    path, table = chunks
    small = write_chunk_table(table.slice(0, 60), tmp_path / "small.parquet")
    assert main(["index", str(small), "--out", str(tmp_path / "idx"), "--no-progress"]) == 0
    capsys.readouterr()
    index = ChunkIndex.view(tmp_path / "idx", embedder="all-MiniLM-L6-v2", expect_dim=384)
    emb = np.load(tmp_path / "idx" / "embeddings.npy")
    ids, _ = index.search(emb[:20], 5, exclude_doc_ids=table.column("doc_index").to_numpy()[:20])
    sims = emb[:20] @ emb.T
    docs = table.column("doc_index").to_numpy()[:60]
    sims[docs[:20, None] == docs[None, :]] = -np.inf
    truth = np.argsort(-sims, axis=1)[:, :5]
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, truth)])
    assert recall >= 0.95
    assert main(["search", str(tmp_path / "idx"), "asyncio event loop", "-k", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["#", "cosine", "chunk", "document"]
    assert sum(1 for line in printed[1:] if line[:3].strip().isdigit()) == 2


def test_index_rejects_a_table_without_chunk_columns(tmp_path, capsys):
    import pyarrow as pa

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), bad)
    assert main(["index", str(bad), "--out", str(tmp_path / "idx"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "bad.parquet" in err and "chunk_id" in err


def test_search_reports_a_missing_index(tmp_path, capsys):
    assert main(["search", str(tmp_path / "nothing"), "query"]) == 1
    assert "nothing: no such folder; expected the --out of `nextlong index`" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["search", str(tmp_path / "empty"), "query"]) == 1
    assert "empty: no index.json; not an index directory" in capsys.readouterr().err


def test_build_index_from_chunks_resumes_embedding(tmp_path, chunks):
    path, table = chunks
    from nextlong.mining.embedding import HashedLexicalEmbedder

    first = build_index_from_chunks(path, tmp_path / "idx", HashedLexicalEmbedder(64), progress=False)
    before = (tmp_path / "idx" / "embeddings.npy").stat().st_mtime_ns
    again = build_index_from_chunks(path, tmp_path / "idx", HashedLexicalEmbedder(64), progress=False)
    assert (tmp_path / "idx" / "embeddings.npy").stat().st_mtime_ns == before  # reused, not re-embedded
    assert len(again) == len(first) == table.num_rows


def test_index_accepts_nextlong_chunk_output(tmp_path, capsys):
    """The real chunker's table goes straight into `nextlong index`."""
    corpus = write_txt_folder(tmp_path / "corpus", corpus_head(limit=6))
    assert main(["chunk", str(corpus), "--out", str(tmp_path / "chunks.parquet"), "--no-progress"]) == 0
    assert main(["index", str(tmp_path / "chunks.parquet"), "--out", str(tmp_path / "idx"),
                 "--embedder", "hashed-tfidf", "--no-progress"]) == 0
    capsys.readouterr()
    rows = pq.read_table(tmp_path / "chunks.parquet").num_rows
    index = ChunkIndex.view(tmp_path / "idx")
    assert len(index) == rows and index.embedder_name.startswith("hashed-tfidf-d512-idf")
    query = index.query_embedder().embed(["the first chunk's words"])
    ids, _ = index.search(query, 3)
    assert (ids >= 0).all()


def test_index_quiet_draws_no_bar_and_no_summary(tmp_path, chunks, capsys):
    """--quiet, as chunk and synthesize take it: nothing on stderr, and no summary (it printed "indexed N
    chunks ..." where every other command's --quiet leaves it out); --no-progress keeps the summary."""
    path, _ = chunks
    assert main(["index", str(path), "--out", str(tmp_path / "idx"), "--embedder", "hashed-tfidf", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["index", str(path), "--out", str(tmp_path / "idx2"), "--embedder", "hashed-tfidf",
                 "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("indexed ") and err == ""


def test_an_index_gives_its_chunks_texts_to_python_callers_too(tmp_path, capsys):
    """ChunkIndex.texts_of: the texts `nextlong search` shows, with its rule for the chunk table index.json names
    (read only when its text hashes are the index's own), for Python callers as for the command."""
    import pyarrow.parquet as pq

    from nextlong.cli import main
    from nextlong.mining.index import ChunkIndex
    from tests.helpers import corpus_head, write_jsonl

    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(20_000))
    chunks = tmp_path / "chunks.parquet"
    assert main(["chunk", str(corpus), "--out", str(chunks), "--tokenizer", "cl100k_base", "--with-ids",
                 "--no-progress"]) == 0
    assert main(["index", str(chunks), "--out", str(tmp_path / "index"), "--embedder", "hashed-tfidf:64",
                 "--no-progress"]) == 0
    index = ChunkIndex.view(tmp_path / "index")
    table = pq.read_table(chunks)
    texts, note = index.texts_of([0, 2])
    assert note is None and texts == {0: table.column("text")[0].as_py(), 2: table.column("text")[2].as_py()}
    import pyarrow as pa

    hashes = table.column("text_hash").to_pylist()
    other = table.set_column(table.schema.get_field_index("text_hash"), table.schema.field("text_hash"),
                             pa.array([h ^ 1 for h in hashes], table.schema.field("text_hash").type))
    pq.write_table(other, chunks)  # another table at the path index.json names: not shown
    texts, note = index.texts_of([0])
    assert texts == {} and "is not the one the index was built from" in note
    capsys.readouterr()


def test_an_interrupted_index_run_says_so_in_its_manifest(tmp_path, chunks, monkeypatch):
    """Ctrl-C or SIGTERM during `nextlong index` left its manifest "running" for good (an attack on this session's
    SIGTERM change): the manifest now says "interrupted", as the other commands' do."""
    import json

    from nextlong.mining import embed_store
    from nextlong.mining.embedding import HashedLexicalEmbedder

    def interrupted(chunks_path, embedder, embeddings_path, on_accepted=None, **kwargs):
        embeddings_path.write_bytes(b"partial")  # finished work the resume would reuse: the folder is kept
        on_accepted()  # the running manifest is written once the embeddings file is accepted
        raise KeyboardInterrupt

    monkeypatch.setattr(embed_store, "embed_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index_from_chunks(chunks[0], tmp_path / "idx", HashedLexicalEmbedder(64), progress=False)
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["statistics"]["status"] == "interrupted"
