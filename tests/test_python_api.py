"""The Python face as a library user meets it (a notebook, a larger program): a wrong argument is a nextlong
error naming it, before any work; a call leaves its caller's process as it found it."""

from __future__ import annotations

import os

import pytest

import nextlong
import nextlong.eval
from nextlong.errors import UsageError

FAST = dict(embedder="hashed-tfidf:256", chunk_size=512, target_length=2048, progress=False)


@pytest.mark.parametrize("settings,message", [
    (dict(target_length=None), "target_length must be an integer, got None"),
    (dict(chunk_size=None), "chunk_size must be an integer, got None"),
    (dict(separator=5), "separator must be a string, got 5"),
    (dict(text_field=None), "text_field must be a string, got None"),
    (dict(id_field=3), "id_field must be a string, got 3"),
    (dict(rebuild="no"), "rebuild must be True or False, got 'no'"),  # a non-empty string was a true flag
    (dict(progress="no"), "progress must be True or False, got 'no'"),
    (dict(target_lenght=2048), r"unknown setting target_lenght=2048 \(did you mean target_length\?\)"),
])
def test_synthesize_refuses_a_wrong_kind_of_setting_by_name(tmp_path, settings, message):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "a b c"}\n')
    with pytest.raises(UsageError, match=f"^{message}$"):
        nextlong.synthesize(corpus, tmp_path / "out", **dict(FAST, **settings))
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("corpus,out,message", [
    (["c.jsonl"], "out", r"corpus must be a string, got \['c.jsonl'\]"),
    ("c.jsonl", 5, "out must be a string, got 5"),  # was a folder named "5" in the working directory
    ("c.jsonl", None, r"synthesize\(\) needs out= \(the output folder\)"),
])
def test_synthesize_paths_are_strings_or_path_likes(tmp_path, monkeypatch, corpus, out, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.jsonl").write_text('{"text": "a b c"}\n')
    with pytest.raises(UsageError, match=f"^{message}$"):
        nextlong.synthesize(corpus, out, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


@pytest.mark.parametrize("settings,message", [
    (dict(generate_questions="3", questions=None), "generate_questions must be an integer, got '3'"),
    (dict(bm25_k1="1.2"), "bm25_k1 must be a finite number, got '1.2'"),
    (dict(read=True), "read must be an integer, got True"),
    (dict(chain_of_thought="yes"), "chain_of_thought must be True or False, got 'yes'"),
    (dict(max_new_token=8), r"unknown setting max_new_token=8 \(did you mean max_new_tokens\?\)"),
])
def test_acer_refuses_a_wrong_kind_of_setting_by_name(tmp_path, settings, message):
    corpus, questions = tmp_path / "c.jsonl", tmp_path / "q.jsonl"
    corpus.write_text('{"text": "a b c"}\n')
    questions.write_text('{"question": "a?"}\n')
    kwargs = dict(dict(model=tmp_path, questions=questions), **settings)
    with pytest.raises(UsageError, match=f"^{message}$"):
        nextlong.acer(corpus, tmp_path / "out", **kwargs)


def test_loading_and_using_an_embedder_leaves_torch_threads_and_the_environment_as_they_were(monkeypatch):
    """The transformers embedder called torch.set_num_threads at load (for good: a notebook's torch ran on
    all cores after) and set HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE in os.environ (for good: the caller's own
    from_pretrained("gpt2") in a later subprocess could not download). Loading is offline by
    local_files_only."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # conftest.py sets them for the whole suite
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        embedder = nextlong.load_embedder(dtype="float32", threads=2)
        assert torch.get_num_threads() == 1
        assert embedder.embed(["hello world", "a longer text about parsing"]).shape == (2, 384)
        assert torch.get_num_threads() == 1
        with pytest.raises(UsageError, match="^embed takes a sequence of texts, got one str"):
            embedder.embed("hello")  # was 5 vectors, one per character
    finally:
        torch.set_num_threads(before)
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ



def _tok():
    return nextlong.load_tokenizer("cl100k_base")


def _bm25():
    return nextlong.BM25Index.build(["abc def", "x y"])


def _chunk_index():
    import numpy as np

    vectors = np.eye(4, 8, dtype=np.float32)
    return nextlong.ChunkIndex.build(vectors, np.arange(4), np.arange(4), embedder="hashed-tfidf:8")


LOWER_LEVEL = {  # each was a TypeError from deep inside (pathlib, pybind, a comparison), an OSError, or taken
    "read_corpus(None)": (lambda d: nextlong.read_corpus(None), "path must be a path (a str or pathlib.Path), got None"),
    "text_field=None": (lambda d: nextlong.read_corpus(d / "file", text_field=None), "text_field must be a string, got None"),
    "id_field=3": (lambda d: nextlong.read_corpus(d / "file", id_field=3), "id_field must be a string, got 3"),
    "max_len='64k'": (lambda d: nextlong.chunk_documents(["a b"], max_len="64k"), "max_len must be an integer, got '64k'"),
    "max_len=2.5": (lambda d: nextlong.chunk_documents(["a b"], max_len=2.5), "max_len must be an integer, got 2.5"),
    "max_len=None": (lambda d: nextlong.chunk_documents(["a b"], max_len=None), "max_len must be an integer, got None"),
    # a str is a sequence of its characters: one text per character was taken
    "chunk_documents(str)": (lambda d: nextlong.chunk_documents("a b"),
                             "chunk_documents takes a sequence of texts, got one str; wrap it in a list"),
    "encode_batch(str)": (lambda d: _tok().encode_batch("abc"),
                          "encode_batch takes a sequence of texts, got one str; wrap it in a list"),
    "num_threads='4'": (lambda d: _tok().encode_ordinary_batch(["abc"], num_threads="4"),
                        "num_threads must be an integer, got '4'"),
    "num_threads=-1": (lambda d: _tok().encode_batch(["abc"], num_threads=-1), "num_threads must be 1 or more, got -1"),
    "embed(str)": (lambda d: nextlong.load_embedder("hashed-tfidf:64").embed("hello"),  # was 5 vectors
                   "embed takes a sequence of texts, got one str; wrap it in a list"),
    "load_embedder(threds=)": (lambda d: nextlong.load_embedder("hashed-tfidf:64", threds=2),  # a TypeError; ignored
                               # for "static"
                               "load_embedder: unknown option threds=2 (did you mean threads?); the options are "
                               "batch_tokens, bigrams, buckets_log2, cache_dir, device, dim, dtype, idf, long_texts, "
                               "max_batch, max_length, name, nnz, num_docs, pca_dims, pooling, prefix, seed, threads, "
                               "trust_remote_code"),
    "fit(str)": (lambda d: nextlong.load_embedder("hashed-tfidf:64").fit("hello"),
                 "fit takes a sequence of texts, got one str; wrap it in a list"),
    # ValueErrors of their own: a notebook catching nextlong's errors (NextlongError) missed them
    "decode([1.5])": (lambda d: _tok().decode([1.5]), "token ids must be integers, got float64"),
    "decode([10**9])": (lambda d: _tok().decode([10**9]), "token id 1000000000 is not in the vocabulary"),
    "ChunkIndex.build 1-D": (lambda d: nextlong.ChunkIndex.build([1.0, 2.0], [0, 1], [0, 1]),
                             "embeddings must be 2-D (n, dim), got shape (2,)"),
    "BM25Index.build(str)": (lambda d: nextlong.BM25Index.build("abc def"),
                             "BM25Index.build takes a sequence of texts, got one str; wrap it in a list"),
    "k='3'": (lambda d: _bm25().search(["abc"], k="3"), "k must be an integer, got '3'"),
    "ChunkIndex k=2.5": (lambda d: _chunk_index().search([[1.0] * 8], k=2.5), "k must be an integer, got 2.5"),
    "ChunkIndex texts": (lambda d: _chunk_index().search(["json"], k=2), "queries are embedding vectors, not texts: "
                         "embed them first, as the index was built (index.query_embedder().embed(texts))"),
    "save onto a file": (lambda d: _bm25().save(d / "file"),
                         "{d}/file: exists and is not a folder, where a BM25 index is saved; choose another folder"),
    "embed_chunks into a folder": (lambda d: nextlong.embed_chunks(["a b"], nextlong.load_embedder("hashed-tfidf:64"), d),
                                   "{d}: is a folder; out_path names the .npy file the embeddings go to"),
}


@pytest.mark.parametrize("case", LOWER_LEVEL)
def test_lower_level_functions_name_a_wrong_argument(tmp_path, case):
    call, message = LOWER_LEVEL[case]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError) as caught:
        call(tmp_path)
    assert str(caught.value) == message.format(d=tmp_path)


def test_two_threads_synthesizing_into_one_folder(tmp_path):
    """The lock is an flock per open file, so a second call from another thread of the same process is refused
    as another process's would be, said as such (the message named our own pid as "another run"), and the
    first call's output is whole: the bytes of a call made alone."""
    import hashlib
    import threading

    from nextlong.errors import OutputLockedError
    from nextlong.locking import output_lock
    from tests.helpers import corpus_head, write_jsonl

    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_head(40_000))
    out = tmp_path / "out"
    with output_lock(out, "synthesize"):  # what the other thread holds while it runs
        with pytest.raises(OutputLockedError, match=r"another call in this process \(another thread\) is writing"):
            nextlong.synthesize(corpus, out, num_samples=1, **FAST)

    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "data").glob("*.parquet"))}

    nextlong.synthesize(corpus, tmp_path / "alone", num_samples=1, **FAST)
    errors = []

    def call():
        try:
            nextlong.synthesize(corpus, out, num_samples=1, **FAST)
        except OutputLockedError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) <= 1 and digest(out) and digest(out) == digest(tmp_path / "alone")  # _done.json: a time


def test_a_wrong_demo_setting_is_refused_before_the_demo_corpus_is_written(tmp_path):
    """demo=True wrote OUT/demo_corpus.jsonl (1.9 MB of stdlib docstrings) before the settings were checked."""
    with pytest.raises(UsageError, match=r"^target_length must be an integer, got '8k'$"):
        nextlong.synthesize(out=tmp_path / "demo", demo=True, target_length="8k")
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow  # ~10 s: the training data set is made first
def test_training_from_python_leaves_the_callers_threads_generators_and_bars(tmp_path):
    """nextlong.train.train(..., num_threads=2) left torch on 2 threads, Python's, numpy's and torch's global
    generators reseeded to the run's --seed (a notebook's own random draws changed by training), and
    transformers' progress bars off for the rest of the process."""
    import random

    import numpy as np

    torch = pytest.importorskip("torch")
    from transformers.utils import logging as hf_logging

    from nextlong.train import train
    from tests.train_support import SAMPLE_LEN, synthesized

    data = synthesized()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    hf_logging.enable_progress_bar()
    try:
        train(data, tmp_path / "run", model="tiny", steps=1, seq_len=SAMPLE_LEN, batch_tokens=SAMPLE_LEN, num_threads=2,
              progress=False)
        assert torch.get_num_threads() == 1
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
        assert hf_logging.is_progress_bar_enabled()
    finally:
        torch.set_num_threads(before)


def test_an_interrupted_bm25_build_closes_its_bar(monkeypatch):
    """Ctrl-C in a notebook during BM25Index.build(progress=True) left its tqdm bar open (tqdm's list of live
    bars kept it: every later bar drew one line lower)."""
    from tqdm import tqdm

    from nextlong.mining import bm25

    count = bm25._count_word_batch

    def second_batch_interrupted(batch, *args):
        if second_batch_interrupted.seen:
            raise KeyboardInterrupt
        second_batch_interrupted.seen = True
        return count(batch, *args)

    second_batch_interrupted.seen = False
    monkeypatch.setattr(bm25, "_count_word_batch", second_batch_interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:  # its traceback keeps the bar alive, as a notebook's does
        nextlong.BM25Index.build(["a b", "c d", "e f"], batch_size=1, progress=True)
    assert caught.traceback and not [bar for bar in tqdm._instances if bar.desc == "bm25 index"]


@pytest.mark.slow  # ~6 s: a tokenizer is trained and a model saved
def test_evaluate_returns_what_results_json_holds_for_a_model_that_computes_nan(tmp_path):
    """results.json writes a NaN as null (strict JSON); evaluate() returned the NaN itself, so its dict was not
    what the file holds, as its docstring says."""
    import json

    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    from tests.eval_fixtures import save_tiny_llama, train_tokenizer

    model = save_tiny_llama(tmp_path / "model", train_tokenizer(tmp_path / "tok" / "tokenizer.json"))
    weights = load_file(model / "model.safetensors")
    weights["model.norm.weight"][:] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    got = nextlong.eval.evaluate(model, tmp_path / "out", tasks=["niah_single_1"], lengths=[256], depths=1,
                                 max_new_tokens=2, quiet=True, no_progress=True)
    assert "null" in (tmp_path / "out" / "results.json").read_text()
    assert got == json.loads((tmp_path / "out" / "results.json").read_text())


def test_an_output_folder_inside_the_corpus_folder_is_refused_before_any_work(tmp_path):
    """Every file a run writes in OUT was then read as corpus: the first call failed with OUT/manifest.json named
    as a bad corpus file (a second, on OUT/chunk/_splits/*.json), after the run's folder was made."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "docs.jsonl").write_text('{"text": "a b c"}\n')
    message = (f"{corpus / 'out'}: the output folder is inside the corpus folder {corpus}, whose files are all read "
               "as corpus; choose an output folder outside it")
    with pytest.raises(UsageError) as caught:
        nextlong.synthesize(corpus, corpus / "out", **FAST)
    assert str(caught.value) == message and sorted(p.name for p in corpus.iterdir()) == ["docs.jsonl"]
    (tmp_path / "q.jsonl").write_text('{"question": "a?"}\n')
    with pytest.raises(UsageError) as caught:  # acer too, before its model is opened
        nextlong.acer(corpus, corpus / "out", model=tmp_path / "no-model", questions=tmp_path / "q.jsonl")
    assert str(caught.value) == message


@pytest.mark.parametrize("settings,message", [
    (dict(seq_len="64k"), "seq_len must be an integer, got '64k'"),
    (dict(seq_len=2048.0), "seq_len must be an integer, got 2048.0"),
    (dict(seq_len=-1), "seq_len must be 2 or more, got -1"),  # was numpy's "need at least one array to concatenate"
    (dict(attention_spans="spans"), "attention_spans must be one of ('sample', 'document', 'none'), got 'spans'"),
    (dict(split_spans="no"), "split_spans must be True or False, got 'no'"),
    (dict(vocab_size="100"), "vocab_size must be an integer, got '100'"),
    (dict(data=None), r"data must be a path (a str or pathlib.Path), got None"),
])
def test_packed_dataset_names_a_wrong_argument_when_made(tmp_path, settings, message):
    """PackedDataset (the transformers Trainer drop-in) stored its arguments unchecked: a Trainer met seq_len="64k"
    at its first batch as a TypeError from the packer, and seq_len=2048.0, attention_spans="spans" or
    split_spans="no" never (taken as they came)."""
    pytest.importorskip("torch")
    from nextlong.train.data import PackedDataset

    arguments = dict(dict(data=tmp_path, seq_len=2048), **settings)
    with pytest.raises(UsageError) as caught:
        PackedDataset(arguments.pop("data"), **arguments)
    assert str(caught.value) == message
