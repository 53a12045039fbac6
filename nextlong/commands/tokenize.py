"""`nextlong tokenize`: every whole document of a corpus into token ids (Parquet: one row per document, with its
number in the corpus, its id and its token ids)."""

from __future__ import annotations

from .chunk import add_corpus_arguments, corpus_io, corpus_options, print_summary


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tokenize", help="tokenize whole documents of a corpus (Parquet)", description=__doc__)
    add_corpus_arguments(p)
    p.add_argument("--tokenizer", required=True, help="tokenizer: cl100k_base, a tokenizer.json, ...")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..corpus.chunking import tokenize_corpus

    stats = tokenize_corpus(*corpus_io(args), tokenizer=args.tokenizer, **corpus_options(args))
    print_summary("tokenize", stats, args)
    return 0
