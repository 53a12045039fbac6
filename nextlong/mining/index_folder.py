"""The files of an index folder, and how they are read back: an index folder is untrusted input (a user
may hand over one built elsewhere), so every field, size and CRC is checked before usearch sees a byte.

An index directory holds:
    index.usearch     the HNSW graph with vectors (f16 by default), keys = chunk_id; a sharded index
                      has index-000.usearch, index-001.usearch, ... instead (nextlong/mining/index_shards.py)
    chunks.parquet    chunk_id, doc_index, doc_id, chunk_index, num_tokens, text_hash (row i = index row i)
    index.json        embedder name/dim/spec, metric, dtype, HNSW settings, counts, file size and CRC,
                      the chunk table it came from; written last, so its presence marks a complete save
    manifest.json     (build_index_from_chunks) settings, versions, timings
    embeddings.npy    (build_index_from_chunks) the float vectors, resumable; reused by synthesis baselines
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EmbedderMismatchError, IndexFileError

INDEX_FILE = "index.usearch"
SHARD_FILE = "index-{:03d}.usearch"  # a sharded index's files (nextlong/mining/index_shards.py)
META_FILE = "chunks.parquet"
INFO_FILE = "index.json"
MANIFEST_FILE = "manifest.json"
EMBEDDINGS_FILE = "embeddings.npy"
FORMAT_VERSION = 1
DTYPES = {"f16": "f16", "float16": "f16", "i8": "i8", "int8": "i8", "f32": "f32", "float32": "f32",
           "bf16": "bf16", "bfloat16": "bf16"}


def open_usearch(path: Path, recorded: dict, info: dict, count: int, *, view: bool, verify: bool):
    """(usearch Index, its keys) for one saved usearch file, checked against what index.json recorded
    for it: size, the CRC (unless verify=False), and, always, the whole structure usearch would trust
    (nextlong/mining/usearch_file.py): a crafted file could otherwise crash the process or read past it."""
    import zlib

    from usearch.index import Index

    from ..untrusted import member
    from .usearch_file import check_usearch, map_file

    if not path.exists():
        raise IndexFileError(f"{path}: index file missing")
    path, st = member(path.parent, path.name, str(path), IndexFileError, kind="index folder")
    size = st.st_size
    if size != recorded["bytes"]:
        raise IndexFileError(f"{path}: {size} bytes, but {recorded['bytes']} were saved; the file is partial or was "
                             "replaced")
    data = map_file(path)  # unmapped when the last view of it goes (an error's traceback may hold one)

    def crc() -> None:
        actual = zlib.crc32(data)
        if actual != recorded["crc32"]:
            raise IndexFileError(
                f"{path}: CRC32 mismatch ({actual:08x} now, {recorded['crc32']:08x} stored in {INFO_FILE} when it "
                "was saved); the index file is corrupt: rebuild it with nextlong index (or pass --no-verify)")

    keys = check_usearch(data, path, dim=info["embedder"]["dim"], count=count, dtype=info["dtype"],
                         metric=info["usearch_metric"], after_header=crc if verify else None)
    try:
        index = Index.restore(str(path), view=view)
    except (ValueError, RuntimeError) as exc:
        raise IndexFileError(f"{path}: cannot open the usearch index ({exc})") from exc
    if index is None:
        raise IndexFileError(f"{path}: cannot open the usearch index")
    return index, keys


def read_info(folder: Path) -> dict:
    """index.json, every field the loader uses checked (an index folder is untrusted input): one
    IndexFileError naming the field, never a KeyError or TypeError."""
    from ..untrusted import json_type, plain_name, read_json, show

    path = folder / INFO_FILE
    info = read_json(path, IndexFileError, expect=dict)
    if info.get("format") != FORMAT_VERSION:
        raise IndexFileError(f"{path}: index format {show(info.get('format'))}, this nextlong reads {FORMAT_VERSION}")

    def field(obj: dict, key: str, kind, where: str, check=None, expected: str = ""):
        value = obj.get(key) if isinstance(obj, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool) or (check is not None and not check(value)):
            raise IndexFileError(f"{path}: {where}{key}: expected {expected or kind.__name__}, got "
                                 f"{json_type(value)} {show(value)}")
        return value

    count = lambda v: v >= 0  # noqa: E731
    embedder = field(info, "embedder", dict, "", expected="an object")
    field(embedder, "name", str, "embedder.")
    field(embedder, "dim", int, "embedder.", lambda v: 0 < v <= 1 << 16, "a dimension (1..65536)")
    if embedder.get("spec") is not None:
        field(embedder, "spec", str, "embedder.")
    field(info, "metric", str, "", lambda v: v in ("cos", "ip"), "'cos' or 'ip'")
    field(info, "dtype", str, "", lambda v: v in set(DTYPES.values()), "one of f16, i8, f32, bf16")
    info.setdefault("usearch_metric", "ip" if info["metric"] == "cos" and info["dtype"] != "i8" else info["metric"])
    field(info, "usearch_metric", str, "", lambda v: v in ("cos", "ip"), "'cos' or 'ip'")
    counts = field(info, "counts", dict, "", expected="an object")
    chunks = field(counts, "chunks", int, "counts.", count, "a count")
    field(info, "doc_key", str, "", lambda v: v in ("doc_index", "doc_id"), "'doc_index' or 'doc_id'")
    settings = info.get("settings", {})
    if not isinstance(settings, dict):
        raise IndexFileError(f"{path}: settings: expected an object, got {json_type(settings)}")
    if settings.get("expansion_search") is not None:
        field(settings, "expansion_search", int, "settings.", lambda v: 0 < v <= 1 << 20, "an int in 1..1048576")
    for key in ("chunks_path", "embeddings_path"):
        if info.get(key) is not None:
            field(info, key, str, "")

    def file_entry(entry, where: str, default_name: str | None = None) -> dict:
        if not isinstance(entry, dict):
            raise IndexFileError(f"{path}: {where}: expected an object, got {json_type(entry)}")
        name = entry.get("name", default_name)
        if len(plain_name(name, f"{path}: {where}.name", IndexFileError, "index folder").parts) != 1:
            raise IndexFileError(f"{path}: {where}.name: expected a file name, got {show(name)}")
        field(entry, "bytes", int, f"{where}.", count, "a size")
        field(entry, "crc32", int, f"{where}.", lambda v: 0 <= v < 1 << 32, "a CRC32")
        return entry

    if "index_files" in info:  # a sharded index (nextlong/mining/index_shards.py)
        files = info["index_files"]
        if not isinstance(files, list) or not files:
            raise IndexFileError(f"{path}: index_files: expected a non-empty array, got {json_type(files)}")
        for i, entry in enumerate(files):
            file_entry(entry, f"index_files[{i}]")
            field(entry, "chunks", int, f"index_files[{i}].", count, "a count")
        if sum(f["chunks"] for f in files) != chunks:
            raise IndexFileError(f"{path}: index_files hold {sum(f['chunks'] for f in files)} chunks, counts.chunks "
                                 f"says {chunks}")
    else:
        file_entry(info.get("index_file"), "index_file", INDEX_FILE)
        info["index_file"]["name"] = info["index_file"].get("name", INDEX_FILE)
    return info


def check_meta(path: Path, meta, info: dict, keys: np.ndarray) -> None:
    """The chunk table beside the index: the columns ChunkIndex reads, of the types it reads them as,
    and chunk ids that are exactly the index's keys (a search returns keys; they index this table)."""
    import pyarrow as pa

    count = info["counts"]["chunks"]
    if meta.num_rows != count:
        raise IndexFileError(f"{path}: {meta.num_rows} rows, expected {count}")
    wanted = {"chunk_id": pa.types.is_integer, info["doc_key"]: pa.types.is_integer if info["doc_key"] == "doc_index"
              else pa.types.is_string, "text_hash": pa.types.is_integer}
    for name, ok in wanted.items():
        if name not in meta.column_names:
            if name == "text_hash":
                continue
            raise IndexFileError(f"{path}: no {name} column")
        if not ok(meta.schema.field(name).type) or meta.column(name).null_count:
            raise IndexFileError(f"{path}: column {name} is {meta.schema.field(name).type}"
                                 f"{' with nulls' if meta.column(name).null_count else ''}, not what nextlong wrote")
    ids = meta.column("chunk_id").to_numpy()
    if len(ids) and (ids.min() < 0 or not np.array_equal(np.sort(ids.astype(np.uint64)), np.sort(keys))):
        raise IndexFileError(f"{path}: its chunk ids are not the keys of the index's vectors")


def embedder_spec(embedder) -> str | None:
    """What load_embedder needs to rebuild `embedder` for queries ('<lexical>': state saved beside the index)."""
    from .embedding import DEFAULT_EMBEDDER, HashedLexicalEmbedder, TransformerEmbedder

    if embedder is None:
        return None
    if isinstance(embedder, str):
        return embedder
    if isinstance(embedder, HashedLexicalEmbedder):
        return "<lexical>"
    if isinstance(embedder, TransformerEmbedder):
        return DEFAULT_EMBEDDER if embedder.name == DEFAULT_EMBEDDER else str(embedder.path)
    from .static_embedding import StaticEmbedder, is_default_distillation

    if isinstance(embedder, StaticEmbedder):  # its name ('static-all-MiniLM-L6-v2-d256') is no spec
        return "static" if is_default_distillation(embedder.path) else str(embedder.path)
    return getattr(embedder, "name", None)


def query_spec(info: dict, folder: Path | None) -> str | None:
    """The spec load_embedder takes to rebuild the index's embedder here, or None when what index.json
    records cannot be loaded ('<lexical>' without its state beside the index, a name load_embedder does
    not know, a folder missing on this machine). Folders written before static embedders recorded a spec
    hold the embedder's name: 'static-all-MiniLM-L6-v2-dN' is the default distillation, 'static'."""
    from .embedder import _DEFAULT_ALIASES, DEFAULT_EMBEDDER, LEXICAL_EMBEDDER
    from .lexical_embedding import LEXICAL_STATE

    spec = info["embedder"].get("spec")
    if spec == "<lexical>":
        return str(folder) if folder is not None and (Path(folder) / LEXICAL_STATE).is_file() else None
    if spec is None:
        return None
    if spec.startswith(f"static-{DEFAULT_EMBEDDER}-d") and spec[len(f"static-{DEFAULT_EMBEDDER}-d"):].isdigit():
        return "static"
    if (spec in _DEFAULT_ALIASES or spec == "static" or spec.startswith("static:") or spec == LEXICAL_EMBEDDER
            or spec.startswith(LEXICAL_EMBEDDER + ":") or Path(spec).expanduser().is_dir()):
        return spec
    return None


def check_embedder(info: dict, embedder, expect_dim: int | None, where) -> None:
    """Raise EmbedderMismatchError when `embedder` (object or name) / `expect_dim` differ from the index's."""
    built = info["embedder"]
    if embedder is not None:
        name = getattr(embedder, "name", embedder)
        dim = getattr(embedder, "dim", None)
        if name != built["name"] or (dim is not None and int(dim) != built["dim"]):
            raise EmbedderMismatchError(
                f"{where}: index was built with embedder {built['name']!r} (dim {built['dim']}), "
                f"but {name!r}" + (f" (dim {dim})" if dim is not None else "") + " was asked for"
            )
    if expect_dim is not None and int(expect_dim) != built["dim"]:
        raise EmbedderMismatchError(
            f"{where}: index was built with embedder {built['name']!r} of dim {built['dim']}, "
            f"but dim {expect_dim} was asked for"
        )
