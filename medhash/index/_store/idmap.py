"""ids.parquet: row -> (label, image_id, path, labels, box, metadata...), written and rewritten batch by batch.

`label` is the row's FAISS label (== its row position for the dense kinds); the other columns come
from the code shards, so a search hit leads back to its image, labels and box. The code shards'
metadata columns (label-table columns, DICOM attributes, patient_key) follow the five fixed ones, so
searches can filter on them (medhash.index.selection). The index's first codes folder fixes the
metadata columns: rows added later from a folder without one of them get nulls there, and columns
the index does not have are dropped (with a warning), so ids.parquet keeps one schema.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medhash.atomic import atomic_path
from medhash.codes_format import BATCH_ROWS, HASH_VALUES_COLUMN

__all__ = ["ID_SCHEMA", "IdRecord", "IdWriter", "copy_rows_except", "id_rows", "id_schema", "iter_id_batches",
           "open_id_writer", "read_id_schema", "records_at", "rows_of_image_ids"]

log = logging.getLogger(__name__)

ID_SCHEMA = pa.schema(
    [
        ("label", pa.int64()),
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("box", pa.list_(pa.int32(), 4)),
    ]
)


@dataclass(frozen=True)
class IdRecord:
    row: int
    image_id: str
    path: str
    labels: tuple[str, ...]
    box: tuple[int, int, int, int] | None
    metadata: dict = field(default_factory=dict)  # the metadata columns of the row (null ones left out)


def id_schema(metadata: tuple[pa.Field, ...] | list[pa.Field] = ()) -> pa.Schema:
    """ID_SCHEMA followed by the given metadata columns (without their Parquet field metadata)."""
    return pa.schema(list(ID_SCHEMA) + [pa.field(f.name, f.type) for f in metadata])


def read_id_schema(path: Path) -> pa.Schema:
    return pq.read_schema(path).remove_metadata()


def id_rows(columns: pa.RecordBatch, schema: pa.Schema = ID_SCHEMA) -> pa.RecordBatch:
    """A code batch's image_id, path, labels (null where the shard has none), box and the schema's metadata
    columns (null where the batch has none, cast to the schema's type); label unset."""
    n = columns.num_rows
    names = columns.schema.names
    arrays = [pa.nulls(n, pa.int64())]
    for f in list(schema)[1:]:
        arrays.append(columns.column(f.name).cast(f.type) if f.name in names else pa.nulls(n, f.type))
    # code goes to index.faiss and hash_values to hash_values.npy, not to ids.parquet.
    dropped = [name for name in names if name not in schema.names and name not in ("code", HASH_VALUES_COLUMN)]
    if dropped:
        log.warning("ids.parquet has no column(s) %s: their values are not indexed", dropped)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class IdWriter:
    """Appends id batches, stamping each row's FAISS label; use via `open_id_writer`."""

    def __init__(self, writer: pq.ParquetWriter, schema: pa.Schema):
        self._writer = writer
        self.schema = schema
        self.rows = 0

    def write(self, batch: pa.RecordBatch, labels: np.ndarray) -> None:
        columns = [pa.array(np.asarray(labels, dtype=np.int64))] + [batch.column(i) for i in range(1, batch.num_columns)]
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        self.rows += batch.num_rows


@contextlib.contextmanager
def open_id_writer(path: Path, schema: pa.Schema = ID_SCHEMA) -> Iterator[IdWriter]:
    """Write ids.parquet atomically: the file appears only when the block succeeds."""
    with atomic_path(path) as tmp:
        # Dictionary encoding only for the repetitive columns (labels and the string metadata): unique
        # ids/paths compress 3x better and write 1.6x faster without a dictionary (measured on 2M rows).
        repetitive = ["labels"] + [f.name for f in list(schema)[len(ID_SCHEMA):] if f.name != "patient_key"]
        writer = pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=repetitive)
        try:
            yield IdWriter(writer, schema)
        finally:
            writer.close()


def iter_id_batches(path: Path, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)


def rows_of_image_ids(path: Path, image_ids: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(rows, labels, missing ids) for the given image ids, streaming ids.parquet."""
    wanted = pa.array(sorted(set(image_ids)), type=pa.string())
    rows, labels, found = [], [], set()
    offset = 0
    for batch in iter_id_batches(path, ["label", "image_id"]):
        hit = pc.is_in(batch.column("image_id"), value_set=wanted)
        idx = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
        if len(idx):
            rows.append(idx + offset)
            labels.append(batch.column("label").to_numpy()[idx])
            found.update(batch.column("image_id").take(pa.array(idx)).to_pylist())
        offset += batch.num_rows
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)  # noqa: E731
    return cat(rows), cat(labels), [i for i in wanted.to_pylist() if i not in found]


def copy_rows_except(src: Path, writer: IdWriter, drop_rows: np.ndarray, relabel: bool) -> None:
    """Stream src's rows minus `drop_rows` into writer; relabel=True sets label = row position (dense kinds)."""
    drop = np.sort(np.asarray(drop_rows, dtype=np.int64))
    offset = 0
    for batch in iter_id_batches(src):
        n = batch.num_rows
        lo, hi = np.searchsorted(drop, [offset, offset + n])
        keep = np.ones(n, dtype=bool)
        keep[drop[lo:hi] - offset] = False
        offset += n
        if not keep.all():
            batch = batch.filter(pa.array(keep))
        if relabel:
            labels = np.arange(writer.rows, writer.rows + batch.num_rows)
        else:
            labels = batch.column("label").to_numpy()
        writer.write(batch, labels)


def records_at(table: pa.Table, rows: np.ndarray) -> list[IdRecord]:
    picked = table.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
    fixed = set(ID_SCHEMA.names)
    return [
        IdRecord(int(row), r["image_id"], r["path"], tuple(r["labels"] or ()), tuple(r["box"]) if r["box"] else None,
                 {k: v for k, v in r.items() if k not in fixed and v is not None})
        for row, r in zip(rows, picked)
    ]
