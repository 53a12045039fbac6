"""The `nextlong` command. Each sub-command lives in nextlong/commands/<name>.py and exposes
`add_parser(subparsers)` (which sets `func`); this file only collects them."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from .commands.argtypes import SPELLINGS
from .errors import (NextlongError, OtherRankFailed, Terminated, disk_full, file_too_large, is_disk_full,
                     is_file_too_large, launched, quiet_rank)
from .extras import EXTRA_OF, missing_modules_error, require
from .untrusted import one_line

COMMANDS = ("chunk", "tokenize", "index", "search", "synthesize", "acer", "inspect", "train", "plot", "eval", "heads")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line `nextlong CMD: error: ...`, exit status 2. `nextlong
    train` under a launcher (torchrun: WORLD_SIZE > 1): every rank parses the same arguments and meets the same
    error, so only each node's first rank (LOCAL_RANK 0) prints it; the others exit 2 without a word. (Other
    commands are not launched so, but may inherit the variables from a training rank that runs them.)"""

    def error(self, message: str):
        quiet = self.prog == "nextlong train" and quiet_rank()
        self.exit(2, None if quiet else f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="nextlong",
        description="Long-context training data synthesis (NExtLong) and training helpers.",
    )
    parser.add_argument("--version", action="version", version=f"nextlong {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback for errors (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = sub.choices  # name -> its parser, for main's errors
    for name in COMMANDS:
        importlib.import_module(f"nextlong.commands.{name}").add_parser(sub)
        # `nextlong CMD ... --debug` works as well as `nextlong --debug CMD ...`
        sub.choices[name].add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                       help="show a traceback for errors (for bug reports)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    vars(args).pop(SPELLINGS, None)
    if extra:  # said by the command's own parser, so that the line names it and its --help
        command = parser.commands.get(getattr(args, "command", None), parser)
        hint = ""
        if (not any(a.startswith("-") for a in extra) and os.path.exists(extra[0])
                and getattr(args, "command", None) in ("synthesize", "acer")):  # a path where `chunk` takes one
            hint = "; name the corpus with --corpus PATH"
        command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    rank = args.command == "train" and launched()
    # a torchrun rank is torchrun's to stop: it sends SIGTERM to the other ranks when one fails, and taken as
    # Ctrl-C that raised in a rank still printing its own error (a traceback, and the message lost); train's
    # loop takes SIGTERM itself, at a step boundary
    with contextlib.nullcontext() if rank else _sigterm_as_interrupt():
        code = _run(args)
    if rank:
        _end_torchrun_rank(code)
    return code


@contextlib.contextmanager
def _sigterm_as_interrupt():
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield  # an embedding program's own handler stays
        return

    def stop(signum, frame):
        Terminated.received = True
        raise Terminated("terminated (SIGTERM)")

    Terminated.received = False

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        Terminated.received = False


def _end_torchrun_rank(code: int) -> None:
    """A torchrun rank of `nextlong train` leaves here, skipping the interpreter's shutdown. DDP and FSDP keep
    references to the process group that destroy_process_group cannot drop (11 after one DDP(...) with torch
    2.13), so gloo's and NCCL's threads outlive it, and one of them touching a tensor while the interpreter
    shuts down aborts the rank ("terminate called without an active exception", pytorch/pytorch#190489):
    a finished run was then reported failed. Everything the run writes is closed and fsynced by now."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more can be said on it
            pass
    os._exit(code)


def _run(args) -> int:
    try:
        requirements = getattr(importlib.import_module(f"nextlong.commands.{args.command}"), "requirements", None)
        if requirements:
            require("this run", *requirements(args))
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        # An optional package imported deeper than `requirements` knew: the same one line, not a traceback.
        if args.debug or (exc.name or "").partition(".")[0] not in EXTRA_OF:
            raise
        _print_error(args.command, missing_modules_error("this run", [exc.name.partition(".")[0]]))
        return 1
    except NextlongError as exc:
        if args.debug:
            raise
        if not isinstance(exc, OtherRankFailed):  # the rank that failed prints it
            _print_error(args.command, exc)
        return exc.exit_code
    except BrokenPipeError:  # an OSError: before the clause below
        # The reader went away (`nextlong inspect X | head`): stop quietly, as other command-line tools do.
        # stdout is pointed at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # The environment, not a bug: a full disk, a read-only or missing folder, a path that is a file.
        if args.debug or exc.filename is None and not is_disk_full(exc) and not is_file_too_large(exc):
            raise
        # a write through an open file names no file: name the command's output folder instead
        where = exc.filename or getattr(args, "out", None) or "output"
        _print_error(args.command, disk_full(where) if is_disk_full(exc) else file_too_large(where)
                     if is_file_too_large(exc) else f"{exc.filename}: {exc.strerror or exc}")
        return 1
    except KeyboardInterrupt as exc:
        # train says what it saved (TrainingInterrupted) and needs --resume; chunk and tokenize write their one
        # file whole at the end; the other commands resume by running the same command again
        terminated = isinstance(exc, Terminated) or Terminated.received
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        said = (str(exc) if str(exc) and not terminated else
                importlib.import_module("nextlong.commands.train").stopped_outside_the_loop(args.out, what)
                if args.command == "train" else
                f"{what}; nothing was written (the output is written whole at the end): run the command again"
                if args.command in ("chunk", "tokenize") else
                f"{what}; finished blocks and embedding batches are kept (the rest of a block under way is redone): "
                "re-run to resume"
                if args.command in ("synthesize", "acer") else
                f"{what}; finished work is kept, re-run to resume")
        # in train's loop, the lowest torchrun rank signalled says it (TrainingInterrupted.quiet); before the loop
        # (setup) there is no collective to agree on one, so each node's first rank says it, as for a usage error:
        # a Ctrl-C of 8 processes printed 8 lines
        if not getattr(exc, "quiet", args.command == "train" and quiet_rank()):
            print(f"nextlong {args.command}: {said}", file=sys.stderr)
        return 143 if terminated else 130


def _print_error(command: str, exc) -> None:
    print(f"nextlong {command}: error: {one_line(str(exc))}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
