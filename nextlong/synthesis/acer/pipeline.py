"""The driver of `nextlong acer`: the checks before any work, the run as a list of stages (framework.py)
handed to an executor, and the manifest.

    corpus -> chunk (blocks, --chunk-tokens) -> chunks -> [embedder -> embed -> embeddings -> index | bm25]
    -> questions (whole: the file, or chunks to ask about) [-> ask] -> retrieve -> rank -> read -> assemble
    (one chain of map stages, block by block) -> data (--filter)

OUT/<stage>/ holds each stage's output and its completion record; OUT/data/part-NNNNN.parquet the samples
(`pyarrow.parquet.read_table(OUT/"data")`), OUT/jsonl or OUT/mds a derived format, OUT/manifest.json the
settings, counts, LM work and seconds per stage, OUT/tokenizer/ a copy of the samples' tokenizer file
(`nextlong train` finds it there). A stage cached with other settings is refused unless `rebuild`; an
interrupted run resumes from its finished stages and blocks; the same settings and seed give the same
samples (on the same device: the LM's float rounding is the device's).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import NextlongError, UsageError
from ..driver import check_corpus_found, seconds_lines
from ..framework import Pipeline, ReadCorpus
from .config import AcerConfig

# which manifest timing each stage's seconds count toward
_TIMING_GROUP = {"chunk": "chunk", "chunks": "chunk", "embedder": "embed", "embed": "embed", "embeddings": "embed",
                 "index": "index", "bm25": "index", "questions": "questions", "ask": "questions"}
MAP_STAGES = ("ask", "retrieve", "rank", "read", "assemble")


@dataclass
class Checked:
    """What the checks before work found, and what the stages are built from."""

    model: object  # lm.ModelInfo
    templates: dict  # name -> Template
    tokenizer: str  # the samples' tokenizer spec
    eos_id: int | None
    question_tokens: int  # longest question, in the LM's tokens (a bound for generated ones)
    needs: dict  # tokens each prompt and the sample need at most
    lm_dtype: str = "float32"  # the LM's weights dtype, resolved where the LM runs (lm.resolved_dtype)
    prefix_ids: int = 0  # the ids the LM's tokenizer puts before each prompt (Llama-3's BOS)


def _log(cfg, msg: str) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


def end_of_text_id(sample_tok, lm_tok, model_eos: tuple) -> int | None:
    """The id ending every answer: the model's end-of-sequence id when the samples use the model's own
    tokenizer, else the samples' tokenizer's end-of-text token (by its usual names), else none."""
    if model_eos and sample_tok.fingerprint == lm_tok.fingerprint:
        return int(model_eos[0])
    for name in ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>"):
        i = sample_tok.token_to_id(name)
        if i is not None:
            return int(i)
    return None


def check_before_work(cfg: AcerConfig) -> Checked:
    """Every error that would otherwise surface after chunking, embedding or hours of ranking: a model
    that is not a causal LM, a bad questions file, prompt templates without their placeholders, a --read
    set beyond the model's context, a --target-length below what the read chunks need."""
    from ...corpus.tokenizer import load_tokenizer
    from .lm import check_device, check_vocabulary, inspect_model
    from .templates import load_templates, option_ids, passages_ids

    check_corpus_found(cfg.corpus, cfg.out_dir)
    check_device(cfg.device, here=cfg.executor == "local")
    templates = load_templates(cfg.prompts)
    if cfg.chain_of_thought:
        from .answers import ANSWER_MARKER

        if ANSWER_MARKER.lower() not in templates["read_cot"].text.lower():
            raise UsageError(f"{templates['read_cot'].path}: with --chain-of-thought the read_cot prompt must ask for "
                             f"the final answer after {ANSWER_MARKER!r}: the answer-match filter reads what follows "
                             "it, and answers without it are dropped")
    info = inspect_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
    lm_tok = load_tokenizer(info.tokenizer_spec)
    check_vocabulary(info, lm_tok)  # else only the LM's load, after chunking, embedding and the index, would say it
    spec = cfg.tokenizer or info.tokenizer_spec
    sample_tok = load_tokenizer(spec)
    if cfg.ranker == "model":
        option_ids(lm_tok)
    if cfg.questions is not None:
        from .questions import read_questions

        questions = [q["question"] for q in read_questions(cfg.questions)]
        question_tokens = max(len(lm_tok.encode_ordinary(" " + q)) for q in questions)
    else:
        from .stages import question_bound

        # AskStage drops a generated question that re-encodes longer, in either tokenizer, with its space or without
        question_tokens = question_bound(cfg.question_max_new_tokens)
        questions = None
    if cfg.retriever_used == "embedding":
        from ...mining.embedding import check_embedder_spec

        check_embedder_spec(cfg.embedder)
    else:
        from ... import _native

        if not hasattr(_native, "bm25_search"):
            raise NextlongError("--retriever bm25 needs nextlong's native BM25 search, which this build lacks: "
                                "rebuild the package (pip install -e .)")

    def q_value(name, tok):
        """The question that makes template `name` longest in `tok`'s ids, as the template renders it: with the space
        a literal ending in one gives it, or without ("Question:{question}"), which can make another question the
        longest (a generated one: its bound)."""
        if questions is None:
            return np.zeros(question_tokens, np.uint32)
        prefixes = templates[name].value_prefixes("question")
        return max(questions, key=lambda q: sum(len(tok.encode_ordinary(p + q)) for p in prefixes))

    chunk = np.zeros(cfg.chunk_tokens, np.uint32)
    limit = info.max_positions
    needs = {}
    bos = len(lm_tok.prefix_ids)  # the LM's prompts start with its tokenizer's prefix ids (nextlong.acer.lm)
    reader = "read_cot" if cfg.chain_of_thought else "read"
    read_prompt = bos + len(templates[reader].render(
        lm_tok, passages=passages_ids(templates, lm_tok, [chunk] * cfg.read), question=q_value(reader, lm_tok)))
    needs["read"] = read_prompt + cfg.max_new_tokens
    if limit is not None and needs["read"] > limit:
        raise UsageError(
            f"--read {cfg.read} chunks of up to {cfg.chunk_tokens} tokens do not fit the model's context: the reader's "
            f"prompt needs up to {read_prompt} tokens (passages, template and the longest question, "
            f"{question_tokens} tokens) plus --max-new-tokens {cfg.max_new_tokens} = {needs['read']}, but "
            f"{info.folder} has {limit} positions (max_position_embeddings); use a smaller --read or --chunk-tokens")
    if cfg.ranker == "model":
        needs["rank"] = bos + len(templates["rank"].render(lm_tok, passage=chunk,
                                                           question=q_value("rank", lm_tok))) + 1
        if limit is not None and needs["rank"] > limit:
            raise UsageError(f"the ranker's prompt (one chunk of {cfg.chunk_tokens} tokens, the template and the "
                             f"longest question) needs {needs['rank']} tokens, beyond the {limit} positions of "
                             f"{info.folder}; use a smaller --chunk-tokens")
    if cfg.generate_questions is not None:
        needs["ask"] = bos + len(templates["question"].render(lm_tok, passage=chunk)) + cfg.question_max_new_tokens
        if limit is not None and needs["ask"] > limit:
            raise UsageError(f"the question writer's prompt needs {needs['ask']} tokens, beyond the {limit} positions "
                             f"of {info.folder}; use a smaller --chunk-tokens")
    eos = end_of_text_id(sample_tok, lm_tok, info.config_eos_ids)  # config.json's, as before
    sep = len(sample_tok.encode_ordinary(cfg.separator))
    sample_q = len(templates["sample"].render(sample_tok, question=q_value("sample", sample_tok)))
    # " " + answer, re-encoded, then the end-of-text id; AssembleStage drops an answer whose re-encoding is longer
    answer = cfg.max_new_tokens + 1 + (eos is not None)
    needs["sample"] = cfg.read * (cfg.chunk_tokens + sep) + sample_q + answer
    if needs["sample"] > cfg.target_length:
        raise UsageError(
            f"--target-length {cfg.target_length} is below what the read chunks need: {needs['sample']} tokens "
            f"(--read {cfg.read} x (up to {cfg.chunk_tokens} tokens + a {sep}-token separator) + the question, up to "
            f"{sample_q} tokens + the answer, up to {answer}); use --target-length {needs['sample']} or more, or a "
            "smaller --read, --chunk-tokens or --max-new-tokens")
    return Checked(info, templates, spec, eos, question_tokens, needs, lm_dtype(cfg), bos)


def lm_dtype(cfg: AcerConfig) -> str:
    """The dtype the LM stages will run in: --dtype, else bfloat16 where they have CUDA (this machine's, with the
    local executor; Ray's actors have it when given --gpus) and float32 elsewhere."""
    from .lm import resolved_dtype

    if cfg.dtype is not None or cfg.device is not None:
        return resolved_dtype(cfg.dtype, cfg.device, cuda=False)
    if cfg.executor == "ray":
        return resolved_dtype(None, None, cuda=cfg.gpus > 0)
    import torch

    return resolved_dtype(None, None, cuda=torch.cuda.is_available())


def build_pipeline(cfg: AcerConfig, checked: Checked) -> Pipeline:
    """The stages of a run, in order, with exactly the settings each depends on."""
    from .. import stages as S
    from ..artifacts import DEFAULT_EMBEDDER_SPEC
    from ..pipeline import EXACT_SEARCH_MAX_CHUNKS
    from . import stages as A

    tok = checked.tokenizer
    threads = cfg.num_threads or None
    spec = cfg.embedder or DEFAULT_EMBEDDER_SPEC
    t = checked.templates
    model = str(checked.model.folder)
    lm = dict(model=model, tokenizer=tok, chunk_tokens=cfg.chunk_tokens, trust_remote_code=cfg.trust_remote_code,
              device=cfg.device, dtype=checked.lm_dtype, batch_size=cfg.batch_size)
    steps = [
        ReadCorpus(name="corpus", path=str(cfg.corpus), text_field=cfg.text_field, id_field=cfg.id_field,
                   on_error=cfg.on_error),
        A.ChunkStage(name="chunk", inputs=("corpus",), tokenizer=tok, chunk_size=cfg.chunk_tokens, chunk_unit="tokens",
                     threads=threads),
        S.Consolidate(name="chunks", inputs=("chunk",)),
    ]
    if cfg.retriever_used == "embedding":
        steps += [S.FitEmbedder(name="embedder", inputs=("chunks",), embedder=spec, threads=threads),
                  S.EmbedStage(name="embed", inputs=("chunk", "embedder"), embedder=spec, threads=threads),
                  S.GatherEmbeddings(name="embeddings", inputs=("embed",)),
                  S.IndexStage(name="index", inputs=("embeddings", "chunks", "embedder"), embedder=spec,
                               exact_max=EXACT_SEARCH_MAX_CHUNKS, threads=threads)]
        retrieval_inputs = ("chunks", "embedder", "embeddings", "index")
    else:
        steps.append(A.BM25Stage(name="bm25", inputs=("chunks",), k1=cfg.bm25_k1, b=cfg.bm25_b, threads=threads))
        retrieval_inputs = ("chunks", "bm25")
    steps.append(A.QuestionsStage(name="questions", inputs=("chunks",),
                                  path=None if cfg.questions is None else str(Path(cfg.questions).resolve()),
                                  generate=cfg.generate_questions, seed=cfg.seed,
                                  min_tokens=min(32, max(1, cfg.chunk_tokens // 2)),
                                  block_questions=cfg.block_questions))
    source = "questions"
    if cfg.generate_questions is not None:
        steps.append(A.AskStage(name="ask", inputs=("questions", "chunks"), template=t["question"].text,
                                max_new_tokens=cfg.question_max_new_tokens, **lm))
        source = "ask"
    ranker_lm = lm if cfg.ranker == "model" else dict(lm, model="", dtype="float32")  # no LM: no dtype
    reader = t["read_cot" if cfg.chain_of_thought else "read"]
    if cfg.chain_of_thought:
        from .answers import ANSWER_MARKER as marker
    else:
        marker = ""
    steps += [
        A.RetrieveStage(name="retrieve", inputs=(source,) + retrieval_inputs, retriever=cfg.retriever_used,
                        k=cfg.retrieve, embedder=spec if cfg.retriever_used == "embedding" else None,
                        query_prefix=cfg.query_prefix, threads=threads),
        A.RankStage(name="rank", inputs=("retrieve", "chunks"), ranker=cfg.ranker,
                    template=t["rank"].text if cfg.ranker == "model" else "", **ranker_lm),
        A.ReadStage(name="read", inputs=("rank", "chunks"), read=cfg.read, template=reader.text,
                    passage_template=t["passage"].text, max_new_tokens=cfg.max_new_tokens, stop="\n",
                    stop_after=marker, prefix_ids=checked.prefix_ids, **lm),
        A.AssembleStage(name="assemble", inputs=("read", "chunks"), target_length=cfg.target_length, read=cfg.read,
                        chunk_tokens=cfg.chunk_tokens, order=cfg.order, seed=cfg.seed, separator=cfg.separator,
                        template=t["sample"].text, eos_id=checked.eos_id, tokenizer=tok,
                        max_new_tokens=cfg.max_new_tokens, keep_cut=cfg.keep_cut_answers, answer_marker=marker),
        A.DataStage(name="data", inputs=("assemble",), filter=cfg.filter, answer_marker=marker),
    ]
    return Pipeline(cfg.out_dir, steps)


def run(cfg: AcerConfig, executor=None) -> dict:
    """Check what can be checked, lock the output folder (one writer at a time), run the stages, write
    the manifest; returns it."""
    from ...atomic import remove_stale_temporaries
    from ...locking import output_lock
    from ...manifest import failure_recorded
    from ...untrusted import check_work_folder
    from ..driver import thread_limit

    cfg.validate()
    # the lock before the checks that load the model's tokenizer and config (seconds): a second run into the
    # folder stops at once; a refused one still leaves no folder (the lock prunes what it created)
    with output_lock(cfg.out_dir, "acer", file=False), thread_limit(cfg.num_threads):
        checked = check_before_work(cfg)
        if executor is None:
            from ..executors import executor_for

            options = dict(threads=cfg.num_threads or None)
            if cfg.executor == "ray":  # its messages name acer's own flags
                options.update(address=cfg.ray_address, embed_gpus=cfg.gpus, embed_actors=cfg.actors,
                               flags=("--gpus", "--actors"))
            executor = executor_for(cfg.executor, **options)
        check_work_folder(cfg.out_dir, NextlongError, command="acer")  # its finished stages are read as they are
        with failure_recorded(cfg.out_dir / "manifest.json"):
            manifest = _run(cfg, checked, executor)
        remove_stale_temporaries(cfg.out_dir)
        return manifest


def _run(cfg: AcerConfig, checked: Checked, executor) -> dict:
    from ...manifest import write_manifest
    from ..driver import keep_tokenizer_file, made_seconds, made_total, run_stages, write_format
    from ..artifacts import load_store
    from ...corpus.tokenizer import load_tokenizer
    from . import writers

    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    pipeline = build_pipeline(cfg, checked)
    fps, record = run_stages(pipeline, executor, command="acer", cfg=cfg)
    store = load_store(out / "chunks")
    if store.num_chunks == 0:
        raise NextlongError(f"{cfg.corpus}: the corpus has no documents with text")
    if int(record("data").get("rows", 0)) == 0:
        raise NextlongError(_nothing_built(cfg, record))
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(checked.tokenizer)
    write_format(cfg.format, out, tokenizer, writers)
    here = {"write_format": time.perf_counter() - t0, "total": time.perf_counter() - t_start}
    outside = here["total"] - sum(getattr(executor, "seconds", {}).values())
    seconds = made_total(made_seconds(pipeline, _TIMING_GROUP, fallback=lambda name: _map_seconds(name, record)),
                         here["write_format"], outside)
    stats = _statistics(cfg, store, record, seconds)
    stats["seconds_this_run"] = {k: round(v, 3) for k, v in here.items()}
    # with a --tokenizer other than the model's: the passages the LM was shown cut to their first --chunk-tokens
    # LM tokens, per LM stage (None with the model's own tokenizer, whose passages are the chunks' own ids)
    same = tokenizer.fingerprint == load_tokenizer(checked.model.tokenizer_spec).fingerprint
    stats["passages_cut_for_model"] = None if same else {
        name: int(record(name).get("passages_cut", 0)) for name in ("ask", "rank", "read")
        if record(name).get("lm_calls")}
    settings = cfg.to_dict()
    settings.update(keep_tokenizer_file(checked.tokenizer, out))
    settings.update(
        model_folder=str(checked.model.folder.resolve()), model_type=checked.model.model_type,
        model_tokenizer=checked.model.tokenizer_spec, model_max_positions=checked.model.max_positions,
        tokenizer_name=getattr(tokenizer, "name", None), tokenizer_fingerprint=getattr(tokenizer, "fingerprint", None),
        retriever=cfg.retriever_used, eos_id=checked.eos_id, lm_dtype=checked.lm_dtype,
        # the ids that end the LM's generations: config.json's and generation_config.json's eos_token_id
        model_eos_ids={"config.json": list(checked.model.config_eos_ids),
                       "generation_config.json": list(checked.model.generation_eos_ids),
                       "stops_at": list(checked.model.eos_ids)},
        separator_ids=[int(x) for x in tokenizer.encode_ordinary(cfg.separator)],
        prompts={name: {"path": t.path, "text": t.text} for name, t in checked.templates.items()},
        context_needs=checked.needs, question_source=_question_source(cfg, record("questions")),
        output_fingerprint=fps["data"], stage_fingerprints=fps, search=record("index").get("search", "bm25"))
    manifest = write_manifest(out / "manifest.json", command="acer", settings=settings, statistics=stats,
                              seed=cfg.seed)
    _log(cfg, summary(manifest))
    return manifest


def _question_source(cfg, questions: dict) -> dict:
    if cfg.questions is not None:
        return {"source": "file", "path": str(Path(cfg.questions).resolve()), "questions": questions.get("rows")}
    return {"source": "generated", "by": "the model (question.txt), one question per random chunk",
            "asked": cfg.generate_questions, "chunks_drawn": questions.get("rows"),
            "chunks_eligible": questions.get("chunks_eligible")}


def _map_seconds(name: str, record) -> float | None:
    """A map stage's seconds in a folder made before stage records kept them: the compute seconds its blocks'
    counts carried (AcerMapStage), else None."""
    seconds = record(name).get("seconds") if name in MAP_STAGES else None
    return float(seconds) if type(seconds) in (int, float) else None


def _per(total, n):
    return round(total / n, 3) if n else None


def _statistics(cfg, store, record, seconds) -> dict:
    from ..artifacts import count_repeated_ids, empty_chunks

    questions, ask, retrieve = record("questions"), record("ask"), record("retrieve")
    rank, read, assembled, data = record("rank"), record("read"), record("assemble"), record("data")
    built = int(assembled.get("rows", 0))
    kept = int(data.get("rows", 0))
    counts = np.asarray(store.token_counts)
    stats = {
        "corpus_documents": store.num_docs,
        "documents_with_repeated_id": count_repeated_ids(cfg, store),
        "corpus_chunks": store.num_chunks,
        "corpus_tokens": int(store.tok_offsets[-1]),
        # chunks of whitespace only (blank documents, a lone "\n" piece): never retrieved
        "chunks_blank": int(empty_chunks(cfg.out_dir / "chunks", store).sum()),
        "chunk_pieces": record("chunk").get("pieces"),  # pieces cut from chunks longer than --chunk-tokens
        "chunks_over_chunk_tokens": int((counts > cfg.chunk_tokens).sum()),  # 0: the pieces are at most that long
        "questions": int(retrieve.get("rows", questions.get("rows", 0))),
        "questions_empty_generated": ask.get("empty_questions") if ask else None,
        # generated questions that re-encode to more than --question-max-new-tokens + 2 tokens (dropped: the
        # checks before work bound every prompt and sample with that)
        "questions_dropped_too_long": ask.get("too_long_questions", 0) if ask else None,
        # generated questions that reached --question-max-new-tokens without a newline or end (kept)
        "questions_cut_at_budget": ask.get("cut_at_budget") if ask else None,
        "questions_start_masked": ask.get("start_masked") if ask else None,
        # reader answers that reached --max-new-tokens without an end-of-text id or the stop rule: dropped
        # (samples_dropped) unless --keep-cut-answers, which keeps them without the end-of-text id
        "answers_cut_at_budget": read.get("cut_at_budget"),
        "samples_with_cut_answer": assembled.get("cut_kept", 0),
        # reader answers whose first token the blank-start mask changed (greedy would have begun with
        # whitespace or the end-of-text id; docs/acer.md, "Reading")
        "answers_start_masked": read.get("start_masked"),
        "retrieved_chunks_mean": _per(retrieve.get("chunks", 0), retrieve.get("rows", 0)),
        "samples_assembled": built,
        "samples_dropped": assembled.get("dropped", {}),
        "samples": kept,
        "filter": cfg.filter,
        "kept_fraction": data.get("kept_fraction") if cfg.filter != "none" else None,
        "samples_without_gold": data.get("without_gold") if cfg.filter != "none" else None,
        "sample_tokens_mean": _per(assembled.get("tokens", 0), built),
        "samples_short_of_target": assembled.get("ran_out", 0),  # every retrieved chunk used, still below the target
        "chunks_per_sample_mean": _per(assembled.get("chunks", 0), built),
        "read_chunks_per_sample_mean": _per(assembled.get("read_chunks", 0), built),
    }
    # the LM's work per stage, in total and per question the stage saw
    lm = {}
    for name, rec in (("ask", ask), ("rank", rank), ("read", read)):
        if rec.get("lm_calls"):
            n = int(rec.get("rows", 0)) + int(rec.get("empty_questions", 0)) + int(rec.get("too_long_questions", 0))
            lm[name] = {"calls": rec["lm_calls"], "prompt_tokens": rec.get("prompt_tokens", 0),
                        "generated_tokens": rec.get("generated_tokens", 0),
                        "seconds": round(rec.get("seconds", 0.0), 3),
                        "calls_per_question": _per(rec["lm_calls"], n),
                        "prompt_tokens_per_question": _per(rec.get("prompt_tokens", 0), n)}
    stats["lm"] = lm
    stats["seconds"] = seconds
    stats["seconds_per_sample"] = None if seconds.get("total") is None else _per(seconds["total"], kept)
    return stats


def _nothing_built(cfg, record) -> str:
    from .stages import DROP_CUT

    assembled = record("assemble")
    reasons = "; ".join(f"{n}x {r}" for r, n in assembled.get("dropped", {}).items()) or "no question to build from"
    if not assembled.get("rows", 0) and DROP_CUT in assembled.get("dropped", {}):
        reasons += "; raise --max-new-tokens, or keep the cut answers (--keep-cut-answers)"
    if assembled.get("rows", 0) and cfg.filter == "answer-match":
        return (f"{cfg.out}: --filter answer-match kept none of the {assembled['rows']} samples (no generated answer "
                "contains its gold answer); try a stronger --model, --chain-of-thought, or --filter none")
    return f"{cfg.out}: built 0 samples ({reasons})"


def summary(manifest: dict) -> str:
    s, st = manifest["statistics"], manifest["settings"]
    lines = [f"nextlong acer: {s['samples']} samples of up to {st['target_length']} tokens -> {st['out']}",
             f"  corpus: {s['corpus_documents']} documents, {s['corpus_chunks']} chunks of up to {st['chunk_tokens']} "
             f"tokens; questions: {s['questions']} ({st['question_source']['source']})",
             f"  retrieval: {st['retriever']}, {s['retrieved_chunks_mean'] or 0:g} chunks per question; "
             f"ranker: {st['ranker']}; read: top {st['read']}"]
    if s.get("questions_dropped_too_long"):
        lines.append(f"  {s['questions_dropped_too_long']} generated questions dropped: they re-encode to more than "
                     f"--question-max-new-tokens {st['question_max_new_tokens']} + 2 tokens")
    if s.get("samples_dropped"):
        lines.append("  dropped: " + "; ".join(f"{n}x {r}" for r, n in s["samples_dropped"].items()))
    if s.get("kept_fraction") is not None:
        lines.append(f"  --filter answer-match kept {s['samples']} of {s['samples_assembled']} "
                     f"({100 * s['kept_fraction']:.1f}%)")
    if s.get("answers_cut_at_budget"):
        kept = s.get("samples_with_cut_answer") or 0
        lines.append(f"  {s['answers_cut_at_budget']} answers reached --max-new-tokens {st['max_new_tokens']} "
                     "unfinished: "
                     + (f"{kept} kept without the end-of-text id (--keep-cut-answers)" if st.get("keep_cut_answers")
                        else "dropped (raise --max-new-tokens, or --keep-cut-answers)"))
    if s.get("answers_start_masked"):
        lines.append(f"  {s['answers_start_masked']} answers would have begun with whitespace or the end-of-text id; "
                     "their first visible token was taken instead")
    if s.get("samples_short_of_target"):
        lines.append(f"  {s['samples_short_of_target']} samples shorter than the target: their retrieved chunks ran "
                     f"out (mean length {s['sample_tokens_mean']:,.0f} tokens; raise --retrieve to fill them)")
    # a stage's LM work is its blocks' records, made by whichever run computed each block: on a cached rerun
    # the earlier run's (this run's own seconds: seconds_lines)
    if s.get("lm"):
        lines.append("  LM work behind these samples (as recorded when each block was computed, in this run or an "
                     "earlier one):")
    for name, w in s.get("lm", {}).items():
        lines.append(f"    {name}: {w['calls']} LM calls, {w['prompt_tokens']} prompt tokens, "
                     f"{w['generated_tokens']} generated, {w['seconds']:.1f} s")
    return "\n".join(lines + seconds_lines(s))
