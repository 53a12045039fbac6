"""Load a Hugging Face model folder without running anything from it (eval, heads, train, embedders).

A model folder is untrusted input, like a data file. Its config.json may name Python files in the
folder (`auto_map`) that transformers would import, and a `pytorch_model.bin` is a pickle, which can
run code when unpickled. So:

* trust_remote_code is always passed explicitly, False unless the user gave --trust-remote-code:
  transformers then refuses instead of asking on stdin (where `yes |` would have answered);
* pickled weights are read only by torch's weights_only loader, which transformers uses by default
  (torch older than 2.6 is refused for them: its loader had an escape, CVE-2025-32434);
* any way the folder can be broken (config.json not JSON, a corrupt safetensors file, weights missing
  or of the wrong shape, config values that make the model's constructor fail) is one ModelFolderError
  naming the file; `--debug` shows the original traceback.

Symlinked files are followed: a Hugging Face cache snapshot is all symlinks into its blobs/, and
reading a file the user can read runs nothing. Files must be regular files (not /dev/zero, a FIFO).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import NextlongError
from .untrusted import number, plain_name, read_json, whole

TRUST_FLAG = "--trust-remote-code"


class ModelFolderError(NextlongError):
    """A model folder that cannot be loaded safely: corrupt, incomplete, or asking to run its own code."""


def folder_identity(folder) -> dict:
    """A model folder as what loading it reads: its top-level files' names, sizes and modification times
    (hidden files and sub-folders such as .git/ or checkpoint-*/ left out). Cheap, and it changes when a training
    run saves new weights into the folder: a resumed training run compares its --scorer's, and an evaluation's
    resume journal its model's, so results of other weights are never reused."""
    files = sorted(p for p in Path(folder).iterdir() if not p.name.startswith(".") and p.is_file())
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files),
            "entries": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def read_config(folder, *, trust_remote_code: bool = False):
    """The folder's transformers config, after checking that config.json is a JSON object."""
    from transformers import AutoConfig

    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing or not a regular file (a model folder needs config.json)")
    _read_json(path, expect=dict, finite=True)  # NaN or Infinity in a config: a model that computes NaN
    with _load_errors(folder, trust_remote_code), _quiet_transformers():
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    _check_config_values(config, path)
    return config


def _check_config_values(config, path: Path) -> None:
    """Values transformers takes without a word but computes NaN or fails on mid-run, refused in one line naming
    the field. A normalisation epsilon (rms_norm_eps, layer_norm_eps, ...) below 0, and a RoPE base (rope_theta)
    of 0 or below (its powers are the rotation frequencies: 0 gives infinite ones, a negative base NaN), are models
    that compute NaN: training reported them as a diverged first step and said to lower --lr, evaluation wrote
    null scores. Key/value heads that do not divide the attention heads (grouped-query attention gives each
    key/value head a whole group) built a model whose first forward pass raised a traceback."""
    text = text_config(config)
    for part in (config,) if text is config else (config, text):  # most configs are their own text config
        where = "" if part is config else "text_config."

        def refuse(name: str, expected: str, value) -> ModelFolderError:
            return ModelFolderError(f"{path}: {where}{name} must be {expected}, got {value}")

        for name, value in vars(part).items():
            if name.endswith("_eps") and number(value) and not value >= 0:
                raise refuse(name, ">= 0 (it is added to a variance before its square root)", value)
        for name, value in _rope_bases(part):
            if number(value) and not value > 0:
                raise refuse(name, "> 0 (RoPE's base, whose powers are the rotation frequencies)", value)
        heads, kv = getattr(part, "num_attention_heads", None), getattr(part, "num_key_value_heads", None)
        if whole(heads) and whole(kv) and heads >= 1 and (kv < 1 or heads % kv):
            raise refuse("num_key_value_heads", f"a divisor of num_attention_heads = {heads} (grouped-query "
                                                "attention gives each key/value head a whole group)", kv)


def _rope_bases(part) -> list[tuple[str, object]]:
    """(field, value) of every RoPE base the model uses: `rope_theta` (transformers before 5, where a
    `rope_parameters` entry is an unused extra), else `rope_parameters`' (transformers 5, which moves an older
    config.json's rope_theta there), flat or per layer type (Gemma 3's full_attention and sliding_attention)."""
    if "rope_theta" in vars(part):
        return [("rope_theta", part.rope_theta)]
    found = []
    params = getattr(part, "rope_parameters", None)
    if isinstance(params, dict):
        if "rope_theta" in params:
            found.append(("rope_parameters.rope_theta", params["rope_theta"]))
        found += [(f"rope_parameters.{kind}.rope_theta", sub["rope_theta"]) for kind, sub in params.items()
                  if isinstance(sub, dict) and "rope_theta" in sub]
    return found


def load_causal_lm(folder, config, *, dtype, trust_remote_code: bool = False, **kwargs):
    """AutoModelForCausalLM.from_pretrained(folder) in `dtype` (see load_pretrained), refusing a
    checkpoint that lacks some of the model's tensors: transformers would initialise them at random."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "AutoModelForCausalLM" not in (
            getattr(config, "auto_map", None) or {}):
        raise ModelFolderError(f"{folder}: cannot load a causal LM from it: transformers has none of model type "
                               f"{model_type!r}")
    model, missing, unexpected = load_pretrained(AutoModelForCausalLM, folder, config=config, dtype=dtype,
                                                 trust_remote_code=trust_remote_code, **kwargs)
    if missing:
        raise ModelFolderError(f"{folder}: the weights files lack {len(missing)} of the model's tensors "
                               f"(e.g. {missing[0]}); an incomplete or mismatched checkpoint")
    # tensors config.json has no place for (a layer count cut down, another architecture's weights): the model
    # that would run is not the one the weights describe. Old checkpoints' rotary inv_freq buffers are harmless.
    unexpected = [name for name in unexpected if not name.endswith("inv_freq")]
    if unexpected:
        raise ModelFolderError(f"{folder}: the weights files hold {len(unexpected)} tensor(s) the model of "
                               f"config.json does not have (e.g. {unexpected[0]}); config.json does not describe "
                               "these weights")
    return model


def load_pretrained(auto_class, folder, *, dtype=None, trust_remote_code: bool = False,
                    trust_hint: str = TRUST_FLAG, **kwargs):
    """(model, names of the tensors the weights lack, names of the weights the model has no place for) from
    auto_class.from_pretrained(folder) in `dtype` (None: transformers' default), refusing weights that are
    corrupt, pickled beyond what weights_only reads, or of another shape than the config gives. `trust_hint`
    is how the refusal of the folder's code says to allow it."""
    import transformers

    folder = Path(folder)
    check_weight_files(folder)
    if dtype is not None:
        old_transformers = tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (4, 56)
        kwargs["torch_dtype" if old_transformers else "dtype"] = dtype
    with _load_errors(folder, trust_remote_code, trust_hint), _quiet_transformers():
        model, info = auto_class.from_pretrained(
            folder, local_files_only=True, trust_remote_code=trust_remote_code, output_loading_info=True,
            ignore_mismatched_sizes=True, **kwargs)
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        name, stored, expected = mismatched[0]
        raise ModelFolderError(f"{folder}: {len(mismatched)} weight(s) do not fit config.json, e.g. {name} is "
                               f"{tuple(stored)} in the weights file but {tuple(expected)} for the config")
    return model, sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])


def _weight_files(folder: Path) -> tuple[str | None, list[Path]]:
    """("safetensors" | "pickle" | None, files) in transformers' order of preference."""
    for name, kind in (("model.safetensors", "safetensors"), ("pytorch_model.bin", "pickle")):
        if (folder / name).exists():
            return kind, [folder / name]
        index = folder / f"{name}.index.json"
        if index.exists():
            data = _read_json(index)
            shards = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(shards, dict) or not all(isinstance(s, str) for s in shards.values()):
                raise ModelFolderError(f"{index}: expected a JSON object whose \"weight_map\" maps tensor names to "
                                       "file names")
            # plain names of the folder (no absolute path, no '..'): nothing outside it is even opened
            names = sorted(set(shards.values()))
            return kind, [folder / plain_name(s, f"{index}: weight_map", ModelFolderError, "model folder")
                          for s in names]
    return None, []


def _read_json(path: Path, *, expect=None, finite: bool = False):
    """The JSON value in `path`; unreadable, not a regular file, not JSON, nested too deep for Python or
    not of type `expect` is a ModelFolderError (nextlong.untrusted.read_json)."""
    return read_json(path, ModelFolderError, expect=expect, finite=finite)


def check_weight_files(folder: Path, config=None) -> None:
    """Refuse missing or non-regular weight files, unreadable safetensors headers (naming the file:
    transformers does not), and pickled weights on a torch whose weights_only loader is unsafe. With `config`,
    also safetensors tensors whose shapes do not fit it, read from the same headers: before any work, where
    only the load would say it (acer loads its LM after chunking, embedding and the index)."""
    kind, files = _weight_files(folder)
    if kind is None:
        raise ModelFolderError(f"{folder}: no weights (model.safetensors, pytorch_model.bin or their "
                               "*.index.json shards)")
    for f in files:
        if not f.is_file():
            raise ModelFolderError(f"{f}: missing or not a regular file")
    if kind == "safetensors":
        from safetensors import safe_open

        expected = {} if config is None else _expected_shapes(config)
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as handle:  # the header, with every tensor's offsets, is
                    stored = {name: tuple(handle.get_slice(name).get_shape())  # checked against the file's size
                              for name in handle.keys() if name in expected}
            except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError)
                raise ModelFolderError(f"{f}: not a valid safetensors file ({' '.join(str(exc).split())})") from None
            wrong = [(name, shape) for name, shape in stored.items() if shape != expected[name]]
            if wrong:
                name, shape = wrong[0]
                raise ModelFolderError(f"{f}: {len(wrong)} weight(s) do not fit config.json, e.g. {name} is {shape} "
                                       f"in the weights file but {expected[name]} for the config")
    else:
        import torch

        if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
            raise ModelFolderError(f"{files[0]}: pickled weights need torch >= 2.6 to be read safely (older "
                                   "torch.load(weights_only=True) can run code, CVE-2025-32434); upgrade torch or "
                                   "convert the folder to safetensors where you trust it")


def _expected_shapes(config) -> dict:
    """{tensor name: shape} of config.json's causal LM, built on the meta device (no memory, no weight read).
    Empty, so nothing is compared, for quantized weights, for a folder's own model code, and where the build
    fails (the load names what is wrong). Checkpoint names the model does not have are left to the load too:
    some are renamed at load, which reports the rest."""
    if (getattr(config, "quantization_config", None) is not None
            or "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})):
        return {}
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers(), torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return {name: tuple(t.shape) for name, t in model.state_dict().items()}
    except Exception:
        return {}


def _remote_code_files(folder: Path) -> str:
    """The Python files config.json's `auto_map` names (for the refusal message)."""
    try:
        auto_map = _read_json(folder / "config.json").get("auto_map") or {}
        refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    except (ModelFolderError, AttributeError):
        refs = []
    return ", ".join(sorted({r.split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs})) or "auto_map"


@contextlib.contextmanager
def _load_errors(folder: Path, trust_remote_code: bool, trust_hint: str = TRUST_FLAG):
    """Turn whatever transformers raises while reading the folder into one ModelFolderError. A folder
    can be broken in more ways than can be listed (a zero head count raises ZeroDivisionError, a
    negative vocabulary RuntimeError, a string one a dataclass error, ...); all are the folder's fault."""
    import pickle

    try:
        yield
    except NextlongError:
        raise
    except pickle.UnpicklingError as exc:
        _, files = _weight_files(folder)
        where = files[0] if len(files) == 1 else folder
        raise ModelFolderError(f"{where}: refused: a pickle that torch's safe loader (weights_only) does not accept; "
                               "loading it anyway could run code, so convert it to safetensors where you trust it "
                               "(--debug shows torch's reason)") from exc
    except Exception as exc:
        text = " ".join(str(exc).split())
        if not trust_remote_code and "trust_remote_code" in text:
            raise ModelFolderError(
                f"{folder / 'config.json'}: the model's code is Python in the folder ({_remote_code_files(folder)}), "
                f"which nextlong does not run: pass {trust_hint} to run it, only for a folder you trust") from None
        raise ModelFolderError(f"{folder}: cannot load the model ({type(exc).__name__}: {text})") from exc


@contextlib.contextmanager
def _quiet_transformers():
    """No output while loading: transformers' report on missing or mismatched weights, its progress bar
    and torch's warnings on an odd pickle would come before the one line that says what is wrong."""
    import warnings

    from transformers.utils import logging

    level, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


def eos_token_ids(value, path, vocab: int) -> tuple[int, ...]:
    """An `eos_token_id` entry (None, a token id or a list of them) as a tuple of distinct ids; anything else,
    or an id outside the vocabulary, is one ModelFolderError naming `path` (a model folder is untrusted)."""
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    for e in items:
        if isinstance(e, bool) or not isinstance(e, int):
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise ModelFolderError(f"{path}: eos_token_id must be a token id or a list of token ids, got {shown}")
        if e < 0 or (vocab and e >= vocab):  # it would end every answer with an id outside the vocabulary
            raise ModelFolderError(f"{path}: eos_token_id {e} is not a token id of the model (0..{vocab - 1})"
                                   if vocab else f"{path}: eos_token_id {e} is negative")
    return tuple(dict.fromkeys(int(e) for e in items))


def generation_eos_ids(folder, vocab: int) -> tuple[int, ...]:
    """generation_config.json's eos_token_id, which transformers' generate() stops at: chat models list their
    turn-end id there only (gemma-2-it [1, 107]; the first Llama-3-8B-Instruct release [128001, 128009],
    whose config.json had 128001 alone). No file, or no entry: none. The file is checked as untrusted JSON."""
    path = Path(folder) / "generation_config.json"
    if not os.path.lexists(path):
        return ()
    return eos_token_ids(_read_json(path, expect=dict).get("eos_token_id"), path, vocab)


def end_of_text_ids(folder, config, vocab: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(config.json's eos ids, generation_config.json's): a generation ends at either (their union), as
    transformers' generate() does."""
    return (eos_token_ids(getattr(config, "eos_token_id", None), Path(folder) / "config.json", vocab),
            generation_eos_ids(folder, vocab))


def tokenizer_spec(folder) -> str | None:
    """The tokenizer a model folder was trained with: nextlong.json's "tokenizer", else the folder's
    tokenizer.json, else None. nextlong.json may name a built-in tokenizer ("cl100k_base") or a file
    in the folder (a symbolic link there is followed, as for the weights), nothing else: a folder from
    elsewhere must not make nextlong read "../secret.json" or "/home/you/tokenizer.json"."""
    from .corpus.tokenizer import _NAMED

    folder = Path(folder)
    meta = folder / "nextlong.json"
    if meta.exists():
        data = _read_json(meta, expect=dict)
        if "tokenizer" not in data:
            raise ModelFolderError(f"{meta}: expected a JSON object with a \"tokenizer\" entry")
        spec = data["tokenizer"]
        if not isinstance(spec, str) or not spec:
            raise ModelFolderError(f"{meta}: \"tokenizer\" must be a tokenizer name or file name, got {spec!r}")
        if spec in _NAMED:
            return spec
        where = f"{meta}: \"tokenizer\""
        rel = plain_name(spec, where, ModelFolderError, "model folder")
        if not (folder / rel).exists():
            raise ModelFolderError(f"{where}: {spec!r} is neither a file in the model folder nor a built-in "
                                   f"tokenizer ({', '.join(sorted(_NAMED))})")
        return str(folder / rel)
    if (folder / "tokenizer.json").is_file():
        return str(folder / "tokenizer.json")
    return None


def resolve_model_folder(path) -> tuple[Path, str]:
    """(folder holding config.json, tokenizer spec) for a model folder or a `nextlong train` run."""
    root = Path(path)
    if not root.exists():
        raise ModelFolderError(f"{root}: no such model folder")
    if not root.is_dir():
        raise ModelFolderError(f"{root}: expected a model folder (config.json + weights), got a file")
    folder = root / "model" if (root / "model" / "config.json").is_file() else root
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"{root}: not a causal LM folder: no config.json (nor model/config.json of a "
                               "`nextlong train` run)")
    spec = tokenizer_spec(folder)
    if spec is None:
        raise ModelFolderError(f"{folder}: no tokenizer: expected nextlong.json with a \"tokenizer\" entry or a "
                               "tokenizer.json beside config.json")
    return folder, spec


_POSITION_NAMES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def max_positions_of(config, folder) -> int | None:
    """The positions the config says the model was built for, or None where it names none. A multimodal config
    (Gemma 3's, Llava's) names them only in its text config, so that is read where the top level names none."""
    for part in (config, text_config(config)):
        for name in _POSITION_NAMES:
            value = getattr(part, name, None)
            if whole(value):
                if value <= 0:  # a broken config, not an unknown limit: the length checks would be skipped
                    where = "" if part is config else "text_config."
                    raise ModelFolderError(f"{Path(folder) / 'config.json'}: {where}{name} must be a positive "
                                           f"number of positions, got {value}")
                return value
    return None


def positions_in_text_config(config) -> bool:
    """Whether only the config's text config names the model's positions (Gemma 3's, Llama 4's): before
    2026-12-07 `max_positions_of` found none there, so runs of such a model knew no limit (eval.model's
    POSITIONS_REVISION)."""
    def named(part) -> bool:
        return any(whole(getattr(part, name, None)) for name in _POSITION_NAMES)

    return not named(config) and named(text_config(config))


def text_config(config):
    """The part of `config` that holds the text model's settings: a multimodal config (Gemma 3's) nests them in
    `text_config` (transformers' `get_text_config(decoder=True)`); most configs hold them themselves."""
    get = getattr(config, "get_text_config", None)
    if callable(get):
        return get(decoder=True)
    return getattr(config, "text_config", None) or config


def has_sliding_window(config) -> bool:
    """Whether the config states sliding-window attention anywhere: a `sliding_window` (top level or in its text
    config) or `layer_types` naming sliding layers (Gemma 2/3, GPT-OSS, Qwen2 with use_sliding_window)."""
    for part in (config, text_config(config)):
        if getattr(part, "sliding_window", None):
            return True
        if any("sliding" in str(kind) for kind in getattr(part, "layer_types", None) or ()):
            return True
    return False
