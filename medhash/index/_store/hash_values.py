"""HASH_VALUES_FILE (hash_values.npy): an index's stored hash values, float16 [count, bits], row-aligned with ids.parquet.

Present when the codes carried them (`medhash encode --store-hash-values`); re-ranking a Hamming
shortlist reads them. A plain .npy file, so a search maps it (np.load mmap_mode="r") and touches only
the rows of its shortlists, and any numpy reads it. It is written streaming, like ids.parquet: the
header is written for zero rows and rewritten with the final count at the end (numpy pads the header
so that the first axis can grow to 21 digits without changing its length). add/remove rewrite it
beside ids.parquet in the same order: the old rows less the removed ones, then the new ones.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from numpy.lib import format as npy

from medhash.atomic import atomic_write
from medhash.codes_format import BATCH_ROWS

__all__ = ["ValuesWriter", "copy_values_except", "open_values", "open_values_writer"]

_DTYPE = np.dtype("<f2")


def _header(rows: int, bits: int) -> dict:
    return {"descr": npy.dtype_to_descr(_DTYPE), "fortran_order": False, "shape": (rows, bits)}


class ValuesWriter:
    """Appends float16 rows; use via `open_values_writer`."""

    def __init__(self, fh: BinaryIO, bits: int):
        self._fh, self.bits, self.rows = fh, bits, 0

    def write(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=_DTYPE)
        if values.ndim != 2 or values.shape[1] != self.bits:
            raise ValueError(f"hash values of shape {values.shape}, expected [n, {self.bits}]")
        self._fh.write(values.tobytes())
        self.rows += len(values)


@contextlib.contextmanager
def open_values_writer(path: Path, bits: int) -> Iterator[ValuesWriter]:
    """Write hash_values.npy atomically: the file appears, with its final row count, only when the block succeeds."""
    with atomic_write(path, "wb") as fh:
        npy.write_array_header_1_0(fh, _header(0, bits))
        start = fh.tell()
        writer = ValuesWriter(fh, bits)
        yield writer
        fh.seek(0)
        npy.write_array_header_1_0(fh, _header(writer.rows, bits))
        if fh.tell() != start:  # numpy's growth padding makes this impossible; never write a torn header
            raise RuntimeError(f"{path}: the .npy header changed length ({start} -> {fh.tell()})")
        fh.seek(0, 2)


def open_values(path: Path) -> np.ndarray:
    """The stored values, memory-mapped read-only: float16 [count, bits]."""
    return np.load(path, mmap_mode="r")


def copy_values_except(src: Path, writer: ValuesWriter, drop_rows: np.ndarray, batch_rows: int = BATCH_ROWS) -> None:
    """Stream src's rows minus `drop_rows` into writer (the order `idmap.copy_rows_except` keeps)."""
    values = open_values(src)
    keep = np.ones(len(values), dtype=bool)
    keep[np.asarray(drop_rows, dtype=np.int64)] = False
    for start in range(0, len(values), batch_rows):
        writer.write(values[start:start + batch_rows][keep[start:start + batch_rows]])
