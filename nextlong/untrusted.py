"""Reading files of a folder someone handed us (SECURITY.md): members, plain reads, small JSON files.

Every reader of an untrusted folder (model folders, tokenizer files, index folders, embedder folders,
MDS datasets, ...) goes through these, so each way a file can be hostile is refused once, the same
way, as one line naming the file, raised as the caller's error class:

* `member`: a name from the folder's own files (an index's shard list, an MDS index) must stay in
  the folder: no absolute path, no '..', no symbolic link out (`links=False`), a regular file;
* `read_bytes`: only regular files are read (a FIFO would hang, /dev/zero never ends), opened
  without blocking and checked on the open descriptor, up to a size cap;
* `read_json`: the above, then JSON that is malformed, nested too deep for Python (RecursionError),
  has a number too long to convert (ValueError), or is of the wrong type is one error, never a
  traceback; `finite=True` refuses NaN / Infinity (not JSON, but Python's json reads them);
* `load_array`: a .npy file (a work folder's, an index's), memory-mapped without pickles after its
  size and CRC32 match what was recorded when it was written, of the dtype and shape its readers
  index it with.

`strict_json` is the other direction: what nextlong writes is strict JSON (non-finite numbers become
null, and the caller is told where). `one_line` and `printable` are the way out to a terminal: text
from a file (corpus text, names, bytes quoted in an error) is shown with its control characters
escaped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
from pathlib import Path, PurePosixPath

from .errors import NextlongError

OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
JSON_LIMIT = 64 << 20  # a config, index or manifest file: far smaller in practice
_KINDS = {"d": "a directory", "p": "a FIFO", "c": "a device", "b": "a device", "s": "a socket"}
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true/false", type(None): "null"}


def show(value, limit: int = 60) -> str:
    """A value from an untrusted file, for a one-line error of bounded length."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def not_regular(st: os.stat_result) -> str | None:
    """Why a file cannot be read as data (a FIFO hangs, a device never ends), or None."""
    if stat.S_ISREG(st.st_mode):
        return None
    return f"is {_KINDS.get(stat.filemode(st.st_mode)[0], 'something else')}, not a regular file"


def plain_name(name, where: str, error, kind: str = "folder") -> PurePosixPath:
    """`name` as a relative path that stays in its folder (no absolute path, no '..', no NUL byte)."""
    rel = PurePosixPath(name) if isinstance(name, str) and "\0" not in name else PurePosixPath()
    if not rel.parts or str(rel) == ".":
        raise error(f"{where}: expected a file name, got {show(name)}")
    if rel.is_absolute() or ".." in rel.parts:
        raise error(f"{where}: {show(name)} is outside the {kind} (an absolute path or '..')")
    return rel


def member(folder: Path, name, where: str, error, *, links: bool = False,
           kind: str = "folder") -> tuple[Path, os.stat_result]:
    """`name` inside `folder`, and its stat: a regular file that no absolute path or '..' takes out of
    the folder, nor (unless `links`) a symbolic link (into another dataset, /etc, /dev/zero). The path
    returned is resolved when `links` is False (read it with `read_bytes(..., follow=False)`)."""
    rel = plain_name(name, where, error, kind)
    folder = Path(folder)
    try:
        if links:
            path = folder / rel
        else:
            folder = folder.resolve()
            path = (folder / rel).resolve()
            if folder not in path.parents:
                raise error(f"{where}: {show(name)} is a link out of the {kind}")
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{where}: {folder / rel} is missing") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise error(f"{where}: cannot read {folder / rel} ({reason})") from None
    problem = not_regular(st)
    if problem:
        raise error(f"{where}: {path} {problem}")
    return path, st


def check_work_folder(folder, error, *, command: str) -> None:
    """Before a resumed run reads its own earlier output: every entry of `folder`, at any depth, is a real
    folder or a regular file. nextlong writes nothing else there, so a symbolic link (whose target a run
    would read: another folder's text in the output) or a FIFO or device (on which a read waits forever) is
    a folder someone else put together; refused in one line naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError as exc:
            raise error(f"{here}: cannot list the {command} output folder ({exc.strerror})") from None
        for entry in entries:
            if entry.is_symlink():
                raise error(f"{entry.path} is a symbolic link: nextlong writes only folders and regular files in a "
                            f"{command} output folder; remove it, or run into a fresh --out")
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
                continue
            problem = not_regular(entry.stat(follow_symlinks=False))
            if problem:
                raise error(f"{entry.path} {problem}: nextlong writes only folders and regular files in a {command} "
                            "output folder; remove it, or run into a fresh --out")


def inside(folder: Path, path: Path) -> bool:
    """Whether `path`, symbolic links resolved, lies in `folder` (resolved)."""
    try:
        return Path(folder).resolve() in Path(path).resolve().parents
    except (OSError, RuntimeError):
        return False


def own_subfolder(folder: Path, name: str, error, *, kind: str, remedy: str) -> Path:
    """`folder`/`name` (DATA/data, DATA/mds), refused when it is a symbolic link out of `folder`: every check of
    its files (`member`) would then be against the folder the link points to, anywhere. The folder the user
    names may itself be a link: their choice. `remedy` ends the refusal."""
    part = Path(folder) / name
    if os.path.lexists(part) and not inside(folder, part):
        raise error(f"{part}: a symbolic link out of the {kind} {folder}, whose files are read only from the folder "
                    f"itself; {remedy}")
    return part


@contextlib.contextmanager
def open_regular(path: str | os.PathLike, error, *, follow: bool = False, what: str = "file"):
    """Yield (binary file object, its stat) of `path`, checked on the open descriptor to be a regular
    file (`not_regular`): opened without blocking, so a FIFO cannot hang the reader, and
    (unless `follow`) never through a symbolic link. Any problem is one `error(message)`. For files of
    a folder someone handed us (a run folder, a data folder) that are too large for `read_bytes`, or
    read in parts."""
    path = Path(path)
    try:
        fd = os.open(path, OPEN_FLAGS | (0 if follow else NOFOLLOW))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        link = not follow and os.path.islink(path)
        raise error(f"{path}: {'a symbolic link, not a regular file' if link else f'cannot open ({exc.strerror})'}"
                    ) from None
    st = os.fstat(fd)
    problem = not_regular(st)
    if problem:  # checked before open(), which refuses a folder with its own IsADirectoryError
        os.close(fd)
        raise error(f"{path}: {problem}")
    with open(fd, "rb") as fh:
        yield fh, st


def fd_path(fh, path) -> str:
    """A name that reopens exactly the file `fh` has open (Linux: /proc/self/fd/N, immune to a swap of
    `path` since it was checked), for readers that take only a path; `path` elsewhere."""
    proc = f"/proc/self/fd/{fh.fileno()}"
    return proc if os.path.exists(proc) else os.fspath(path)


def read_bytes(path, error, *, size: int | None = None, limit: int | None = None, follow: bool = True,
               what: str = "file") -> bytes:
    """The bytes of `path`, checked on the open file: a regular file (opened without blocking, so a
    FIFO cannot hang us), exactly `size` bytes when given, at most `limit` bytes when given."""
    path = Path(path)
    with open_regular(path, error, follow=follow, what=what) as (f, st):
        if limit is not None and st.st_size > limit:
            raise error(f"{path}: {st.st_size:,} bytes, more than a {what} may have ({limit:,})")
        want = size if size is not None else limit
        try:
            data = f.read() if want is None else f.read(want + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror})") from None
    if size is not None and len(data) != size:
        raise error(f"{path}: {len(data):,} bytes, {size:,} expected (changed since opened?)")
    if limit is not None and len(data) > limit:
        raise error(f"{path}: more than {limit:,} bytes (grew while read?)")
    return data


def load_array(path, error, *, remedy: str, mmap: bool = True, size: int | None = None, crc32: int | None = None,
               kind: str | None = None, dtype=None, ndim: int | None = None, shape: tuple | None = None):
    """The numpy array in `path`, or one `error` naming the file and saying what to do (`remedy`).

    Checked in order: a regular file (a FIFO would hang the load); `size` bytes and the `crc32` recorded
    when it was written, where given (the file was altered or damaged); a .npy file numpy reads without
    pickles; then `dtype` (or only its `kind`, numpy's letters: "f" floats, "iu" integers), `ndim` and
    `shape` (None in a shape: any length there)."""
    from tokenize import TokenError

    import numpy as np

    from .atomic import file_crc32

    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or type(exc).__name__}); {remedy}") from None
    why = not_regular(st)
    if why is None and size is not None and st.st_size != size:
        why = f"is {st.st_size:,} bytes, but {size:,} were written: the file is partial or was replaced"
    if why is None and crc32 is not None and file_crc32(path) != crc32:
        why = "CRC32 does not match the one recorded when it was written: the file is damaged or was altered"
    if why:
        raise error(f"{path}: {why}; {remedy}")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError, SyntaxError, TokenError, TypeError, OverflowError, RecursionError,
            MemoryError) as exc:  # a damaged header dict breaks numpy's parser (ast, tokenize) in these ways too
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if isinstance(exc, (SyntaxError, TokenError)):
            detail = f"its header does not parse: {type(exc).__name__}"
        raise error(f"{path}: not a readable numpy array ({detail}); {remedy}") from None
    if not isinstance(array, np.ndarray):  # np.load opens a .npz archive whatever the file's name
        close = getattr(array, "close", None)
        if close:
            close()
        raise error(f"{path}: a .npz archive, not a .npy array file; {remedy}")
    wrong = ((dtype is not None and array.dtype != np.dtype(dtype))
             or (kind is not None and array.dtype.kind not in kind)
             or (ndim is not None and array.ndim != ndim)
             or (shape is not None and (array.ndim != len(shape)
                                        or any(w is not None and w != a for w, a in zip(shape, array.shape)))))
    if wrong:
        name = np.dtype(dtype).name if dtype is not None else {"f": "float", "u": "unsigned integer",
                                                                "iu": "integer", "i": "integer"}.get(kind, "")
        want = (f"{name} array of shape {tuple('any' if w is None else w for w in shape)}" if shape is not None
                else f"{ndim}-d {name} array" if ndim is not None else f"{name} array").replace("  ", " ").strip()
        article = "an" if want[:1] in ("a", "e", "i", "o", "u") else "a"
        raise error(f"{path}: {array.dtype.name} array of shape {array.shape}, expected {article} {want}; {remedy}")
    return array


def recorded_crc(record: dict) -> int:
    """The CRC32 a record holds for a file, or -1 (which no file matches) when it holds none: a record
    without one must not let its file through unchecked."""
    crc = record.get("crc32") if isinstance(record, dict) else None
    return crc if whole(crc) else -1


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows to infinity")
    return value


def parse_json(data, where, error, *, expect=None, finite: bool = False, object_pairs_hook=None):
    """json.loads(data) as one error naming `where` for any way the text can be broken, then checked to
    be of the type `expect` (a type or tuple of types) when given."""
    options = {"parse_constant": _refuse_constant, "parse_float": _finite_float} if finite else {}
    try:
        value = json.loads(data, object_pairs_hook=object_pairs_hook, **options)
    except NextlongError:  # raised by object_pairs_hook: already the one line
        raise
    except RecursionError:
        raise error(f"{where}: not valid JSON (nested too deeply)") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    except ValueError as exc:  # bad UTF-8, a number of more than 4,300 digits, NaN with finite=True
        reason = str(exc)
        if "integer string conversion" in reason:
            reason = "a number with more than 4,300 digits"
        raise error(f"{where}: not valid JSON ({reason if len(reason) <= 120 else reason[:117] + '...'})") from None
    if expect is not None and not isinstance(value, expect):
        wanted = " or ".join(dict.fromkeys(_JSON_TYPES.get(t, t.__name__) for t in
                                           (expect if isinstance(expect, tuple) else (expect,))))
        raise error(f"{where}: expected {wanted}, got {json_type(value)}")
    return value


def number(value) -> bool:
    """Whether a value read from JSON is a number: True and False are ints to Python, not numbers of a record."""
    return type(value) in (int, float)


def whole(value, minimum: int | None = None) -> bool:
    """Whether a value read from JSON is an integer (at least `minimum`): True and False are ints to Python,
    and a crafted record may hold them, or floats and strings, where a count or an id belongs."""
    return type(value) is int and (minimum is None or value >= minimum)


def json_type(value) -> str:
    """'an object', 'an array', ... for a parsed JSON value."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def read_json(path, error, *, expect=None, finite: bool = False, limit: int = JSON_LIMIT, follow: bool = True,
              object_pairs_hook=None, what: str = "JSON file"):
    """The JSON value in the small file `path` (see the module docstring); any problem is one `error`."""
    data = read_bytes(path, error, limit=limit, follow=follow, what=what)
    return parse_json(data, path, error, expect=expect, finite=finite, object_pairs_hook=object_pairs_hook)


def strict_json(obj, where: str = "") -> tuple[object, list[str]]:
    """(obj with every non-finite float replaced by None, the places replaced as 'a.b[2].c'): what
    json.dumps then writes is strict JSON (Python's json would write NaN / Infinity, which JSON lacks)."""
    replaced: list[str] = []

    def clean(value, at: str):
        if isinstance(value, float) or (hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0
                                        and getattr(value.dtype, "kind", "") == "f"):
            if not math.isfinite(float(value)):
                replaced.append(at or "(top)")
                return None
            return value
        if isinstance(value, dict):
            return {k: clean(v, f"{at}.{k}" if at else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{at}[{i}]") for i, v in enumerate(value)]
        return value

    return clean(obj, where), replaced


def one_line(message: str) -> str:
    """A message as one printable line. Errors quote bytes of untrusted files and file names: a control
    character there (an escape sequence, a carriage return) must not reach the terminal as one."""
    return _escaped(" ".join(message.splitlines()))


def printable(text: str) -> str:
    """Text from a file (corpus text, document ids) for display: lines and tabs kept, every other
    character that is not printable (ESC of a colour or title sequence, BEL, a carriage return that
    overwrites the line, bidirectional overrides) shown escaped, as `one_line` does."""
    return _escaped(text, "\n\t")


def _escaped(text: str, keep: str = "") -> str:
    return "".join(c if c.isprintable() or c in keep else ascii(c)[1:-1] for c in text)
