"""The `nextlong` command. Each sub-command lives in nextlong/commands/<name>.py and exposes
`add_parser(subparsers)` (which sets `func`); this file only collects them."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import NextlongError

COMMANDS = ("chunk", "tokenize", "index", "search", "synthesize", "inspect")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="nextlong",
        description="Long-context training data synthesis (NExtLong) and training helpers.",
    )
    parser.add_argument("--version", action="version", version=f"nextlong {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback for errors (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"nextlong.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"nextlong.commands.{name}":
                continue  # not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except NextlongError as exc:
        if args.debug:
            raise
        print(f"nextlong {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"nextlong {args.command}: interrupted; finished work is kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
