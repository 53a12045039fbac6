"""The pages under docs/ name only what exists: every `nextlong CMD --option` in their code (fenced blocks and
inline spans) is an option of that command's parser, with a value it takes; an option a benchmark command names
is that script's; any other `--option` a page names is some command's or script's, or a launcher's listed below;
what a Python snippet imports imports, and every `nextlong.x.y` the prose names resolves.

tests/test_readme.py runs the README as written; these pages hold commands for GPUs, clusters and models a
test machine lacks, so here they are checked against the code instead (in well under a second, no training).
docs/changelog.md records what was true then, and docs/experiments/ holds generated records: neither is
checked.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from nextlong.cli import COMMANDS, build_parser
from tests.doc_snippets import fenced_blocks, inline_spans, shell_commands

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "changelog.md")
# Options the pages name that belong to another program, and whose.
FOREIGN = {"--nproc-per-node": "torchrun", "--shutdown-timeout": "torchrun"}
# `nextlong CMD ...`, or an inline span that starts `CMD --` (`train --model`); `nextlong acer: error: ...` is output
COMMAND = re.compile(rf"(?:\bnextlong |^(?=\w+ --))((?:{'|'.join(COMMANDS)})\b(?!:).*)")
SCRIPT = re.compile(r"\b((?:bench|tune)_\w+|nextlong_vs_standard|acer_cost|gpu_runs)(?:\.py)?\b(.*)")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(?::[A-Z]+)?|\.\.\.|…")  # N, DIR, HOST:PORT


def script_options(name: str) -> set[str] | None:
    """The options a benchmark script declares (read from its source, without importing it)."""
    for path in (ROOT / "benchmarks" / f"{name}.py", ROOT / "benchmarks" / "experiments" / f"{name}.py"):
        if path.exists():
            return set(re.findall(r"""add_argument\(\s*["'](--[\w-]+)""", path.read_text(encoding="utf-8")))
    return None


def value_problem(action: argparse.Action, value: str) -> str | None:
    """Why `value` (alternatives a|b allowed, placeholders skipped) is not one the option takes, or None."""
    for alternative in value.split("|"):
        if PLACEHOLDER.fullmatch(alternative):
            continue
        try:
            converted = action.type(alternative) if callable(action.type) else alternative
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            return f"{action.option_strings[0]} {alternative}: {exc}"
        if action.choices is not None and converted not in action.choices:
            return f"{action.option_strings[0]} {alternative}: not one of {list(action.choices)}"
    return None


def command_problems(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Options of one `nextlong CMD ...` command line that its parser lacks, or values it refuses."""
    problems = []
    for i, token in enumerate(argv):
        if not token.startswith("-") or re.match(r"-\d", token) or token == "-":
            continue
        name, eq, inline = token.partition("=")
        action = parser._option_string_actions.get(name)
        if action is None:
            problems.append(f"{name}: not an option of {parser.prog}")
            continue
        if action.nargs == 0:
            continue
        count = action.nargs if isinstance(action.nargs, int) else 1
        values = [inline] if eq else [v for v in argv[i + 1:i + 1 + count] if not v.startswith("--")]
        problems += filter(None, (value_problem(action, v) for v in values))
    return problems


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line, command line) of every shell line of the fenced bash blocks ([option lists] kept) and every
    inline code span."""
    out = []
    for line, lang, body in fenced_blocks(text):
        if lang in ("bash", "sh", "shell"):
            out += [(line, shlex.join(argv)) for argv in shell_commands(body, optional=True)]
    return out + inline_spans(text)


def option_problems(text: str) -> list[str]:
    """Every option a page names that does not exist where it is used, as 'line: problem'."""
    commands = build_parser().commands
    known = {o for p in commands.values() for o in p._option_string_actions} | set(FOREIGN)
    scripts = {o for path in (ROOT / "benchmarks").rglob("*.py") for o in script_options(path.stem) or ()}
    problems = []
    for line, code in code_lines(text):
        command, script = COMMAND.search(code), SCRIPT.search(code)
        if command:
            try:
                argv = shlex.split(command.group(1), comments=True)
            except ValueError:  # a span that quotes half a command
                argv = command.group(1).split()
            for stop in ("&&", "|", ";", ">", "2>&1"):
                argv = argv[:argv.index(stop)] if stop in argv else argv
            problems += [f"{line}: {p}" for p in command_problems(argv[1:], commands[argv[0]])]
        elif script and "pytest" not in code:
            declared = script_options(script.group(1))
            if declared is None:
                problems.append(f"{line}: no benchmark script {script.group(1)}")
                continue
            problems += [f"{line}: {o}: not an option of {script.group(1)}"
                         for o in OPTION.findall(script.group(2)) if o not in declared | {"--help"}]
    # the whole page but its YAML and Python blocks (which may hold --words of their own)
    prose = re.sub(r"^```(?!bash)\w+\n.*?^```", lambda m: "\n" * m.group().count("\n"), text, flags=re.M | re.S)
    problems += [f"{prose.count(chr(10), 0, m.start()) + 1}: {m.group()}: no command has this option"
                 for m in OPTION.finditer(prose) if m.group() not in known | scripts]
    return problems


def import_problems(text: str) -> list[str]:
    """Names a Python snippet imports that do not import, and `nextlong.x.y` names of the prose that do
    not resolve, as 'line: problem'."""
    problems = []
    for line, lang, body in fenced_blocks(text):
        if lang != "python":
            continue
        for k, statement in enumerate(body.splitlines()):
            m = re.match(r"\s*from\s+([\w.]+)\s+import\s+(.+)|\s*import\s+([\w.]+)", statement)
            if m:
                names = [n.split(" as ")[0].strip() for n in (m.group(2) or "").strip("() ").split(",")]
                problem = resolve(m.group(1) or m.group(3), [n for n in names if n])
                problems += [f"{line + 1 + k}: {problem}"] if problem else []
    for line, span in inline_spans(text):
        m = re.fullmatch(r"(nextlong(?:\.\w+)+)(?:\(.*\))?", span)
        if m and not re.search(r"\.(json|jsonl|py|txt|md|png|parquet|npy|lock)$", m.group(1)):  # a file's name
            problem = resolve(m.group(1), [])
            problems += [f"{line}: {problem}"] if problem else []
    return problems


def resolve(dotted: str, names: list[str]) -> str | None:
    """Why `from dotted import names` (or the attribute path `dotted`) fails, or None."""
    parts, obj = dotted.split("."), None
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    if obj is None:
        return f"{dotted}: does not import"
    for attribute in parts[i:]:
        obj = member(obj, attribute)
        if obj is None:
            return f"{dotted}: {attribute} does not exist"
    missing = [n for n in names if member(obj, n) is None]
    return f"from {dotted} import {', '.join(missing)}: does not import" if missing else None


def member(obj, name: str):
    """obj.name, or the submodule obj.name not imported yet; None when neither exists."""
    if hasattr(obj, name):
        return getattr(obj, name)
    try:
        return importlib.import_module(f"{obj.__name__}.{name}")
    except (ImportError, AttributeError):
        return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_option_a_page_names_exists(page):
    problems = option_problems(page.read_text(encoding="utf-8"))
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_name_a_page_imports_exists(page):
    problems = import_problems(page.read_text(encoding="utf-8"))
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_the_checks_catch_a_planted_mistake():
    """Each check can fail: a wrong option (in a command, in a benchmark command, in prose), a wrong value and a
    wrong name, each planted in a copy of a page, is reported by name."""
    pages = {name: (ROOT / "docs" / name).read_text(encoding="utf-8") for name in ("acer.md", "scale.md")}
    plants = {  # page, what is there, what is planted, what the report must name
        ("acer.md", "[--retrieve 200]", "[--retrieval 200]", "--retrieval: not an option of nextlong acer"),
        ("acer.md", "[--order shuffled|retrieval]", "[--order shuffle|retrieval]", "--order shuffle: not one of"),
        ("acer.md", "[--read 8]", "[--read 0]", "--read 0: must be a positive integer"),
        ("acer.md", "--out acer-run     #", "--out acer-run --chunk-tokens 256    #",
         "--chunk-tokens: not an option of nextlong train"),
        ("acer.md", "`--keep-cut-answers` it is kept", "`--keep-cut-answer` it is kept",
         "--keep-cut-answer: no command has this option"),
        ("scale.md", "--vectors static.npy --pca 64", "--vectors static.npy --pca-dim 64",
         "--pca-dim: not an option of bench_mining"),
    }
    for name, old, new, said in plants:
        assert not option_problems(pages[name]) and pages[name].count(old) == 1, (name, old)
        problems = option_problems(pages[name].replace(old, new))
        assert any(said in p for p in problems), (new, problems)
    evaluation = (ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8")
    assert not import_problems(evaluation)
    for old, new, said in (("import evaluate, retrieval_heads", "import evaluate, retrieval_head",
                            "from nextlong.eval import retrieval_head: does not import"),
                           ("`nextlong.eval.longppl.measure_documents`", "`nextlong.eval.longppl.measure_document`",
                            "measure_document does not exist")):
        assert evaluation.count(old) == 1, old
        problems = import_problems(evaluation.replace(old, new))
        assert any(said in p for p in problems), (new, problems)
