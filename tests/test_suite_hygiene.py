"""The test suite itself: the shipped data cannot change silently, every test reads the same data on
every machine, helpers are helpers (not test modules), and our own modules never skip on import."""

from __future__ import annotations

import ast
import hashlib
import re
import sys
from pathlib import Path

import numpy as np

from nextlong.schema import CHUNK_SCHEMA
from tests.helpers import CORPUS, DATA_DIR, chunk_table, corpus_documents, corpus_head

ROOT = Path(__file__).resolve().parents[1]
# Changing a file under tests/data changes what many tests check: update these on purpose only,
# together with tests/data/README.md.
SHA256 = {
    "stdlib-docstrings.jsonl.gz": "5326810f33ab67c4136c13a565521530effeff2f36743907f423e6027a575ac7",
    "LICENSE-PSF.txt": "3b2f81fe21d181c499c59a256c8e1968455d6689d269aa85373bfb6af41da3bf",
}
# The only tests allowed to read data that depends on the machine: extras that skip with a reason.
MACHINE_DATA_EXTRAS = {"test_tokenizer.py"}


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).glob("*.py"))


def test_shipped_data_has_the_recorded_checksums():
    for name, digest in SHA256.items():
        assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == digest, name
    readme = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in SHA256) and SHA256[CORPUS.name] in readme


def test_snapshot_is_large_real_text():
    docs = corpus_documents()
    assert len(docs) == 501 and len({d for d, _ in docs}) == 501
    assert sum(len(t.encode()) for _, t in docs) > 1_800_000
    assert docs[0][0] == "__future__" and any(d == "json" for d, _ in docs)


def test_chunk_table_helper_gives_the_chunk_schema():
    table = chunk_table(corpus_head(limit=6), max_chars=512, min_chars=40)
    assert table.schema.equals(CHUNK_SCHEMA)
    assert np.array_equal(table.column("chunk_id").to_numpy(), np.arange(table.num_rows))
    assert table.num_rows > 10 and min(len(t.strip()) for t in table.column("text").to_pylist()) >= 40


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_imports_a_test_module():
    """Shared code lives in tests/helpers.py; a test_*.py imported elsewhere would run its tests twice."""
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if re.match(r"(tests\.)?test_", m))
                 for p in sources("tests", "benchmarks")}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_sys_path_edits_in_tests_or_benchmarks():
    """tests/ is a package and the root conftest puts the repository on sys.path: imports just work."""
    for path in sources("tests", "benchmarks") + [ROOT / "conftest.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edits = [node.lineno for node in ast.walk(tree)
                 if isinstance(node, ast.Attribute) and node.attr == "path"
                 and isinstance(node.value, ast.Name) and node.value.id == "sys"]
        assert not edits, f"{path.name}: sys.path used on line {edits}"


def test_our_own_modules_never_skip_on_import_errors():
    """An import error in nextlong must fail the run, not skip tests."""
    for path in sources("tests", "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                assert not str(node.args[0].value).startswith("nextlong"), f"{path.name}:{node.lineno}"


def test_tests_do_not_switch_data_with_the_machine():
    """Only the listed extras may read machine-provided text (Debian's Python docs)."""
    for path in sources("tests"):
        if path.name not in MACHINE_DATA_EXTRAS and path.name != Path(__file__).name:
            assert "/usr/share/doc" not in path.read_text(encoding="utf-8"), path.name


def test_readme_states_the_command_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line for line in ci.splitlines() if "pytest" in line and not line.startswith("#"))
    assert command.strip() in readme


def test_outputs_of_readme_commands_are_ignored_by_git():
    """`--out NAME` in the README's commands writes into the checkout: git must not offer it for commit."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line.split("#")[0] for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
                for line in block.splitlines()]
    names = set(re.findall(r"--out\s+([\w.-]+/?)", "\n".join(commands)))
    outputs = sorted(n for n in names if not re.fullmatch(r"[A-Z_]+", n))  # DIR, DIR_AB: placeholders
    assert "demo-out" in outputs
    proc = subprocess.run(["git", "check-ignore", "--no-index", *outputs], cwd=ROOT, capture_output=True, text=True)
    assert sorted(proc.stdout.split()) == outputs


def root_import_names() -> set[str]:
    """Top-level names the repository root makes importable when it is on sys.path (`python -m`,
    `python -c`, torchrun and Ray workers started from a checkout): modules and folders alike, since a
    folder without __init__.py still imports as a namespace package."""
    names = set()
    for entry in ROOT.iterdir():
        name = entry.stem if entry.suffix == ".py" else entry.name if entry.is_dir() else ""
        if name.isidentifier() and not name.startswith("."):
            names.add(name)
    return names


def test_repository_root_shadows_no_installed_distribution_or_stdlib_module():
    """A top-level `kernels/` once hid HF's `kernels` package, which transformers imports: every test
    that touched transformers failed from the repository root. Only `nextlong` may be importable from
    here under a name that something installed also provides (itself, in an editable install)."""
    import importlib.metadata
    import sys

    provided = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    clashes = sorted((root_import_names() - {"nextlong"}) & provided)
    assert not clashes, f"names at the repository root shadow installed modules: {clashes}"


def test_root_import_names_sees_a_planted_folder(tmp_path, monkeypatch):
    """The check above must be able to fail: a folder named after an installed module is found."""
    (tmp_path / "json").mkdir()
    (tmp_path / "kernels.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert {"json", "kernels"} <= root_import_names()
