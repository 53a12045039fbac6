"""`nextlong tokenize`: every whole document of a corpus into token ids (Parquet, TOKENS_SCHEMA)."""

from __future__ import annotations

from .chunk import add_corpus_arguments, print_summary


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tokenize", help="tokenize whole documents of a corpus (Parquet)", description=__doc__)
    add_corpus_arguments(p)
    p.add_argument("--tokenizer", required=True, help="tokenizer: cl100k_base, a tokenizer.json, ...")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..chunking import tokenize_corpus

    stats = tokenize_corpus(
        args.input if len(args.input) > 1 else args.input[0],
        args.out,
        tokenizer=args.tokenizer,
        text_field=args.text_field,
        id_field=args.id_field,
        format=args.format,
        on_error=args.on_error,
        num_threads=args.threads,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    print_summary("tokenize", stats, args.out)
    return 0
