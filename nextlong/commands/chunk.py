"""`nextlong chunk`: a corpus into a Parquet table of NExtLong meta-chunks (one row per chunk)."""

from __future__ import annotations

import sys

from .argtypes import THREADS_HELP, OneSpelling, positive_int, threads


def add_corpus_arguments(p) -> None:
    """Reader options shared by `chunk` and `tokenize`."""
    p.add_argument("input", nargs="*", help="corpus file(s) or directory: .jsonl/.json[.gz|.zst], .parquet, .txt")
    p.add_argument("--corpus", action="append", default=[], metavar="PATH",
                   help="a corpus path, as synthesize and acer take it (repeatable; the same as naming it first)")
    p.add_argument("--out", required=True, help="output Parquet file (written atomically, plus <out>.manifest.json)")
    p.add_argument("--text-field", default="text", help="JSON field / Parquet column holding the text (default: text)")
    p.add_argument("--id-field", default=None, help="field holding the document id (default: <file>:<line or row>)")
    p.add_argument("--input-format", "--format", dest="format", action=OneSpelling, default=None,
                   choices=("jsonl", "jsonl.gz", "jsonl.zst", "parquet", "txt"),
                   help="read every input file in this format instead of going by extension (--format: the same; "
                        "in synthesize and acer --format is the output's)")
    p.add_argument("--on-error", default="raise", choices=("raise", "skip"),
                   help="bad records: stop with an error (default) or skip and count them")
    p.add_argument("--threads", type=threads, default=0, help=THREADS_HELP)
    p.add_argument("--batch-size", type=positive_int, default=1024, help="documents per batch (default: 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary (errors only)")


def print_summary(command: str, stats: dict, args) -> None:
    """The one-line summary on stdout and the skipped records on stderr, unless --quiet."""
    if args.quiet:
        return
    out = args.out
    parts = [f"{stats['documents']:,} documents"]
    if "chunks" in stats:
        parts.append(f"{stats['chunks']:,} chunks")
    if stats.get("tokens"):
        parts.append(f"{stats['tokens']:,} tokens")
    parts.append(f"{stats['bytes'] / 1e6:.1f} MB in {stats['seconds']:.2f} s ({stats['mb_per_s']:.1f} MB/s)")
    parts.append(f"{stats['skipped']:,} skipped")
    print(f"nextlong {command}: {', '.join(parts)} -> {out}")
    from ..untrusted import one_line

    for example in stats.get("skipped_examples", []):
        print(f"  skipped: {one_line(example)}", file=sys.stderr)  # it may quote bytes of the corpus
    if stats["skipped"] and not stats["documents"]:  # an empty table, on purpose (a bad shard of many), but say it
        print(f"nextlong {command}: warning: no document could be read (every record was skipped): check the "
              "format (--format) and --text-field", file=sys.stderr)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("chunk", help="split a corpus into NExtLong meta-chunks (Parquet)",
                              description=__doc__)
    add_corpus_arguments(p)
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer (cl100k_base, a tokenizer.json, ...): fills num_tokens; needed for --unit tokens")
    p.add_argument("--max-len", "--chunk-size", action=OneSpelling, type=positive_int, default=2048,
                   help="granularity s: longest chunk in --unit (default: 2048; --chunk-size as in synthesize)")
    p.add_argument("--unit", "--chunk-unit", action=OneSpelling, default="chars", choices=("chars", "tokens"),
                   help="length unit (default: chars; --chunk-unit as in synthesize)")
    p.add_argument("--count-newlines", action="store_true",
                   help="count the newline joining two paragraphs as one unit (the reference code does not)")
    p.add_argument("--with-ids", action="store_true", help="store each chunk's token ids (input_ids column)")
    p.set_defaults(func=run, parser=p)


def corpus_io(args) -> tuple:
    """(input, output) as the library functions take them: one path or a list of paths."""
    from ..errors import UsageError

    paths = list(args.input) + list(args.corpus)
    if not paths:
        raise UsageError("no corpus given: name its file(s) or folder, or pass --corpus PATH")
    if len(paths) > 1:  # `chunk A --corpus A`, or a folder and a file in it, read that file twice: every document doubled
        import os

        from ..corpus.reader import list_corpus_files

        seen: dict = {}
        for given in paths:
            for path, _ in list_corpus_files(given):
                try:
                    info = os.stat(path)
                except OSError:
                    continue  # the reader says what is wrong with it
                key = (info.st_dev, info.st_ino)
                if key in seen:
                    raise UsageError(f"{path}: the same file as {seen[key]}, named twice in the corpus; name each "
                                     "input once")
                seen[key] = path
    return (paths if len(paths) > 1 else paths[0], args.out)


def corpus_options(args) -> dict:
    """The reading options every corpus command shares (see add_corpus_arguments)."""
    return dict(
        text_field=args.text_field,
        id_field=args.id_field,
        format=args.format,
        on_error=args.on_error,
        num_threads=args.threads,
        batch_size=args.batch_size,
        progress=not (args.no_progress or args.quiet),
    )


def run(args) -> int:
    from ..corpus.chunking import chunk_corpus

    if args.unit == "tokens" and not args.tokenizer:
        args.parser.error("--unit tokens needs --tokenizer")
    if args.with_ids and not args.tokenizer:
        args.parser.error("--with-ids needs --tokenizer")
    stats = chunk_corpus(
        *corpus_io(args),
        max_len=args.max_len,
        unit=args.unit,
        tokenizer=args.tokenizer,
        with_ids=args.with_ids,
        count_newlines=args.count_newlines,
        **corpus_options(args),
    )
    print_summary("chunk", stats, args)
    return 0
