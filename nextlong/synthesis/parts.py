"""A finished stage's Parquet parts, read whole with any damage named in one line.

A stage reads the parts of the stages before it as they are; pyarrow reports a damaged part (a page failing its
checksum, a page header or footer no checksum covers) naming no file, or reads it short. These readers name the
part and the folder to delete. Kept apart from the framework so that the writers, which the framework uses,
can read parts too.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CorruptFileError


def _damaged_part(part, exc: Exception) -> CorruptFileError:
    return CorruptFileError(f"{part}: not a readable Parquet file ({' '.join(str(exc).split())[:200]}); delete "
                            f"{Path(part).parent} to make that stage again")


def read_part(part, columns=None):
    """A finished stage's Parquet part (`columns` of it, None: all), its damage named in one line: a page that fails
    its checksum, and what no checksum covers (a page header, the footer), which pyarrow reports naming no file."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(part, columns=columns, page_checksum_verification=True)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise _damaged_part(part, exc) from None


def part_rows(part) -> int:
    """The rows a finished stage's Parquet part holds, from its footer, its damage named."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(part).metadata.num_rows
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise _damaged_part(part, exc) from None
