"""ids.parquet: row -> (label, image_id, path, labels, box), written and rewritten batch by batch.

`label` is the row's FAISS label (== its row position for the dense kinds); the other columns come
from the code shards, so a search hit leads back to its image, labels and box.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medhash.atomic import atomic_path
from medhash.codes_format import BATCH_ROWS

__all__ = ["ID_SCHEMA", "IdRecord", "IdWriter", "copy_rows_except", "id_rows", "iter_id_batches", "open_id_writer",
           "read_column", "records_at", "rows_of_image_ids"]

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


def id_rows(columns: pa.RecordBatch) -> pa.RecordBatch:
    """A code batch's image_id, path, labels (null where the shard has none) and box in ID_SCHEMA; label unset."""
    n = columns.num_rows
    labels = columns.column("labels") if "labels" in columns.schema.names else pa.nulls(n, pa.list_(pa.string()))
    box = columns.column("box")
    if box.type != ID_SCHEMA.field("box").type:
        box = box.cast(ID_SCHEMA.field("box").type)
    return pa.RecordBatch.from_arrays(
        [pa.nulls(n, pa.int64()), columns.column("image_id").cast(pa.string()), columns.column("path").cast(pa.string()),
         labels.cast(ID_SCHEMA.field("labels").type), box],
        schema=ID_SCHEMA,
    )


class IdWriter:
    """Appends id batches, stamping each row's FAISS label; use via `open_id_writer`."""

    def __init__(self, writer: pq.ParquetWriter):
        self._writer = writer
        self.rows = 0

    def write(self, batch: pa.RecordBatch, labels: np.ndarray) -> None:
        columns = [pa.array(np.asarray(labels, dtype=np.int64))] + [batch.column(i) for i in range(1, batch.num_columns)]
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=ID_SCHEMA))
        self.rows += batch.num_rows


@contextlib.contextmanager
def open_id_writer(path: Path) -> Iterator[IdWriter]:
    """Write ids.parquet atomically: the file appears only when the block succeeds."""
    with atomic_path(path) as tmp:
        # Dictionary encoding only for the repetitive labels: unique ids/paths compress 3x better
        # and write 1.6x faster without a dictionary (measured on 2M synthetic rows).
        writer = pq.ParquetWriter(tmp, ID_SCHEMA, compression="zstd", use_dictionary=["labels"])
        try:
            yield IdWriter(writer)
        finally:
            writer.close()


def iter_id_batches(path: Path, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)


def read_column(path: Path, name: str) -> pa.Array:
    return pq.read_table(path, columns=[name]).column(name).combine_chunks()


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
    return [
        IdRecord(int(row), r["image_id"], r["path"], tuple(r["labels"] or ()), tuple(r["box"]) if r["box"] else None)
        for row, r in zip(rows, picked)
    ]
