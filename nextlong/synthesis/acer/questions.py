"""The questions file of `nextlong acer --questions Q.jsonl`: one JSON object per line with

    question   the question (a non-empty string; required)
    answer     its gold answer: a string, or a list of strings (aliases, as TriviaQA gives); optional
    answers    the same as a list (Natural Questions' name); optional, instead of answer
    id         a string or an integer naming it; optional, default the line number

Blank lines are skipped. A line that breaks these rules is one error naming the file and the line.
Plain or gzip-compressed (.gz).
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

from ...errors import CorpusError


def read_questions(path) -> list[dict]:
    """[{"id", "question", "gold" (list of strings, or None)}] in file order."""
    return [row for _, _, row in question_lines(path)]


def question_lines(path) -> list[tuple[int, dict, dict]]:
    """(line number, the line's JSON object, its read_questions row) of every question, in file order: for
    readers whose lines carry more fields (nextlong eval --tasks rag's evidence)."""
    from ...untrusted import open_regular

    path = Path(path)
    seen = {}
    # a FIFO, device or folder is one line, never a hang (opened without blocking, checked on the descriptor)
    def refused(message: str) -> CorpusError:  # open_regular's message names the path first
        return CorpusError(path, message.removeprefix(f"{path}: "))

    with open_regular(path, refused, follow=True, what="questions file") as (fh, _):
        out = _lines(path, fh, seen)
    if not out:
        raise CorpusError(path, "no questions in the file")
    return out


def _lines(path: Path, fh, seen: dict) -> list[tuple[int, dict, dict]]:
    out = []
    try:
        # bytes: each line is decoded by itself, so a bad byte is named by its line
        with (gzip.open(fh, "rb") if path.suffix == ".gz" else fh) as f:
            for lineno, raw in enumerate(f, 1):
                try:  # utf-8-sig on the first line: a byte-order mark is skipped, as the corpus reader skips it
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise CorpusError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})", line=lineno) from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except RecursionError:
                    raise CorpusError(path, "not valid JSON (nested too deeply)", line=lineno) from None
                except ValueError as exc:
                    raise CorpusError(path, f"not valid JSON ({exc})", line=lineno) from None
                out.append((lineno, obj, _row(path, lineno, obj, seen)))
    except (OSError, EOFError, zlib.error) as exc:
        raise CorpusError(path, f"cannot read the questions file ({exc})") from None
    return out


def _row(path, lineno: int, obj, seen: dict) -> dict:
    def bad(msg):
        raise CorpusError(path, msg, line=lineno)

    if not isinstance(obj, dict):
        bad(f"expected a JSON object with a \"question\", got a JSON {type(obj).__name__}")
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        bad("no \"question\" (a non-empty string)" if "question" not in obj
            else f"\"question\" must be a non-empty string, got {json.dumps(question)[:60]}")
    if "answer" in obj and "answers" in obj:
        bad("give \"answer\" or \"answers\", not both")
    gold = obj.get("answers", obj.get("answer"))
    if isinstance(gold, str):
        gold = [gold]
    if gold is not None and not (isinstance(gold, list) and all(isinstance(g, str) for g in gold)):
        bad(f"\"{'answers' if 'answers' in obj else 'answer'}\" must be a string or a list of strings")
    qid = obj.get("id", lineno)
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        bad(f"\"id\" must be a string or an integer, got {json.dumps(qid)[:60]}")
    qid = str(qid)
    for text in [question, qid, *(gold or [])]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape (\ud800) in the JSON
            bad(f"{text[:40]!r} is not valid Unicode text (a lone surrogate)")
    if qid in seen:
        bad(f"id {qid!r} was already given on line {seen[qid]}")
    seen[qid] = lineno
    golds = [g for g in gold or [] if g.strip()]
    return {"id": qid, "question": " ".join(question.split()), "gold": golds or None}
