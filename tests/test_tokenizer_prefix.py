"""`Tokenizer.encode_prompt`: the special tokens a tokenizer.json's post-processor puts before one sequence
(Llama-3's <|begin_of_text|>), checked against HuggingFace `tokenizers` with its default
add_special_tokens=True; suffixes are never added; bad post-processors are refused on load."""

from __future__ import annotations

import json

import pytest

tokenizers = pytest.importorskip("tokenizers")

from nextlong.corpus.tokenizer import Tokenizer  # noqa: E402
from nextlong.errors import TokenizerError  # noqa: E402
from tests.eval_fixtures import _trained_json  # noqa: E402

TEXTS = ["Hello world", " leading space", "def f(x):\n    return x + 1\n", "", "<|endoftext|> after a special"]


def _with(tmp_path, name: str, post_processor, extra_added=("<|begin_of_text|>", "<s>", "</s>")) -> tuple:
    data = json.loads(_trained_json(1024))
    next_id = max(max(data["model"]["vocab"].values()), max(t["id"] for t in data["added_tokens"])) + 1
    ids = {}
    for k, content in enumerate(extra_added):
        ids[content] = next_id + k
        data["added_tokens"].append({"id": next_id + k, "content": content, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})
    data["post_processor"] = post_processor(ids) if callable(post_processor) else post_processor
    path = tmp_path / name / "tokenizer.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path, ids


def _template(single):
    def build(ids):
        names = [p["SpecialToken"]["id"] for p in single if "SpecialToken" in p]
        return {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing", "single": single, "pair": single,
             "special_tokens": {n: {"id": n, "ids": [ids[n]], "tokens": [n]} for n in names}}]}
    return build


BOS = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
SEQ = {"Sequence": {"id": "A", "type_id": 0}}
EOS = {"SpecialToken": {"id": "</s>", "type_id": 0}}


@pytest.mark.parametrize("name,post,suffix", [
    ("llama3", _template([BOS, SEQ]), 0),              # Llama-3: BOS before each sequence
    ("bos-and-eos", _template([BOS, SEQ, EOS]), 1),     # a suffix: never added by encode_prompt
    ("eos-only", _template([SEQ, EOS]), 1),
    ("roberta", lambda ids: {"type": "RobertaProcessing", "sep": ["</s>", ids["</s>"]], "cls": ["<s>", ids["<s>"]],
                             "trim_offsets": True, "add_prefix_space": False}, 1),
    ("bytelevel-only", {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}, 0),
    ("none", None, 0),
])
def test_encode_prompt_is_tokenizers_default_without_its_suffix(tmp_path, name, post, suffix):
    path, _ = _with(tmp_path, name, post)
    ours, ref = Tokenizer.from_file(path), tokenizers.Tokenizer.from_file(str(path))
    for text in TEXTS:
        want = ref.encode(text).ids
        want = want[:len(want) - suffix]
        assert ours.encode_prompt(text).tolist() == want, (name, text)
        assert ours.encode(text).tolist() == ref.encode(text, add_special_tokens=False).ids
    assert len(ours.prefix_ids) == (1 if name in ("llama3", "bos-and-eos", "roberta") else 0)


@pytest.mark.parametrize("post,match", [
    ({"type": "TemplateProcessing", "single": [BOS, SEQ], "pair": [], "special_tokens": {}}, "without ids"),
    ({"type": "TemplateProcessing", "single": "x", "special_tokens": {}}, "post_processor.single must be an array"),
    ({"type": "RobertaProcessing", "cls": ["<s>", "0"], "sep": ["</s>", 2]}, r"cls must be \[token, id\]"),
    ({"type": "Sequence", "processors": {}}, "processors must be an array"),
    ([1, 2], "post_processor is not an object"),
])
def test_a_malformed_post_processor_is_refused_on_load(tmp_path, post, match):
    path, _ = _with(tmp_path, "bad", post)
    with pytest.raises(TokenizerError, match=match):
        Tokenizer.from_file(path)


def test_a_prefix_id_the_tokenizer_lacks_is_refused(tmp_path):
    post = {"type": "TemplateProcessing", "single": [BOS, SEQ], "pair": [BOS, SEQ],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [10**9], "tokens": ["x"]}}}
    path, _ = _with(tmp_path, "lacks", post)
    with pytest.raises(TokenizerError, match="no such token"):
        Tokenizer.from_file(path)


def test_prefix_survives_pickling(tmp_path):
    import pickle

    path, ids = _with(tmp_path, "pickled", _template([BOS, SEQ]))
    tok = pickle.loads(pickle.dumps(Tokenizer.from_file(path)))
    assert tok.prefix_ids == (ids["<|begin_of_text|>"],)
