"""The driver of `nextlong synthesize`: runs the stages, caches their outputs under DIR, resumes.

DIR/
  chunks/         chunks.parquet (+ token store .npy files), stage.json
  embeddings/     embeddings.npy (float32, row = chunk id), resumable parts while running, stage.json
  index/          usearch index for corpora too large for exact search, stage.json
  data/           part-NNNNN.parquet (the output), _shards/part-NNNNN.json (what each shard covers)
  jsonl/ | mds/   derived formats
  manifest.json   settings, versions, counts, quality statistics

A stage's stage.json is written last and records the settings it was built with; a stage that
finds another's settings refuses (StageMismatchError) unless `rebuild=True`. Output shards are
written atomically and skipped on a re-run when their settings match, so an interrupted run
resumes and the same seed gives byte-identical Parquet files.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..atomic import remove_stale_temporaries, write_json_atomic
from ..errors import NextlongError, StageMismatchError
from .config import SynthesisConfig, fingerprint

DEFAULT_EMBEDDER_SPEC = "all-MiniLM-L6-v2"
EXACT_SEARCH_MAX_CHUNKS = 200_000  # below this, brute-force search: exact and deterministic


# --- stage bookkeeping -------------------------------------------------------------------------


def _stage_ready(directory: Path, settings: dict, rebuild: bool, name: str) -> bool:
    """True when the stage is cached with these settings; clears a stale stage when allowed."""
    meta = directory / "stage.json"
    if meta.exists():
        recorded = json.loads(meta.read_text()).get("settings", {})
        if recorded == json.loads(json.dumps(settings, default=str)):
            return True
        if not rebuild:
            diff = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
            details = "; ".join(f"{k}: cached {recorded.get(k)!r}, asked {settings.get(k)!r}" for k in diff)
            raise StageMismatchError(
                f"{directory}: the cached {name} stage was built with other settings ({details}). "
                "Use another --out, or pass --rebuild to rebuild it."
            )
        shutil.rmtree(directory)
    return False


def _stage_done(directory: Path, settings: dict, **info) -> None:
    write_json_atomic(directory / "stage.json", {"settings": settings, "fingerprint": fingerprint(settings), **info})


def corpus_fingerprint(path) -> dict:
    """Cheap identity of the corpus files (path, size, modification time)."""
    path = Path(path).resolve()
    if not path.exists():
        raise NextlongError(f"{path}: corpus not found")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    entries = [(str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns)
               for p in files]
    return {"path": str(path), "files": len(files), "bytes": sum(e[1] for e in entries),
            "hash": fingerprint({"entries": entries})}


def _log(cfg, msg: str) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


# --- stages ------------------------------------------------------------------------------------


def chunk_stage(cfg: SynthesisConfig, tokenizer, out: Path):
    from ..chunking import chunk_corpus
    from .store import ChunkStore

    directory = out / "chunks"
    settings = {
        "corpus": corpus_fingerprint(cfg.corpus), "text_field": cfg.text_field, "id_field": cfg.id_field,
        "chunk_size": cfg.chunk_size, "chunk_unit": cfg.chunk_unit,
        "tokenizer": getattr(tokenizer, "fingerprint", None) or getattr(tokenizer, "name", None),
        "on_error": cfg.on_error,
    }
    t0 = time.perf_counter()
    if not _stage_ready(directory, settings, cfg.rebuild, "chunk"):
        directory.mkdir(parents=True, exist_ok=True)
        stats = chunk_corpus(cfg.corpus, directory / "chunks.parquet", max_len=cfg.chunk_size, unit=cfg.chunk_unit,
                             tokenizer=tokenizer, with_ids=True, text_field=cfg.text_field, id_field=cfg.id_field,
                             num_threads=cfg.num_threads, progress=cfg.progress, on_error=cfg.on_error)
        store = ChunkStore.from_parquet(directory / "chunks.parquet")
        store.save(directory / "store")
        _stage_done(directory, settings, statistics=stats)
    store = ChunkStore.load(directory / "store")
    info = json.loads((directory / "stage.json").read_text())
    return store, fingerprint(settings), info.get("statistics", {}), time.perf_counter() - t0


def embed_stage(cfg: SynthesisConfig, out: Path, chunks_fp: str, num_chunks: int):
    """Embeddings of every chunk (row = chunk id); embed_chunks resumes a stopped run."""
    directory = out / "embeddings"
    spec = cfg.embedder or DEFAULT_EMBEDDER_SPEC
    # long_texts: chunks beyond the model's window are embedded whole, as a weighted mean of windows
    settings = {"chunks": chunks_fp, "embedder": spec, "long_texts": "window"}
    t0 = time.perf_counter()
    if not _stage_ready(directory, settings, cfg.rebuild, "embedding"):
        from ..embed_store import embed_chunks
        from ..embedding import load_embedder

        directory.mkdir(parents=True, exist_ok=True)
        # --threads bounds the embedder too (torch would take every core)
        embedder = load_embedder(None if spec == DEFAULT_EMBEDDER_SPEC else spec,
                                 **({"threads": cfg.num_threads} if cfg.num_threads else {}))
        chunks_path = out / "chunks" / "chunks.parquet"
        if hasattr(embedder, "fit") and not getattr(embedder, "num_docs", 1):
            # the lexical embedder learns its IDF weights from the corpus (deterministic)
            embedder.fit(t for b in pq.ParquetFile(chunks_path).iter_batches(columns=["text"], batch_size=4096)
                         for t in b.column("text").to_pylist())
        vectors = embed_chunks(chunks_path, embedder, directory / "embeddings.npy", progress=cfg.progress, batch_size=512,
                               overwrite=cfg.rebuild)
        from ..embed_store import embedding_progress

        _stage_done(directory, settings, embedder_name=embedder.name, dim=int(vectors.shape[1]),
                    windowed_chunks=(embedding_progress(directory / "embeddings.npy") or {}).get("windowed_texts"),
                    max_length=getattr(embedder, "max_length", None))
    from ..embed_store import open_embeddings

    vectors = open_embeddings(directory / "embeddings.npy", verify=cfg.verify)
    name = json.loads((directory / "stage.json").read_text()).get("embedder_name", spec)
    return vectors, name, time.perf_counter() - t0


def open_prebuilt_index(cfg: SynthesisConfig, store):
    """A `nextlong index` folder given with --index: it must come from the same chunks."""
    from ..index import ChunkIndex

    index = ChunkIndex.view(cfg.index, verify=cfg.verify)
    if cfg.embedder:  # the index fixes the embedder; an explicit --embedder must agree with it
        from ..embedding import load_embedder

        asked = load_embedder(cfg.embedder).name
        if not str(index.embedder_name or "").startswith(asked):  # a fitted lexical embedder adds "-idf"
            raise StageMismatchError(f"{cfg.index}: the index was built with embedder {index.embedder_name!r}, "
                                     f"but --embedder {cfg.embedder!r} ({asked!r}) was asked for")
    hashes = pq.read_table(Path(cfg.index) / "chunks.parquet", columns=["text_hash"]).column("text_hash").to_numpy()
    if len(index) != store.num_chunks or not np.array_equal(hashes, np.asarray(store.text_hash)):
        raise StageMismatchError(
            f"{cfg.index}: the index holds {len(index)} chunks that differ from the {store.num_chunks} chunks of "
            f"{cfg.corpus} chunked with --chunk-size {cfg.chunk_size} --chunk-unit {cfg.chunk_unit}: build it "
            "from the same chunk table (nextlong chunk, then nextlong index)")
    return index


def searcher_stage(cfg: SynthesisConfig, out: Path, store, vectors, embed_fp: str):
    """Exact search up to EXACT_SEARCH_MAX_CHUNKS chunks (exact, deterministic), else usearch HNSW."""
    from .negatives import ExactSearcher, IndexSearcher

    t0 = time.perf_counter()
    if cfg.index is None and store.num_chunks <= EXACT_SEARCH_MAX_CHUNKS:
        return ExactSearcher(vectors), None, time.perf_counter() - t0
    from ..index import ChunkIndex, build_index_from_chunks

    if cfg.index is not None:
        return IndexSearcher(open_prebuilt_index(cfg, store), store.num_chunks), str(cfg.index), time.perf_counter() - t0
    directory = out / "index"
    settings = {"embeddings": embed_fp}
    if not _stage_ready(directory, settings, cfg.rebuild, "index"):
        spec = cfg.embedder or DEFAULT_EMBEDDER_SPEC
        build_index_from_chunks(out / "chunks" / "chunks.parquet", directory,
                                embedder=None if spec == DEFAULT_EMBEDDER_SPEC else spec,
                                embeddings_path=out / "embeddings" / "embeddings.npy", progress=cfg.progress,
                                threads=cfg.num_threads or 0)
        _stage_done(directory, settings)
    return (IndexSearcher(ChunkIndex.view(directory, verify=cfg.verify), store.num_chunks), str(directory),
            time.perf_counter() - t0)


def near_dup_stage(cfg: SynthesisConfig, out: Path, store, tokenizer, chunks_fp: str):
    """Which chunks are near-copies of which (method §1.3), once per corpus: planning only looks it up."""
    from .neardup import NearDupGraph

    directory = out / "neardup"
    settings = {"chunks": chunks_fp, "threshold": cfg.near_dup_threshold, "ngram": 5,
                "dedup_corpus": cfg.dedup_corpus}
    t0 = time.perf_counter()
    if not _stage_ready(directory, settings, cfg.rebuild, "near-duplicate"):
        graph = NearDupGraph.build(store, tokenizer, cfg.near_dup_threshold, progress=cfg.progress)
        graph.save(directory)
        if cfg.dedup_corpus:
            from ..atomic import atomic_path
            from .neardup import duplicate_documents

            removed = duplicate_documents(store, tokenizer, graph, cfg.near_dup_threshold)
            with atomic_path(directory / "removed_docs.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, removed)
        _stage_done(directory, settings, pairs=graph.num_pairs)
    graph = NearDupGraph.load(directory, cfg.near_dup_threshold)
    removed = np.load(directory / "removed_docs.npy") if cfg.dedup_corpus else None
    return graph, removed, time.perf_counter() - t0


# --- output shards -----------------------------------------------------------------------------


def _shard_stats(plan_table: pa.Table, out_table: pa.Table) -> dict:
    ok = plan_table.column("ok").to_pylist()
    reasons = Counter(re.sub(r"k = \d+ ", "k ", r) for r, good in zip(plan_table.column("reason").to_pylist(), ok)
                      if not good)
    negs = [n for row, good in zip(plan_table.column("negatives_per_meta_chunk").to_pylist(), ok) if good
            for n in (row or [])]
    sims = [s for row, good in zip(plan_table.column("negative_sims").to_pylist(), ok) if good for s in (row or [])]
    dist_sum, dist_n = 0, 0
    for segs in out_table.column("segments").to_pylist():
        prev = None
        for seg in segs:
            if seg["role"] != "anchor":
                continue
            if prev is not None and prev["doc_id"] == seg["doc_id"] and seg["chunk_index"] == prev["chunk_index"] + 1:
                dist_sum += seg["start"] - prev["end"]
                dist_n += 1
            prev = seg
    # nextlong: anchor meta-chunks planned vs kept in the output (those after the cut at L are dropped)
    planned_anchors = sum(sum(1 for r in (row or []) if r == 0)
                          for row, good in zip(plan_table.column("roles").to_pylist(), ok) if good)
    kept_anchors = sum(1 for segs in out_table.column("segments").to_pylist() for seg in segs if seg["role"] == "anchor")
    near_dups = sum(n or 0 for n in plan_table.column("near_dup_rejected").to_pylist())
    already_long = sum(bool(a) for a, good in zip(plan_table.column("already_long").to_pylist(), ok) if good)
    return {"tried": len(ok), "built": int(sum(ok)), "dropped": len(ok) - int(sum(ok)),
            "drop_reasons": dict(reasons.most_common(5)), "meta_chunks": len(negs), "negatives": int(sum(negs)),
            "negative_sim_sum": float(sum(sims)), "negative_sim_n": len(sims),
            "dependency_distance_sum": int(dist_sum), "dependency_distance_n": dist_n,
            "near_dup_rejected": int(near_dups), "already_long": int(already_long),
            "anchor_meta_chunks": int(planned_anchors), "anchor_meta_chunks_after_cut": int(planned_anchors - kept_anchors)}


def run_shards(cfg: SynthesisConfig, out: Path, settings: dict, units: pa.Table, plan_fn, assemble_fn, desc: str):
    """Plan and assemble `units` (anchors or document groups) shard by shard, skipping finished shards."""
    from tqdm.auto import tqdm

    settings = json.loads(json.dumps(settings, default=str))
    settings_fp = fingerprint(settings)
    data = out / "data"
    meta_dir = data / "_shards"
    meta_dir.mkdir(parents=True, exist_ok=True)
    total_units = units.num_rows
    need = cfg.num_samples
    produced, shard_metas, j = 0, [], 0
    with tqdm(total=need or total_units, desc=desc, unit="doc", disable=not cfg.progress) as bar:
        while j * cfg.shard_size < total_units and (need is None or produced < need):
            lo = j * cfg.shard_size
            hi = min(lo + cfg.shard_size, total_units)
            remaining = None if need is None else need - produced
            part = data / f"part-{j:05d}.parquet"
            meta_path = meta_dir / f"part-{j:05d}.json"
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
            if meta is not None and not part.exists() and meta.get("rows") != 0:
                meta = None  # its part file is gone: write it again
            if meta is not None and meta.get("settings") != settings_fp:
                if not cfg.rebuild:
                    old = meta.get("settings_detail", {})
                    diff = "; ".join(f"{k}: cached {old.get(k)!r}, asked {settings.get(k)!r}"
                                     for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
                    raise StageMismatchError(
                        f"{part}: written with other synthesis settings ({diff or settings_fp}); use another "
                        "--out or pass --rebuild")
                meta = None
            valid = (meta is not None and meta["lo"] == lo and (remaining is None or meta["rows"] <= remaining)
                     and (meta["complete"] or meta["rows"] == remaining))
            if not valid:
                plan_table = plan_fn(units.slice(lo, hi - lo), remaining)
                out_table = assemble_fn(plan_table)
                from .writers import write_parquet_atomic

                if out_table.num_rows:
                    write_parquet_atomic(out_table, part)
                else:  # every anchor of the shard was dropped: no 0-row file, the record says why
                    part.unlink(missing_ok=True)
                meta = {"settings": settings_fp, "settings_detail": settings, "lo": lo, "hi": hi, "rows": out_table.num_rows,
                        "complete": plan_table.num_rows == hi - lo, "stats": _shard_stats(plan_table, out_table)}
                write_json_atomic(meta_path, meta)
            shard_metas.append(meta)
            produced += meta["rows"]
            bar.update(meta["rows"] if need else meta["stats"]["tried"])
            j += 1
    # shards of an earlier, longer run are not part of this output
    for stale in list(data.glob("part-*.parquet")) + list(meta_dir.glob("part-*.json")):
        if int(stale.stem.split("-")[1]) >= j:
            stale.unlink()
    return shard_metas


# --- the run -----------------------------------------------------------------------------------


def _sum(metas, key):
    return sum(m["stats"][key] for m in metas)


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


def run(cfg: SynthesisConfig) -> dict:
    """Check what can be checked, lock the output folder (one writer at a time), then run the stages."""
    from ..locking import output_lock

    cfg.validate()
    check_before_work(cfg)
    with output_lock(cfg.out_dir, "synthesize"), _thread_limit(cfg.num_threads):
        manifest = _run(cfg)
        remove_stale_temporaries(cfg.out_dir)  # of runs killed mid-write or mid-conversion
        return manifest


def _thread_limit(threads: int | None):
    """--threads N bounds every pool a run uses: the chunker's and the embedder's (passed on), and the
    BLAS / OpenMP pools of numpy and torch (here)."""
    import contextlib

    if not threads:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(int(threads))


def check_before_work(cfg: SynthesisConfig) -> None:
    """Errors that would otherwise surface only after chunking or a full embedding pass."""
    from ..errors import IndexFileError, missing_extra

    if not Path(cfg.corpus).exists():
        raise NextlongError(f"{cfg.corpus}: corpus not found")
    if cfg.method in ("nextlong", "knn", "iclm"):
        if cfg.index is not None:
            index = Path(cfg.index)
            if not (index / "index.json").is_file():
                what = "no such folder" if not index.exists() else "not a folder written by nextlong index (no index.json)"
                raise IndexFileError(f"{index}: --index: {what}")
        if cfg.index is None or cfg.embedder:
            from ..embedding import check_embedder_spec

            check_embedder_spec(cfg.embedder)
    if cfg.method == "nextlong" and cfg.index is not None:
        import importlib.util

        if importlib.util.find_spec("usearch") is None:
            raise missing_extra("usearch", "ml", "--index")


def _run(cfg: SynthesisConfig) -> dict:
    from ..manifest import write_manifest
    from ..tokenizer import load_tokenizer
    from . import stages
    from .baselines import (doc_lengths, document_keywords, document_vectors, draw_keys, iclm_order, knn_graph,
                            pack_stream, quest_contexts, standard_order)
    from .negatives import ExactSearcher

    cfg.validate()
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    tokenizer = load_tokenizer(cfg.tokenizer)
    sep_ids = np.asarray(tokenizer.encode_ordinary(cfg.separator), np.uint32) if cfg.separator else np.zeros(0, np.uint32)
    store, chunks_fp, chunk_stats, timings["chunk"] = chunk_stage(cfg, tokenizer, out)
    if store.num_chunks == 0:
        raise NextlongError(f"{cfg.corpus}: the corpus has no documents with text; nothing to synthesize")
    chars_per_token = cfg.chars_per_token or store.chars_per_token()

    vectors, embedder_name, searcher, index_path = None, None, None, None
    if cfg.method in ("nextlong", "knn", "iclm"):
        prebuilt = Path(cfg.index) / "embeddings.npy" if cfg.index else None
        if prebuilt is not None and prebuilt.exists():  # reuse the index's vectors: embedding is the cost
            from ..embed_store import open_embeddings

            index = open_prebuilt_index(cfg, store)
            vectors = open_embeddings(prebuilt, verify=cfg.verify)
            embedder_name, timings["embed"] = index.embedder_name, 0.0
        else:
            vectors, embedder_name, timings["embed"] = embed_stage(cfg, out, chunks_fp, store.num_chunks)
        embed_fp = fingerprint({"chunks": chunks_fp, "embedder": cfg.embedder or DEFAULT_EMBEDDER_SPEC})
        if cfg.method == "nextlong":
            searcher, index_path, timings["index"] = searcher_stage(cfg, out, store, vectors, embed_fp)

    sep_len = int(sep_ids.size)
    output_settings = {
        "chunks": chunks_fp, "embedder": (cfg.embedder or DEFAULT_EMBEDDER_SPEC) if vectors is not None else None,
        "index": index_path, "method": cfg.method, "target_length": cfg.target_length, "seed": cfg.seed,
        "separator": cfg.separator, "shard_size": cfg.shard_size,
    }
    if cfg.method == "nextlong":
        output_settings.update(negatives=cfg.negatives, overshoot=cfg.overshoot, chars_per_token=chars_per_token,
                               k_rounding=cfg.k_rounding, exclude_duplicates=cfg.exclude_duplicates,
                               max_candidates=cfg.max_candidates, near_dup_threshold=cfg.near_dup_threshold,
                               long_docs=cfg.long_docs, dedup_corpus=cfg.dedup_corpus)
    elif cfg.method in ("knn", "iclm"):
        output_settings.update(doc_embedding=cfg.doc_embedding, knn_neighbors=cfg.knn_neighbors)
    elif cfg.method == "quest":
        output_settings.update(quest="one key group per context", quest_keywords=cfg.quest_keywords,
                               quest_max_repeats=cfg.quest_max_repeats)
    settings_fp = fingerprint(output_settings)

    def assemble_fn(plan_table):
        return stages.assemble_batch(plan_table, store=store, sep_ids=sep_ids, target_length=cfg.target_length,
                                     method=cfg.method)

    t0 = time.perf_counter()
    leftover_dropped = 0
    quest_stats = None
    lengths = doc_lengths(store, sep_len)
    if cfg.method in ("nextlong", "knn"):
        anchors = pa.table({"anchor_doc": np.random.default_rng(cfg.seed).permutation(store.num_docs).astype(np.int64)})
        if cfg.method == "nextlong":
            from .neardup import NearDupFilter

            near_dup = None
            if cfg.near_dup_threshold > 0:
                graph, removed_docs, timings["near_dup_graph"] = near_dup_stage(cfg, out, store, tokenizer, chunks_fp)
                removed_chunks = None
                if removed_docs is not None:  # --dedup-corpus: never an anchor, never a negative
                    anchors = anchors.filter(pa.array(~removed_docs[anchors.column("anchor_doc").to_numpy()]))
                    removed_chunks = removed_docs[np.asarray(store.chunk_doc)]
                near_dup = NearDupFilter(graph, removed_chunks)

            def plan_fn(batch, remaining):
                return stages.plan_nextlong_batch(
                    batch, store=store, searcher=searcher, chunk_vectors=vectors, target_length=cfg.target_length,
                    sep_len=sep_len, negatives=cfg.negatives, chunk_size=cfg.chunk_size, chunk_unit=cfg.chunk_unit,
                    chars_per_token=chars_per_token, overshoot=cfg.overshoot, k_rounding=cfg.k_rounding,
                    exclude_duplicates=cfg.exclude_duplicates, max_candidates=cfg.max_candidates,
                    max_rows=remaining, near_dup=near_dup, long_docs=cfg.long_docs,
                    doc_label=(lambda d: int(store.doc_index[d])) if not isinstance(searcher, ExactSearcher) else None)
        else:
            dvec = document_vectors(store, vectors, cfg.doc_embedding)
            doc_searcher = ExactSearcher(dvec)

            def plan_fn(batch, remaining):
                return stages.plan_knn_batch(batch, store=store, doc_searcher=doc_searcher, doc_vectors=dvec,
                                             doc_lengths=lengths, target_length=cfg.target_length,
                                             first_width=cfg.knn_neighbors, max_rows=remaining)
        with _single_threaded_blas():  # many small (p x n) products: BLAS threads only contend
            metas = run_shards(cfg, out, output_settings, anchors, plan_fn, assemble_fn,
                               desc=f"{cfg.method} synthesize")
    else:
        if cfg.method == "standard":
            order = standard_order(store.num_docs, cfg.seed)
        elif cfg.method == "iclm":
            dvec = document_vectors(store, vectors, cfg.doc_embedding)
            order = iclm_order(knn_graph(dvec, cfg.knn_neighbors), cfg.seed)
        if cfg.method == "quest":  # each context from ONE key group (baselines.quest_contexts)
            texts = _document_texts(out / "chunks" / "chunks.parquet", store)
            keys = draw_keys(document_keywords(texts, top_k=cfg.quest_keywords), cfg.seed)
            groups, group_keys, quest_stats = quest_contexts(keys, lengths, cfg.target_length, cfg.seed,
                                                             max_repeats=cfg.quest_max_repeats)
            quest_stats["keywords_per_document"] = cfg.quest_keywords
            units = pa.table({"docs": pa.array(groups, pa.list_(pa.int64())),
                              "group_key": pa.array(group_keys, pa.string())})
        else:
            groups, leftover = pack_stream(order, lengths, cfg.target_length)
            # the stream's tail is short of L: dropped, when the run goes to the end of the stream
            leftover_dropped = len(leftover) if cfg.num_samples is None or cfg.num_samples >= len(groups) else 0
            units = pa.table({"docs": pa.array(groups, pa.list_(pa.int64()))})

        def plan_fn(batch, remaining):
            if remaining is not None:
                batch = batch.slice(0, remaining)
            return stages.plan_groups_batch(batch, store=store)
        metas = run_shards(cfg, out, output_settings, units, plan_fn, assemble_fn, desc=f"{cfg.method} synthesize")
    timings["synthesize"] = time.perf_counter() - t0

    built = _sum(metas, "built") if metas else 0
    stats = _statistics(cfg, store, metas, vectors, leftover_dropped, chunk_stats)
    if cfg.method == "nextlong" and cfg.near_dup_threshold > 0:
        stats["near_duplicate_pairs_in_corpus"] = graph.num_pairs
        stats["chunks_with_near_copies"] = int(np.count_nonzero(np.diff(graph.indptr)))
        if cfg.dedup_corpus:
            stats["documents_removed_as_near_duplicates"] = int(removed_docs.sum())
    if quest_stats is not None:
        stats["quest"] = quest_stats
    embed_info = out / "embeddings" / "stage.json"
    if vectors is not None and embed_info.exists():  # chunks longer than the embedder's window
        info = json.loads(embed_info.read_text())
        stats["embedding"] = {"embedder": info.get("embedder_name"), "max_length_tokens": info.get("max_length"),
                              "chunks_windowed": info.get("windowed_chunks")}
    if built == 0:
        raise NextlongError(_too_small_message(cfg, store, stats, lengths))

    t0 = time.perf_counter()
    if cfg.format == "jsonl":
        from .writers import write_jsonl

        write_jsonl(out / "data", out / "jsonl", tokenizer)
    elif cfg.format == "mds":
        from .writers import write_mds

        write_mds(out / "data", out / "mds", attention_spans_mode=cfg.attention_spans)
    timings["write_format"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    stats["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    stats["output_tokens_per_s"] = round(built * cfg.target_length / max(timings["total"], 1e-9), 1)
    settings = cfg.to_dict()
    settings.update(tokenizer_name=getattr(tokenizer, "name", None),
                    tokenizer_fingerprint=getattr(tokenizer, "fingerprint", None),
                    separator_ids=sep_ids.tolist(), separator_side="trailing", embedder_name=embedder_name,
                    chars_per_token_used=chars_per_token, search=("exact" if index_path is None else index_path),
                    output_fingerprint=settings_fp)
    manifest = write_manifest(out / "manifest.json", command="synthesize", settings=settings, statistics=stats,
                              seed=cfg.seed)
    if cfg.num_samples is not None and built < cfg.num_samples:
        _log(cfg, f"warning: asked for {cfg.num_samples} documents, built {built}: " + _why(cfg, stats))
    _log(cfg, summary(manifest))
    return manifest


def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _document_texts(chunks_path: Path, store) -> list[str]:
    texts = [[] for _ in range(store.num_docs)]
    c = 0
    for batch in pq.ParquetFile(chunks_path).iter_batches(columns=["text"], batch_size=8192):
        for t in batch.column("text").to_pylist():
            texts[int(store.chunk_doc[c])].append(t)
            c += 1
    return ["\n".join(parts) for parts in texts]


def _statistics(cfg, store, metas, vectors, leftover_dropped, chunk_stats) -> dict:
    built = _sum(metas, "built") if metas else 0
    meta_chunks = _sum(metas, "meta_chunks") if metas else 0
    sim_n = _sum(metas, "negative_sim_n") if metas else 0
    dist_n = _sum(metas, "dependency_distance_n") if metas else 0
    reasons: Counter = Counter()
    for m in metas:
        reasons.update(m["stats"]["drop_reasons"])
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
        "shards": len(metas),
        "mean_dependency_distance_tokens": (_sum(metas, "dependency_distance_sum") / dist_n) if dist_n else None,
    }
    used = set()
    for path in sorted((cfg.out_dir / "data").glob("part-*.parquet")):
        segments = pc.list_flatten(pq.read_table(path, columns=["segments"]).column("segments"))
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
        stats["anchor_meta_chunks_after_cut"] = total("anchor_meta_chunks_after_cut")
        stats["anchor_meta_chunks_after_cut_fraction"] = (stats["anchor_meta_chunks_after_cut"] / anchors
                                                          if anchors else None)
    if vectors is not None:
        stats["random_chunk_pair_similarity_mean"] = random_pair_similarity(vectors, cfg.quality_pairs, cfg.seed + 1)
    return stats


def _why(cfg, stats) -> str:
    reasons = "; ".join(f"{n}x {r}" for r, n in stats["drop_reasons"].items()) or "no reason recorded"
    return (f"{stats['dropped_too_short']} candidate documents could not reach {cfg.target_length} tokens "
            f"({reasons})")


def _too_small_message(cfg, store, stats, lengths) -> str:
    q = stats.get("quest")
    if q is not None and q.get("groups_used", 0) == 0:  # Quest's limit is its key groups, not lengths
        return (f"{cfg.corpus}: built 0 long documents with method quest: none of the {q.get('groups', 0)} key "
                f"groups can fill {cfg.target_length} tokens ({q.get('groups_of_one_document', 0)} hold a single "
                f"document, {q.get('groups_too_small', 0)} would need more than --quest-max-repeats "
                f"{cfg.quest_max_repeats} passes). Use a larger corpus, a smaller --target-length, or a higher "
                "--quest-max-repeats.")
    return (f"{cfg.corpus}: built 0 long documents of {cfg.target_length} tokens with method {cfg.method}: "
            f"{_why(cfg, stats)}. The corpus has {store.num_docs} documents, {store.num_chunks} chunks, "
            f"{int(store.tok_offsets[-1])} tokens (longest document {int(lengths.max()) if lengths.size else 0} "
            "tokens). Use a larger corpus, a smaller --target-length"
            + (", or --negatives fill" if any(r.startswith("fixed-k") for r in stats["drop_reasons"]) else "") + ".")


def summary(manifest: dict) -> str:
    s = manifest["statistics"]
    st = manifest["settings"]
    lines = [
        f"nextlong synthesize: {s['documents_built']} documents of {st['target_length']} tokens "
        f"({st['method']}) -> {st['out']}",
        f"  corpus: {s['corpus_documents']} documents, {s['corpus_chunks']} chunks, {s['corpus_tokens']} tokens",
        f"  dropped (cannot reach the target length): {s['dropped_too_short']}",
    ]
    if s.get("negatives_per_meta_chunk_mean") is not None:
        lines.append(f"  negatives per meta-chunk: {s['negatives_per_meta_chunk_mean']:.2f} "
                     f"(rule {st['negatives']})")
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
    if s.get("near_duplicate_candidates_rejected") is not None:
        lines.append(f"  near-copies refused as negatives: {s['near_duplicate_candidates_rejected']}; "
                     f"already long (no negatives): {s.get('already_long', 0)}; anchor meta-chunks after the cut: "
                     f"{100 * (s.get('anchor_meta_chunks_after_cut_fraction') or 0):.1f}%")
    if s.get("mean_dependency_distance_tokens") is not None:
        lines.append(f"  mean dependency distance between consecutive meta-chunks: "
                     f"{s['mean_dependency_distance_tokens']:.0f} tokens")
    secs = s.get("seconds", {})
    if secs:
        lines.append("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()))
    return "\n".join(lines)
