"""The package foundation: the native module builds, the CLI lists its commands, writes are atomic."""

import json
import os
import subprocess
import sys

import pytest

import nextlong
from nextlong.atomic import atomic_path, write_json_atomic
from nextlong.cli import COMMANDS, build_parser
from nextlong.manifest import write_manifest


def test_native_module_is_compiled():
    from nextlong import _native

    assert _native.__file__.endswith((".so", ".pyd"))
    assert hasattr(_native, "TextEncoder")


def test_kernels_importable_as_nextlong_kernels():
    import nextlong.kernels as kernels

    assert set(kernels.__all__) >= {"flash_attention", "fused_linear_cross_entropy", "cross_entropy"}


def test_the_kernels_leave_transformers_ray_and_triton_unimported():
    """nextlong.kernels is for other training stacks too, which may not have transformers or ray loaded: using
    both kernels on CPU imports neither (nor triton, which the CPU path does not need); only the documented
    nextlong.kernels.transformers_* modules import transformers."""
    code = ("import sys, torch, nextlong.kernels as K; loaded = lambda: [m for m in ('transformers', 'ray', "
            "'triton') if m in sys.modules]; print(loaded()); q = torch.randn(6, 2, 8); "
            "cu = torch.tensor([0, 2, 6], dtype=torch.int32); K.flash_attn_varlen_func(q, q, q, cu, cu, 4, 4); "
            "K.fused_linear_cross_entropy(torch.randn(3, 8), torch.randn(5, 8), torch.tensor([1, 2, -100])); "
            "print(loaded())")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split("\n")[:2] == ["[]", "[]"]


def test_cli_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "nextlong", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in COMMANDS:
        assert name in out, f"sub-command {name!r} missing from `nextlong --help`"


def test_building_the_cli_parser_leaves_the_evaluation_unimported():
    """Every command builds the whole parser, `eval`'s and `heads`' from nextlong.eval.options; the package's
    __init__ imported its tasks, runner and report with it, ~0.1 s of the ~0.2 s each command (`--help` too)
    spent importing before it started. They are imported when first used."""
    code = ("import sys, nextlong.cli; nextlong.cli.build_parser(); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('nextlong.eval'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["nextlong.eval", "nextlong.eval.options"]


def test_every_public_name_of_the_evaluation_package_imports():
    import nextlong.eval as evaluation

    for name in evaluation.__all__:
        assert getattr(evaluation, name) is not None, name


def test_the_evaluation_packages_modules_are_attributes_of_it():
    """`import nextlong.eval` then `nextlong.eval.tasks.make_sample` worked while the package imported its modules
    whole; with its names imported on first use, a module is imported on first use too (as nextlong's are)."""
    code = "import nextlong.eval as e; print(e.tasks.make_sample.__module__, e.runner.__name__, hasattr(e, 'nope'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["nextlong.eval.tasks", "nextlong.eval.runner", "False"]


def test_every_subcommand_has_help():
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0


def test_synthesize_help_gives_the_knn_neighbours_default():
    """`synthesize --help` gave --knn-neighbours without its default (32), which every other number of the
    k formula and the graph states."""
    import argparse

    parser = build_parser()
    synthesize = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["synthesize"]
    option = next(a for a in synthesize._actions if "--knn-neighbours" in a.option_strings)
    assert f"(default {option.default})" in option.help and option.default == 32
    assert "(default 32)" in " ".join(synthesize.format_help().split())


def test_every_option_with_a_default_says_it_in_its_help():
    """Fifteen options (synthesize --method, train --seed, heads --needles, ...) had a default their --help did not
    give; a repeatable option that starts empty (--corpus) and a flag have none to give. The skip compared with
    `in`, and 0 == False, so five options defaulting to 0 (synthesize/acer/eval/heads --seed, --mask-heads) were
    never checked: a default of 0 or 0.0 counts."""
    import argparse

    parser = build_parser()
    missing = []
    for name, command in parser.commands.items():
        for a in command._actions:
            if (not a.option_strings or any(a.default is d for d in (None, False, argparse.SUPPRESS))
                    or (isinstance(a.default, list) and not a.default)
                    or isinstance(a, (argparse._StoreTrueAction, argparse._HelpAction))):
                continue
            if "default" not in (a.help or "").lower():
                missing.append(f"{name} {a.option_strings[0]}")
    assert missing == []


def test_unknown_public_name_raises_attribute_error():
    with pytest.raises(AttributeError):
        nextlong.does_not_exist  # noqa: B018


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert target.stat().st_mode & 0o044, "finished outputs must be readable by others, not mkstemp's 0600"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_manifest_records_settings_seed_statistics_versions(tmp_path):
    path = tmp_path / "manifest.json"
    write_manifest(path, command="chunk", settings={"max_len": 2048}, statistics={"documents": 3}, seed=7)
    manifest = json.loads(path.read_text())
    assert manifest["settings"] == {"max_len": 2048}
    assert manifest["statistics"] == {"documents": 3}
    assert manifest["seed"] == 7
    assert manifest["versions"]["nextlong"] == nextlong.__version__


def _imports_of_each_module() -> dict[str, set[str]]:
    """{module: the nextlong modules it imports}, at any depth (a lazy import inside a function is still a
    dependency), read from the source; a module importing its own package (`from . import x`) counts x."""
    import ast
    from pathlib import Path

    root = Path(nextlong.__file__).parent
    files = {".".join(f.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): f
             for f in root.rglob("*.py")}
    graph = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                parts = package.split(".")
                base = (".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                        if node.level else node.module or "")
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        # a module may import the packages it is inside (their __init__ runs first anyway)
        graph[name] = {t for t in found if t in files and t != name and not name.startswith(t + ".")}
    return graph


def test_no_import_cycles_between_our_modules():
    """One concept per module and no import cycles (DEVELOPERS.md): a cycle hidden in a function's lazy import
    (eval's options calling back into the evaluation that reads them) still ties two modules together."""
    graph = _imports_of_each_module()
    assert {"nextlong.eval.options", "nextlong.eval.runner"} <= graph["nextlong.eval.evaluation"]
    assert "nextlong.synthesis.acer.lm" in graph["nextlong.synthesis.acer.stages"]  # a lazy one
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
