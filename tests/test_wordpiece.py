"""The native ASCII WordPiece (csrc/wordpiece.h) against HF `tokenizers` itself: identical ids on the
shipped MiniLM's tokenizer.json over the snapshot and demo corpora, random ASCII, and hand-picked edge
cases; every text it does not handle (non-ASCII, added tokens) is handed back, never guessed."""

from __future__ import annotations

import json
import random
import string

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

ADVERSARIAL_ASCII = [
    "", " ", "   \t\n\r  ", "\x00", "\x0b\x0c", "a\x0bb", "a\x0cb", "a\x00b", "a\x01b\x7fc", "x\x1cy\x1dz\x1e\x1f",
    "Hello, World!", "HELLO world", "don't stop-believing...", "e.g. i.e. U.S.A.", "a_b__c", "foo.bar(baz)[0]",
    "x" * 100, "x" * 101, "ab" * 50 + "!" + "ab" * 51, "#", "##", "##ing", "a##b", "unaffable", "UNAFFABLE",
    "3.14159 1e-9 0x1F 2024-11-27", "!!!???", "~`^|\\{}<>", "tab\there", "cr\rlf\n", "CamelCaseIdentifierName",
    "supercalifragilisticexpialidocious", "[UNK]", "[PAD] padded", "a [CLS] b [SEP]", "[MASK]", "[unk]", "[ UNK ]",
    "[UN" + "K", "qqqqzzzz", "zzzzzzzzzzzzzzzzzzzzzzzzz", "a" * 1000,
]
NON_ASCII = ["café", "naïve Ünïcödé", "北京大学", "mixed 中文 text", "emoji 🙂", "nbsp\u00a0here", "nel\u0085x",
             "zero\u200bwidth", "İstanbul", "ΟΔΟΣ", "ﬁne", "ｆｕｌｌ", "e\u0301", "\ufeffbom", "\ufffd"]


def minilm_tokenizer():
    from nextlong.mining.embedding import default_model_path

    return tokenizers.Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))


def plain(tok):
    """The tokenizer with truncation and padding off (as model2vec uses it)."""
    tok = tokenizers.Tokenizer.from_str(tok.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


def small_tokenizer():
    """A WordPiece with a 60-entry vocabulary, so that words with no matching piece ([UNK]) are common."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + list("abcdefghijklmnop.,!") + [
        "the", "un", "aff", "able", "##able", "##a", "##b", "##c", "##d", "##e", "##ing", "##s", "##ff", "##fa",
        "token", "##izer", "##iz", "##er", "ab", "##ab", "abc", "##abc", "x", "##x", "xx", "##xx", "#", "##"]
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]",
                                     max_input_chars_per_word=12))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    return tok


def native(tok):
    from nextlong.mining.static_embedding import native_wordpiece

    wp = native_wordpiece(tok)
    assert wp is not None, "a plain BERT tokenizer must get the native path"
    return wp


def hf_ids(tok, texts):
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def assert_same_ids(tok, texts, threads=2):
    """Every ASCII text gets HF's ids; every other text is handed back (None)."""
    got = native(tok).encode_batch(texts, threads)
    want = hf_ids(tok, texts)
    handed_back = 0
    for text, g, w in zip(texts, got, want):
        if g is None:
            assert not text.isascii() or any(a in text for a in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")), text
            handed_back += 1
            continue
        assert text.isascii(), f"non-ASCII text not handed back: {text!r}"
        assert g.tolist() == w, f"{text[:200]!r}: native {g.tolist()[:40]} vs HF {w[:40]}"
    return handed_back


def snapshot_texts():
    from tests.helpers import corpus_documents

    return [text for _, text in corpus_documents()]


def test_snapshot_corpus_ids_match_hf():
    tok = plain(minilm_tokenizer())
    texts = snapshot_texts()
    handed_back = assert_same_ids(tok, texts)
    assert handed_back == sum(not t.isascii() for t in texts) < len(texts) // 10


@pytest.mark.slow
def test_demo_corpus_ids_match_hf(tmp_path):
    """The demo corpus is written from the running interpreter's standard library (so it differs between
    Python versions, unlike the snapshot): what is checked is only that every id equals HF's."""
    from nextlong.synthesis.demo import write_demo_corpus

    path = write_demo_corpus(tmp_path / "demo.jsonl", max_bytes=400_000)
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    assert len(texts) > 20
    assert_same_ids(plain(minilm_tokenizer()), texts)


@pytest.mark.parametrize("make", [minilm_tokenizer, small_tokenizer], ids=["minilm", "small-vocab"])
def test_edge_cases_match_hf(make):
    tok = plain(make())
    assert_same_ids(tok, ADVERSARIAL_ASCII + NON_ASCII)
    got = native(tok).encode_batch(NON_ASCII + ["[UNK]", "x [PAD] y", "[CLS]"])
    assert all(g is None for g in got)  # handed back, never tokenized here


@pytest.mark.parametrize("make", [minilm_tokenizer, small_tokenizer], ids=["minilm", "small-vocab"])
def test_random_ascii_matches_hf(make):
    """Random ASCII over letters of both cases, digits, punctuation, whitespace and control characters,
    with long runs (words over max_input_chars_per_word) and pieces missing from the vocabulary."""
    rng = random.Random(0)
    alphabet = (string.ascii_letters * 4 + string.digits + string.punctuation + " " * 12 + "\t\n\r"
                + "".join(map(chr, range(0, 32))) + "\x7f")
    texts = []
    for _ in range(1500):
        n = rng.choice([0, 1, 3, 10, 40, 200])
        text = "".join(rng.choice(alphabet) for _ in range(n))
        if rng.random() < 0.2:
            text += rng.choice(["a", "b", "x", "Z"]) * rng.randint(8, 130)
        texts.append(text)
    tok = plain(make())
    assert_same_ids(tok, texts)


def test_threads_do_not_change_ids():
    tok = plain(minilm_tokenizer())
    texts = snapshot_texts()[:300]
    one = native(tok).encode_batch(texts, 1)
    two = native(tok).encode_batch(texts, 2)
    assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(one, two))


def test_tokenizers_the_native_path_cannot_reproduce_are_refused():
    from tokenizers import normalizers

    from nextlong.mining.static_embedding import native_wordpiece

    tok = minilm_tokenizer()
    assert native_wordpiece(tok) is None  # truncation at 512 is on in the file: HF would cut
    tok = plain(tok)
    tok.normalizer = normalizers.BertNormalizer(clean_text=False)
    assert native_wordpiece(tok) is None
    tok = plain(minilm_tokenizer())
    tok.normalizer = normalizers.NFKC()
    assert native_wordpiece(tok) is None
    # the native check looks for every added token in every text: a folder with very many goes to HF's matcher
    from tokenizers import AddedToken

    from nextlong.mining.static_embedding import MAX_NATIVE_ADDED_TOKENS

    tok = plain(minilm_tokenizer())
    have = len(tok.get_added_tokens_decoder())
    tok.add_tokens([AddedToken(f"[extra{i}]", normalized=False) for i in range(MAX_NATIVE_ADDED_TOKENS - have)])
    assert native_wordpiece(tok) is not None
    tok.add_tokens([AddedToken("[one-too-many]", normalized=False)])
    assert native_wordpiece(tok) is None


def test_pooling_is_the_mean_of_table_rows():
    """embed_mean (fused) and mean_pool_ids against numpy in float64: unit rows, [UNK] skipped, zero rows
    for texts without pieces, handed-back texts left zero and listed."""
    from nextlong import _native

    tok = plain(small_tokenizer())
    wp = native(tok)
    rng = np.random.default_rng(0)
    table = rng.standard_normal((tok.get_vocab_size(), 24)).astype(np.float32)
    texts = ["the token izer", "unaffable!!", "qqq", "", "café", "abc abc ##", "x [PAD] y"]
    out, left = wp.embed_mean(texts, table, 1, 2)
    assert left == [4, 6]
    ids = hf_ids(tok, texts)
    for i, row in enumerate(ids):
        keep = [t for t in row if t != 1]
        if i in left or not keep:
            assert not out[i].any()
            continue
        ref = table[keep].astype(np.float64).sum(0)
        np.testing.assert_allclose(out[i], ref / np.linalg.norm(ref), rtol=0, atol=1e-6)
    flat = np.array([t for row in ids for t in row], np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in ids])]).astype(np.int64)
    pooled = _native.mean_pool_ids(table, flat, offsets, 1, 2)
    mine = [i for i in range(len(texts)) if i not in left]
    np.testing.assert_array_equal(pooled[mine], out[mine])
    with pytest.raises(ValueError, match="outside the embedding table"):
        wp.embed_mean(["the"], table[:5], -1, 1)


MIXED_WORDS = ["the", "Café", "naïve", "“quoted”", "—", "e\u0301", "\u0301", "x\u0301y", "北京", "a北b", "\u00a0", "x\u00a0y",
               "nel\u0085x", "zero\u200bwidth", "İ", "ΟΔΟΣ", "ﬁ", "🙂", "\ufffd", "\x00", "a\x0bb", "Hello,", "world!",
               "x" * 99 + "é", "é" * 101, "don't", "U.S.A.", "[PAD]", "[UNK]", "ab[PAD]cd"]


def test_mixed_texts_match_hf_with_only_non_ascii_words_sent_to_hf():
    """hybrid_ids (native ASCII runs + HF for the words holding non-ASCII characters) against HF on the
    whole text, over random mixes of ASCII and non-ASCII words, combining marks at word edges, non-ASCII
    spaces and controls, joined by ASCII whitespace or nothing."""
    from nextlong.mining.static_embedding import hybrid_ids, split_at_non_ascii_words

    rng = random.Random(1)
    texts = []
    for _ in range(600):
        words = [rng.choice(MIXED_WORDS) for _ in range(rng.randint(0, 12))]
        seps = [rng.choice([" ", "  ", "\t", "\n", "\r\n", "", " "]) for _ in words]
        texts.append("".join(w + s for w, s in zip(words, seps)))
    for text in texts:
        pieces = split_at_non_ascii_words(text)
        assert "".join(p for _, p in pieces) == text
        assert all(p.isascii() == is_ascii or not p for is_ascii, p in pieces)
    tok = plain(minilm_tokenizer())
    added = [t.content for t in tok.get_added_tokens_decoder().values()]
    got = hybrid_ids(native(tok), tok, texts, added, 2)
    want = hf_ids(tok, texts)
    for text, g, w in zip(texts, got, want):
        assert g == w, f"{text!r}: hybrid {g} vs HF {w}"
