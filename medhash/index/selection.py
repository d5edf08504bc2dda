"""Evaluate a parsed Filter (medhash.index.filters) over an index's ids.parquet into a row Selection.

Memory stays bounded whatever the index size: only the columns the filter names are read, one
record batch at a time, into a boolean mask (1 byte per row); nothing else of ids.parquet is held.
Selections are cached in a small LRU keyed by the filter's normalized text and the index version
(a new version opens a new selector, so a cached selection never outlives the rows it indexes),
bounded by a byte budget as well as a count. The selected rows (8 bytes each) are computed on first
use and kept with the selection.

ids.parquet is read through the file handle the index opened, so a version replaced on disk by
`index add/remove` while a server still answers from the old one keeps reading the old file.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medhash.codes_format import BATCH_ROWS, PATIENT_KEY_COLUMN
from medhash.index.filters import FIELD_COLUMNS, Filter, FilterError, Range

__all__ = ["MetadataSelector", "Selection"]

CACHE_ENTRIES = 32
CACHE_BYTES = 256 * 1024 * 1024


class Selection:
    """The rows a filter lets through: a boolean mask by row, and (on first use) the sorted rows."""

    def __init__(self, mask: np.ndarray):
        self.mask = mask
        self.total = len(mask)
        self.count = int(np.count_nonzero(mask))
        self._rows: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            with self._lock:
                if self._rows is None:
                    self._rows = np.flatnonzero(self.mask).astype(np.int64)
        return self._rows

    @property
    def fraction(self) -> float:
        return self.count / self.total if self.total else 0.0

    @property
    def nbytes(self) -> int:
        return self.mask.nbytes + 8 * self.count


class MetadataSelector:
    """Filters over one index version's ids.parquet (an open ParquetFile of `total` rows).

    `row_of(image_id)` finds an archived image's row (for not_patient).
    """

    def __init__(self, ids_file: pq.ParquetFile, total: int, row_of: Callable[[str], int | None],
                 capacity: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES):
        self._file, self.total, self._row_of = ids_file, total, row_of
        self._schema = ids_file.schema_arrow
        self._cache: OrderedDict[str, Selection] = OrderedDict()
        self._capacity, self._max_bytes = capacity, max_bytes
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()  # one reader of the shared file handle at a time

    def columns(self) -> list[str]:
        return self._schema.names

    def select(self, flt: Filter) -> Selection:
        key = flt.text or flt.normalized()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        selection = self._evaluate(flt)
        with self._lock:
            self._cache[key] = selection
            while len(self._cache) > 1 and (len(self._cache) > self._capacity or
                                            sum(s.nbytes for s in self._cache.values()) > self._max_bytes):
                self._cache.popitem(last=False)
        return selection

    # -- evaluation -------------------------------------------------------------------------------
    def _sources(self, name: str) -> list[str]:
        names = self._schema.names
        if name in FIELD_COLUMNS:
            present = [c for c in FIELD_COLUMNS[name] if c in names]
            if not present:
                raise FilterError(f"filter clause {name!r}: this index stores no {name} column "
                                  f"(looked for {', '.join(FIELD_COLUMNS[name])})")
            return present
        if name not in names:
            stored = [n for n in names if n not in ("label", "path", "box", "code", PATIENT_KEY_COLUMN)]
            raise FilterError(f"filter clause {name!r}: no such column in this index (stored: {', '.join(stored)})")
        return [name]

    def _evaluate(self, flt: Filter) -> Selection:
        mask = np.ones(self.total, dtype=bool)
        if flt.empty():
            return Selection(mask)
        sources = {name: self._sources(name) for name in flt.columns()}
        excluded_keys = set(flt.not_patient_keys)
        own_row = None
        wants_patient = bool(excluded_keys) or flt.not_patient_image is not None
        if wants_patient and PATIENT_KEY_COLUMN not in self._schema.names:
            raise FilterError("filter clause 'not_patient': this index stores no patient_key "
                              "(encode with --patient-key-secret-file)")
        if flt.not_patient_image is not None:
            own_row = self._row_of(flt.not_patient_image)
            if own_row is None:
                raise FilterError(f"filter clause 'not_patient': no image {flt.not_patient_image!r} in this index")
            key = self._value_at(own_row, PATIENT_KEY_COLUMN)
            if key is not None:
                excluded_keys.add(key)
        columns = sorted({c for cs in sources.values() for c in cs}
                         | ({"labels"} if flt.labels_any or flt.labels_all or flt.labels_none else set())
                         | ({PATIENT_KEY_COLUMN} if excluded_keys else set()))
        offset = 0
        if columns:
            with self._io_lock:
                for batch in self._file.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                    n = batch.num_rows
                    mask[offset:offset + n] = _batch_mask(batch, flt, sources, excluded_keys)
                    offset += n
            if offset != self.total:
                raise FilterError(f"ids.parquet holds {offset} rows, the index {self.total}")
        if own_row is not None:
            mask[own_row] = False  # the named image itself, whether or not its patient is known
        return Selection(mask)

    def _value_at(self, row: int, column: str):
        meta = self._file.metadata
        start = 0
        for group in range(meta.num_row_groups):
            n = meta.row_group(group).num_rows
            if row < start + n:
                with self._io_lock:
                    table = self._file.read_row_group(group, columns=[column])
                return table.column(column)[row - start].as_py()
            start += n
        return None


def _batch_mask(batch: pa.RecordBatch, flt: Filter, sources: dict[str, list[str]], excluded_keys: set[str]) -> np.ndarray:
    n = batch.num_rows
    keep = np.ones(n, dtype=bool)
    if flt.labels_any or flt.labels_all or flt.labels_none:
        keep &= _labels_mask(batch.column("labels"), flt)
    for name, values in flt.equals:
        keep &= _equals_mask([batch.column(c) for c in sources[name]], values, name)
    for name, rng in flt.ranges:
        keep &= _range_mask([batch.column(c) for c in sources[name]], rng, name)
    if excluded_keys:
        key = batch.column(PATIENT_KEY_COLUMN).cast(pa.string())
        hit = pc.fill_null(pc.is_in(pc.utf8_lower(key), value_set=pa.array(sorted(excluded_keys))), False)
        keep &= ~hit.to_numpy(zero_copy_only=False)
    return keep


def _labels_mask(labels: pa.Array, flt: Filter) -> np.ndarray:
    n = len(labels)
    valid = labels.is_valid().to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(labels)
    parents = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False)
    keep = np.ones(n, dtype=bool)

    def matches(values: frozenset[str]) -> np.ndarray:
        """Distinct values of the set each row holds."""
        value_set = pa.array(sorted(values), type=pa.string())
        idx = pc.fill_null(pc.index_in(flat, value_set=value_set), -1).to_numpy(zero_copy_only=False)
        hit = idx >= 0
        pairs = np.unique(parents[hit].astype(np.int64) * len(values) + idx[hit])
        return np.bincount(pairs // len(values), minlength=n)

    if flt.labels_any:
        keep &= valid & (matches(flt.labels_any) > 0)
    if flt.labels_all:
        keep &= valid & (matches(flt.labels_all) == len(flt.labels_all))
    if flt.labels_none:
        keep &= matches(flt.labels_none) == 0
    return keep


def _numeric(column: pa.Array) -> pa.Array:
    """A column as float64; strings that are not numbers become null."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.cast(pa.float64())
    text = column.cast(pa.string())
    try:
        return pc.cast(pc.utf8_trim_whitespace(text), pa.float64())
    except pa.ArrowInvalid:
        out = []
        for v in text.to_pylist():
            try:
                out.append(float(v) if v is not None else None)
            except ValueError:
                out.append(None)
        return pa.array(out, type=pa.float64())


def _coalesced(columns: list[pa.Array], convert) -> pa.Array:
    converted = [convert(c) for c in columns]
    return converted[0] if len(converted) == 1 else pc.coalesce(*converted)


def _is_numeric_type(columns: list[pa.Array]) -> bool:
    return all(pa.types.is_integer(c.type) or pa.types.is_floating(c.type) for c in columns)


def _equals_mask(columns: list[pa.Array], values: frozenset[str], name: str) -> np.ndarray:
    if _is_numeric_type(columns):
        try:
            numbers = pa.array(sorted(float(v) for v in values), type=pa.float64())
        except ValueError:
            raise FilterError(f"filter clause {name!r}: this column holds numbers, got {sorted(values)}") from None
        hit = pc.is_in(_coalesced(columns, _numeric), value_set=numbers)
    else:
        def upper(c: pa.Array) -> pa.Array:
            if not (pa.types.is_string(c.type) or pa.types.is_large_string(c.type) or pa.types.is_integer(c.type)):
                raise FilterError(f"filter clause {name!r}: column type {c.type} cannot be compared to values")
            return pc.utf8_upper(pc.utf8_trim_whitespace(c.cast(pa.string())))

        hit = pc.is_in(_coalesced(columns, upper), value_set=pa.array(sorted(values), type=pa.string()))
    return pc.fill_null(hit, False).to_numpy(zero_copy_only=False)


def _range_mask(columns: list[pa.Array], rng: Range, name: str) -> np.ndarray:
    for c in columns:
        if not (pa.types.is_string(c.type) or pa.types.is_large_string(c.type) or pa.types.is_integer(c.type)
                or pa.types.is_floating(c.type)):
            raise FilterError(f"filter clause {name!r}: column type {c.type} has no range")
    values = _coalesced(columns, _numeric).to_numpy(zero_copy_only=False)  # nulls -> nan
    keep = ~np.isnan(values)
    with np.errstate(invalid="ignore"):
        if rng.low is not None:
            keep &= values >= rng.low
        if rng.high is not None:
            keep &= values <= rng.high
    return keep
