"""Regenerate tests/data/stdlib-docstrings.jsonl.gz: the shipped real-text snapshot the tests read.

One JSON line per standard-library module, {"id": module name, "text": its docstrings in source
order} (nextlong.synthesis.demo's layout), from the interpreter that runs this script. The committed
file was made with CPython 3.11.7 (Debian); another Python version gives other text, and
tests/test_suite_hygiene.py then fails on the checksum: update SHA256 there and tests/data/README.md
only on purpose.

    python3 scripts/make_test_corpus.py tests/data/stdlib-docstrings.jsonl.gz
"""

import gzip
import json
import sys

from nextlong.synthesis.demo import iter_stdlib_documents


def main(path: str) -> None:
    lines = [json.dumps({"id": name, "text": text}, ensure_ascii=False) for name, text in iter_stdlib_documents()]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(data)
    print(f"{path}: {len(lines)} documents, {len(data):,} bytes of UTF-8 text")


if __name__ == "__main__":
    main(sys.argv[1])
