"""nextlong.untrusted.load_array: the one reader of .npy files a user's folder or a work folder holds (chunk
stores, embeddings, neighbour lists, BM25 and near-duplicate arrays). Each hostile or damaged file is one
error naming it, never a hang, a pickle load or a traceback."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

from nextlong.errors import CorruptFileError
from nextlong.untrusted import load_array, recorded_crc


def _saved(tmp_path, array, name="a.npy", **kw):
    path = tmp_path / name
    np.save(path, array, **kw)
    return path


def _refused(path, match, **checks):
    with pytest.raises(CorruptFileError, match=match) as err:
        load_array(path, CorruptFileError, remedy="build it again", **checks)
    assert str(err.value).startswith(str(path)) and str(err.value).endswith("; build it again")
    assert "\n" not in str(err.value)


def test_a_good_file_loads_memory_mapped_or_whole(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = _saved(tmp_path, a)
    crc = zlib.crc32(path.read_bytes())
    got = load_array(path, CorruptFileError, remedy="-", size=path.stat().st_size, crc32=crc, dtype=np.float32,
                     shape=(3, None))
    assert isinstance(got, np.memmap) and np.array_equal(got, a)
    whole = load_array(path, CorruptFileError, remedy="-", mmap=False, kind="f", ndim=2)
    assert not isinstance(whole, np.memmap) and np.array_equal(whole, a)


def test_damage_and_lies_are_named(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = _saved(tmp_path, a)
    _refused(tmp_path / "missing.npy", "cannot be read")
    _refused(path, "is 176 bytes, but 100 were written", size=100)
    _refused(path, "CRC32 does not match", crc32=zlib.crc32(path.read_bytes()) ^ 1)
    _refused(path, "float32 array of shape", dtype=np.float64)
    _refused(path, r"expected an integer array", kind="iu")
    _refused(path, r"expected a 1-d float array", kind="f", ndim=1)
    _refused(path, r"expected a float32 array of shape \(4, 'any'\)", dtype=np.float32, shape=(4, None))
    truncated = tmp_path / "t.npy"
    truncated.write_bytes(path.read_bytes()[:100])
    _refused(truncated, "not a readable numpy array")
    _refused(_saved(tmp_path, np.array([{"x": 1}], dtype=object), "o.npy", allow_pickle=True),
             "not a readable numpy array")  # never unpickled
    archive = tmp_path / "z.npy"
    with open(archive, "wb") as f:
        np.savez(f, a=a)
    _refused(archive, "a .npz archive, not a .npy array file")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # numpy on some flipped headers
def test_a_damaged_header_dict_is_one_error(tmp_path):
    """Audit s12 F3: numpy parses the header dict with ast and tokenize, which raise TokenError or SyntaxError
    (not ValueError) on some damage, e.g. its '(' flipped: that was a traceback. Every bit of every header
    byte flipped: the array loads, or one error naming the file."""
    raw = _saved(tmp_path, np.arange(7, dtype=np.int64)).read_bytes()
    header_end = 10 + int.from_bytes(raw[8:10], "little")
    damaged = tmp_path / "d.npy"
    for at in (raw.index(b"(", 10), raw.index(b"{", 10)):  # the ones that reach tokenize
        damaged.write_bytes(raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1:])
        _refused(damaged, r"not a readable numpy array \(its header does not parse: TokenError\)")
    for at in range(header_end):
        for bit in range(8):
            damaged.write_bytes(raw[:at] + bytes([raw[at] ^ (1 << bit)]) + raw[at + 1:])
            for mmap in (True, False):
                try:
                    load_array(damaged, CorruptFileError, remedy="build it again", mmap=mmap)
                except CorruptFileError as exc:
                    assert str(exc).startswith(str(damaged)) and "\n" not in str(exc)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "f.npy"
    os.mkfifo(fifo)
    _refused(fifo, "is a FIFO, not a regular file")


def test_a_record_without_a_crc_lets_nothing_through():
    assert recorded_crc({"crc32": 7}) == 7
    assert recorded_crc({}) == recorded_crc({"crc32": None}) == recorded_crc({"crc32": True}) == -1
    assert recorded_crc(None) == -1
