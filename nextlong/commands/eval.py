"""`nextlong eval MODEL --out DIR`: offline RULER / JSON-KV recall and LongPPL of a local causal LM."""

from __future__ import annotations

import argparse

from ..eval.options import ATTENTION, DEFAULT_TASKS, EVAL_DEFAULTS as D, DISTRACTORS, DTYPES, MODES
from ..synthesis.acer.config import ORDERS, RETRIEVERS
from .argtypes import OneSpelling, int_list, positive_int, seed, unescape


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="long-context recall (RULER, JSON-KV) and LongPPL of a local model, with heat maps",
        description="Generate RULER's offline tasks and HELMET's JSON-KV on the fly in the model's own tokens "
        "(prompt + answer fill each length), score them by greedy generation and teacher-forced, and compute "
        "LongPPL on long documents. Writes DIR/results.json, a length x depth heat map per task, "
        "loss_by_position.png (longppl), repeat_gain.png (repeat), summary.md and a manifest; --dump adds "
        "samples.jsonl.",
    )
    p.add_argument("model", help="a Hugging Face causal-LM folder, or a `nextlong train` run folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tasks", default=D["tasks"],
                   help="comma-separated tasks or groups: niah_single_1..3, niah_multikey_1..3, niah_multivalue, "
                   "niah_multiquery, vt, cwe, fwe, json_kv, longppl, repeat (the repeat probe: can the model copy from "
                   "half of each length back, see nextlong.eval.repeat), rag (long-context RAG against retrieve-then-"
                   "read, ACER's evaluation: needs --rag-questions and --corpus, see nextlong.eval.rag); groups all, "
                   f"ruler, recall, niah_single, niah_multikey (default {DEFAULT_TASKS})")
    p.add_argument("--lengths", type=int_list, default=D["lengths"],
                   help="comma-separated target lengths in tokens (default: 1024, 2048, ... up to the model's "
                   "positions)")
    p.add_argument("--depths", type=positive_int, default=D["depths"], help="needle depths spread over 0-100%% (default 5)")
    p.add_argument("--samples", type=positive_int, default=D["samples"],
                   help="samples per task, length and depth (default 1; RULER uses hundreds)")
    p.add_argument("--seed", type=seed, default=D["seed"],
                   help="seeds the task samples (needles, keys, haystacks) and the RAG tasks' shuffled chunk order "
                        f"(default {D['seed']})")
    p.add_argument("--mode", choices=MODES, default=D["mode"],
                   help="greedy generation (RULER), teacher-forced answer scoring, or both (default)")
    p.add_argument("--max-new-tokens", type=positive_int, default=D["max_new_tokens"],
                   help="generation budget (default per task: gold answer tokens + 8)")
    p.add_argument("--corpus", default=D["corpus"],
                   help="local corpus (JSONL/Parquet/text folder) for the essay haystacks and LongPPL documents "
                   "(default: the embedded stdlib-docstring corpus)")
    p.add_argument("--text-field", default=D["text_field"], help="text field of --corpus records (default text)")
    p.add_argument("--id-field", default=D["id_field"],
                   help="id field of --corpus records, which --rag-questions' doc_id names (default: FILE:LINE ids)")
    rag = p.add_argument_group("--tasks rag (long-context RAG vs retrieve-then-read; --corpus is the distractor pool)")
    rag.add_argument("--rag-questions", default=D["rag_questions"], metavar="FILE.jsonl",
                     help="held-out questions: question, answer or answers, optional id, and the gold evidence as "
                     "context (the passage holding the answer) or doc_id (+ optional chunk_index) into --corpus")
    rag.add_argument("--rag-retriever", choices=RETRIEVERS, default=D["rag_retriever"],
                     help="ranks the pool for the distractors and the reader (default embedding)")
    rag.add_argument("--rag-embedder", default=D["rag_embedder"],
                     help="--rag-retriever embedding: all-MiniLM-L6-v2 (default, offline), hashed-tfidf[:DIM], static, "
                     "or a local encoder folder")
    rag.add_argument("--rag-chunk-tokens", type=positive_int, default=D["rag_chunk_tokens"],
                     help="chunk size in the model's tokens, as `nextlong acer --chunk-tokens` (default 256)")
    rag.add_argument("--rag-read", type=positive_int, default=D["rag_read"],
                     help="retrieve-then-read: chunks the model reads, as `nextlong acer --read` (default 8)")
    rag.add_argument("--rag-retrieve", type=positive_int, default=D["rag_retrieve"],
                     help="chunks retrieved per question (default: enough to fill the largest length twice)")
    rag.add_argument("--rag-distractors", choices=DISTRACTORS, default=D["rag_distractors"],
                     help="retrieved: the best retrieved chunks other than the gold (default); no-answer: also "
                     "leave out every chunk that holds a gold answer (HELMET's RAG)")
    rag.add_argument("--rag-order", choices=ORDERS, default=D["rag_order"],
                     help="distractor order around the gold: seeded shuffle (ACER's default) or retrieval rank")
    rag.add_argument("--rag-separator", default=D["rag_separator"], type=unescape,
                     help="text after every chunk of the long context, as the data's `nextlong acer --separator` "
                     "(default a blank line)")
    rag.add_argument("--rag-prompts", default=D["rag_prompts"], metavar="DIR",
                     help="a folder whose sample.txt / read.txt / passage.txt replace ACER's templates (as `nextlong "
                     "acer --prompts`)")
    p.add_argument("--longppl-length", type=positive_int, default=D["longppl_length"],
                   help="tokens per LongPPL document (default: the largest length)")
    p.add_argument("--longppl-docs", type=positive_int, default=D["longppl_docs"], help="LongPPL documents (default 4)")
    p.add_argument("--longppl-evaluator", default=D["longppl_evaluator"], metavar="MODEL",
                   help="a model (same tokenizer) that picks LongPPL's key tokens, as Fang et al. do, so every "
                        "model you evaluate with it is scored on the same tokens (default: each model picks its "
                        "own, which does not compare models)")
    p.add_argument("--repeat-docs", type=positive_int, default=D["repeat_docs"],
                   help="documents of the repeat probe, each with half the largest length in tokens (default 4)")
    p.add_argument("--short-window", type=positive_int, default=D["short_window"],
                   help="LongPPL's short context in tokens (default 4096; use less for small models)")
    p.add_argument("--short-stride", type=positive_int, default=D["short_stride"],
                   help="stride of the short-context windows (1 = exact, default 1024)")
    p.add_argument("--attn", "--attention", action=OneSpelling, dest="attn", choices=ATTENTION, default=D["attn"],
                   help="prefill attention: our kernel, SDPA or eager (default auto: SDPA, the faster one for a "
                   "single document on an H200; ours pays off for packed documents, which evaluation does not feed)")
    p.add_argument("--device", default=D["device"], help="torch device (default cuda if available)")
    p.add_argument("--dtype", choices=DTYPES, default=D["dtype"],
                   help="weights dtype (default bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="run lengths beyond the model's max_position_embeddings (warns instead of refusing)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code the model folder ships (config.json auto_map); off by default, never "
                        "asked: only for a folder you trust")
    p.add_argument("--dump", action="store_true", help="also write DIR/samples.jsonl with prompts and predictions")
    p.add_argument("--no-progress", action="store_true", help="no progress bars; the summary is still printed")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary (warnings and errors only)")
    p.set_defaults(func=run)


def requirements(args: argparse.Namespace) -> tuple[str, ...]:
    """Checked before the model loads: the pictures are drawn only after all the scoring."""
    return ("torch", "transformers", "matplotlib")


def run(args: argparse.Namespace) -> int:
    from ..eval.evaluation import run_eval
    from ..eval.options import EvalOptions

    run_eval(EvalOptions.from_cli(args))
    return 0
