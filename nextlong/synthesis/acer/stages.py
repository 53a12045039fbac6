"""The stages of an ACER run (the contract: nextlong/synthesis/framework.py). Chunking, embedding and the
index are synthesize's own stages; these are the ones ACER adds:

    questions (whole)   the questions file, or N random chunks for the LM to write questions about,
                        in blocks of `block_questions` rows: question_id, question, gold, source_chunk
    ask (map, LM)       --generate-questions: the LM writes the question about each picked chunk
    bm25 (whole)        --retriever bm25: the BM25 index over the chunk texts (nextlong.mining.bm25)
    retrieve (map)      question -> its `retrieve` best chunks (embedding: exact search below
                        EXACT_SEARCH_MAX_CHUNKS chunks, the HNSW index above; or BM25) and their scores
    rank (map, LM)      --ranker model: the LM's multiple-choice probability that each chunk helps
                        (option A of rank.txt); embedding | bm25: the retriever's order
    read (map, LM)      the LM reads the top `read` chunks and the question and answers (greedy), and
                        each row records how the answer ended (end-of-text, stop rule, or the budget)
    assemble (map)      the training sample: chunks up to --target-length in the chosen order, then the
                        question, then the answer; the loss mask covers the answer. Answers cut by the
                        budget are dropped (or kept without the end-of-text id), counted
    data (whole)        --filter: the samples kept, as OUT/data/part-NNNNN.parquet

The map stages after `questions` read each other's blocks, so the executor runs them as one chain,
block by block (a killed run redoes at most one block of each). Every chunk has at most `chunk_tokens`
tokens (`ChunkStage` cuts longer ones into pieces), so the context checks before work add up exactly;
a passage shown to an LM whose tokenizer is not the samples' is cut to `chunk_tokens` of its tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from ...errors import CorruptFileError
from ..framework import MapStage, WholeStage, added_setting, corpus_identity, identity, not_a_setting
from ..parts import read_part
from ..artifacts import CHUNKS_FILE, check_part_rows, empty_chunks, load_store, recorded_rows, tokenizer_identity
from ..stages import ChunkStage as SynthesisChunkStage
from .templates import context_pieces

QUESTION_SCHEMA = pa.schema([
    pa.field("question_id", pa.string(), nullable=False),
    pa.field("question", pa.string()),  # null until the LM writes it (--generate-questions)
    pa.field("gold", pa.list_(pa.string())),  # the given answers; null when none
    pa.field("source_chunk", pa.int64()),  # --generate-questions: the chunk asked about; else -1
])

SEGMENT_TYPE = pa.struct([
    pa.field("start", pa.int64()),
    pa.field("end", pa.int64()),
    pa.field("doc_id", pa.string()),  # source document of a chunk; "" for the question and the answer
    pa.field("chunk_index", pa.int32()),  # position of the chunk in its document; -1 otherwise
    pa.field("chunk_id", pa.int64()),  # row of OUT/chunks/chunks.parquet; -1 otherwise
    pa.field("role", pa.string()),  # "context" (a chunk + separator), "question", "answer"
    pa.field("rank", pa.int32()),  # rank after the ranking stage, 0 best; -1 for question/answer
    pa.field("retrieval_rank", pa.int32()),  # rank in retrieval, 0 best; -1 for question/answer
    pa.field("read", pa.bool_()),  # the reader saw this chunk (rank < --read)
])

OUTPUT_SCHEMA = pa.schema([
    pa.field("input_ids", pa.list_(pa.uint32()), nullable=False),
    pa.field("loss_mask", pa.list_(pa.uint8()), nullable=False),  # 1 on the answer (and end-of-text) only
    pa.field("segments", pa.list_(SEGMENT_TYPE), nullable=False),
    pa.field("question_id", pa.string(), nullable=False),
    pa.field("question", pa.string(), nullable=False),
    pa.field("answer", pa.string(), nullable=False),  # what the reader generated
    pa.field("answer_cut", pa.bool_(), nullable=False),  # the budget cut it (--keep-cut-answers): no end-of-text id
    pa.field("gold", pa.list_(pa.string())),  # the given answers, when the question came with some
    pa.field("num_tokens", pa.int64(), nullable=False),  # len(input_ids), <= --target-length
    pa.field("method", pa.string(), nullable=False),  # "acer"
])


def file_identity(path) -> dict | None:
    """A questions file or a model folder as its files' names, sizes and modification times."""
    return None if not path else corpus_identity(path)


def _ids_list(rows: list[np.ndarray], dtype) -> pa.Array:
    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    flat = np.concatenate(rows).astype(dtype, copy=False) if rows else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _with(block: pa.Table, **columns) -> pa.Table:
    """`block` with these columns set (replaced or appended), without schema metadata."""
    block = block.replace_schema_metadata(None)
    for name, values in columns.items():
        if name in block.column_names:
            block = block.set_column(block.schema.get_field_index(name), name, values)
        else:
            block = block.append_column(name, values)
    return block


class AcerMapStage(MapStage):
    """A map stage whose `map(block)` returns (table, counts). `__call__` times it and keeps the counts, with
    `seconds`, for `count` (called next, in the same process, on the same table: framework.py), so the manifest
    reports each stage's own time and LM work although the executor runs retrieve -> rank -> read ->
    assemble as one chain. Nothing of it goes into the table: the same block gives the same bytes."""

    def map(self, block: pa.Table) -> tuple[pa.Table, dict]:
        raise NotImplementedError

    def __call__(self, block):
        import time

        t0 = time.perf_counter()
        table, counts = self.map(block)
        table = table.replace_schema_metadata(None)
        self._counts = (table, dict(counts, seconds=round(time.perf_counter() - t0, 6)))
        return table

    def count(self, output):
        pending = getattr(self, "_counts", None)
        counts = pending[1] if pending is not None and pending[0] is output else {}
        return {"rows": output.num_rows, **counts}


# --- chunks ------------------------------------------------------------------------------------


@dataclasses.dataclass
class ChunkStage(SynthesisChunkStage):
    """Synthesize's meta-chunker in token units, then every chunk longer than `chunk_size` tokens cut
    into consecutive pieces of at most `chunk_size` tokens (the chunker never splits a paragraph, and
    the newlines between paragraphs are not counted, so without this about half the chunks of a
    docstring corpus at 128 tokens overflow). A piece ends at a token boundary that is also a character
    boundary (a few tokens early when a character spans tokens), so its text is exact, its ids are the
    chunk's ids, and the pieces of a chunk tile it. chunk_index then counts pieces within a document.

    A chunk's ids are its text's alone (`separator` ""): the assemble stage and the rag evaluation put their
    own separator between chunks, and the short-context LM reads each chunk as it is. (Synthesize's chunk
    stage tokenizes each chunk with the "\n" after it; inherited here, that made every gap "\n" + the
    separator, and each chunk one token longer than its text.)"""

    separator: str = ""

    flags = {"chunk_size": "--chunk-tokens"}

    def __call__(self, block):
        return split_long_chunks(super().__call__(block), self.chunk_size, self._decoder)

    def setup(self, ctx):
        from ...corpus.tokenizer import load_tokenizer

        super().setup(ctx)
        self._decoder = load_tokenizer(self.tokenizer)

    def count(self, output):
        counts = super().count(output)
        counts["pieces"] = int((output.schema.metadata or {}).get(b"pieces", b"0"))
        return counts


def split_long_chunks(table: pa.Table, max_tokens: int, tokenizer) -> pa.Table:
    """Chunks of more than `max_tokens` ids cut into pieces of at most that many (see ChunkStage); the
    schema metadata `pieces` counts the pieces made."""
    from ... import _native

    lengths = pa.compute.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    if not (lengths > max_tokens).any():
        return table.replace_schema_metadata({b"pieces": b"0"})
    rows = table.to_pylist()
    out, pieces, index_in_doc, prev_doc = [], 0, 0, None
    for row in rows:
        if row["doc_index"] != prev_doc:
            index_in_doc, prev_doc = 0, row["doc_index"]
        ids = row["input_ids"]
        if len(ids) <= max_tokens:
            out.append(dict(row, chunk_index=index_in_doc))
            index_in_doc += 1
            continue
        at, char = 0, row["char_start"]
        while at < len(ids):
            k = min(max_tokens, len(ids) - at)
            text = None
            for cut in range(k, max(0, k // 2), -1):  # the longest prefix that ends on a character
                try:
                    text = tokenizer.decode_bytes(ids[at:at + cut]).decode("utf-8")
                    k = cut
                    break
                except UnicodeDecodeError:
                    continue
            if text is None:  # no character boundary nearby: cut anyway (replacement characters)
                text = tokenizer.decode(ids[at:at + k])
            end = min(char + len(text), row["char_end"])
            out.append(dict(row, chunk_index=index_in_doc, char_start=char, char_end=end, num_tokens=k,
                            text=text, input_ids=ids[at:at + k], text_hash=_native.hash64(text.encode("utf-8"))))
            index_in_doc += 1
            pieces += 1
            at += k
            char = end
    result = pa.Table.from_pylist(out, schema=table.schema)
    result = result.set_column(0, "chunk_id", pa.array(np.arange(len(out), dtype=np.int64)))
    return result.replace_schema_metadata({b"pieces": str(pieces).encode()})


# --- questions ---------------------------------------------------------------------------------


@dataclasses.dataclass
class QuestionsStage(WholeStage):
    """The questions, in blocks (the parts every later map stage maps). inputs: (chunks,).

    From `path` (a JSONL file, read by nextlong/acer/questions.py) in file order; or, with `generate`,
    `generate` distinct chunks of at least `min_tokens` tokens drawn with `seed`, whose questions the
    `ask` stage writes."""

    path: str | None = identity(file_identity, default=None)
    generate: int | None = None
    seed: int = 0
    min_tokens: int = 32
    block_questions: int = not_a_setting(default=64)

    parts_never_empty = True  # blocks of block_questions rows, the last one shorter
    flags = {"path": "--questions", "generate": "--generate-questions", "min_tokens": "--chunk-tokens"}

    def build(self, ctx):
        from ..framework import block_path
        from ..writers import write_parquet_atomic

        if self.path:
            from .questions import read_questions

            rows = read_questions(self.path)
            table = pa.table({"question_id": [r["id"] for r in rows], "question": [r["question"] for r in rows],
                              "gold": [r["gold"] for r in rows], "source_chunk": [-1] * len(rows)},
                             schema=QUESTION_SCHEMA)
            source = {"source": "file", "path": str(Path(self.path).resolve())}
        else:
            store = load_store(ctx.input(self.inputs[0]))
            eligible = np.flatnonzero(store.token_counts >= self.min_tokens)
            n = min(int(self.generate), eligible.size)
            if n == 0:
                from ...errors import NextlongError

                raise NextlongError(f"--generate-questions: no chunk of the corpus has {self.min_tokens} tokens or "
                                    "more to write a question about")
            picked = np.random.default_rng(self.seed).choice(eligible, size=n, replace=False)
            table = pa.table({"question_id": [f"generated-{i}" for i in range(n)], "question": [None] * n,
                              "gold": [None] * n, "source_chunk": picked.astype(np.int64)}, schema=QUESTION_SCHEMA)
            source = {"source": "generated", "asked": int(self.generate), "chunks_eligible": int(eligible.size)}
        blocks = 0
        for blocks, lo in enumerate(range(0, table.num_rows, self.block_questions), 1):
            write_parquet_atomic(table.slice(lo, self.block_questions), block_path(ctx.out_dir, blocks - 1))
        return {"rows": table.num_rows, "blocks": blocks, **source}


# --- what the LM stages share ------------------------------------------------------------------


@dataclasses.dataclass
class LMStage(AcerMapStage):
    """A map stage that runs the LM (GPU work where there is a GPU). inputs: (previous, chunks).

    `model` is fingerprinted by its folder's files; `tokenizer` is the samples' tokenizer (the chunks'
    ids), which passages are taken from when the LM's tokenizer is the same file."""

    model: str = identity(file_identity, default="")
    tokenizer: str | None = identity(tokenizer_identity, default=None)
    chunk_tokens: int = 256
    trust_remote_code: bool = not_a_setting(default=False)
    device: str | None = not_a_setting(default=None)
    # the LM's weights dtype, resolved (lm.resolved_dtype): bfloat16 and float32 flip greedy tokens, so the blocks of
    # a run resumed with another dtype (--dtype, or the default on a machine with or without CUDA) would mix two
    # runs' answers; at float32, the CPU dtype, it is left out (CPU folders made before it was a setting match; those
    # made on CUDA ran in bfloat16 and are refused, their refusal saying so)
    dtype: str = added_setting("float32", before="a folder made before 2026-12-07 records none: bfloat16 where it ran "
                                                 "on CUDA without --dtype")
    batch_size: int = not_a_setting(default=16)

    uses_gpu = True
    progress_unit = "question"
    flags = {"model": "--model", "dtype": "--dtype, or the machine's default"}

    def setup(self, ctx):
        self._progress = ctx.progress
        self._lm = None
        if self.model:
            from .lm import load_lm

            self._lm = load_lm(self.model, device=self.device, dtype=self.dtype,
                               trust_remote_code=self.trust_remote_code)
            self._passages = Passages(ctx.input(self.inputs[1]), self.tokenizer, self._lm.tokenizer, self.chunk_tokens)

    def _fed(self, prompts) -> list[int]:
        """Ids each prompt feeds the LM: its tokenizer's prefix ids (Llama-3's BOS, which lm.py puts first) and
        the prompt, so `prompt_tokens` counts what the model really reads."""
        prefix = len(self._lm.tokenizer.prefix_ids)
        return [prefix + len(p) for p in prompts]

    def _bar(self, total: int, unit: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=self.name, unit=unit, leave=False, disable=not self._progress)

    def _templates(self, **texts):
        from .templates import Template

        return {name: Template(name, text, "<stage setting>") for name, text in texts.items()}


class Passages:
    """Chunk ids -> the token ids an LM prompt shows: the chunk's ids cut to `chunk_tokens` (its own ids
    when the LM's tokenizer is the samples' tokenizer, else its text encoded by the LM's tokenizer).

    With another --tokenizer a chunk of at most `chunk_tokens` sample tokens can take more LM tokens, and
    the LM then sees only their first `chunk_tokens` (the checks before work bound the prompts by that);
    `cut` counts the passages shown cut, so each LM stage reports how many (`passages_cut`)."""

    def __init__(self, chunks_dir, sample_tokenizer, lm_tokenizer, chunk_tokens: int):
        from ...corpus.tokenizer import load_tokenizer

        self.store = load_store(chunks_dir)
        self.chunk_tokens = int(chunk_tokens)
        self.lm_tokenizer = lm_tokenizer
        self.same = load_tokenizer(sample_tokenizer).fingerprint == lm_tokenizer.fingerprint
        self.cut = 0  # passages shown cut to chunk_tokens LM tokens (another --tokenizer only)
        self._file = Path(chunks_dir) / CHUNKS_FILE

    def ids(self, chunk_ids) -> list[np.ndarray]:
        chunk_ids = [int(c) for c in chunk_ids]
        if self.same:
            return [np.asarray(self.store.chunk_tokens(c)[:self.chunk_tokens], np.uint32) for c in chunk_ids]
        encoded = [self.lm_tokenizer.encode_ordinary(t) for t in chunk_text(self._file, chunk_ids)]
        self.cut += sum(len(e) > self.chunk_tokens for e in encoded)
        return [np.asarray(e[:self.chunk_tokens], np.uint32) for e in encoded]


def chunk_text(chunks_file, chunk_ids) -> list[str]:
    """Texts of chunks by id (row number of the chunk table), each page read checked against its checksum
    (checked_parquet): a damaged page is one line naming the file."""
    import pyarrow.dataset as ds

    from ... import checked_parquet

    if not len(chunk_ids):
        return []
    checked = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
        page_checksum_verification=True))
    try:
        return ds.dataset(str(chunks_file), format=checked).take(
            pa.array(np.asarray(chunk_ids, np.int64)), columns=["text"]).column("text").to_pylist()
    except OSError as exc:
        if checked_parquet.failed_checksum(exc):
            raise checked_parquet.damaged(chunks_file, exc) from None
        raise


QUESTION_SLACK = 2  # a generated question's bound in tokens: --question-max-new-tokens + this (" " + text)


def question_bound(max_new_tokens: int) -> int:
    """Tokens a generated question may take in a prompt or a sample, in either tokenizer (the LM's and the
    samples'): what the checks before work count for it (pipeline.check_before_work)."""
    return int(max_new_tokens) + QUESTION_SLACK


@dataclasses.dataclass
class AskStage(LMStage):
    """--generate-questions: the LM writes one question about each picked chunk (question.txt, greedy,
    up to the first newline). Rows whose question comes out empty are dropped (counted); questions cut by
    the budget and questions whose first token the blank-start mask changed are counted, not dropped.

    A question is kept as text, which later stages re-encode (the rank and read prompts in the LM's
    tokenizer, the sample in the samples'). Re-encoding can take more ids than were generated (a stray byte
    decodes to U+FFFD, two or three ids; ids that are not the tokenizer's own split of their text; another
    --tokenizer), so a question longer than `question_bound` tokens in either tokenizer, with or without
    the leading space a template gives it, is dropped and counted (`too_long_questions`): every prompt and
    sample then stays within what the checks before work computed, instead of failing mid-run."""

    template: str = ""
    max_new_tokens: int = 64

    version = 2  # questions beyond question_bound are dropped; generation_config.json's eos ids end one
    flags = {**LMStage.flags, "template": "--prompts question.txt", "max_new_tokens": "--question-max-new-tokens"}

    def setup(self, ctx):
        from ...corpus.tokenizer import load_tokenizer

        super().setup(ctx)
        self._t = self._templates(question=self.template)["question"]
        self._sample_tok = load_tokenizer(self.tokenizer)

    def fits(self, question: str) -> bool:
        """The question re-encodes to at most `question_bound` ids in the LM's and the samples' tokenizer."""
        bound = question_bound(self.max_new_tokens)
        return all(len(tok.encode_ordinary(text)) <= bound for tok in (self._lm.tokenizer, self._sample_tok)
                   for text in (question, " " + question))

    def map(self, block):
        cut_before = self._passages.cut
        passages = self._passages.ids(block.column("source_chunk").to_pylist())
        prompts = [self._t.render(self._lm.tokenizer, passage=p) for p in passages]
        with self._bar(len(prompts), "question") as bar:
            out = self._lm.generate(prompts, self.max_new_tokens, stop="\n", batch_size=self.batch_size,
                                    on_done=bar.update)
        questions = [" ".join(g.text.split()) for g in out]
        too_long = [bool(q) and not self.fits(q) for q in questions]
        keep = [bool(q) and not long for q, long in zip(questions, too_long)]
        table = _with(block, question=pa.array(questions, pa.string())).filter(pa.array(keep))
        return table, {"lm_calls": len(prompts), "prompt_tokens": sum(self._fed(prompts)),
                       "generated_tokens": sum(g.tokens for g in out),
                       "empty_questions": sum(not q for q in questions), "too_long_questions": sum(too_long),
                       "passages_cut": self._passages.cut - cut_before,
                       "cut_at_budget": sum(g.cut for g in out), "start_masked": sum(g.start_masked for g in out)}


# --- retrieval ---------------------------------------------------------------------------------


@dataclasses.dataclass
class BM25Stage(WholeStage):
    """The BM25 index over the chunk texts, row = chunk id (nextlong.mining.bm25). inputs: (chunks,)."""

    k1: float = 1.2
    b: float = 0.75
    threads: int | None = not_a_setting(default=None)

    flags = {"k1": "--bm25-k1", "b": "--bm25-b"}

    def build(self, ctx):
        from ...mining.bm25 import BM25Index

        index = BM25Index.from_chunks(ctx.input(self.inputs[0]) / CHUNKS_FILE, k1=self.k1, b=self.b,
                                      num_threads=self.threads or ctx.threads or 0, progress=ctx.progress)
        index.save(ctx.out_dir)
        return {"chunks": len(index), "terms": index.num_terms}


@dataclasses.dataclass
class RetrieveStage(AcerMapStage):
    """Question block -> `k` chunk ids per question, best first, with the retriever's scores (cosine or
    BM25). inputs: (questions, chunks, then the embedder, embeddings and index stages, or bm25).
    Embedding search is exact (ExactSearcher: a total order, so the same for any batching) unless the
    index stage built an HNSW index (corpora over EXACT_SEARCH_MAX_CHUNKS chunks). `query_prefix` is put
    before each question before it is embedded (the query instruction of BGE / E5 style encoders), in place of
    a model folder's default sentence-transformers prompt, which the chunks get (E5's "passage: "); BM25
    never sees it."""

    retriever: str = "embedding"
    k: int = 200

    version = 2  # 2: chunks of whitespace only are never retrieved (artifacts.empty_chunks)
    embedder: str | None = None
    query_prefix: str = added_setting("")  # "" (the default) leaves a folder made before it matching
    threads: int | None = not_a_setting(default=None)

    progress_unit = "question"
    flags = {"k": "--retrieve"}

    def setup(self, ctx):
        threads = self.threads or ctx.threads or None
        store = load_store(ctx.input(self.inputs[1]))
        self._empty = empty_chunks(ctx.input(self.inputs[1]), store)  # never retrieved
        if self._empty.all():
            from ...errors import NextlongError

            raise NextlongError(f"{ctx.input(self.inputs[1])}: the corpus has no text to retrieve (its documents are "
                                "empty or whitespace only)")
        if self.retriever == "bm25":
            from ...mining.bm25 import BM25Index

            self._bm25 = BM25Index.load(ctx.input(self.inputs[2]))
            self._threads = threads or 0
            return
        from ..negatives import ExactSearcher, IndexSearcher
        from ..artifacts import open_vectors, ready_embedder

        embedder_dir, emb_dir, index_dir = (ctx.input(n) for n in self.inputs[2:5])
        self._embedder = ready_embedder(self.embedder, embedder_dir, threads)
        vectors = open_vectors(emb_dir, record=ctx.input_record(self.inputs[3]))
        if (index_dir / "index.json").exists():
            from ...mining.index import ChunkIndex

            self._searcher = IndexSearcher(ChunkIndex.view(index_dir), vectors.shape[0])
        else:
            self._searcher = ExactSearcher(vectors)

    def search(self, questions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.retriever == "bm25":
            return self._bm25.search(questions, self.k, num_threads=self._threads)
        from ...mining.embedding import TransformerEmbedder

        if self.query_prefix and isinstance(self._embedder, TransformerEmbedder):
            # instead of the folder's default prompt, which is the passages' (E5's "passage: ")
            q = self._embedder.embed(questions, prefix=self.query_prefix)
        else:
            q = self._embedder.embed([self.query_prefix + x for x in questions])
        return self._searcher.search(np.asarray(q, np.float32), self.k)

    def map(self, block):
        ids, scores = self.search(block.column("question").to_pylist())
        keep = [(row >= 0) & ~self._empty[np.maximum(row, 0)] for row in ids]
        table = _with(block, retrieved=pa.array([r[m].astype(np.int64) for r, m in zip(ids, keep)],
                                                pa.list_(pa.int64())),
                      retrieval_scores=pa.array([s[m].astype(np.float32) for s, m in zip(scores, keep)],
                                                pa.list_(pa.float32())))
        return table, {"chunks": int(sum(m.sum() for m in keep))}


# --- ranking -----------------------------------------------------------------------------------


@dataclasses.dataclass
class RankStage(LMStage):
    """Retrieved chunks -> `ranked` (chunk ids, best first) and `rank_scores`. ranker "model": each chunk's
    rank.txt prompt, scored P(A) / (P(A) + P(B)) from the LM's next-token logits, ties kept in retrieval
    order; "embedding" | "bm25": the retrieval order and scores as they are (no LM)."""

    ranker: str = "model"
    template: str = ""

    flags = {**LMStage.flags, "template": "--prompts rank.txt"}

    def setup(self, ctx):
        super().setup(ctx)
        if self.ranker == "model":
            from .templates import option_ids

            self._t = self._templates(rank=self.template)["rank"]
            self._options = option_ids(self._lm.tokenizer)

    def scores(self, question: str, chunk_ids, on_done=None) -> np.ndarray:
        """P(helpful) of each chunk for the question (float64)."""
        prompts = [self._t.render(self._lm.tokenizer, passage=p, question=question)
                   for p in self._passages.ids(chunk_ids)]
        self._calls += len(prompts)
        self._tokens += sum(self._fed(prompts))
        if not prompts:
            return np.zeros(0, np.float64)
        return self._lm.option_probs(prompts, self._options, batch_size=self.batch_size, on_done=on_done)[:, 0]

    def map(self, block):
        retrieved = block.column("retrieved").to_pylist()
        if self.ranker != "model":
            return _with(block, ranked=block.column("retrieved"), rank_scores=block.column("retrieval_scores")), {}
        self._calls = self._tokens = 0
        cut_before = self._passages.cut
        ranked, scores = [], []
        with self._bar(sum(map(len, retrieved)), "chunk") as bar:
            for question, chunks in zip(block.column("question").to_pylist(), retrieved):
                p = self.scores(question, chunks, on_done=bar.update)
                order = np.lexsort((np.arange(len(chunks)), -p))  # best first; ties: retrieval order
                ranked.append(np.asarray(chunks, np.int64)[order])
                scores.append(p[order].astype(np.float32))
        table = _with(block, ranked=pa.array(ranked, pa.list_(pa.int64())),
                      rank_scores=pa.array(scores, pa.list_(pa.float32())))
        return table, {"lm_calls": self._calls, "prompt_tokens": self._tokens,
                       "passages_cut": self._passages.cut - cut_before}


# --- reading -----------------------------------------------------------------------------------


@dataclasses.dataclass
class ReadStage(LMStage):
    """The reader: the top `read` ranked chunks (passage.txt each, numbered by rank) and the question in
    read.txt (or read_cot.txt), answered greedily up to `max_new_tokens` tokens, an end-of-text id, or
    `stop` after some text (with `stop_after`, --chain-of-thought's "So the answer is:", only after that
    marker and some text after it). The answer is the generated text before the stop, stripped;
    `answer_end` says how it ended ("eos", "stop", or "budget": cut at `max_new_tokens`) and
    `start_masked` whether the blank-start mask changed its first token (lm.py)."""

    read: int = 8
    template: str = ""
    passage_template: str = ""
    max_new_tokens: int = 256
    stop: str = "\n"
    stop_after: str = ""
    # the ids the LM's tokenizer puts before each prompt (Llama-3's BOS), which the read_prompt_tokens column counts
    # as the statistics do: 0 (most tokenizers) leaves the fingerprint as it was, so only a folder whose column
    # would now differ (one made before with a prefixed tokenizer) is refused
    prefix_ids: int = added_setting(0, before="a folder made before the setting (2026-12-07) counts no prefix ids "
                                              "in its read_prompt_tokens column, whatever its model's tokenizer puts "
                                              "first")

    # 2: answer_end and start_masked; the chain-of-thought stop rule waits for the marker
    version = 3  # 3: generation_config.json's eos_token_id ends an answer too (lm.inspect_model)
    flags = {**LMStage.flags, "template": "--prompts read.txt or read_cot.txt, --chain-of-thought",
             "passage_template": "--prompts passage.txt", "stop_after": "--chain-of-thought",
             "prefix_ids": "the ids --model's tokenizer puts before a prompt"}

    def setup(self, ctx):
        super().setup(ctx)
        self._t = self._templates(read=self.template, passage=self.passage_template)

    def prompt(self, question: str, chunk_ids) -> np.ndarray:
        from .templates import passages_ids

        passages = passages_ids(self._t, self._lm.tokenizer, self._passages.ids(list(chunk_ids)[:self.read]))
        return self._t["read"].render(self._lm.tokenizer, passages=passages, question=question)

    def map(self, block):
        ranked = block.column("ranked").to_pylist()
        for qid, ids in zip(block.column("question_id").to_pylist(), ranked):
            _check_chunk_ids(ids, self._passages.store.num_chunks, qid)
        cut_before = self._passages.cut
        prompts = [self.prompt(q, r) for q, r in zip(block.column("question").to_pylist(), ranked)]
        with self._bar(len(prompts), "question") as bar:
            out = self._lm.generate(prompts, self.max_new_tokens, stop=self.stop, stop_after=self.stop_after or None,
                                    batch_size=self.batch_size, on_done=bar.update)
        fed = self._fed(prompts)
        table = _with(block, answer=pa.array([g.text.strip() for g in out], pa.string()),
                      read_prompt_tokens=pa.array(fed, pa.int32()),
                      generated_tokens=pa.array([g.tokens for g in out], pa.int32()),
                      answer_end=pa.array([g.end for g in out], pa.string()),
                      start_masked=pa.array([g.start_masked for g in out], pa.bool_()))
        return table, {"lm_calls": len(prompts), "prompt_tokens": sum(fed),
                       "generated_tokens": sum(g.tokens for g in out), "cut_at_budget": sum(g.cut for g in out),
                       "start_masked": sum(g.start_masked for g in out),
                       "passages_cut": self._passages.cut - cut_before}


def _check_chunk_ids(ids, num_chunks: int, question_id) -> None:
    """Chunk ids a cached stage part hands on, within the chunk store (a damaged part of a resumed run
    would index out of range, or from the end with a negative id)."""
    if ids and (min(ids) < 0 or max(ids) >= num_chunks):
        raise CorruptFileError(f"question {question_id!r}: chunk ids must lie in 0..{num_chunks - 1}, got "
                               f"{min(ids)}..{max(ids)}; the work folder's retrieve, rank or read stage is damaged: "
                               "delete it (or run into a fresh --out)")


# --- the samples -------------------------------------------------------------------------------


ANSWER_ENDS = ("eos", "stop", "budget")
# why AssembleStage drops a sample (the keys of statistics.samples_dropped)
DROP_CUT = "answer cut at --max-new-tokens"
DROP_NO_MARKER = "chain-of-thought answer without its final answer after the marker"
DROP_CITES_NUMBER = "chain-of-thought answer names a passage by number"
DROP_LONG = "answer re-encodes to more than --max-new-tokens + 1 tokens"


def question_seed(seed: int, question_id: str) -> int:
    """The shuffle seed of one question: from the run's seed and the question's id alone, so a sample
    does not depend on the block it is in or on the questions before it."""
    return int(hashlib.sha256(f"{seed}\0{question_id}".encode()).hexdigest()[:16], 16)


@dataclasses.dataclass
class AssembleStage(AcerMapStage):
    """Read block -> training samples (OUTPUT_SCHEMA). inputs: (read, chunks).

    The chunks of a sample: the `read` top-ranked ones always, then the other retrieved chunks in rank
    order, each taken when it still fits `target_length` with the question and the answer (a longer
    one is skipped, a later shorter one may fit). Each is its first `chunk_tokens` ids followed by the
    separator, the two tokenized together (templates.context_pieces: the gap reads as in running text). They
    are laid out in a seeded shuffle (`order` shuffled) or in retrieval order, then
    sample.txt with the question, then " " + answer and the end-of-text id (when the tokenizer has
    one): the loss mask is 1 on exactly those last tokens. A sample is shorter than `target_length`
    when the retrieved chunks run out (`num_tokens` says how long).

    Dropped, each reason counted: an empty answer; no retrieved chunk; an answer the budget cut
    (`max_new_tokens` ids without an end: unless `keep_cut`, which keeps it without the end-of-text id,
    so the model is not taught to stop there); with `answer_marker` (--chain-of-thought), an answer
    without the marker and some text after it, or one that names a passage by number (the sample's
    chunks carry no numbers); an answer whose re-encoding (" " + answer) is longer than
    `max_new_tokens` + 1 tokens, the bound the checks before work give it."""

    target_length: int = 32768
    read: int = 8
    chunk_tokens: int = 256
    order: str = "shuffled"
    seed: int = 0
    separator: str = "\n\n"
    template: str = ""
    eos_id: int | None = None
    tokenizer: str | None = identity(tokenizer_identity, default=None)
    max_new_tokens: int = 256
    keep_cut: bool = False
    answer_marker: str = ""

    version = 3  # 2: the drops above and the answer_cut column; 3: each chunk tokenized with its separator
    flags = {"template": "--prompts sample.txt", "eos_id": "--tokenizer", "keep_cut": "--keep-cut-answers",
             "answer_marker": "--chain-of-thought"}
    object_counts = frozenset({"dropped"})  # its drops by reason
    progress_unit = "question"

    def setup(self, ctx):
        from ...corpus.tokenizer import load_tokenizer
        from .templates import Template

        self._store = load_store(ctx.input(self.inputs[1]))
        self._tok = load_tokenizer(self.tokenizer)
        self._t = Template("sample", self.template, "<stage setting>")

    def sample(self, row: dict) -> tuple[dict | None, str | None]:
        """One sample from one read row, or (None, why it was dropped)."""
        from .answers import cites_passage_number, final_answer

        answer = row["answer"]
        if not answer:
            return None, "empty answer"
        ranked, retrieved = row["ranked"], row["retrieved"]
        if not ranked:
            return None, "no chunk retrieved"
        if row["answer_end"] not in ANSWER_ENDS:
            raise CorruptFileError(f"question {row['question_id']!r}: answer_end {row['answer_end']!r} is not one of "
                                   f"{', '.join(ANSWER_ENDS)}; the work folder's read stage is damaged: delete it (or "
                                   "run into a fresh --out)")
        _check_chunk_ids(retrieved, self._store.num_chunks, row["question_id"])
        if not set(ranked) <= set(retrieved):
            raise CorruptFileError(f"question {row['question_id']!r}: ranked chunks that were not retrieved; the work "
                                   "folder's rank or read stage is damaged: delete it (or run into a fresh --out)")
        cut = row["answer_end"] == "budget"
        if cut and not self.keep_cut:
            return None, DROP_CUT
        if self.answer_marker:
            if not final_answer(answer, self.answer_marker):
                return None, DROP_NO_MARKER
            if cites_passage_number(answer):
                return None, DROP_CITES_NUMBER
        q_ids = self._t.render(self._tok, question=row["question"])
        a_ids = np.asarray(self._tok.encode_ordinary(" " + answer), np.uint32)
        if a_ids.size > self.max_new_tokens + 1:  # what check_before_work counted for it (pipeline.py)
            return None, DROP_LONG
        if self.eos_id is not None and not cut:
            a_ids = np.append(a_ids, np.uint32(self.eos_id))
        budget = self.target_length - q_ids.size - a_ids.size
        retrieval_rank = {c: r for r, c in enumerate(retrieved)}
        pieces = context_pieces(self._tok, [np.asarray(self._store.chunk_tokens(c)[:self.chunk_tokens], np.uint32)
                                            for c in ranked], self.separator)
        chosen, used = [], 0
        for rank, (c, piece) in enumerate(zip(ranked, pieces)):
            if rank < self.read or used + piece.size <= budget:
                chosen.append((rank, c, piece))
                used += piece.size
        if used > budget:
            return None, "the read chunks, question and answer exceed --target-length"
        if self.order == "shuffled":
            perm = np.random.default_rng(question_seed(self.seed, row["question_id"])).permutation(len(chosen))
            chosen = [chosen[i] for i in perm]
        else:
            chosen.sort(key=lambda x: retrieval_rank[x[1]])
        parts, segments, at = [], [], 0
        for rank, c, piece in chosen:
            n = piece.size
            parts.append(piece)
            segments.append({"start": at, "end": at + n, "doc_id": self._store.doc_ids[int(self._store.chunk_doc[c])],
                             "chunk_index": int(self._store.chunk_index[c]), "chunk_id": int(c), "role": "context",
                             "rank": rank, "retrieval_rank": retrieval_rank[c], "read": rank < self.read})
            at += n
        for role, ids in (("question", q_ids), ("answer", a_ids)):
            parts.append(ids)
            segments.append({"start": at, "end": at + ids.size, "doc_id": "", "chunk_index": -1, "chunk_id": -1,
                             "role": role, "rank": -1, "retrieval_rank": -1, "read": False})
            at += ids.size
        input_ids = np.concatenate(parts)
        mask = np.zeros(input_ids.size, np.uint8)
        mask[input_ids.size - a_ids.size:] = 1
        return {"input_ids": input_ids, "loss_mask": mask, "segments": segments, "question_id": row["question_id"],
                "question": row["question"], "answer": answer, "answer_cut": cut, "gold": row["gold"],
                "num_tokens": int(input_ids.size), "method": "acer", "_ran_out": len(chosen) == len(ranked)}, None

    def map(self, block):
        built, dropped = [], {}
        for row in block.select(["question_id", "question", "gold", "retrieved", "ranked", "answer",
                                 "answer_end"]).to_pylist():
            sample, why = self.sample(row)
            if sample is None:
                dropped[why] = dropped.get(why, 0) + 1
            else:
                built.append(sample)
        table = pa.table({
            "input_ids": _ids_list([s["input_ids"] for s in built], np.uint32),
            "loss_mask": _ids_list([s["loss_mask"] for s in built], np.uint8),
            "segments": pa.array([s["segments"] for s in built], pa.list_(SEGMENT_TYPE)),
            **{name: pa.array([s[name] for s in built], OUTPUT_SCHEMA.field(name).type)
               for name in ("question_id", "question", "answer", "answer_cut", "gold", "num_tokens", "method")},
        }, schema=OUTPUT_SCHEMA)
        return table, {"dropped": dropped, "ran_out": sum(s["_ran_out"] for s in built),
                       "cut_kept": sum(s["answer_cut"] for s in built),
                       "tokens": int(sum(s["num_tokens"] for s in built)),
                       "chunks": sum(sum(seg["role"] == "context" for seg in s["segments"]) for s in built),
                       "read_chunks": sum(sum(seg["read"] for seg in s["segments"]) for s in built)}


@dataclasses.dataclass
class DataStage(WholeStage):
    """The output: the assembled blocks, filtered (`filter` answer-match: a sample stays when its answer
    contains one of its gold answers after SQuAD normalisation; one without gold answers stays), one
    Parquet part per block. With `answer_marker` (--chain-of-thought) the answer compared is only the
    final one, after the marker, not the reasoning (which may quote the gold answer from a passage).
    Cheap, so another --filter just remakes it."""

    filter: str = "none"
    answer_marker: str = ""

    version = 2  # answer_marker

    remake_on_change = True

    def build(self, ctx):
        import os

        from ..framework import block_path, finished_part
        from ..writers import write_parquet_atomic
        from .answers import contains_answer, final_answer

        src = ctx.input(self.inputs[0])
        for stale in ctx.out_dir.glob("part-*.parquet"):
            stale.unlink()
        total = kept = without_gold = 0
        # every block assemble finished (its record's count): a part or record deleted or damaged since is named,
        # never taken as a block of no samples
        for j in range(int(ctx.input_record(self.inputs[0])["counts"]["blocks"])):
            part = finished_part(src, j, ctx.pipeline.stage(self.inputs[0]))
            if part is None:
                continue
            check_part_rows(part, recorded_rows(src, j))
            table = read_part(part)
            total += table.num_rows
            if self.filter == "answer-match":
                golds = table.column("gold").to_pylist()
                without_gold += sum(not g for g in golds)
                answers = table.column("answer").to_pylist()
                if self.answer_marker:
                    answers = [final_answer(a, self.answer_marker) or "" for a in answers]
                keep = [not g or contains_answer(a, g) for a, g in zip(answers, golds)]
                if not all(keep):
                    table = table.filter(pa.array(keep)).cast(OUTPUT_SCHEMA)
                    kept += table.num_rows
                    if table.num_rows:
                        write_parquet_atomic(table, block_path(ctx.out_dir, j))
                    continue
            kept += table.num_rows
            try:
                os.link(part, block_path(ctx.out_dir, j))
            except OSError:
                import shutil

                shutil.copyfile(part, block_path(ctx.out_dir, j))
        return {"rows": kept, "assembled": total, "kept_fraction": kept / total if total else None,
                "without_gold": without_gold}
