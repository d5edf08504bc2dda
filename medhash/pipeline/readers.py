"""Get an item's bytes inside a shard task: a file path, a tar member, or a Parquet row.

`ShardReader.load(item)` runs in the task's main thread in plan order (cheap: a path, one
`pread`, or a cached row group); the decoding of what it returns runs in the decode threads.
A reader failure becomes an `ImageDecodeError` for that item only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from medhash.errors import ImageDecodeError
from medhash.pipeline.inputs import InputItem


class ShardReader:
    def __init__(self) -> None:
        self._archives: dict[str, int] = {}  # tar path -> file descriptor (pread is thread-safe, no seek)
        self._row_group: dict[str, tuple[tuple, object]] = {}  # table -> ((group, column, field), array)

    def load(self, item: InputItem) -> Path | bytes:
        return ITEM_READERS[item.reader](self, item)

    def close(self) -> None:
        for fd in self._archives.values():
            os.close(fd)
        self._archives.clear()
        self._row_group.clear()

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- readers -----------------------------------------------------------------------------
    def _file(self, item: InputItem) -> Path:
        return Path(item.source)  # read_image opens it in the decode thread

    def _tar_member(self, item: InputItem) -> bytes:
        offset, size = item.locator
        try:
            fd = self._archives.get(item.source)
            if fd is None:
                fd = self._archives[item.source] = os.open(item.source, os.O_RDONLY)
            data = os.pread(fd, size, offset)
        except OSError as exc:
            raise ImageDecodeError(item.path, "unreadable", f"{type(exc).__name__}: {exc}") from exc
        if len(data) != size:
            raise ImageDecodeError(item.path, "truncated", f"the archive ends {size - len(data)} bytes before the member's end")
        return data

    def _parquet_row(self, item: InputItem) -> bytes:
        group, index, column, field = item.locator
        key = (group, column, field)
        cached = self._row_group.get(item.source)
        if cached is None or cached[0] != key:  # items come in row order: one row group at a time
            cached = self._row_group[item.source] = (key, self._read_row_group(item, group, column, field))
        value = cached[1][index].as_py()
        if value is None:
            raise ImageDecodeError(item.path, "empty", "the row's image bytes are null")
        return value

    @staticmethod
    def _read_row_group(item: InputItem, group: int, column: str, field: str | None):
        import pyarrow.parquet as pq

        try:
            values = pq.ParquetFile(item.source).read_row_group(group, columns=[column]).column(0).combine_chunks()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise ImageDecodeError(item.path, "unreadable", f"row group {group}: {type(exc).__name__}: {exc}") from exc
        return values.field(field) if field else values


ITEM_READERS: dict[str, Callable[[ShardReader, InputItem], Path | bytes]] = {
    "file": ShardReader._file,
    "tar": ShardReader._tar_member,
    "parquet": ShardReader._parquet_row,
}
