"""The driver of `nextlong synthesize`: the run as a list of stages (framework.py) handed to an executor.

    corpus -> chunk (blocks) -> chunks (one id space + store) [-> neardup -> dedup] -> embedder (fitted
    once) -> embed (blocks) -> embeddings -> index -> units (shards) -> plan -> assemble -> data (the
    --num-samples cut)

DIR/<stage>/ holds each stage's output and its completion record `_done.json` (map stages also a
record per block in `_done/`); DIR/data/part-NNNNN.parquet is the output (read the folder with
`pyarrow.parquet.read_table(DIR/"data")`), DIR/jsonl | DIR/mds derived formats, DIR/manifest.json
settings, versions, counts and quality statistics, DIR/tokenizer/ a copy of a --tokenizer file (so
`nextlong train` finds it from anywhere, after the folder moves). A stage cached with other settings is refused
(StageMismatchError) unless `rebuild=True`, except that removing DIR/data discards the output and the
stages that made it (units, plan, assemble), so one folder's chunks and embeddings can serve several
methods and seeds. An interrupted run resumes from finished stages and blocks, and the same seed gives
byte-identical Parquet files whatever the executor or its block sizes.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, replace as _replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from .. import checked_parquet
from ..atomic import remove_stale_temporaries
from ..errors import NextlongError, StageMismatchError
from ..manifest import failure_recorded
from .config import BLOCKED_DEPENDENCIES, EMBEDDING_METHODS, SynthesisConfig
from .driver import (check_corpus_found, keep_tokenizer_file, made_seconds, made_total, run_stages,
                     seconds_lines, thread_limit, write_format)
from .executors import executor_for
from .framework import DONE_FILE, Pipeline, ReadCorpus, WholeStage, read_done
from .parts import read_part
from .artifacts import EMBEDDINGS_FILE, cached_tokenizer_spec
from .stages import EXACT_SEARCH_MAX_CHUNKS  # up to this, brute-force search: exact and deterministic


def _log(cfg, msg: str) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


# --- the stage list ----------------------------------------------------------------------------


@dataclass
class PrebuiltIndexCheck(WholeStage):
    """--index: the prebuilt index must come from the same chunks and embedder (checked before any
    embedding). inputs: (chunks, index)."""

    embedder: str | None = None

    def build(self, ctx):
        from .artifacts import load_store

        chunks_dir, index_dir = (ctx.input(n) for n in self.inputs)
        index = check_prebuilt_index(index_dir, load_store(chunks_dir), self.embedder, verify=True)
        return {"chunks": len(index), "embedder": index.embedder_name}


def check_prebuilt_index(index_dir, store, embedder_spec, verify: bool = True):
    """A `nextlong index` folder given with --index: it must come from the same chunks."""
    from ..mining.index import ChunkIndex

    index = ChunkIndex.view(index_dir, verify=verify)
    if embedder_spec:  # the index fixes the embedder: the one that embeds the corpus must be it
        from ..mining.embedding import load_embedder

        embedder = load_embedder(embedder_spec)
        asked, dim = embedder.name, int(getattr(embedder, "dim", index.dim))
        built = str(index.embedder_name or "")
        if not built.startswith(asked) or dim != index.dim:  # a fitted lexical embedder adds "-idf"
            raise StageMismatchError(f"{index_dir}: the index was built with embedder {built!r} (dim {index.dim}), "
                                     f"but --embedder {embedder_spec!r} ({asked!r}, dim {dim}) was asked for")
    hashes = checked_parquet.read_table(Path(index_dir) / "chunks.parquet", columns=["text_hash"])
    hashes = hashes.column("text_hash").to_numpy()
    if len(index) != store.num_chunks or not np.array_equal(hashes, np.asarray(store.text_hash)):
        raise StageMismatchError(
            f"{index_dir}: the index holds {len(index)} chunks that differ from the {store.num_chunks} chunks of "
            "the corpus chunked with these --chunk-size / --chunk-unit settings: build it from the same chunk "
            "table (nextlong chunk, then nextlong index)")
    vectors_path = Path(index_dir) / EMBEDDINGS_FILE
    if vectors_path.exists() or vectors_path.is_symlink():
        check_index_vectors(vectors_path, len(index), index.dim, verify)
    return index


def check_index_vectors(path: Path, chunks: int, dim: int, verify: bool = True) -> None:
    """The index folder's embeddings.npy, which synthesis reads instead of embedding again: one finite
    row of the index's dimension per chunk (NaN rows would give garbage negatives and NaN statistics)."""
    from ..errors import IndexFileError
    from ..mining.embed_store import open_embeddings

    vectors = open_embeddings(path, verify=verify)
    if vectors.shape != (chunks, dim):
        raise IndexFileError(f"{path}: embeddings of shape {vectors.shape}, but the index holds {chunks} chunks of "
                             f"dimension {dim}: rebuild the index (nextlong index)")
    rows = max(1, (1 << 24) // max(dim, 1))
    for lo in range(0, chunks, rows):
        bad = np.flatnonzero(~np.isfinite(vectors[lo:lo + rows]).all(axis=1))
        if bad.size:
            raise IndexFileError(f"{path}: the embedding of chunk {lo + int(bad[0])} is not finite (NaN or infinity): "
                                 "rebuild the index (nextlong index)")


def build_pipeline(cfg: SynthesisConfig, topics: tuple | None = None) -> Pipeline:
    """The stages of a run, in order, with exactly the settings each depends on. `topics`: litelong's, as
    `check_before_work` read them (None: read from cfg.topics here)."""
    from . import stages as S
    from .artifacts import DEFAULT_EMBEDDER_SPEC

    recorded = index_embedder(cfg)
    spec = cfg.embedder or recorded or DEFAULT_EMBEDDER_SPEC
    tok = cfg.tokenizer
    threads = cfg.num_threads or None
    steps = [
        ReadCorpus(name="corpus", path=str(cfg.corpus), text_field=cfg.text_field, id_field=cfg.id_field,
                   on_error=cfg.on_error),
        S.ChunkStage(name="chunk", inputs=("corpus",), tokenizer=tok, chunk_size=cfg.chunk_size,
                     chunk_unit=cfg.chunk_unit, separator=cfg.separator, threads=threads),
        S.Consolidate(name="chunks", inputs=("chunk",)),
    ]
    blocks, chunks, graph, emb, index = "chunk", "chunks", None, None, None
    external: dict = {}
    if cfg.builds_near_copy_graph:
        steps.append(S.NearDupStage(name="neardup", inputs=("chunks",), tokenizer=tok,
                                    threshold=cfg.near_dup_threshold, threads=threads))
        graph = "neardup"
        if cfg.dedup_corpus:  # before embedding: dropped documents are never embedded
            steps.append(S.DedupStage(name="dedup", inputs=("chunk", "chunks", "neardup"), tokenizer=tok,
                                      threshold=cfg.near_dup_threshold))
            blocks = chunks = graph = "dedup"
        if cfg.method != "nextlong":  # the baselines only drop the copies: no negatives to keep them from
            graph = None
    if cfg.method in EMBEDDING_METHODS:
        emb = "embeddings"
        if cfg.index is not None:
            external["index"] = str(cfg.index)
            steps.append(PrebuiltIndexCheck(name="index_check", inputs=(chunks, "index"),
                                            embedder=cfg.embedder or recorded))
        if cfg.index is not None and (Path(cfg.index) / EMBEDDINGS_FILE).exists():
            external["embeddings"] = str(cfg.index)  # reuse the index's vectors: embedding is the cost
        else:
            steps += [S.FitEmbedder(name="embedder", inputs=(chunks,), embedder=spec, threads=threads),
                      S.EmbedStage(name="embed", inputs=(blocks, "embedder"), embedder=spec, threads=threads),
                      S.GatherEmbeddings(name="embeddings", inputs=("embed",))]
        if cfg.method == "nextlong" and cfg.mining == "partitioned":
            steps += partitioned_steps(cfg, chunks)
            index = "neighbour_lists"
        elif cfg.method == "nextlong":
            index = "index"
            if cfg.index is None:
                steps.append(S.IndexStage(name="index", inputs=("embeddings", chunks, "embedder"), embedder=spec,
                                          exact_max=EXACT_SEARCH_MAX_CHUNKS, reproducible=cfg.reproducible_index,
                                          shards=cfg.index_shards, threads=threads))
    common = dict(method=cfg.method, target_length=cfg.target_length, tokenizer=tok)
    plan = plan_settings(cfg)
    # litelong draws nothing at random and reads no vector or keyword: the other methods' unit settings stay at
    # their defaults for it, so changing them (--seed included) remakes nothing
    drawn = {} if cfg.method == "litelong" else dict(
        seed=cfg.seed, doc_embedding=cfg.doc_embedding, knn_neighbors=cfg.knn_neighbors,
        quest_keywords=cfg.quest_keywords, quest_max_repeats=cfg.quest_max_repeats)
    steps += [
        S.UnitsStage(name="units", inputs=(chunks, emb), shard_size=cfg.shard_size, **drawn,
                     overflow=cfg.overflow if cfg.method in ("standard", "iclm") else None,
                     topics=litelong_topics(cfg, topics), threads=threads, **common),
        S.PlanStage(name="plan", inputs=("units", chunks, emb, index, graph), exclude_duplicates=cfg.exclude_duplicates,
                    near_dup_threshold=cfg.near_dup_threshold, long_docs=cfg.long_docs,
                    doc_embedding=cfg.doc_embedding, knn_neighbors=cfg.knn_neighbors, verify=cfg.verify,
                    threads=threads, method=cfg.method, **plan),
        S.AssembleStage(name="assemble", inputs=("plan", chunks), **common),
        S.CutStage(name="data", inputs=("assemble",), rows=cfg.num_samples),
    ]
    return Pipeline(cfg.out_dir, steps, external=external)


def litelong_topics(cfg: SynthesisConfig, topics: tuple | None = None) -> tuple:
    """LiteLong's topics (`topics` when already read), or () for the other methods."""
    if cfg.method != "litelong":
        return ()
    from .topics import read_topics

    return topics if topics is not None else read_topics(cfg.topics)


def index_embedder(cfg: SynthesisConfig) -> str | None:
    """--index without --embedder over a folder with no embeddings.npy to reuse: the spec of the embedder
    the index records, which must embed the corpus (another one's vectors searched in this index give
    garbage negatives, silently); refused in one line when index.json's record cannot be loaded here.
    None when the corpus is not embedded for the index, or --embedder names the embedder."""
    if cfg.index is None or cfg.embedder or cfg.method not in EMBEDDING_METHODS:
        return None
    folder = Path(cfg.index)
    if (folder / EMBEDDINGS_FILE).exists():
        return None
    from ..errors import EmbedderMismatchError
    from ..mining.index_folder import query_spec, read_info

    info = read_info(folder)
    spec = query_spec(info, folder)
    if spec is None:
        built = info["embedder"]
        raise EmbedderMismatchError(
            f"{folder}: --index: no {EMBEDDINGS_FILE} to reuse, so the corpus must be embedded with the index's "
            f"embedder {built['name']!r} (dim {built['dim']}), which cannot be loaded from what the index folder "
            "records: pass --embedder naming that embedder")
    return spec


def plan_settings(cfg: SynthesisConfig) -> dict:
    """The settings that fix how wide the planner's first search is (also what sizes the default K of
    the partitioned route's neighbour lists)."""
    return dict(target_length=cfg.target_length, tokenizer=cfg.tokenizer,
                negatives=cfg.negatives, chunk_size=cfg.chunk_size, chunk_unit=cfg.chunk_unit,
                chars_per_token=cfg.chars_per_token, overshoot=cfg.overshoot, k_rounding=cfg.k_rounding,
                max_candidates=cfg.max_candidates)


def partitioned_steps(cfg: SynthesisConfig, chunks: str) -> list:
    """--mining partitioned: centroids -> layout -> route -> home -> thresholds -> search -> merge ->
    neighbour_lists (neighbours.py)."""
    from . import neighbours as N

    return [N.CentroidsStage(name="centroids", inputs=("embeddings",), partitions=cfg.partitions),
            N.LayoutStage(name="layout", inputs=("centroids", chunks), nprobe=cfg.nprobe, neighbours=cfg.neighbours,
                          plan=plan_settings(cfg), block_rows=cfg.mining_block_rows),
            N.RouteStage(name="route", inputs=("layout", "centroids", "embeddings")),
            N.HomeStage(name="home", inputs=("layout", "route", "embeddings")),
            N.ThresholdsStage(name="thresholds", inputs=("home", "layout")),
            N.SearchStage(name="search", inputs=("layout", "route", "embeddings", "thresholds")),
            N.MergeStage(name="merge", inputs=("layout", "search")),
            N.NeighbourListsStage(name="neighbour_lists", inputs=("merge", "layout", "centroids"))]


# --- the run -----------------------------------------------------------------------------------


def _sum(metas, key):
    return sum(m["stats"].get(key, 0) for m in metas)


def random_pair_similarity(vectors, n_pairs: int, seed: int) -> float | None:
    n = vectors.shape[0]
    if n < 2 or n_pairs <= 0:
        return None
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, n_pairs)
    b = (a + rng.integers(1, n, n_pairs)) % n  # never the same chunk
    va = np.asarray(vectors[np.sort(a)], np.float32)[np.argsort(np.argsort(a))]
    vb = np.asarray(vectors[np.sort(b)], np.float32)[np.argsort(np.argsort(b))]
    return float(np.mean(np.sum(va * vb, axis=1)))


def run(cfg: SynthesisConfig, executor=None) -> dict:
    """Check what can be checked, lock the output folder (one writer at a time), then run the stages
    with `executor` (default: the one `cfg.executor` names)."""
    from ..locking import output_lock
    from ..untrusted import check_work_folder

    cfg.validate()
    topics = check_before_work(cfg)
    if cfg.method == "nextlong" and cfg.attention_spans == "document":
        print(BLOCKED_DEPENDENCIES.format(what="--attention-spans document"), file=sys.stderr, flush=True)
    # the lock before the executor: a Ray one starts (or joins) a cluster first, seconds, and a second run into
    # the folder must stop at once; a refused one still leaves no folder (the lock prunes what it created)
    with output_lock(cfg.out_dir, "synthesize", file=False), thread_limit(cfg.num_threads):
        if executor is None:
            executor = executor_for(cfg.executor, threads=cfg.num_threads or None, address=cfg.ray_address,
                                    embed_gpus=cfg.embed_gpus, embed_actors=cfg.embed_actors)
        check_work_folder(cfg.out_dir, NextlongError, command="synthesize")  # its finished stages are read as they are
        cfg = _replace(cfg, tokenizer=cached_tokenizer_spec(cfg.out_dir / "chunk", cfg.tokenizer))
        with failure_recorded(cfg.out_dir / "manifest.json"):
            manifest = _run(cfg, executor, topics)
        remove_stale_temporaries(cfg.out_dir)  # of runs killed mid-write or mid-conversion
        return manifest


def check_before_work(cfg: SynthesisConfig) -> tuple:
    """Errors that would otherwise surface only after chunking or a full embedding pass. Returns litelong's
    topics, read here once (() for the other methods)."""
    from ..errors import IndexFileError, missing_extra

    check_corpus_found(cfg.corpus, cfg.out_dir)
    topics = litelong_topics(cfg)
    if cfg.method in EMBEDDING_METHODS:
        if cfg.index is not None:
            index = Path(cfg.index)
            if not (index / "index.json").is_file():
                what = "no such folder" if not index.exists() else "not a folder written by nextlong index (no index.json)"
                raise IndexFileError(f"{index}: --index: {what}")
        spec = cfg.embedder or index_embedder(cfg)  # the one that will embed the corpus, where one does
        if cfg.index is None or spec:
            from ..mining.embedding import check_embedder_spec

            check_embedder_spec(spec)
    if cfg.method == "nextlong" and cfg.index is not None:
        import importlib.util

        if importlib.util.find_spec("usearch") is None:
            raise missing_extra("usearch", "ml", "--index")
    return topics


# which manifest timing each stage's seconds count toward
_TIMING_GROUP = {"chunk": "chunk", "chunks": "chunk", "neardup": "near_dup_graph", "dedup": "near_dup_graph",
                 "index_check": "index", "embedder": "embed", "embed": "embed", "embeddings": "embed", "index": "index",
                 "centroids": "index", "layout": "index", "route": "index", "home": "index", "thresholds": "index", "search": "index", "merge": "index", "neighbour_lists": "index",
                 "units": "synthesize", "plan": "synthesize", "assemble": "synthesize", "data": "synthesize"}


OUTPUT_STAGES = ("units", "plan", "assemble")  # what makes DIR/data from the cached corpus-side stages


def _discard_other_outputs(out: Path, fps: dict) -> None:
    """DIR/data removed means the output is discarded: the stages that made it are then remade when they
    hold other settings, instead of refused, so one folder's chunks and embeddings serve several methods
    and seeds (remove DIR/data between them). Blocks of these settings (a killed run) are kept."""
    import shutil

    from .framework import BLOCK_RECORDS

    for name in OUTPUT_STAGES:
        folder = out / name
        if not folder.is_dir():
            continue
        record = read_done(folder / DONE_FILE)
        marks = ([record["fingerprint"]] if record else []) + [
            (read_done(p) or {}).get("stage_fingerprint") for p in (folder / BLOCK_RECORDS).glob("*.json")]
        if any(m != fps.get(name) for m in marks):
            shutil.rmtree(folder)


def _run(cfg: SynthesisConfig, executor, topics: tuple | None = None) -> dict:
    from ..manifest import write_manifest
    from ..corpus.tokenizer import load_tokenizer
    from .baselines import doc_lengths
    from .framework import block_counts
    from .artifacts import count_repeated_ids, empty_chunks, load_store, open_vectors

    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    pipeline = build_pipeline(cfg, topics)
    fps = pipeline.fingerprints()
    if not (out / "data").exists():
        _discard_other_outputs(out, fps)
    fps, record = run_stages(pipeline, executor, command="synthesize", cfg=cfg, fps=fps)
    timings = {"chunk": 0.0}  # this run's
    for name, secs in getattr(executor, "seconds", {}).items():
        group = _TIMING_GROUP.get(name, name)
        timings[group] = timings.get(group, 0.0) + secs
    made = made_seconds(pipeline, _TIMING_GROUP)

    tokenizer = load_tokenizer(cfg.tokenizer)
    chunks_name = "dedup" if "dedup" in fps and "dedup" not in pipeline.external else "chunks"
    store = load_store(out / chunks_name)
    if store.num_chunks == 0:
        raise NextlongError(f"{cfg.corpus}: the corpus has no documents with text; nothing to synthesize")
    vectors = None
    if "embeddings" in fps:
        emb_dir = pipeline.external.get("embeddings", out / "embeddings")
        vectors = open_vectors(emb_dir, verify=False, record=None if "embeddings" in pipeline.external
                               else read_done(Path(emb_dir) / DONE_FILE))
    data = record("data")
    used = data.get("blocks_used", [])
    plan_counts = block_counts(out / "plan", used, pipeline.stage("plan"))
    asm_counts = block_counts(out / "assemble", used, pipeline.stage("assemble"))
    partial = data.get("partial_block")
    if partial is not None:  # the cut block: count only the anchors tried up to its last row kept
        plan_counts[-1], asm_counts[-1] = _cut_block_counts(out, partial["block"], partial["rows"])
    metas = [{"stats": dict(p, **{k: v for k, v in a.items() if k != "rows"})} for p, a in zip(plan_counts, asm_counts)]
    built = int(data.get("rows", 0))
    units = record("units")
    leftover_dropped = units.get("leftover_dropped", 0) if (cfg.num_samples is None
                                                            or cfg.num_samples >= units.get("units", 0)) else 0
    chunk_stats = {"bytes": record("chunk").get("reader", {}).get("bytes")}
    stats = _statistics(cfg, store, metas, vectors, leftover_dropped, chunk_stats, built)
    stats["blank_documents_skipped"] = int(units.get("blank_documents_skipped", 0))  # no row built from them
    # over the corpus as read (the chunks stage), before --dedup-corpus drops any document
    stats["documents_with_repeated_id"] = count_repeated_ids(
        cfg, store if chunks_name == "chunks" else load_store(out / "chunks"))
    if cfg.method == "nextlong":
        stats["chunks_blank"] = int(empty_chunks(out / chunks_name, store).sum())  # never a negative
        stats.update(negative_reuse(out, used, partial, store.num_chunks))
    if cfg.builds_near_copy_graph:
        near = record("neardup")
        stats["near_duplicate_pairs_in_corpus"] = near.get("pairs")
        stats["chunks_with_near_copies"] = near.get("chunks_with_near_copies")
        stats["near_copy_families"] = near.get("near_copy_families")  # too large to pair whole: banned whole
        stats["chunks_in_near_copy_families"] = near.get("chunks_in_near_copy_families")
        stats["large_group_members_unexamined"] = near.get("large_group_members_unexamined")
        if cfg.dedup_corpus:
            dedup = record("dedup")
            stats["documents_removed_as_near_duplicates"] = dedup.get("documents_removed")
            stats["chunks_removed_as_near_duplicates"] = dedup.get("chunks_removed")
    if units.get("quest") is not None:
        stats["quest"] = units["quest"]
    if units.get("litelong") is not None:
        from .topics import topics_identity

        stats["litelong"] = dict(units["litelong"], topics_file=str(cfg.topics),
                                 topics_sha256=topics_identity(pipeline.stage("units").topics)["sha256"])
        short = units["litelong"]["topics_short_of_target"]
        if short and built and cfg.num_samples is not None and built >= cfg.num_samples:
            short = _topics_passed_over(out / "units", pipeline.stage("units").topics, built)
        if short:
            stats["dropped_too_short"] += short
            stats["drop_reasons"]["topic whose matching documents fall short of the target length"] = short
    embedder_name = None
    if "embeddings" in pipeline.external:
        from ..mining.index import ChunkIndex

        embedder_name = ChunkIndex.view(pipeline.external["embeddings"], verify=False).embedder_name
    elif vectors is not None:
        e = record("embeddings")
        embedder_name = e.get("embedder")
        stats["embedding"] = {"embedder": embedder_name,
                              "max_length_tokens": int(e["max_length"]) if e.get("max_length") else None,
                              "chunks_windowed": e.get("windowed"),
                              "dtype": e.get("dtype")}  # the compute dtype sets the embedding speed (bf16 is emulated on most CPUs)
    if built == 0:
        raise NextlongError(_too_small_message(cfg, store, stats, doc_lengths(store, 0)))  # separators in the ids

    t0 = time.perf_counter()
    from . import writers

    write_format(cfg.format, out, tokenizer, writers, attention_spans_mode=cfg.attention_spans)
    timings["write_format"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    # what the data took to make (its stages as recorded when made, whichever run made them), and this run's own
    outside = timings["total"] - sum(getattr(executor, "seconds", {}).values())
    stats["seconds"] = made_total(made, timings["write_format"], outside)
    stats["seconds_this_run"] = {k: round(v, 3) for k, v in timings.items()}
    total = stats["seconds"]["total"]  # the data's throughput, not this run's (a cached rerun's is near zero)
    stats["output_tokens_per_s"] = None if total is None else round(built * cfg.target_length / max(total, 1e-9), 1)
    index_dir = pipeline.external.get("index", out / "index")
    search = str(index_dir) if (Path(index_dir) / "index.json").exists() and "index" in fps else "exact"
    if "neighbour_lists" in fps:
        search = "partitioned"
        lists = record("neighbour_lists")
        stats["mining"] = {"route": "partitioned", "partitions": lists.get("partitions"), "nprobe": lists.get("nprobe"),
                           "neighbours": lists.get("neighbours"), "kmeans_sample": record("centroids").get("sample"),
                           "partition_size_min": lists.get("partition_size_min"),
                           "partition_size_max": lists.get("partition_size_max"),
                           "anchors_searched_again": _sum(metas, "searched_again") if metas else 0}
    settings = cfg.to_dict()
    settings.update(keep_tokenizer_file(cfg.tokenizer, out))
    sep_ids = tokenizer.encode_ordinary(cfg.separator) if cfg.separator else []
    settings.update(tokenizer_name=getattr(tokenizer, "name", None),
                    tokenizer_fingerprint=getattr(tokenizer, "fingerprint", None),
                    separator_ids=[int(x) for x in sep_ids], separator_side="trailing",
                    separator_tokenized_with_chunk=True, embedder_name=embedder_name,
                    chars_per_token_used=cfg.chars_per_token or store.chars_per_token(), search=search,
                    output_fingerprint=fps["data"], stage_fingerprints=fps)
    manifest = write_manifest(out / "manifest.json", command="synthesize", settings=settings, statistics=stats,
                              seed=cfg.seed)
    if cfg.num_samples is not None and built < cfg.num_samples:  # shown under --quiet too: it is about the data
        print(f"warning: asked for {cfg.num_samples} documents, built {built}: {_why(cfg, stats)}", file=sys.stderr,
              flush=True)
    _log(cfg, summary(manifest))
    return manifest


def negative_reuse(out: Path, blocks: list, partial: dict | None, num_chunks: int) -> dict:
    """How often each chunk serves as a negative in the documents built: a small corpus asked for many long
    documents reuses the same chunks again and again (the README's demo corpus at 131,072 tokens: each about
    130 times), which the mean negatives per meta-chunk does not show. Over the plan rows kept, as the other
    statistics; memory one counter per corpus chunk."""
    from .assemble import ROLE_NEGATIVE
    from .framework import block_path

    uses = np.zeros(num_chunks, np.uint32)
    for block in blocks:
        plan = read_part(block_path(out / "plan", block), columns=["ok", "chunks", "roles"])
        if partial is not None and block == partial["block"]:
            plan = _plan_up_to(plan, partial["rows"])
        plan = plan.filter(plan.column("ok"))
        chunks = pc.list_flatten(plan.column("chunks")).to_numpy(zero_copy_only=False)
        roles = pc.list_flatten(plan.column("roles")).to_numpy(zero_copy_only=False)
        ids, n = np.unique(chunks[roles == ROLE_NEGATIVE], return_counts=True)
        uses[ids] += n.astype(np.uint32)
    distinct = int(np.count_nonzero(uses))
    return {"negative_chunks_distinct": distinct,
            "negative_uses_per_chunk_mean": round(float(uses.sum()) / distinct, 3) if distinct else None,
            "negative_uses_per_chunk_max": int(uses.max()) if distinct else 0}


def _cut_block_counts(out: Path, block: int, rows: int) -> tuple[dict, dict]:
    """Plan and assembly counts of the part of a block the --num-samples cut kept: its plan rows up to
    the `rows`-th built one (as if planning had stopped there), and the rows written."""
    from .framework import block_path
    from .stages import assemble_counts, plan_counts

    plan = _plan_up_to(read_part(block_path(out / "plan", block)), rows)
    written = read_part(block_path(out / "data", block), columns=["segments"])
    return plan_counts(plan), assemble_counts(written)


def _plan_up_to(plan, rows: int):
    """A plan block's rows up to its `rows`-th built one (the part of the block the --num-samples cut kept)."""
    ok = np.flatnonzero(plan.column("ok").to_numpy(zero_copy_only=False))
    return plan.slice(0, int(ok[rows - 1]) + 1) if rows <= ok.size else plan


def _statistics(cfg, store, metas, vectors, leftover_dropped, chunk_stats, built) -> dict:
    meta_chunks = _sum(metas, "meta_chunks") if metas else 0
    sim_n = _sum(metas, "negative_sim_n") if metas else 0
    dist_n = _sum(metas, "dependency_distance_n") if metas else 0
    reasons: Counter = Counter()
    for m in metas:
        reasons.update(m["stats"].get("drop_reasons", {}))
    stats = {
        "corpus_documents": store.num_docs,
        "corpus_chunks": store.num_chunks,
        "corpus_tokens": int(store.tok_offsets[-1]),
        "corpus_bytes": chunk_stats.get("bytes"),
        "chars_per_token_measured": round(store.chars_per_token(), 4),
        "documents_built": built,
        "output_tokens": built * cfg.target_length,
        "anchors_tried": _sum(metas, "tried") if metas else 0,
        "dropped_too_short": (_sum(metas, "dropped") if metas else 0) + leftover_dropped,
        "drop_reasons": dict(reasons.most_common(5)),
        "shards": len(metas),  # output shards the --num-samples cut used (statistics cover all their anchors)
        "mean_dependency_distance_tokens": (_sum(metas, "dependency_distance_sum") / dist_n) if dist_n else None,
    }
    ext_n = _sum(metas, "dependency_distance_n_with_negatives") if metas else 0
    # the same over the rows that hold negatives: what NExtLong's distractors make (already-long rows add 0s)
    stats["mean_dependency_distance_tokens_with_negatives"] = (
        _sum(metas, "dependency_distance_sum_with_negatives") / ext_n if ext_n else None)
    used = set()
    for path in sorted((cfg.out_dir / "data").glob("part-*.parquet")):
        segments = pc.list_flatten(read_part(path, columns=["segments"]).column("segments"))
        used.update(pc.struct_field(segments, "doc_id").unique().to_pylist())
    stats["source_documents_used"] = len(used)
    if leftover_dropped:
        stats["drop_reasons"]["left over at the end of the document stream, short of the target length"] = leftover_dropped
    if cfg.method == "nextlong":
        stats["meta_chunks"] = meta_chunks
        stats["negatives"] = _sum(metas, "negatives") if metas else 0
        stats["negatives_per_meta_chunk_mean"] = stats["negatives"] / meta_chunks if meta_chunks else None
        stats["anchor_negative_similarity_mean"] = (_sum(metas, "negative_sim_sum") / sim_n) if sim_n else None

        def total(key):  # shards written before these statistics existed count 0
            return sum(m["stats"].get(key, 0) for m in metas)

        stats["near_duplicate_candidates_rejected"] = total("near_dup_rejected")
        stats["already_long"] = total("already_long")
        anchors = total("anchor_meta_chunks")
        stats["anchor_meta_chunks_after_cut"] = anchors - total("anchor_meta_chunks_kept")
        stats["anchor_meta_chunks_after_cut_fraction"] = (stats["anchor_meta_chunks_after_cut"] / anchors
                                                          if anchors else None)
    if vectors is not None:
        stats["random_chunk_pair_similarity_mean"] = random_pair_similarity(vectors, cfg.quality_pairs, cfg.seed + 1)
    return stats


def _topics_passed_over(units_dir: Path, topics: tuple, built: int) -> int:
    """LiteLong's topics short of L that come before the last sample --num-samples kept (those after it were
    never reached): every unit is a sample (planning drops none), so the topics up to that sample's are it
    and the `built` before it, or short."""
    import pyarrow.parquet as pq

    last = pq.read_table(units_dir, columns=["group_key"]).column("group_key")[built - 1].as_py()
    return topics.index(last) + 1 - built


def _why(cfg, stats) -> str:
    reasons = "; ".join(f"{n}x {r}" for r, n in stats["drop_reasons"].items()) or "no reason recorded"
    return (f"{stats['dropped_too_short']} candidate documents could not reach {cfg.target_length} tokens "
            f"({reasons})")


def _too_small_message(cfg, store, stats, lengths) -> str:
    t = stats.get("litelong")
    if t is not None:  # LiteLong's limit is what its topics retrieve
        return (f"{cfg.corpus}: built 0 long documents with method litelong: none of the {t['topics']} topics of "
                f"{cfg.topics} retrieves documents (BM25 score above 0) that together fill {cfg.target_length} tokens "
                f"({t['topics_without_match']} match no document). Use broader topics, a larger corpus, or a smaller "
                "--target-length.")
    q = stats.get("quest")
    if q is not None and q.get("groups_used", 0) == 0:  # Quest's limit is its key groups, not lengths
        return (f"{cfg.corpus}: built 0 long documents with method quest: none of the {q.get('groups', 0)} key "
                f"groups can fill {cfg.target_length} tokens ({q.get('groups_of_one_document', 0)} hold a single "
                f"document, {q.get('groups_too_small', 0)} would need more than --quest-max-repeats "
                f"{cfg.quest_max_repeats} passes). Use a larger corpus, a smaller --target-length, or a higher "
                "--quest-max-repeats.")
    return (f"{cfg.corpus}: built 0 long documents of {cfg.target_length} tokens with method {cfg.method}: "
            f"{_why(cfg, stats)}. The corpus has {store.num_docs} documents"
            + (f" ({stats['blank_documents_skipped']} of them blank)" if stats.get("blank_documents_skipped") else "")
            + f", {store.num_chunks} chunks, "
            f"{int(store.tok_offsets[-1])} tokens (longest document {int(lengths.max()) if lengths.size else 0} "
            "tokens). Use a larger corpus, a smaller --target-length"
            + (", or --negatives fill" if any(r.startswith("fixed-k") for r in stats["drop_reasons"]) else "") + ".")


REUSE_NOTE = 10  # the summary notes reuse above this many uses per negative chunk on average


def summary(manifest: dict) -> str:
    s = manifest["statistics"]
    st = manifest["settings"]
    lines = [
        f"nextlong synthesize: {s['documents_built']} documents of {st['target_length']} tokens "
        f"({st['method']}) -> {st['out']}",
        f"  corpus: {s['corpus_documents']} documents, {s['corpus_chunks']} chunks, {s['corpus_tokens']} tokens"
        + (f" ({s['blank_documents_skipped']} blank, whitespace only: no row is built from them)"
           if s.get("blank_documents_skipped") else ""),
        f"  dropped (cannot reach the target length): {s['dropped_too_short']}",
    ]
    if s.get("negatives_per_meta_chunk_mean") is not None:
        lines.append(f"  negatives per meta-chunk: {s['negatives_per_meta_chunk_mean']:.2f} "
                     f"(rule {st['negatives']})")
    if s.get("negative_uses_per_chunk_mean") is not None:
        mean = s["negative_uses_per_chunk_mean"]
        lines.append(f"  negatives drawn from {s['negative_chunks_distinct']} distinct chunks: each used {mean:.1f} "
                     f"times on average, at most {s['negative_uses_per_chunk_max']}"
                     + (" (few chunks for this much output: a larger corpus, or fewer or shorter documents, gives "
                        "more varied negatives)" if mean > REUSE_NOTE else ""))
    if s.get("anchor_negative_similarity_mean") is not None:
        lines.append(f"  similarity anchor-negative {s['anchor_negative_similarity_mean']:.3f} vs random pairs "
                     f"{s.get('random_chunk_pair_similarity_mean') or float('nan'):.3f}")
    if (s.get("embedding") or {}).get("chunks_windowed"):
        e = s["embedding"]
        lines.append(f"  embedding: {e['chunks_windowed']} chunks longer than {e['max_length_tokens']} tokens embedded "
                     "whole, as the mean of their windows")
    if s.get("quest"):
        q = s["quest"]
        lines.append(f"  quest: {q['contexts']} contexts from {q['groups_used']} of {q['groups']} key groups "
                     f"({q['groups_split']} split, {q['groups_oversampled']} oversampled; "
                     f"{q['groups_of_one_document']} single-document and {q['groups_too_small']} too-small groups unused)")
    if s.get("litelong"):
        t = s["litelong"]
        # of the units stage, before --num-samples: "contexts", not samples written
        lines.append(f"  litelong: {t['contexts']} of {t['topics']} topics retrieve documents that fill the target "
                     f"length ({t['topics_short_of_target']} fall short, {t['topics_without_match']} of them matching "
                     f"no document); {t['documents_distinct']} distinct documents in their contexts")
    if s.get("near_duplicate_candidates_rejected") is not None:
        lines.append(f"  near-copies refused as negatives: {s['near_duplicate_candidates_rejected']}; "
                     f"already long (no negatives): {s.get('already_long', 0)}; anchor meta-chunks after the cut: "
                     f"{100 * (s.get('anchor_meta_chunks_after_cut_fraction') or 0):.1f}%")
    if s.get("mining"):
        m = s["mining"]
        lines.append(f"  mining: partitioned, {m['partitions']} partitions, nprobe {m['nprobe']}, {m['neighbours']} "
                     f"neighbours per chunk; anchors that needed more (searched again): {m['anchors_searched_again']}")
    if s.get("mean_dependency_distance_tokens") is not None:
        ext = s.get("mean_dependency_distance_tokens_with_negatives")
        lines.append(f"  mean dependency distance between consecutive meta-chunks: "
                     f"{s['mean_dependency_distance_tokens']:.0f} tokens"
                     + (f" ({ext:.0f} in the documents that hold negatives)" if ext is not None else ""))
    lines += seconds_lines(s)
    return "\n".join(lines)
