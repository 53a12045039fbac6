"""`nextlong eval --tasks rag`: long-context RAG, the evaluation that matches ACER (docs/acer.md).

For each held-out question with gold answers, the model reads a long context: the gold-bearing
chunk(s) placed at a chosen depth among retrieved distractor chunks, filled to each `--lengths`,
in ACER's own sample format (every chunk's ids, then a blank line; then sample.txt, "Question:
{question}\\nAnswer:"), so a model fine-tuned on `nextlong acer` output is evaluated in its own format.
It answers greedily up to a newline, scored by SQuAD exact match and token F1 (the best over the
question's gold answers; nextlong.synthesis.acer.answers). Beside it, the retrieve-then-read pipeline ACER
claims to beat: the same model reads only the top `--rag-read` retrieved chunks in the reader prompt
ACER uses (read.txt), scored the same way.

The questions file (`--rag-questions`, JSONL; plain or .gz), one object per line:

    question       the question (required)
    answer(s)      gold answers: a string or a list of aliases (required here)
    id             optional, default the line number
    context        the gold evidence as text: the passage holding the answer (a string, or a list of
                   passages), e.g. SQuAD's `context`, a DPR/NQ positive passage, a TriviaQA snippet
    doc_id         or the gold evidence as a document of --corpus (its id: --id-field, default
                   FILE:LINE), optionally with chunk_index (an int or a list) naming its chunks

The pool is the --corpus chunked as ACER chunks it (synthesize's meta-chunker in tokens of the
model's tokenizer, pieces of at most --rag-chunk-tokens tokens), plus every `context` chunked the same
way (identical contexts share their chunks). A question's gold chunks are those of its evidence that
contain one of its answers (SQuAD-normalised whole words), or all of them when none does, or the
`chunk_index` ones. Retrieval ranks the whole pool for the question (embedding: exact cosine search;
bm25: nextlong.mining.bm25), so the gold chunk competes like any other. A question's candidates are the
retrieved chunks minus copies of its gold text (a corpus chunk whose normalised text contains a gold
chunk's or is contained in it) and, with --rag-distractors no-answer (HELMET's choice), minus every
other chunk holding an answer. Retrieve-then-read reads the top R candidates (gold among them only
where the retriever ranked it there); the long context holds the gold chunks and the best-ranked
other candidates that fit the length (a chunk that does not fit is skipped, a later shorter one may),
in a seeded shuffle per (question, length) or in retrieval order (--rag-order), with the gold chunks
as one block after the share `depth` of the distractor tokens (the chunk boundary nearest it).

Length = prompt + the longest gold answer's tokens (as for the other tasks). Chunking and embeddings
are cached in DIR/rag/ (stages of nextlong.synthesis, redone only when their settings change) and
finished answers in DIR/rag/.progress.jsonl, so a stopped run resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CorpusError, NextlongError, UsageError
from ..model_folder import positions_in_text_config
from ..synthesis.acer.config import ORDERS, RETRIEVERS  # ACER's choices: the rag task evaluates what it builds
from ..untrusted import whole
from .model import DECODING_REVISION, POSITIONS_REVISION
from .options import DISTRACTORS
from .samples import ANSWER_MARGIN  # greedy budget beyond the longest gold answer, as the other tasks

TASK = "rag"
BASELINE = "rag_read"
SEPARATOR = "\n\n"  # after every chunk, as ACER's samples (--separator's default)
LAYOUT_REVISION = 2  # 2: each chunk tokenized with its separator (records of older layouts are not reused)
CONTEXT_DOC = "rag-context:"  # doc_id of the pool chunks cut from a `context`


@dataclass
class RagSettings:
    questions: str
    corpus: str
    lengths: list[int]
    depths: list[float]
    seed: int = 0
    read: int = 8  # retrieve-then-read: chunks the reader sees (ACER's --read)
    retriever: str = "embedding"
    embedder: str | None = None  # None: ACER's default (the offline all-MiniLM-L6-v2)
    chunk_tokens: int = 256  # ACER's --chunk-tokens
    retrieve: int | None = None  # chunks retrieved per question; None: enough to fill the largest length
    distractors: str = "retrieved"
    order: str = "shuffled"
    prompts: str | None = None  # a folder replacing sample.txt / read.txt / passage.txt (ACER's --prompts)
    separator: str = SEPARATOR  # after every chunk of the long context (ACER's --separator)
    max_new_tokens: int | None = None  # None: the longest gold answer's tokens + ANSWER_MARGIN
    text_field: str = "text"
    id_field: str | None = None
    dump: bool = False
    progress: bool = True

    def validate(self) -> None:
        for name, value, choices in (("--rag-retriever", self.retriever, RETRIEVERS),
                                     ("--rag-distractors", self.distractors, DISTRACTORS),
                                     ("--rag-order", self.order, ORDERS)):
            if value not in choices:
                raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        for name, value in (("--rag-read", self.read), ("--rag-chunk-tokens", self.chunk_tokens)):
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.retrieve is not None and self.retrieve < self.read:
            raise UsageError(f"--rag-retrieve {self.retrieve} is below --rag-read {self.read}: the reader reads the "
                             "top of the retrieved chunks")
        if not self.corpus:
            raise UsageError("--tasks rag needs --corpus: the distractor pool (JSONL/Parquet/text folder), chunked as "
                             "ACER chunks it")
        if not Path(self.corpus).exists():
            raise UsageError(f"{self.corpus}: corpus not found")
        if self.retriever == "embedding":
            from ..mining.embedding import check_embedder_spec

            check_embedder_spec(self.embedder)


# ---------------------------------------------------------------- the questions file


@dataclass
class RagQuestion:
    id: str
    question: str
    answers: list[str]
    line: int
    contexts: list[str] | None = None  # gold evidence as text
    doc_id: str | None = None  # or as a document of the corpus
    chunk_index: list[int] | None = None  # ... restricted to these chunks of it


def read_rag_questions(path) -> list[RagQuestion]:
    """The questions, in file order; any line without answers or gold evidence is one error naming it."""
    from ..synthesis.acer.questions import question_lines

    return [_evidence(path, lineno, obj, row) for lineno, obj, row in question_lines(path)]


def _evidence(path, lineno: int, obj: dict, row: dict) -> RagQuestion:
    def bad(msg):
        raise CorpusError(path, msg, line=lineno)

    if row["gold"] is None:
        bad("no gold answer: --tasks rag scores against \"answer\" or \"answers\" (a non-empty string or a list of "
            "them)")
    context, doc_id, chunk_index = obj.get("context"), obj.get("doc_id"), obj.get("chunk_index")
    if "chunk_id" in obj:  # read as chunk_index, a row number would name another chunk than the user meant
        bad("\"chunk_id\" is not read (it is a row number of one chunk table, which changes with the corpus); name "
            "the gold chunks by \"doc_id\" and \"chunk_index\" (their places within the document), or leave it out")
    if context is not None and doc_id is not None:
        bad("give the gold evidence as \"context\" (text) or \"doc_id\" (a --corpus document), not both")
    if context is None and doc_id is None:
        bad("no gold evidence: give \"context\" (the passage holding the answer) or \"doc_id\" (its document in "
            "--corpus, optionally with \"chunk_index\")")
    q = RagQuestion(row["id"], row["question"], row["gold"], lineno)
    if context is not None:
        contexts = [context] if isinstance(context, str) else context
        if not isinstance(contexts, list) or not contexts or not all(isinstance(c, str) and c.strip() for c in contexts):
            bad("\"context\" must be a non-empty string or a list of them")
        if chunk_index is not None:
            bad("\"chunk_index\" goes with \"doc_id\" (a --corpus document), not with \"context\"")
        q.contexts = contexts
        return q
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        bad(f"\"doc_id\" must be a string or an integer, got {json.dumps(doc_id)[:60]}")
    q.doc_id = str(doc_id)
    if chunk_index is not None:
        idx = [chunk_index] if whole(chunk_index) else chunk_index
        if not isinstance(idx, list) or not idx or not all(whole(i, 0) for i in idx):
            bad("\"chunk_index\" must be an integer >= 0 or a non-empty list of them")
        q.chunk_index = sorted(set(idx))
    return q


# ---------------------------------------------------------------- the pool


def corpus_pipeline(settings: RagSettings, tokenizer_spec: str, root: Path):
    """The corpus chunked as `nextlong acer` chunks it, and (embedding) its vectors: cached stages in `root`."""
    from ..synthesis.acer import stages as A
    from ..synthesis import stages as S
    from ..synthesis.artifacts import DEFAULT_EMBEDDER_SPEC
    from ..synthesis.framework import Pipeline, ReadCorpus

    spec = settings.embedder or DEFAULT_EMBEDDER_SPEC
    steps = [ReadCorpus(name="corpus", path=str(settings.corpus), text_field=settings.text_field,
                        id_field=settings.id_field),
             A.ChunkStage(name="chunk", inputs=("corpus",), tokenizer=tokenizer_spec, chunk_size=settings.chunk_tokens,
                          chunk_unit="tokens"),
             S.Consolidate(name="chunks", inputs=("chunk",))]
    if settings.retriever == "embedding":
        steps += [S.FitEmbedder(name="embedder", inputs=("chunks",), embedder=spec),
                  S.EmbedStage(name="embed", inputs=("chunk", "embedder"), embedder=spec),
                  S.GatherEmbeddings(name="embeddings", inputs=("embed",))]
    return Pipeline(root, steps)


def chunk_contexts(texts: Sequence[str], tokenizer, chunk_tokens: int) -> list[list[tuple[str, np.ndarray]]]:
    """Each text cut as ACER cuts a corpus document: [(chunk text, token ids)] (empty chunks left out)."""
    from ..synthesis.acer.stages import split_long_chunks
    from ..corpus.chunking import chunk_documents

    if not texts:
        return []
    table = split_long_chunks(chunk_documents(list(texts), max_len=chunk_tokens, unit="tokens", tokenizer=tokenizer,
                                              with_ids=True), chunk_tokens, tokenizer)
    out: list[list] = [[] for _ in texts]
    for doc, text, ids in zip(table.column("doc_index").to_pylist(), table.column("text").to_pylist(),
                              table.column("input_ids").to_pylist()):
        if ids:
            out[doc].append((text, np.asarray(ids, np.uint32)))
    return out


@dataclass
class Pool:
    """Corpus chunks (ids 0..N-1, the chunk store) then the chunks cut from `context`s (N, N+1, ...)."""

    store: object  # nextlong.synthesis.store.ChunkStore
    chunks_file: Path
    extra_texts: list[str] = field(default_factory=list)
    extra_ids: list[np.ndarray] = field(default_factory=list)
    extra_owner: list[str] = field(default_factory=list)  # the first question whose context it is

    @property
    def corpus_chunks(self) -> int:
        return self.store.num_chunks

    def __len__(self) -> int:
        return self.store.num_chunks + len(self.extra_ids)

    def ids(self, c: int) -> np.ndarray:
        n = self.store.num_chunks
        return np.asarray(self.store.chunk_tokens(c), np.uint32) if c < n else self.extra_ids[c - n]

    def num_tokens(self, c: int) -> int:
        n = self.store.num_chunks
        return int(self.store.token_counts[c]) if c < n else int(self.extra_ids[c - n].size)

    def texts(self, chunk_ids) -> dict[int, str]:
        from ..synthesis.acer.stages import chunk_text

        n = self.store.num_chunks
        corpus = sorted({int(c) for c in chunk_ids if c < n})
        out = dict(zip(corpus, chunk_text(self.chunks_file, corpus)))
        out.update({int(c): self.extra_texts[c - n] for c in chunk_ids if c >= n})
        return out

    def label(self, c: int) -> dict:
        n = self.store.num_chunks
        if c < n:
            return {"chunk_id": int(c), "doc_id": self.store.doc_ids[int(self.store.chunk_doc[c])],
                    "chunk_index": int(self.store.chunk_index[c])}
        return {"chunk_id": int(c), "doc_id": CONTEXT_DOC + self.extra_owner[c - n], "chunk_index": -1}


# ---------------------------------------------------------------- the plan


@dataclass
class Entry:
    """One question, ready to score: its gold chunks, ranked candidates, and fixed prompt parts."""

    q: RagQuestion
    gold: list[int]  # pool ids, in document order
    candidates: list[int]  # retrieved, best first, copies of the gold (and answers, no-answer) removed
    question_ids: np.ndarray  # sample.txt with the question
    answer_tokens: int  # the longest gold answer, " " + answer
    max_new_tokens: int
    read: int  # retrieve-then-read reads the first `read` candidates

    @property
    def read_chunks(self) -> list[int]:
        return self.candidates[:self.read]

    @property
    def distractors(self) -> list[int]:
        gold = set(self.gold)
        return [c for c in self.candidates if c not in gold]


@dataclass
class Layout:
    """A long-context prompt: `chunks` in order, the gold block at token span `gold_span`."""

    ids: np.ndarray
    chunks: list[int]  # pool ids in prompt order (gold included)
    gold_span: tuple[int, int]  # [start, end) of the gold chunks with their separators
    depth: float  # the actual share (percent) of distractor tokens before the gold block
    ran_out: bool  # every candidate was used and the length is still not filled


class Pieces:
    """Pool chunks as a long context holds them: each one's first `chunk_tokens` ids and the separator after it,
    tokenized together as ACER's samples are (templates.context_pieces). Each is made once; the most recently
    used are kept up to `keep_ids` ids in all (a whole evaluation's candidates could take gigabytes), the
    others made again when a later layout needs them."""

    def __init__(self, pool: Pool, tokenizer, settings: RagSettings, keep_ids: int = 1 << 25):
        from collections import OrderedDict

        self.pool, self.tokenizer, self.settings, self.keep_ids = pool, tokenizer, settings, keep_ids
        self._kept: OrderedDict[int, np.ndarray] = OrderedDict()
        self._kept_ids = 0

    def of(self, chunk_ids) -> dict[int, np.ndarray]:
        from ..synthesis.acer.templates import context_pieces

        wanted = list(dict.fromkeys(chunk_ids))
        todo = [c for c in wanted if c not in self._kept]
        ct = self.settings.chunk_tokens
        made = dict(zip(todo, context_pieces(self.tokenizer, [self.pool.ids(c)[:ct] for c in todo],
                                             self.settings.separator))) if todo else {}
        out = {c: made[c] if c in made else self._kept[c] for c in wanted}
        for c in wanted:  # most recently used last; the oldest go first
            if c in made:
                self._kept[c] = made[c]
                self._kept_ids += made[c].size
            else:
                self._kept.move_to_end(c)
        while self._kept_ids > self.keep_ids and self._kept:
            self._kept_ids -= self._kept.popitem(last=False)[1].size
        return out


@dataclass
class RagPlan:
    settings: RagSettings
    pool: Pool
    entries: list[Entry]
    templates: dict
    tokenizer: object
    pieces: Pieces
    retrieve: int
    fingerprint: str
    root: Path
    older_fingerprint: str | None = None  # the same run's before DECODING_REVISION (runner.ResultJournal's older)
    # the same run's before POSITIONS_REVISION, for a model whose positions only its text_config names (else None)
    unpositioned_fingerprint: str | None = None

    def layout(self, e: Entry, length: int, depth: float) -> Layout:
        """The long context of `e` at `length` with the gold at `depth` percent (ACER's sample format)."""
        from ..synthesis.acer.stages import question_seed

        piece = self.pieces.of(e.gold + e.candidates)
        size = {c: p.size for c, p in piece.items()}
        budget = (length - len(self.tokenizer.prefix_ids) - e.question_ids.size - e.answer_tokens
                  - sum(size[c] for c in e.gold))
        chosen, used = [], 0
        distractors = e.distractors
        for c in distractors:
            if used + size[c] <= budget:
                chosen.append(c)
                used += size[c]
        if self.settings.order == "shuffled":
            rng = np.random.default_rng(question_seed(self.settings.seed, f"{e.q.id}\0{length}"))
            chosen = [chosen[i] for i in rng.permutation(len(chosen))]
        prefix = np.concatenate([[0], np.cumsum([size[c] for c in chosen], dtype=np.int64)])
        total = int(prefix[-1])
        at = int(np.argmin(np.abs(prefix - depth / 100 * total)))  # nearest boundary; ties: the earlier
        order = chosen[:at] + e.gold + chosen[at:]
        parts = [piece[c] for c in order]
        start = int(prefix[at])
        end = start + sum(size[c] for c in e.gold)
        ids = np.concatenate(parts + [e.question_ids]).astype(np.uint32)
        return Layout(ids, order, (start, end), round(100 * start / total, 4) if total else 0.0,
                      len(chosen) == len(distractors))

    def read_prompt(self, e: Entry) -> np.ndarray:
        """Retrieve-then-read: read.txt with the top `read` candidates (passage.txt each, best first)."""
        from ..synthesis.acer.templates import passages_ids

        ct = self.settings.chunk_tokens
        passages = passages_ids(self.templates, self.tokenizer, [self.pool.ids(c)[:ct] for c in e.read_chunks])
        return self.templates["read"].render(self.tokenizer, passages=passages, question=e.q.question)


def _retrieve_default(settings: RagSettings, pool: Pool, sep: int, gold_max: int) -> int:
    """Enough chunks to fill the largest length twice over with mean-sized chunks, plus the read ones and gold."""
    mean = max(1.0, float(pool.store.mean_token_count) if pool.store.num_chunks else settings.chunk_tokens)
    fill = math.ceil(max(settings.lengths) / (min(mean, settings.chunk_tokens) + sep))
    return min(len(pool), 2 * fill + settings.read + gold_max + 32)


def _search(settings: RagSettings, pool: Pool, root: Path, questions: list[str], k: int):
    """(ids (Q, k), scores) over the whole pool, best first; -1 pads."""
    if settings.retriever == "bm25":
        import itertools

        from ..mining.bm25 import BM25Index
        from ..synthesis.artifacts import chunk_texts

        index = BM25Index.build(itertools.chain(chunk_texts(root / "chunks")(), pool.extra_texts))
        return index.search(questions, k)
    from ..synthesis.negatives import ExactSearcher
    from ..synthesis.framework import DONE_FILE, read_done
    from ..synthesis.artifacts import DEFAULT_EMBEDDER_SPEC, open_vectors, ready_embedder

    embedder = ready_embedder(settings.embedder or DEFAULT_EMBEDDER_SPEC, root / "embedder", None)
    vectors = np.asarray(open_vectors(root / "embeddings", record=read_done(root / "embeddings" / DONE_FILE)),
                         np.float32)
    if pool.extra_texts:
        vectors = np.vstack([vectors, np.asarray(embedder.embed(pool.extra_texts), np.float32)])
    return ExactSearcher(vectors).search(np.asarray(embedder.embed(questions), np.float32), k)


def _padded(text: str) -> str:
    from ..synthesis.acer.answers import normalize_answer

    return f" {normalize_answer(text)} "


def prepare_rag(lm, settings: RagSettings, questions: list[RagQuestion], out_dir) -> RagPlan:
    """Everything before the model answers: chunk (and embed) the corpus into DIR/rag/, resolve each
    question's gold chunks, retrieve, and check every prompt fits. Errors are one line, before any scoring."""
    from ..synthesis.acer.answers import contains_answer
    from ..synthesis.acer.templates import load_templates
    from ..synthesis.executors.local import LocalExecutor
    from ..synthesis.framework import Pipeline, check_stage_files, corpus_identity
    from ..synthesis.artifacts import load_store

    settings.validate()
    tok = lm.tokenizer
    templates = load_templates(settings.prompts)
    root = Path(out_dir) / "rag"
    pipeline = corpus_pipeline(settings, lm.tokenizer_spec, root)
    chunking = Pipeline(root, pipeline.stages[:3])
    check_stage_files(chunking, chunking.fingerprints(), skip_option=None)  # a cached chunk store, before use
    # the chunks first: the questions' evidence is checked before the (slow) embedding
    LocalExecutor().run(chunking, rebuild=True, progress=settings.progress)
    store = load_store(root / "chunks")
    pool = Pool(store, root / "chunks" / "chunks.parquet")

    # gold chunks: `context`s cut like the corpus and added to the pool, or chunks of a corpus document
    owner: dict[str, str] = {}  # context text -> the first question giving it (identical contexts share chunks)
    for q in questions:
        for text in q.contexts or []:
            owner.setdefault(text, q.id)
    texts = list(owner)
    by_text = {}
    for text, pieces in zip(texts, chunk_contexts(texts, tok, settings.chunk_tokens)):
        by_text[text] = list(range(len(pool), len(pool) + len(pieces)))
        pool.extra_texts += [t for t, _ in pieces]
        pool.extra_ids += [ids for _, ids in pieces]
        pool.extra_owner += [owner[text]] * len(pieces)
    doc_number = {d: i for i, d in enumerate(store.doc_ids)}
    golds = []
    for q in questions:
        where = f"{settings.questions}:{q.line}: question {q.id!r}"
        if q.contexts is not None:
            evidence = [c for text in q.contexts for c in by_text[text]]
            if not evidence:
                raise NextlongError(f"{where}: its context has no text to chunk")
        else:
            if q.doc_id not in doc_number:
                id_field = f"the --id-field {settings.id_field!r}" if settings.id_field else "FILE:LINE (no --id-field)"
                raise NextlongError(f"{where}: gold evidence missing from the corpus: doc_id {q.doc_id!r} is not a "
                                 f"document of {settings.corpus} (ids are {id_field})")
            d = doc_number[q.doc_id]
            first, count = int(store.doc_first_chunk[d]), int(store.doc_num_chunks[d])
            evidence = [c for c in range(first, first + count) if store.token_counts[c] > 0]
            if q.chunk_index is not None:
                have = {int(store.chunk_index[c]): c for c in evidence}
                missing = [i for i in q.chunk_index if i not in have]
                if missing:
                    raise NextlongError(f"{where}: gold evidence missing from the corpus: doc_id {q.doc_id!r} has no chunk "
                                     f"{missing[0]} (it has {len(have)} chunks of up to {settings.chunk_tokens} "
                                     "tokens, indexed from 0)")
                golds.append([have[i] for i in q.chunk_index])
                continue
            if not evidence:
                raise NextlongError(f"{where}: gold evidence missing from the corpus: doc_id {q.doc_id!r} has no text")
        text_of = pool.texts(evidence)
        holding = [c for c in evidence if contains_answer(text_of[c], q.answers)]
        golds.append(holding or evidence)

    # fixed prompt parts, and the length each question needs at least
    sep = np.asarray(tok.encode_ordinary(settings.separator), np.uint32)
    ct = settings.chunk_tokens
    pieces = Pieces(pool, tok, settings)
    entries = []
    for q, gold in zip(questions, golds):
        q_ids = templates["sample"].render(tok, question=q.question)
        answer_tokens = max(len(tok.encode_ordinary(" " + a)) for a in q.answers)
        need = (sum(p.size for p in pieces.of(gold).values()) + q_ids.size + answer_tokens
                + len(tok.prefix_ids))
        if need > min(settings.lengths):
            raise UsageError(
                f"--lengths {min(settings.lengths)} is too short for {settings.questions}:{q.line} (question {q.id!r}): "
                f"its {len(gold)} gold chunk(s) with separators, the question prompt ({q_ids.size} tokens) and the "
                f"longest answer ({answer_tokens}) need {need} tokens; use lengths of {need} or more, or a smaller "
                "--rag-chunk-tokens")
        budget = settings.max_new_tokens or answer_tokens + ANSWER_MARGIN
        entries.append(Entry(q, gold, [], q_ids, answer_tokens, budget, settings.read))

    # retrieval over the whole pool, then each question's candidates
    LocalExecutor().run(pipeline, rebuild=True, progress=settings.progress)  # only stages whose settings changed
    k = settings.retrieve or _retrieve_default(settings, pool, sep.size, max(map(len, golds)))
    k = min(k, len(pool))
    ids, _ = _search(settings, pool, root, [q.question for q in questions], k)
    texts_needed = {int(c) for row in ids for c in row if c >= 0} | {c for g in golds for c in g}
    text_of = pool.texts(sorted(texts_needed))
    norm = {c: _padded(t) for c, t in text_of.items()}
    for e, row in zip(entries, ids):
        gold = set(e.gold)
        gold_norm = [norm[c] for c in e.gold if norm[c].strip()]
        candidates = []
        for c in (int(c) for c in row if c >= 0):
            if c not in gold:
                if pool.num_tokens(c) == 0:
                    continue
                if any(g in norm[c] or norm[c] in g for g in gold_norm if norm[c].strip()):
                    continue  # a copy of the gold text
                if settings.distractors == "no-answer" and contains_answer(text_of[c], e.q.answers):
                    continue
            candidates.append(c)
        e.candidates = candidates

    plan = RagPlan(settings, pool, entries, templates, tok, pieces, k, "", root)
    limit = lm.max_positions
    if limit is not None:
        for e in entries:
            n = len(tok.prefix_ids) + len(plan.read_prompt(e)) + e.max_new_tokens
            if n > limit:
                raise UsageError(
                    f"retrieve-then-read: the reader's prompt for question {e.q.id!r} ({settings.questions}:{e.q.line}: "
                    f"--rag-read {settings.read} chunks of up to {ct} tokens, read.txt and the question) plus "
                    f"{e.max_new_tokens} tokens to generate needs {n} tokens, beyond the model's {limit} positions; "
                    "use a smaller --rag-read or --rag-chunk-tokens")
    identity = {"settings": {k: v for k, v in asdict(settings).items() if k not in ("dump", "progress")},
                "questions": corpus_identity(settings.questions), "corpus": corpus_identity(settings.corpus),
                "model": lm.identity, "tokenizer": tok.fingerprint, "retrieve": k,
                "templates": {n: t.text for n, t in templates.items()}, "layout": LAYOUT_REVISION,
                "decoding": DECODING_REVISION}
    if positions_in_text_config(lm.model.config):
        plan.unpositioned_fingerprint = _fingerprint(identity)
        identity["positions"] = POSITIONS_REVISION
    plan.fingerprint = _fingerprint(identity)
    plan.older_fingerprint = _fingerprint({k: v for k, v in identity.items() if k not in ("decoding", "positions")})
    return plan


def _fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- answering and scoring


def answer_text(text: str) -> str:
    """The answer in a continuation: the text before the first newline after some text, stripped."""
    return text.strip().split("\n", 1)[0].strip()


def generate(lm, prompt_ids, max_new_tokens: int) -> str:
    """Greedy continuation of `prompt_ids` until an end-of-text id, a newline after some text, or the
    budget (the other tasks' decoding: one prefill into a KV cache, then one token per step)."""
    import torch

    from .model import attention, decode, forward, greedy_ids

    decode_attn = "eager" if lm.prefill_attn == "eager" else "sdpa"
    with torch.no_grad():
        # after the tokenizer's BOS-like prefix (Llama-3), as HF tokenizers' default encode gives a prompt
        ids = torch.tensor([[*lm.tokenizer.prefix_ids, *(int(i) for i in prompt_ids)]], dtype=torch.long,
                           device=lm.device)
        with attention(lm.model, lm.prefill_attn):
            logits, cache, _ = forward(lm.model, ids, last_only=True)
        with attention(lm.model, decode_attn):  # never fed past the model's positions (greedy_ids)
            out = greedy_ids(lm, cache, int(logits[0, -1].float().argmax()), ids.shape[1], max_new_tokens)
    return answer_text(decode(lm.tokenizer, out))


def score(prediction: str, answers: Sequence[str]) -> dict:
    from ..synthesis.acer.answers import exact_match, token_f1

    return {"em": exact_match(prediction, answers), "f1": token_f1(prediction, answers)}


def jobs(plan: RagPlan) -> list[tuple[str, int, float | None, str]]:
    """Every (task, length, depth, question id) the run answers, in order: the baseline first."""
    s = plan.settings
    return ([(BASELINE, 0, None, e.q.id) for e in plan.entries]
            + [(TASK, n, d, e.q.id) for n in s.lengths for d in s.depths for e in plan.entries])


def run_rag(lm, plan: RagPlan) -> list[dict]:
    """Answer every job (resuming DIR/rag/.progress.jsonl); returns the records."""
    from tqdm import tqdm

    from .model import decoded_alike
    from .runner import ResultJournal

    entry = {e.q.id: e for e in plan.entries}
    limit, prefix = lm.max_positions, len(lm.tokenizer.prefix_ids)  # a record's prompt_tokens leave the prefix out
    journal = ResultJournal(plan.root, plan.fingerprint, (plan.older_fingerprint, plan.unpositioned_fingerprint),
                            lambda r: decoded_alike(limit, prefix + r["prompt_tokens"],
                                                    entry[r["index"]].max_new_tokens))
    records = []
    try:
        for task, length, depth, qid in tqdm(jobs(plan), desc="eval rag", unit="answer", dynamic_ncols=True,
                                             disable=not plan.settings.progress):
            key = (task, length, depth, qid)
            record = journal.done.get(key)
            if record is not None and not (plan.settings.dump and "prompt" not in record):
                records.append(record)
                continue
            e = entry[qid]
            if task == BASELINE:
                ids, chunks = plan.read_prompt(e), e.read_chunks
                extra = {"gold_in_read": any(c in set(e.gold) for c in chunks)}
            else:
                layout = plan.layout(e, length, depth)
                ids, chunks = layout.ids, layout.chunks
                extra = {"gold_span": list(layout.gold_span), "depth_actual": layout.depth,
                         "distractors": len(chunks) - len(e.gold), "ran_out": layout.ran_out}
            if record is None:
                prediction = generate(lm, ids, e.max_new_tokens)
                record = {"task": task, "length": length, "depth": depth, "index": qid, "question": e.q.question,
                          "answers": e.q.answers, "prediction": prediction, **score(prediction, e.q.answers),
                          "prompt_tokens": len(ids), **extra}
            if plan.settings.dump:
                record.update(prompt=plan.tokenizer.decode(np.asarray(ids).tolist()),
                              chunks=[plan.pool.label(c) | {"gold": c in set(e.gold)} for c in chunks])
            journal.add(record)
            records.append(record)
    finally:
        journal.close()
    return records


# ---------------------------------------------------------------- results


def _stats(records: Sequence[dict]) -> dict:
    out = {"n": len(records)}
    if records:
        out["em"] = round(100 * sum(r["em"] for r in records) / len(records), 4)
        out["f1"] = round(100 * sum(r["f1"] for r in records) / len(records), 4)
        out["prompt_tokens"] = round(sum(r["prompt_tokens"] for r in records) / len(records), 1)
    return out


def aggregate(records: Sequence[dict], plan: RagPlan) -> dict:
    """results.json's "rag": the long-context cells (length x depth), per length and overall, the
    retrieve-then-read score, and one comparison row per length."""
    s = plan.settings
    long = [r for r in records if r["task"] == TASK]
    read = [r for r in records if r["task"] == BASELINE]
    by_length = {n: [r for r in long if r["length"] == n] for n in s.lengths}
    baseline = _stats(read)
    if read:
        baseline["gold_in_read"] = round(100 * sum(r["gold_in_read"] for r in read) / len(read), 4)
    comparison = []
    for n in s.lengths:
        lc = _stats(by_length[n])
        comparison.append({"length": n, "long_context_em": lc.get("em"), "long_context_f1": lc.get("f1"),
                           "retrieve_then_read_em": baseline.get("em"), "retrieve_then_read_f1": baseline.get("f1"),
                           "f1_gain": None if "f1" not in lc or "f1" not in baseline
                           else round(lc["f1"] - baseline["f1"], 4)})
    return {
        "metric": "SQuAD exact match and token F1 (0-100), the best over each question's gold answers",
        "questions": len(plan.entries),
        "settings": {"retriever": s.retriever, "embedder": s.embedder if s.retriever == "embedding" else None,
                     "chunk_tokens": s.chunk_tokens, "read": s.read, "retrieve": plan.retrieve,
                     "distractors": s.distractors, "order": s.order, "separator": s.separator,
                     "prompts": {n: plan.templates[n].path for n in ("sample", "read", "passage")}},
        "pool": {"corpus_chunks": plan.pool.corpus_chunks, "context_chunks": len(plan.pool.extra_ids),
                 "gold_chunks_mean": round(sum(len(e.gold) for e in plan.entries) / len(plan.entries), 3)},
        "cells": [dict(length=n, depth=d, **_stats([r for r in by_length[n] if r["depth"] == d]))
                  for n in s.lengths for d in s.depths],
        "by_length": {str(n): _stats(by_length[n]) for n in s.lengths},
        "overall": _stats(long),
        "retrieve_then_read": baseline,
        "comparison": comparison,
        "contexts_short_of_length": sum(bool(r.get("ran_out")) for r in long),
    }


def _questions(result: dict) -> str:
    n = result["questions"]
    return f"{n} question{'' if n == 1 else 's'}"


def draw_heatmap(out_dir, result: dict, lengths: Sequence[int], depths: Sequence[float]) -> list[str]:
    from .plots import length_depth_heatmap

    cells = {(c["length"], c["depth"]): c for c in result["cells"]}
    panels = {name: [[cells[(n, d)].get(key) for d in depths] for n in lengths]
              for key, name in (("f1", "token F1"), ("em", "exact match"))}
    title = f"rag: the gold chunk among retrieved distractors ({_questions(result)})"
    return [length_depth_heatmap(Path(out_dir) / "heatmap_rag.png", title, lengths, depths, panels).name]


def summary_section(result: dict) -> str:
    s, base = result["settings"], result["retrieve_then_read"]
    gold = f"; the gold chunk was among them for {base['gold_in_read']:.1f}% of the questions" \
        if "gold_in_read" in base else ""
    retriever = s["retriever"] + (f" ({s['embedder'] or 'all-MiniLM-L6-v2'})" if s["retriever"] == "embedding" else "")
    lines = [f"RAG ({_questions(result)}; {retriever} retrieval over chunks of up to {s['chunk_tokens']} "
             f"tokens, {s['distractors']} distractors): exact match / token F1, 0-100, the best over each question's "
             "gold answers. Long context: the gold chunk(s) among retrieved distractors filling the length, averaged "
             f"over depths (heat map `heatmap_rag.png`); retrieve-then-read: the same model reading only the top "
             f"{s['read']} retrieved chunks{gold}.", "",
             "| length | long context EM | long context F1 | retrieve-then-read EM | retrieve-then-read F1 | F1 gain |",
             "|---|---|---|---|---|---|"]

    def f(x):
        return "-" if x is None else f"{x:.1f}"

    for row in result["comparison"]:
        gain = "-" if row["f1_gain"] is None else f"{row['f1_gain']:+.1f}"
        lines.append(f"| {row['length']} | {f(row['long_context_em'])} | {f(row['long_context_f1'])} | "
                     f"{f(row['retrieve_then_read_em'])} | {f(row['retrieve_then_read_f1'])} | {gain} |")
    if result.get("contexts_short_of_length"):
        lines += ["", f"{result['contexts_short_of_length']} long contexts ran out of retrieved chunks before their "
                      "length (raise --rag-retrieve)."]
    return "\n".join(lines + [""])


def settings_from_args(args, lengths, depths) -> RagSettings:
    if not getattr(args, "rag_questions", None):
        raise UsageError("--tasks rag needs --rag-questions FILE.jsonl: held-out questions with gold answers and gold "
                         "evidence (see docs/evaluation.md)")
    return RagSettings(questions=args.rag_questions, corpus=args.corpus, lengths=list(lengths), depths=list(depths),
                       seed=args.seed, read=args.rag_read, retriever=args.rag_retriever, embedder=args.rag_embedder,
                       chunk_tokens=args.rag_chunk_tokens, retrieve=args.rag_retrieve,
                       distractors=args.rag_distractors, order=args.rag_order, prompts=args.rag_prompts,
                       separator=getattr(args, "rag_separator", SEPARATOR),
                       max_new_tokens=args.max_new_tokens, text_field=args.text_field, id_field=args.id_field,
                       dump=args.dump)
