"""`nextlong acer`: question-answering long-context training data made by a short-context LM (ACER)."""

from __future__ import annotations

import argparse
import sys

from ..synthesis.acer.config import DTYPES, FILTERS, FORMATS, ORDERS, RANKERS, RETRIEVERS
from .argtypes import THREADS_HELP, nonnegative_int, positive_int, seed, threads, unescape


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "acer",
        help="long-context QA samples from retrieval + a short-context LM's answers (ACER)",
        description="For each question: retrieve --retrieve chunks of the corpus, rank them with the LM (or the "
                    "retriever's score), let the LM read the top --read chunks and answer; write the sample = the "
                    "retrieved chunks that fit --target-length, the question and the answer, with the loss mask on "
                    "the answer. Stages are cached in --out; re-running resumes. docs/acer.md explains the method.",
    )
    p.add_argument("--corpus", required=True, help="JSONL (.gz/.zst), Parquet, or a folder of text files")
    p.add_argument("--model", required=True,
                   help="a causal-LM folder (Hugging Face layout) or a `nextlong train` run: the ranker and reader")
    p.add_argument("--out", required=True, help="output folder (stages are cached here)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--questions", help="JSONL: question, optional answer (string or list) or answers, optional id")
    src.add_argument("--generate-questions", type=positive_int, metavar="N",
                     help="let the model write N questions, one about each of N random chunks (no gold answers)")
    p.add_argument("--target-length", type=positive_int, default=32768,
                   help="most tokens per sample: chunks + question + answer (default 32768)")
    p.add_argument("--chunk-tokens", type=positive_int, default=256,
                   help="chunk size in tokens: the retrieval unit (default 256)")
    p.add_argument("--retrieve", type=positive_int, default=200, help="chunks retrieved per question (default 200)")
    p.add_argument("--read", type=positive_int, default=8,
                   help="top-ranked chunks the model reads to answer; they must fit its context (default 8)")
    p.add_argument("--retriever", choices=RETRIEVERS,
                   help="embedding (the --embedder's cosine, exact below 50k chunks) or bm25 (default: bm25 with "
                        "--ranker bm25, else embedding)")
    p.add_argument("--ranker", choices=RANKERS, default="model",
                   help="model: the LM's probability that a chunk helps (a multiple-choice prompt, default); "
                        "embedding / bm25: the retriever's score, no LM call")
    p.add_argument("--order", choices=ORDERS, default="shuffled",
                   help="chunk order in the sample: a seeded shuffle (default) or retrieval rank, best first")
    p.add_argument("--filter", choices=FILTERS, default="none",
                   help="answer-match: keep only samples whose answer contains a gold answer (SQuAD normalisation; "
                        "default none)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256,
                   help="the reader's answer budget (default 256); an answer that reaches it unfinished is dropped "
                        "and counted (statistics.answers_cut_at_budget)")
    p.add_argument("--keep-cut-answers", action="store_true",
                   help="keep answers cut at --max-new-tokens, without the end-of-text id (so the model is not "
                        "taught to stop there); default: drop them")
    p.add_argument("--question-max-new-tokens", type=positive_int, default=64,
                   help="--generate-questions: one question's budget (default 64)")
    p.add_argument("--chain-of-thought", action="store_true",
                   help="the reader first quotes what helps from the passages, then answers on a line starting "
                        "\"So the answer is:\" (read_cot.txt); the whole text is the sample's answer, answers "
                        "without that line are dropped, and --filter answer-match reads only what follows it")
    p.add_argument("--seed", type=seed, default=0,
                   help="seeds the chunks drawn for --generate-questions and, with each question's id, the shuffled "
                        "chunk order (default 0)")
    p.add_argument("--embedder", help="embedder for --retriever embedding (default all-MiniLM-L6-v2 offline; static; "
                                      "hashed-tfidf; or a local model folder)")
    p.add_argument("--query-prefix", default="",
                   help="text put before each question when it is embedded, never before the chunks: the query "
                        "instruction of BGE / E5 style embedders, e.g. 'query: ' (default none; --retriever "
                        "embedding only)")
    p.add_argument("--tokenizer", help="tokenizer of the samples (default: the model folder's own, with exact ids)")
    p.add_argument("--separator", default="\\n\\n", help="text after every chunk of a sample (default a blank line)")
    p.add_argument("--format", choices=FORMATS, default="parquet",
                   help="format of the samples written (default parquet; the corpus goes by its files' extensions)")
    p.add_argument("--prompts", metavar="DIR",
                   help="a folder whose rank.txt, read.txt, read_cot.txt, passage.txt, question.txt or sample.txt "
                        "replace the shipped templates (nextlong/synthesis/acer/prompts/)")
    p.add_argument("--bm25-k1", type=float, default=1.2, help="BM25 k1 (default 1.2)")
    p.add_argument("--bm25-b", type=float, default=0.75, help="BM25 b (default 0.75)")
    p.add_argument("--text-field", default="text",
                   help="JSON field / Parquet column holding the text (default: text)")
    p.add_argument("--id-field", help="field holding the document id, which segments' doc_id names "
                   "(default: <file>:<line or row>; repeated values are kept and counted)")
    p.add_argument("--on-error", default="raise", choices=("raise", "skip"),
                   help="bad corpus records: stop with an error (default) or skip and count them")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per LM forward (default 16)")
    p.add_argument("--device", help="torch device of the LM (default cuda if available)")
    p.add_argument("--dtype", choices=DTYPES, help="LM weights dtype (default bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code the model folder ships (config.json auto_map); only for a folder you trust")
    p.add_argument("--threads", type=threads, default=0, help=THREADS_HELP)
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where the stages run: local (this process, default) or ray (a Ray cluster: the embedder and "
                        "the LM stages on GPU actors; needs pip install 'nextlong[ray]'); the output is the same")
    p.add_argument("--ray-address",
                   help="--executor ray: a cluster to join (auto or HOST:PORT; default: start one here)")
    p.add_argument("--gpus", type=nonnegative_int, default=0,
                   help="--executor ray: GPUs for the embedder's and the LM's actors (default 0: CPU)")
    p.add_argument("--actors", type=positive_int,
                   help="--executor ray: actors of those stages, each holding the LM (default: one per GPU, or one)")
    p.add_argument("--rebuild", action="store_true", help="rebuild cached stages built with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bars; the summary is still printed")
    p.set_defaults(func=run)


def requirements(args: argparse.Namespace) -> tuple[str, ...]:
    """The LM needs torch and transformers; the embedding retriever its embedder's packages."""
    from ..extras import embedder_modules

    needs = ("torch", "transformers")
    if args.retriever == "embedding" or (args.retriever is None and args.ranker != "bm25"):
        needs += embedder_modules(args.embedder)
    return needs + (("ray",) if args.executor == "ray" else ())


def run(args: argparse.Namespace) -> int:
    from ..synthesis.acer.config import AcerConfig
    from ..synthesis.acer.pipeline import run as run_pipeline

    cfg = AcerConfig(
        out=args.out, corpus=args.corpus, model=args.model, questions=args.questions,
        generate_questions=args.generate_questions, target_length=args.target_length, chunk_tokens=args.chunk_tokens,
        retrieve=args.retrieve, read=args.read, retriever=args.retriever, ranker=args.ranker, order=args.order,
        filter=args.filter, max_new_tokens=args.max_new_tokens, keep_cut_answers=args.keep_cut_answers,
        question_max_new_tokens=args.question_max_new_tokens, query_prefix=args.query_prefix,
        chain_of_thought=args.chain_of_thought, seed=args.seed, embedder=args.embedder, tokenizer=args.tokenizer,
        separator=unescape(args.separator), format=args.format, prompts=args.prompts, bm25_k1=args.bm25_k1,
        bm25_b=args.bm25_b, text_field=args.text_field, id_field=args.id_field, on_error=args.on_error,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
        num_threads=args.threads, executor=args.executor, ray_address=args.ray_address, gpus=args.gpus,
        actors=args.actors, rebuild=args.rebuild, progress=not (args.quiet or args.no_progress))
    manifest = run_pipeline(cfg)
    if args.no_progress and not args.quiet:
        from ..synthesis.acer.pipeline import summary

        print(summary(manifest), file=sys.stderr, flush=True)
    return 0
