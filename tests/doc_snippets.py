"""The code of a Markdown page as a reader pastes it: fenced blocks, inline `code`, and the shell commands in
them. Shared by tests/test_readme.py (the README, run as written) and tests/test_docs.py (docs/*.md, checked
against the command parsers)."""

from __future__ import annotations

import re
import shlex

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.M | re.S)


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line of the opening fence, language, body) of every fenced block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def inline_spans(text: str) -> list[tuple[int, str]]:
    """(line, text) of every inline `code` span outside the fenced blocks; a span may run over a line break
    (joined with a space)."""
    outside = FENCE.sub(lambda m: "\n" * m.group().count("\n"), text)
    return [(outside.count("\n", 0, m.start()) + 1, m.group(1).replace("\n", " "))
            for m in re.finditer(r"`([^`]+)`", outside)]


def shell_commands(body: str, *, optional: bool = False, placeholders: dict | None = None) -> list[list[str]]:
    """The commands of a shell block: continuations joined, comments dropped, `&&` splitting commands; install
    lines (`python3 -m pip`, `pip install`) left out. [Option lists] are dropped, or with `optional` kept with
    their brackets removed. Each argument found in `placeholders` is replaced, then formatted with
    `command` (the sub-command, or the program)."""
    logical = re.sub(r"\\\n|\n(?=\s+\[)", " ", body)
    out = []
    for line in logical.splitlines():
        depth, argv = 0, []
        for token in shlex.split(line, comments=True):
            opens = token.startswith("[")
            depth += opens
            if not depth:
                argv.append(token)
            elif optional:
                argv.append(token[opens:len(token) - token.endswith("]")])
            depth -= token.endswith("]") and depth > 0
        while argv:
            part, argv = (argv[:argv.index("&&")], argv[argv.index("&&") + 1:]) if "&&" in argv else (argv, [])
            if part[:3] == ["python3", "-m", "pip"] or part[:2] == ["pip", "install"]:
                continue
            if placeholders is not None:
                command = part[1] if part[0] == "nextlong" else part[0]
                part = [placeholders.get(a, a).format(command=command) for a in part]
            out.append(part)
    return out
