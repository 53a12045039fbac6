"""Embedders: the offline MiniLM against sentence-transformers, the lexical embedder, loading errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from nextlong.mining.embedding import (
    DEFAULT_EMBEDDER,
    Embedder,
    EmbedderError,
    HashedLexicalEmbedder,
    default_model_path,
    load_embedder,
    token_batches,
)
from tests.helpers import chunk_table, corpus_head, corpus_texts


def real_texts(n: int, max_chars: int = 700) -> list[str]:
    """Real chunks of mixed length (some beyond MiniLM's 256-token window) from the shipped snapshot."""
    table = chunk_table(corpus_head(limit=40), max_chars=max_chars, max_chunks=n, min_chars=20)
    texts = table.column("text").to_pylist()
    texts.append("word " * 600)  # longer than max_length: truncation must match
    return texts


@pytest.fixture(scope="module")
def minilm_fp32():
    return load_embedder(dtype="float32")


@pytest.fixture(scope="module")
def reference_vectors():
    from sentence_transformers import SentenceTransformer

    texts = real_texts(24)
    model = SentenceTransformer(str(default_model_path()), device="cpu")
    return texts, model.encode(texts, normalize_embeddings=True, batch_size=16, convert_to_numpy=True)


def test_default_is_minilm_and_satisfies_protocol(minilm_fp32):
    assert minilm_fp32.name == DEFAULT_EMBEDDER
    assert minilm_fp32.dim == 384
    assert minilm_fp32.max_length == 256  # from the model's sentence_bert_config.json
    assert isinstance(minilm_fp32, Embedder)


def test_minilm_fp32_matches_sentence_transformers(minilm_fp32, reference_vectors):
    """sentence-transformers cuts a text at 256 word pieces: so does long_texts="truncate"; the default
    (windows) agrees with it on every text that fits one window."""
    texts, ref = reference_vectors
    ours = load_embedder(dtype="float32", long_texts="truncate").embed(texts)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-5)  # same math, other batching: float rounding only
    fits = [len(ids) < minilm_fp32.max_length for ids in minilm_fp32.tokenize(texts)]
    assert 5 < sum(fits) < len(texts)
    np.testing.assert_allclose(minilm_fp32.embed(texts)[fits], ref[fits], atol=2e-5)


@pytest.mark.slow
def test_long_texts_are_the_weighted_mean_of_their_windows(minilm_fp32, tmp_path):
    """Reference by hand: the plain transformers model on each window of <= 256 ids ([CLS] 254 pieces
    [SEP]), mean pooled and normalised, averaged with weights = pieces per window, normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from nextlong.mining.embed_store import embed_chunks, embedding_progress

    texts = chunk_table(corpus_head(limit=30), max_chars=2048, max_chunks=5, min_chars=1500).column("text").to_pylist()
    texts.append("short text")
    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    model = AutoModel.from_pretrained(str(default_model_path()), dtype=torch.float32).eval()
    ref, n_long = [], 0
    for text in texts:
        pieces = tok(text, add_special_tokens=False)["input_ids"]
        windows = [pieces[a : a + 254] for a in range(0, len(pieces), 254)]
        n_long += len(windows) > 1
        acc = np.zeros(384)
        for w in windows:
            ids = torch.tensor([[tok.cls_token_id] + w + [tok.sep_token_id]])
            with torch.inference_mode():
                v = model(input_ids=ids).last_hidden_state[0].mean(0).numpy()
            acc += len(w) * v / np.linalg.norm(v)
        ref.append(acc / np.linalg.norm(acc))
    ref = np.asarray(ref)
    assert n_long >= 4  # 2048-character chunks are mostly longer than 256 pieces
    before = minilm_fp32.windowed_texts
    ours = minilm_fp32.embed(texts)
    np.testing.assert_allclose(ours, ref, atol=3e-5)
    assert minilm_fp32.windowed_texts - before == n_long
    # the tail of a long chunk now counts: the vector differs from the first window's
    first = load_embedder(dtype="float32", long_texts="truncate").embed(texts)
    assert ((first * ours).sum(1) < 0.99).sum() >= n_long // 2 >= 2
    # embed_chunks records how many texts were windowed
    embed_chunks(texts, minilm_fp32, tmp_path / "e.npy", progress=False, batch_size=5)
    assert embedding_progress(tmp_path / "e.npy")["windowed_texts"] == n_long


@pytest.mark.slow
def test_minilm_default_precision_close_to_sentence_transformers(reference_vectors):
    """Default dtype (bf16 on CPUs with native bf16, fp32 elsewhere) stays within cosine 0.999 of fp32."""
    texts, ref = reference_vectors
    fast = load_embedder(long_texts="truncate")
    cos = (fast.embed(texts) * ref).sum(1)
    assert cos.min() > 0.999, cos.min()


@pytest.mark.slow
def test_embedding_independent_of_batching(minilm_fp32):
    texts = real_texts(16, max_chars=300)
    whole = minilm_fp32.embed(texts)
    order = np.random.default_rng(1).permutation(len(texts))
    saved = minilm_fp32.batch_tokens, minilm_fp32.max_batch
    try:
        minilm_fp32.batch_tokens, minilm_fp32.max_batch = 300, 3  # other batches, other padding
        shuffled = minilm_fp32.embed([texts[i] for i in order])
    finally:
        minilm_fp32.batch_tokens, minilm_fp32.max_batch = saved
    np.testing.assert_allclose(shuffled, whole[order], atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    assert minilm_fp32.embed([]).shape == (0, 384)


@pytest.mark.slow
def test_model_folder_by_path_gives_same_vectors(minilm_fp32):
    by_path = load_embedder(str(default_model_path()), dtype="float32")
    texts = real_texts(5)
    np.testing.assert_allclose(by_path.embed(texts), minilm_fp32.embed(texts), atol=2e-5)
    assert by_path.name == default_model_path().name


def test_token_batches_cover_everything_within_budget():
    lengths = np.random.default_rng(0).integers(1, 300, size=500)
    batches = token_batches(lengths, batch_tokens=2000, max_batch=64)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(500))
    for b in batches:
        assert len(b) <= 64
        assert len(b) == 1 or len(b) * lengths[b].max() <= 2000
    assert lengths[batches[0]].max() == lengths.max()  # longest first


def test_unknown_embedder_is_a_clear_error(tmp_path):
    with pytest.raises(EmbedderError, match="unknown embedder 'no-such-model'"):
        load_embedder("no-such-model")
    with pytest.raises(EmbedderError, match="hashed-tfidf:DIM"):
        load_embedder("hashed-tfidf:big")
    with pytest.raises(EmbedderError, match="cannot load"):
        load_embedder(str(tmp_path))  # an empty folder is no model


# ---------------------------------------------------------------- lexical


def test_lexical_vectors_are_unit_deterministic_and_topical():
    emb = load_embedder("hashed-tfidf:256")
    assert emb.dim == 256 and isinstance(emb, Embedder)
    texts = [
        "The socket module provides access to the BSD socket interface.",
        "Create a new socket using the given address family and socket type.",
        "Decimal fixed point and floating point arithmetic with correct rounding.",
        "",
    ]
    v = emb.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-5)
    assert not v[3].any()  # no words: the zero vector, not nan
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1
    np.testing.assert_array_equal(HashedLexicalEmbedder(256).embed(texts), v)


def test_lexical_hash_is_stable_across_processes():
    code = ("import numpy as np; from nextlong.mining.embedding import HashedLexicalEmbedder as H; "
            "print(repr(H(64).embed(['stable hashing across processes'])[0][:8].tolist()))")
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1


def test_lexical_words_fast_path_matches_the_regex_definition():
    """ASCII texts are split and hashed by a numba pass over their bytes, the others by the regex: both
    must give the words `[^\\W_]+` finds in the lower-cased text, each as zlib.crc32 of its UTF-8, in text
    order (a divergence would change every lexical embedding and IDF table)."""
    import random
    import re
    import zlib

    rnd = random.Random(0)
    ascii_texts = ["", " ", "_", "a_b", "ABC def\x00GHI\x7f9", "x" * 9, "\t\n", "tail word"]
    ascii_texts += ["".join(chr(rnd.randrange(128)) for _ in range(rnd.randrange(40))) for _ in range(300)]
    other = ["Σ ΣΑΣ ΑΣ", "İstanbul", "café AU lait", "١٢٣ ½ ²", "日本語 ABC_def"]
    other += ["".join(chr(rnd.choice([rnd.randrange(128), rnd.randrange(128, 0x3000)])) for _ in range(30))
              for _ in range(100)]
    mixed = ascii_texts[:150] + other[:50] + ascii_texts[150:] + other[50:]
    rnd.shuffle(mixed)
    emb = HashedLexicalEmbedder(64)
    for batch in (ascii_texts, other, mixed, mixed[:1], [], ["", ""]):
        words = [[zlib.crc32(w.encode()) for w in re.findall(r"[^\W_]+", t.lower())] for t in batch]
        rows, hashes = emb._hashed_words(batch)
        assert rows.dtype == np.int64 and hashes.dtype == np.uint64
        np.testing.assert_array_equal(rows, np.repeat(np.arange(len(batch)), [len(w) for w in words]))
        np.testing.assert_array_equal(hashes, np.array([h for w in words for h in w], np.uint64))


def test_lexical_fit_and_features_need_no_numba(monkeypatch):
    """numba is optional ([ml]); fitting IDF weights and listing features never needed it, and the fast
    word splitter that uses it must not make them need it."""
    import sys

    from nextlong.mining import lexical_embedding

    texts = ["The socket module", "Create a NEW socket_type 42", "café au lait", ""]
    with_numba = HashedLexicalEmbedder(64).fit(texts)
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba fails, find_spec says not installed
    monkeypatch.setattr(lexical_embedding, "_ASCII_WORDS", None)
    without = HashedLexicalEmbedder(64).fit(texts)
    np.testing.assert_array_equal(without.idf, with_numba.idf)
    np.testing.assert_array_equal(without.features(texts[1]), with_numba.features(texts[1]))


def test_lexical_fit_save_load_roundtrip(tmp_path):
    texts = [p for d in corpus_texts(limit=5) for p in d.split("\n\n") if p.strip()]
    emb = HashedLexicalEmbedder(128).fit(texts)
    assert emb.num_docs == len(texts) and "-idf" in emb.name
    assert HashedLexicalEmbedder(128).fit(texts[:3]).name != emb.name  # another corpus, another embedder
    # a word in every text weighs less than a rare one
    common = emb.idf[emb.features("the")[0]]
    rare = emb.idf[emb.features("zyzzyva")[0]]
    assert rare > common
    emb.save(tmp_path)
    again = load_embedder(str(tmp_path))
    assert isinstance(again, HashedLexicalEmbedder) and again.name == emb.name
    np.testing.assert_array_equal(again.embed(texts[:5]), emb.embed(texts[:5]))


@pytest.mark.slow
def test_lexical_neighbours_overlap_minilm_neighbours(minilm_fp32):
    """The lexical embedder finds a useful share of MiniLM's nearest neighbours (far above chance)."""
    table = chunk_table(corpus_head(limit=60), max_chars=400, max_chunks=150, min_chars=80)
    texts = table.column("text").to_pylist()
    sem = minilm_fp32.embed(texts)
    lex = HashedLexicalEmbedder(512).fit(texts).embed(texts)
    k = 10

    def topk(x):
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1)[:, :k]

    a, b = topk(sem), topk(lex)
    recall = np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(texts))])
    assert recall > 0.25, recall  # chance would be ~k/len = 0.03


def test_a_folders_default_prompt_is_put_before_every_text_as_sentence_transformers_does(tmp_path):
    """E5-style folders name a default prompt ("passage: ") in config_sentence_transformers.json, which
    SentenceTransformer.encode puts before every text; we embedded the bare text, other vectors than the
    model's own library gives."""
    import json
    import shutil

    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "prompted"
    shutil.copytree(default_model_path(), folder)
    cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    cfg.update(prompts={"query": "query: ", "passage": "passage: "}, default_prompt_name="passage")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    texts = real_texts(6)
    ours = load_embedder(str(folder), dtype="float32", long_texts="truncate")
    assert ours.prefix == "passage: "
    ref = SentenceTransformer(str(folder), device="cpu").encode(texts, normalize_embeddings=True,
                                                                 convert_to_numpy=True)
    np.testing.assert_allclose(ours.embed(texts), ref, atol=2e-5)
    bare = load_embedder(str(folder), dtype="float32", long_texts="truncate", prefix="")
    assert np.abs(bare.embed(texts) - ref).max() > 1e-3  # the prompt changes the vectors
    # the synthesis embed stage fingerprints it: embeddings cached without it are not taken for these
    from nextlong.synthesis.stages import EmbedStage

    prompted = EmbedStage(name="embed", inputs=("chunk", "embedder"), embedder=str(folder))
    plain = EmbedStage(name="embed", inputs=("chunk", "embedder"), embedder=str(default_model_path()))
    assert prompted.prompt == "passage: " and prompted.settings()["prompt"] == "passage: "
    assert plain.prompt == "" and "prompt" not in plain.settings()  # unchanged for every other embedder
    cfg["default_prompt_name"] = "missing"
    (folder / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    with pytest.raises(EmbedderError, match="default_prompt_name 'missing' must name a string"):
        load_embedder(str(folder), dtype="float32")


def test_a_query_prefix_replaces_the_folders_passage_prompt(tmp_path):
    """ACER's --query-prefix ("query: ") goes before each question instead of the folder's default prompt,
    as SentenceTransformer.encode(prompt_name="query") does; the chunks keep the default ("passage: ")."""
    import json
    import shutil

    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "prompted"
    shutil.copytree(default_model_path(), folder)
    cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    cfg.update(prompts={"query": "query: ", "passage": "passage: "}, default_prompt_name="passage")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    questions = ["Which module parses command-line options?", "How are files copied?"]
    ref = SentenceTransformer(str(folder), device="cpu").encode(questions, prompt_name="query",
                                                                 normalize_embeddings=True, convert_to_numpy=True)
    ours = load_embedder(str(folder), dtype="float32")
    np.testing.assert_allclose(ours.embed(questions, prefix="query: "), ref, atol=2e-5)
