"""The README, run as written: every fenced command and snippet, each after only the install line the
README gives for it (tests/install_scope.py hides every other installed package).

Each command runs with the README's arguments; a few get extra arguments appended (argparse keeps
the last value) so that the whole README runs in minutes on two cores: `RUNS` lists every command and
what is appended, and a README command missing from it fails the fast test below, so a new command
cannot go untested. The commands run in README order in one folder, as a user pasting them would:
later ones read what earlier ones wrote (demo-out, demo-run, out/).
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.doc_snippets import shell_commands
from tests.install_scope import ROOT, hidden_modules, run_with_extras

README = ROOT / "README.md"
INSTALL = re.compile(r'pip install\b[^\n]*?-e\s+"\.\[([\w,]+)\]"')

# Every README command, as parsed below (option lists in [brackets] dropped), with the arguments the
# test appends to shrink it. The quick start's model is trained as written (ten steps: a one-step model
# hid that a barely trained one writes only newlines, which left the ACER demo without questions),
# evaluated at 1K only.
SMALL_EVAL = ["--lengths", "1024", "--depths", "1", "--samples", "1"]
SMALL_TRAIN = ["--seq-len", "2048", "--batch-tokens", "2048", "--steps", "1"]
RUNS = {
    "nextlong synthesize --demo --out demo-out": [],
    "nextlong train demo-out --model tiny --steps 10 --out demo-run": [],
    "nextlong chunk corpus.jsonl.gz --out chunks.parquet --tokenizer cl100k_base --with-ids": [],
    "nextlong tokenize corpus.jsonl --tokenizer cl100k_base --out tokens.parquet": [],
    "nextlong index chunks.parquet --out index/": [],
    "nextlong search index/ 'how do I open a file for appending' -k 10": [],
    "nextlong synthesize --corpus corpus.jsonl.gz --tokenizer cl100k_base --target-length 131072 --out out/":
        ["--target-length", "2048", "--num-samples", "2"],
    "nextlong inspect out/": [],
    "nextlong train out/ --model demo-run/model --seq-len 131072 --batch-tokens 524288 --steps 500 --out out/train":
        SMALL_TRAIN[:-1] + ["2", "--stop-after", "1"],  # stopped after one step of two: the resume below ends it
    # no --seq-len, as written: the longer source (its manifest says twice out/'s length) sets the sequence
    "nextlong train out-64k/@2 out-512k/@1 --model demo-run/model --out out/mix": ["--batch-tokens", "4096",
                                                                                 "--steps", "1"],
    "nextlong train out/ --model demo-run/model --out out/train --resume": [],  # as written: the run's own settings
    "nextlong plot out/train": [],
    "nextlong acer --corpus demo-out/demo_corpus.jsonl --model demo-run --generate-questions 16 --out demo-acer "
    "--embedder hashed-tfidf --target-length 8192 --retrieve 64 --read 4 --max-new-tokens 32 --keep-cut-answers":
        ["--generate-questions", "4"],
    "nextlong inspect demo-acer": [],
    "nextlong train demo-acer --model demo-run --steps 10 --out demo-acer-run": ["--steps", "1"],
    "nextlong acer --corpus corpus.jsonl --questions q.jsonl --model demo-run --out acer-dir":
        # the demo model never ends an answer within 8 tokens: every one would be cut, and dropped
        ["--target-length", "2048", "--retrieve", "16", "--read", "2", "--max-new-tokens", "8", "--chunk-tokens", "128",
         "--keep-cut-answers"],
    "nextlong eval demo-run --out demo-eval": SMALL_EVAL,
    "nextlong heads demo-run --out demo-heads": ["--num-lengths", "2", "--depths", "2"],
    "nextlong eval demo-run --out eval-dir": SMALL_EVAL,
    "nextlong heads demo-run --out heads-dir": ["--num-lengths", "2", "--depths", "2"],
    "nextlong heads --compare demo-heads heads-dir --out heads-ab": [],
}
# Commands whose argv (after PLACEHOLDERS, with the RUNS options) is an earlier command's but for the output folder:
# that folder is copied, since a second run of the same work would check nothing new (it took 1-2.5 minutes).
SAME_AS = {"nextlong eval demo-run --out eval-dir": "nextlong eval demo-run --out demo-eval",
           "nextlong heads demo-run --out heads-dir": "nextlong heads demo-run --out demo-heads"}
# Commands not run here, and why.
SKIPS = {
    "torchrun --nproc-per-node 8 -m nextlong train out/ --model demo-run/model --out out/train":
        "starts its own interpreters (outside the install scope); tests/test_train_distributed.py runs it",
}
# Placeholders of the README, as the commands above spell them.
PLACEHOLDERS = {"PATH": "demo-run/model", "MODEL": "demo-run", "DIR": "{command}-dir", "DIR_A": "demo-heads",
                "DIR_B": "heads-dir", "DIR_AB": "heads-ab"}
# Python snippets: what each needs defined before it runs, and literal edits that shrink it.
SNIPPET_SETUP = {
    "nextlong.load_tokenizer": ("", {"target_length=65536": "target_length=2048, num_samples=2"}),
    "Trainer(model=model": ("", {"max_steps=10": "max_steps=1"}),
    "from nextlong.kernels import": (
        "import torch\n"
        "torch.manual_seed(0)\n"
        "q, k, v = (torch.randn(96, 4, 16, requires_grad=True) for _ in range(3))\n"
        "cu_seqlens, max_len = torch.tensor([0, 40, 96], dtype=torch.int32), 56\n"
        "hidden, lm_head = torch.randn(96, 32, requires_grad=True), torch.nn.Linear(32, 50, bias=False)\n"
        "labels, w = torch.randint(0, 50, (96,)), torch.rand(96)\n", {}),
}


@dataclass(frozen=True)
class Snippet:
    line: int  # of the opening fence in README.md
    lang: str
    text: str
    extras: frozenset  # the install line in effect


def readme_snippets(text: str | None = None) -> list[Snippet]:
    """Fenced blocks in order, each with the install line in effect: the quick start's, unless an
    earlier block of the same section gave another. The CI line (install + pytest) is not a snippet."""
    text = README.read_text(encoding="utf-8") if text is None else text
    default = current = None
    out = []
    for m in re.finditer(r"^## [^\n]*$|^```(\w+)\n(.*?)^```", text, flags=re.M | re.S):
        if m.group(1) is None:
            current = default
            continue
        lang, body = m.group(1), m.group(2)
        install = INSTALL.search(body)
        if install and "pytest" in body:
            continue
        if install:
            current = frozenset(install.group(1).split(","))
            default = default or current
        out.append(Snippet(text.count("\n", 0, m.start()) + 1, lang, body, current))
    return out


def commands(snippet: Snippet) -> list[list[str]]:
    """The commands of a bash block: comments and [option lists] dropped, placeholders filled in; install
    lines left out."""
    return shell_commands(snippet.text, placeholders=PLACEHOLDERS)


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    listed = [shlex.join(argv) for s in readme_snippets() if s.lang == "bash" for argv in commands(s)]
    assert sorted(set(listed)) == sorted(set(RUNS) | set(SKIPS)), "update RUNS/SKIPS with the README"
    python = [s for s in readme_snippets() if s.lang == "python"]
    assert all(sum(key in s.text for key in SNIPPET_SETUP) == 1 for s in python), "one SNIPPET_SETUP per snippet"
    assert len(python) == len(SNIPPET_SETUP)


def test_each_snippet_gets_the_install_line_of_its_section():
    snippets = readme_snippets()
    assert snippets[0].extras == {"ml"}
    trainer = next(s for s in snippets if "Trainer(model=model" in s.text)
    assert trainer.extras == {"hf"}
    kernels = next(s for s in snippets if "from nextlong.kernels import" in s.text)
    assert kernels.extras == {"ml"}, "a later section falls back to the quick start's install"
    assert all(s.extras for s in snippets)


def test_install_scope_hides_what_an_extra_does_not_bring(tmp_path):
    """The scope must be able to fail a snippet: Trainer's accelerate is hidden under `ml` only."""
    assert "accelerate" in hidden_modules({"ml"}) and "accelerate" not in hidden_modules({"hf"})
    assert "matplotlib" not in hidden_modules({"ml"}), "nextlong train draws loss.png after the quick start's install"
    probe = ("import importlib.util as u, importlib.metadata as m\n"
             "print(u.find_spec('accelerate') is None, m.version('accelerate') if u.find_spec('accelerate') else '')\n")
    hidden = run_with_extras({"ml"}, probe + "import accelerate", tmp_path)
    assert hidden.returncode == 1 and hidden.stdout.split() == ["True"] and "ModuleNotFoundError" in hidden.stderr
    shown = run_with_extras({"hf"}, probe, tmp_path)  # not imported: accelerate imports torch, seconds
    assert shown.returncode == 0 and shown.stdout.split()[0] == "False"


def write_inputs(folder: Path) -> None:
    """The inputs the README's commands name, small: a corpus as .jsonl.gz and .jsonl (what its setup line makes
    from the demo's corpus; from the shipped docstrings here), two questions for ACER, and a byte-level BPE
    tokenizer.json. Nothing the README does not tell the user to make: a `corpus/` folder made here once hid
    that no README line made it."""
    from tests.eval_fixtures import train_tokenizer
    from tests.helpers import corpus_head

    docs = corpus_head(max_bytes=120_000)
    lines = "".join(json.dumps({"id": d, "text": t}) + "\n" for d, t in docs)
    (folder / "corpus.jsonl").write_text(lines)
    questions = [{"question": "What does the json module encode?", "answer": "JSON"},
                 {"question": "Which module handles regular expressions?", "answer": "re"}]
    (folder / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (folder / "corpus.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    train_tokenizer(folder / "tokenizer.json")


def run_step(folder: Path, extras, code: str, what: str) -> str:
    proc = run_with_extras(set(extras), code, folder)
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_readme_runs_after_its_install_lines(tmp_path):
    """The whole README in order (about 8 minutes on 2 cores). The quick start's synthesis is the
    real demo (MiniLM over the stdlib docstrings): the one path every new user runs first."""
    write_inputs(tmp_path)
    for snippet in readme_snippets():
        if snippet.lang == "bash":
            for argv in commands(snippet):
                key = shlex.join(argv)
                if key in SKIPS:
                    continue
                if key in SAME_AS:
                    earlier = shlex.split(SAME_AS[key])
                    assert argv[:-1] == earlier[:-1] and RUNS[key] == RUNS[SAME_AS[key]], key
                    shutil.copytree(tmp_path / earlier[-1], tmp_path / argv[-1])
                    continue
                if argv[1] == "train" and "out-64k/@2" in argv:
                    for name in ("out-64k", "out-512k"):
                        if not (tmp_path / name).exists():
                            shutil.copytree(tmp_path / "out", tmp_path / name)
                    longer = tmp_path / "out-512k" / "manifest.json"
                    manifest = json.loads(longer.read_text())
                    manifest["settings"]["target_length"] = 4096  # out/ is synthesized at 2048 (RUNS above)
                    longer.write_text(json.dumps(manifest))
                code = f"import sys\nfrom nextlong.cli import main\nsys.exit(main({argv[1:] + RUNS[key]!r}))"
                run_step(tmp_path, snippet.extras, code, f"README.md:{snippet.line}: {key}")
                if key == "nextlong synthesize --demo --out demo-out":
                    stats = json.loads((tmp_path / "demo-out" / "manifest.json").read_text())
                    assert stats["statistics"]["documents_built"] == 8
                    assert stats["settings"]["embedder_name"] == "all-MiniLM-L6-v2"
                    s = stats["statistics"]
                    assert s["anchor_negative_similarity_mean"] > s["random_chunk_pair_similarity_mean"]
        elif snippet.lang == "python":
            setup, edits = next(v for k, v in SNIPPET_SETUP.items() if k in snippet.text)
            code = snippet.text
            for old, new in edits.items():
                assert old in code, f"README.md:{snippet.line}: {old!r} no longer in the snippet"
                code = code.replace(old, new)
            run_step(tmp_path, snippet.extras, setup + code, f"README.md:{snippet.line}: python snippet")
    steps = [json.loads(line)["step"] for line in (tmp_path / "out/train/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2], "the README's --resume continued the stopped run"
    for made in ("demo-acer/manifest.json", "demo-acer-run/manifest.json", "acer-dir/manifest.json",
                 "demo-run/loss.png", "demo-run/manifest.json", "demo-eval/results.json", "demo-heads/heads.png",
                 "out/train/loss.png", "out/mix/manifest.json", "out-py/manifest.json", "out/hf-run"):
        assert (tmp_path / made).exists(), made
