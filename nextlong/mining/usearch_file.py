"""Check a saved usearch index file before usearch reads it (an index folder is untrusted input).

usearch trusts its file: a neighbour id past the end of the graph, a node whose level disagrees with
the level table, a neighbour count larger than its list, or a vector row of another width is read
as memory, and a search crashes the process (SIGSEGV) or reads what lies beyond. A CRC stored beside
the file proves nothing: whoever crafted the file wrote the CRC too. So every structure a search
follows is checked here, vectorised, in one pass over the file (memory-mapped):

    u32 rows, u32 bytes per vector          (the matrix, as `Index.save` writes it: 32-bit dimensions)
    rows x bytes per vector                 vectors
    64 bytes                                "usearch", version, metric, scalar, key and slot kinds,
                                            count present / deleted, dimensions, multi
    5 x u64                                 graph: size, connectivity, base connectivity, max level,
                                            entry slot
    size x i16                              each node's level
    per node, back to back                  u64 key, i16 level, then level 0's list (u32 count +
                                            base-connectivity u32 slots), then for each level 1..L a
                                            list of u32 count + connectivity u32 slots

(include/usearch/index_dense.hpp `save_to_stream`, include/usearch/index.hpp `save_to_stream` /
`view`; usearch 2.x.) Checked: the layout adds up to the file's size exactly; the header agrees with
index.json (dimensions, count, metric, scalar kind) and with this build of usearch (64-bit keys,
32-bit slots, no deleted entries, no multi-vectors); every level lies in 0..max level, each node's
own level equals the level table's, and the entry node has the max level; every neighbour count fits
its list; every neighbour slot is below the node count, and a neighbour listed on level l has a level
>= l (a search would otherwise read its level-l list past its end); the keys are distinct (the
caller compares them with the chunk table); every float vector is finite.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from ..errors import IndexFileError

HEAD_BYTES = 64
GRAPH_BYTES = 40
NODE_HEAD = 10  # u64 key + i16 level
MAX_CONNECTIVITY = 1 << 16  # usearch's defaults are 16 / 32; this only bounds the arithmetic
_SCALARS = {"f16": (12, 2, 0x7C00), "bf16": (4, 2, 0x7F80), "f32": (11, 4, 0x7F800000), "i8": (23, 1, 0)}
_METRICS = {"ip": ord("i"), "cos": ord("c"), "l2sq": ord("e")}
_KEY_U64, _SLOT_U32 = 14, 15
_BLOCK = 1 << 14  # nodes per gather: bounds the temporary index arrays (~ block x list length x 8 bytes)


def map_file(path: Path) -> mmap.mmap | bytes:
    """The file's bytes, memory-mapped (an empty file gives b"")."""
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            return b""


def check_usearch(data, path, *, dim: int, count: int, dtype: str, metric: str, after_header=None) -> np.ndarray:
    """Check the bytes `data` of the usearch file `path` (see the module docstring); returns the
    node keys (uint64, in slot order). Any inconsistency is an IndexFileError naming the file.
    `after_header()` runs once the headers are read and agree (the CRC check: a damaged file is then
    reported as damaged rather than by the first structure it breaks)."""

    def bad(what: str) -> IndexFileError:
        return IndexFileError(f"{path}: not a usearch index nextlong can search safely: {what}; rebuild it with "
                              "nextlong index")

    buf = np.frombuffer(data, np.uint8)
    size = len(buf)
    scalar = _SCALARS.get(dtype)
    if scalar is None or metric not in _METRICS:
        raise bad(f"index.json's dtype {dtype!r} / metric {metric!r} is not one nextlong writes")
    if size < 8 or bytes(buf[:7]) == b"usearch":
        raise bad("no vector matrix at its start")
    rows, cols = (int(x) for x in np.frombuffer(data, "<u4", 2, 0))
    if rows != count or cols != dim * scalar[1]:
        raise bad(f"its matrix is {rows} x {cols} bytes, index.json expects {count} x {dim * scalar[1]}")
    h = 8 + rows * cols
    if size < h + HEAD_BYTES + GRAPH_BYTES:
        raise bad(f"{size:,} bytes, too short for {rows} vectors and the headers")
    head = bytes(buf[h:h + HEAD_BYTES])
    major, minor = (int(x) for x in np.frombuffer(head, "<u2", 2, 7))
    kind_metric, kind_scalar, kind_key, kind_slot = head[13:17]
    present, deleted, dims = (int(x) for x in np.frombuffer(head, "<u8", 3, 17))
    multi = head[41]
    if head[:7] != b"usearch" or major != 2 or minor < 10:
        raise bad(f"header {head[:7]!r} version {major}.{minor} (expected usearch 2.10 or newer)")
    if (kind_metric, kind_scalar) != (_METRICS[metric], scalar[0]) or dims != dim:
        raise bad(f"header metric {kind_metric}, scalar kind {kind_scalar}, {dims} dimensions; index.json says "
                  f"{metric}, {dtype}, {dim}")
    if (kind_key, kind_slot) != (_KEY_U64, _SLOT_U32) or deleted != 0 or multi != 0 or present != rows:
        raise bad(f"header key kind {kind_key}, slot kind {kind_slot}, {present} present and {deleted} deleted "
                  f"entries, multi {multi} (expected 64-bit keys, 32-bit slots, {rows} present, none deleted)")
    if after_header is not None:
        after_header()
    g = h + HEAD_BYTES
    n, conn, conn_base, max_level, entry = (int(x) for x in np.frombuffer(data, "<u8", 5, g))
    if n != rows:
        raise bad(f"the graph holds {n} nodes, the matrix {rows} vectors")
    first = g + GRAPH_BYTES + 2 * n
    if n == 0:
        if size != g + GRAPH_BYTES:
            raise bad(f"{size - g - GRAPH_BYTES:,} bytes after an empty graph")
        return np.zeros(0, np.uint64)
    if not 2 <= conn <= conn_base <= MAX_CONNECTIVITY:
        raise bad(f"connectivity {conn} / base {conn_base} (expected 2 <= connectivity <= base <= "
                  f"{MAX_CONNECTIVITY})")
    if first > size:
        raise bad(f"{size:,} bytes, too short for the level table of {n} nodes")
    levels = np.frombuffer(data, "<i2", n, g + GRAPH_BYTES)
    low, high = int(levels.min()), int(levels.max())
    if low < 0 or high != max_level or entry >= n or int(levels[entry]) != max_level:
        raise bad(f"levels {low}..{high}, max level {max_level}, entry node {entry} (expected levels 0..max level "
                  "and an entry node of the max level)")
    base_bytes, upper_bytes = 4 + 4 * conn_base, 4 + 4 * conn
    sizes = NODE_HEAD + base_bytes + levels.astype(np.int64) * upper_bytes
    ends = first + np.cumsum(sizes)
    if int(ends[-1]) != size:
        raise bad(f"its nodes take {int(ends[-1]) - first:,} bytes after the level table, the file has "
                  f"{size - first:,}")
    offsets = ends - sizes

    # node heads: key and level, 10 bytes at each offset (not aligned: gathered bytewise)
    heads = np.empty((n, NODE_HEAD), np.uint8)
    for lo in range(0, n, _BLOCK):
        at = offsets[lo:lo + _BLOCK]
        heads[lo:lo + len(at)] = buf[at[:, None] + np.arange(NODE_HEAD)]
    keys = heads[:, :8].copy().view("<u8").reshape(n)
    node_levels = heads[:, 8:].copy().view("<i2").reshape(n)
    wrong = np.flatnonzero(node_levels != levels)
    if len(wrong):
        i = int(wrong[0])
        raise bad(f"node {i} has level {int(node_levels[i])}, the level table says {int(levels[i])}")
    if len(np.unique(keys)) != n:
        raise bad("two nodes have the same key")

    # neighbour lists: a u32 count then `cap` u32 slots, at a 4-byte phase that differs node to node
    words = [np.frombuffer(data, "<u4", (size - a) // 4, a) for a in range(4)]

    def check_lists(starts: np.ndarray, nodes: np.ndarray, cap: int, level: int) -> None:
        span = np.arange(cap + 1)
        for lo in range(0, len(starts), _BLOCK):
            at, who = starts[lo:lo + _BLOCK], nodes[lo:lo + _BLOCK]
            phase = at % 4
            for a in range(4):
                sel = np.flatnonzero(phase == a)
                if not len(sel):
                    continue
                lists = words[a][((at[sel] - a) // 4)[:, None] + span]
                counts = lists[:, 0]
                over = np.flatnonzero(counts > cap)
                if len(over):
                    raise bad(f"node {int(who[sel[over[0]]])} lists {int(counts[over[0]])} neighbours on level "
                              f"{level}, which has room for {cap}")
                used = span[None, 1:] <= counts[:, None]
                slots = lists[:, 1:]
                out = used & (slots >= n)
                if level and not out.any():
                    out = used & (levels[np.minimum(slots, n - 1)] < level)
                if out.any():
                    r, c = np.argwhere(out)[0]
                    raise bad(f"node {int(who[sel[r]])} has neighbour {int(slots[r, c])} on level {level}, which "
                              + ("is not a node" if slots[r, c] >= n else "does not reach that level"))

    check_lists(offsets + NODE_HEAD, np.arange(n), conn_base, 0)
    if max_level:
        highest_first = np.argsort(levels, kind="stable")[::-1]
        at_least = np.cumsum(np.bincount(levels)[::-1])[::-1]  # at_least[l]: nodes of level >= l
        for level in range(1, max_level + 1):
            up = highest_first[:at_least[level]]
            check_lists(offsets[up] + NODE_HEAD + base_bytes + (level - 1) * upper_bytes, up, conn, level)

    # vectors: a NaN or infinity makes every distance to it NaN (wrong neighbours, NaN similarities)
    if scalar[2]:
        item = scalar[1]
        values = np.frombuffer(data, f"<u{item}", rows * dim, 8)
        mask = np.array(scalar[2], values.dtype)
        for lo in range(0, len(values), 1 << 24):
            part = values[lo:lo + (1 << 24)]
            hit = np.flatnonzero((part & mask) == mask)
            if len(hit):
                raise bad(f"vector {(lo + int(hit[0])) // dim} is not finite (NaN or infinite)")
    return keys
