"""The static embedder (`--embedder static`): distilled with model2vec, cached atomically in the user
cache folder, reused without distilling again, and embedding whole texts as the mean of their pieces.

A tiny random BERT with a 600-piece vocabulary (MiniLM's tokenizer settings, fewer pieces) stands in for
MiniLM so that distilling takes seconds; benchmarks/bench_embedding.py distils the real MiniLM and
measures speed and recall."""

from __future__ import annotations

import json
import os
import string

import numpy as np
import pytest

pytest.importorskip("model2vec")
pytest.importorskip("skeletoken")


def _tiny_bert(folder):
    """A 1-layer BERT (hidden 32) with MiniLM's tokenizer configuration cut to ~600 word pieces."""
    import torch
    from transformers import BertConfig, BertModel

    from nextlong.mining.embedding import default_model_path

    src = default_model_path()
    tok = json.loads((src / "tokenizer.json").read_text())
    old = tok["model"]["vocab"]
    by_id = sorted(old, key=old.get)
    keep = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    keep += [c for c in string.ascii_lowercase + string.digits + string.punctuation if c in old]
    keep += ["##" + c for c in string.ascii_lowercase + string.digits if "##" + c in old]
    keep += [t for t in by_id[1996:2600] if t not in keep]
    vocab = {t: i for i, t in enumerate(keep)}
    tok["model"]["vocab"] = vocab
    for added in tok["added_tokens"]:
        added["id"] = vocab.get(added["content"], added["id"])
    tok["added_tokens"] = [a for a in tok["added_tokens"] if a["content"] in vocab]
    for name, special in tok["post_processor"]["special_tokens"].items():
        special["ids"] = [vocab[name]]
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    (folder / "vocab.txt").write_text("\n".join(keep) + "\n")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_text((src / name).read_text())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(keep), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


def test_distilled_once_into_the_user_cache_then_reused(tiny, tmp_path, monkeypatch):
    from nextlong.mining import static_embedding
    from nextlong.mining.embedding import load_embedder

    monkeypatch.delenv("NEXTLONG_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert static_embedding.cache_root() == tmp_path / "xdg" / "nextlong"
    emb = load_embedder(f"static:{tiny}", pca_dims=16)
    root = tmp_path / "xdg" / "nextlong" / "static"
    (folder,) = root.iterdir()  # one finished folder, no temporary left behind
    assert folder.name.startswith("tiny-bert-pca16-") and (folder / "model.safetensors").is_file()
    assert emb.dim == 16 and emb.name == "static-tiny-bert-d16"
    texts = ["the socket server", "a decimal number", ""]
    first = emb.embed(texts)

    def no_distill(*a, **k):
        raise AssertionError("distilled again although the cache holds the model")

    monkeypatch.setattr(static_embedding, "distill_static", no_distill)
    again = load_embedder(f"static:{tiny}", pca_dims=16)
    np.testing.assert_array_equal(again.embed(texts), first)
    # the cached folder loads directly too, and NEXTLONG_CACHE_DIR moves the cache
    np.testing.assert_array_equal(load_embedder(str(folder)).embed(texts), first)
    monkeypatch.setenv("NEXTLONG_CACHE_DIR", str(tmp_path / "other"))
    assert static_embedding.cache_root() == tmp_path / "other"


def test_static_vectors_are_the_mean_of_all_piece_vectors(tiny, tmp_path):
    """Reference: model2vec's own encode without truncation, and the mean of the table rows by hand;
    a text far beyond 512 pieces is embedded whole (its tail changes the vector)."""
    from model2vec import StaticModel

    from nextlong.mining.static_embedding import load_static_embedder

    emb = load_static_embedder(tiny, pca_dims=16, cache_dir=tmp_path)
    long_text = "the socket " * 400 + "decimal number " * 400
    texts = ["the socket server reads a file", long_text, "", "x"]
    ours = emb.embed(texts)
    assert ours.dtype == np.float32 and ours.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(ours[[0, 1, 3]], axis=1), 1.0, atol=1e-5)
    assert not ours[2].any()
    ref = StaticModel.from_pretrained(str(emb.path), max_length=None, force_download=False)
    np.testing.assert_allclose(ours, ref.encode(texts, max_length=None).astype(np.float32), atol=2e-3)
    ids = emb.model.tokenize([long_text])[0]
    assert len(ids) > 1500
    by_hand = emb.table[ids].astype(np.float64).mean(0)
    np.testing.assert_allclose(ours[1], by_hand / np.linalg.norm(by_hand), atol=1e-5)
    head = emb.embed([" ".join(long_text.split()[:300])])[0]
    assert head @ ours[1] < 0.999


# Edge cases for the two paths (tests/test_wordpiece.py checks the tokenizer itself on many more).
ADVERSARIAL_ASCII = ["", " ", " \t\n\r ", "\x00", "a\x0bb", "a\x01b\x7fc", "Hello, World!", "x" * 100, "x" * 101,
                     "don't stop-believing...", "[UNK]", "[PAD] padded", "a [CLS] b [SEP]", "qqqqzzzz", "a" * 1000]
NON_ASCII = ["café", "naïve Ünïcödé", "北京大学", "mixed 中文 text", "emoji 🙂", "nbsp\u00a0here", "nel\u0085x",
             "İstanbul", "ΟΔΟΣ", "ﬁne", "e\u0301", "\ufeffbom"]


def test_native_path_gives_model2vecs_ids_and_vectors(tiny, tmp_path):
    """The native WordPiece + pooling against model2vec's own tokenize and encode, on the snapshot and on
    adversarial texts (accents, CJK, control characters, long words, added tokens, empty, whitespace):
    ids identical; vectors within 1e-6 of the float64 mean by hand and within 2e-3 of model2vec's
    encode (which averages in float16). Non-ASCII texts and texts holding an added token ("[PAD]",
    "[UNK]") go to HF."""
    from model2vec import StaticModel

    from nextlong.mining.static_embedding import load_static_embedder
    from tests.helpers import corpus_documents

    emb = load_static_embedder(tiny, pca_dims=16, cache_dir=tmp_path, threads=2)
    assert emb.wordpiece is not None
    texts = [t for _, t in corpus_documents()][:150] + ADVERSARIAL_ASCII + NON_ASCII
    ref = StaticModel.from_pretrained(str(emb.path), max_length=None, force_download=False)
    ref_ids = ref.tokenize(texts)
    assert emb.tokenize(texts) == ref_ids
    ours = emb.embed(texts)
    added = [t.content for t in emb.model.tokenizer.get_added_tokens_decoder().values()]
    assert "[PAD]" in added
    assert emb.fallback_texts == sum(not t.isascii() or any(a in t for a in added) for t in texts) > len(NON_ASCII)
    assert emb.native_texts == len(texts) - emb.fallback_texts
    for row, ids in zip(ours, ref_ids):
        if not ids:
            assert not row.any()
            continue
        by_hand = emb.table[ids].astype(np.float64).sum(0)
        np.testing.assert_allclose(row, by_hand / np.linalg.norm(by_hand), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours, ref.encode(texts, max_length=None).astype(np.float32), rtol=0, atol=2e-3)


def test_minilm_default_dtype_is_the_documented_one(tiny, monkeypatch):
    """fp32 on a CPU without native bf16 (bf16 is emulated there: ~5x slower measured on AVX2), bf16 where
    the CPU has AVX512-BF16/AMX; an explicit dtype wins. `dtype` names the choice for the manifest."""
    from nextlong.mining import embedding

    monkeypatch.setattr(embedding, "cpu_has_native_bf16", lambda: False)
    assert embedding.load_embedder(str(tiny), device="cpu").dtype == "float32"
    monkeypatch.setattr(embedding, "cpu_has_native_bf16", lambda: True)
    assert embedding.load_embedder(str(tiny), device="cpu").dtype == "bfloat16"
    assert embedding.load_embedder(str(tiny), device="cpu", dtype="float32").dtype == "float32"


def test_missing_source_is_a_clear_error(tmp_path):
    from nextlong.mining.embedding import EmbedderError, load_embedder

    with pytest.raises(EmbedderError, match="cannot load"):
        load_embedder(f"static:{tmp_path}", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing half-made left in the cache


def test_the_check_before_work_finds_packages_without_importing_them(monkeypatch):
    """`--embedder static` is checked before any work by finding the packages a distillation imports, not by
    importing model2vec.distill (~4 s of transformers); a missing one is named."""
    import importlib.util
    import sys

    from nextlong.errors import NextlongError
    from nextlong.mining.embedding import check_embedder_spec

    monkeypatch.delitem(sys.modules, "model2vec.distill", raising=False)
    check_embedder_spec("static")
    assert "model2vec.distill" not in sys.modules
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skeletoken" else real(name, *a))
    with pytest.raises(NextlongError, match="needs the Python package 'skeletoken'"):
        check_embedder_spec("static")


@pytest.mark.slow
def test_synthesis_with_a_short_window_model_and_with_static(tiny, tmp_path, monkeypatch):
    """End to end on real text: the manifest counts the chunks embedded in windows (the tiny BERT reads
    64 ids, so most 512-character chunks need several), and `--embedder static:FOLDER` synthesizes."""
    import pyarrow.parquet as pq

    from nextlong import synthesize
    from nextlong.mining.embedding import load_embedder
    from tests.helpers import corpus_head, write_jsonl

    monkeypatch.setenv("NEXTLONG_CACHE_DIR", str(tmp_path / "cache"))
    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(120_000))
    common = dict(target_length=2048, chunk_size=512, num_samples=2, progress=False)
    manifest = synthesize(corpus, tmp_path / "window", embedder=str(tiny), **common)
    texts = pq.read_table(tmp_path / "window" / "chunks" / "chunks.parquet", columns=["text"]).column("text").to_pylist()
    emb = load_embedder(str(tiny), dtype="float32")
    emb.windows(texts)
    stats = manifest["statistics"]
    assert stats["embedding"]["max_length_tokens"] == 64
    assert stats["embedding"]["chunks_windowed"] == emb.windowed_texts > len(texts) // 2
    assert stats["embedding"]["dtype"] == load_embedder(str(tiny)).dtype  # the default the run used, recorded
    static = synthesize(corpus, tmp_path / "static", embedder=f"static:{tiny}", **common)
    assert static["statistics"]["documents_built"] == 2
    assert static["settings"]["embedder_name"].startswith("static-tiny-bert")


def test_search_opens_an_index_built_with_a_static_embedder(tiny, tmp_path, monkeypatch, capsys):
    """Audit s12 F4: index.json recorded the static embedder's name ('static-all-MiniLM-L6-v2-d256') as its
    spec, which load_embedder refuses, so `nextlong search` failed on every --embedder static index. It records
    'static' for the default distillation (the tiny BERT stands in for MiniLM here) and the model2vec folder
    for another; a folder written before (its name as spec) still opens."""
    from nextlong.cli import main
    from nextlong.mining import embedder as embedder_module
    from tests.helpers import chunk_table, corpus_head, write_chunk_table

    monkeypatch.setenv("NEXTLONG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(embedder_module, "default_model_path", lambda: tiny)
    table = chunk_table(corpus_head(limit=6), max_chars=600, max_chunks=40, min_chars=30)
    chunks = write_chunk_table(table, tmp_path / "chunks.parquet")
    text = table.column("text")[7].as_py()

    def search(index) -> int:
        capsys.readouterr()
        assert main(["search", str(index), text, "-k", "2", "--json"]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out.splitlines()[0])["chunk_id"]

    for embedder, spec in (("static", "static"), (f"static:{tiny}", None)):
        out = tmp_path / embedder.replace(":", "_").replace("/", "_")
        assert main(["index", str(chunks), "--out", str(out), "--embedder", embedder, "--no-progress"]) == 0
        info = json.loads((out / "index.json").read_text())
        recorded = info["embedder"]["spec"]
        assert recorded == spec if spec else recorded.startswith(str(tmp_path / "cache" / "static" / "tiny-bert-pca"))
        assert search(out) == 7

    # a folder from before: the default distillation's name as its spec
    out = tmp_path / "static"
    info = json.loads((out / "index.json").read_text())
    assert info["embedder"]["name"] == "static-all-MiniLM-L6-v2-d32"
    info["embedder"]["spec"] = info["embedder"]["name"]
    (out / "index.json").write_text(json.dumps(info))
    assert search(out) == 7
