"""Read the pipeline's Parquet code shards (the layout contract in CONTEXT.md) batch by batch.

A codes folder holds `part-NNNNN.parquet` files with columns image_id, path, code
(fixed_size_binary[bits/8]), box (fixed-size list of 4 int32), labels (list<string>, optional),
features (optional, never read here), file metadata b"medhash.model_id" / b"medhash.bits", and a
`_manifest.json` listing the shards. Only the columns a pass needs are read, one record batch at a
time, so memory stays bounded by the batch size whatever the folder holds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medhash.errors import CodeShardError

log = logging.getLogger(__name__)

MODEL_ID_KEY = b"medhash.model_id"
BITS_KEY = b"medhash.bits"
SHARD_GLOB = "part-*.parquet"
CODES_MANIFEST = "_manifest.json"
ID_COLUMNS = ("image_id", "path", "labels", "box")
# Rows per streamed batch. 16k rather than 64k: at 10M codes the build's peak RSS fell from 2.5x to
# 2.2x the index size, and the build ran no slower (7.8 s vs 10.1 s; benchmarks/search_latency.py).
BATCH_ROWS = 16_384


@dataclass(frozen=True)
class CodeShard:
    path: Path
    model_id: str
    bits: int
    rows: int
    has_labels: bool


@dataclass(frozen=True)
class CodeBatch:
    """One batch of valid rows: codes uint8 [B, bits/8] and the id-map columns as an Arrow batch."""

    codes: np.ndarray
    image_ids: pa.Array  # string
    ids: pa.RecordBatch | None  # label (null), image_id, path, labels, box in ID_SCHEMA; None if not asked
    skipped: int  # rows dropped because code or image_id was null


ID_SCHEMA = pa.schema(
    [
        ("label", pa.int64()),  # the FAISS label of the row (== row position for dense kinds)
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("box", pa.list_(pa.int32(), 4)),
    ]
)


def _shard_paths(codes_dir: Path) -> list[Path]:
    manifest = codes_dir / CODES_MANIFEST
    if manifest.exists():
        try:
            listed = json.loads(manifest.read_text(encoding="utf-8")).get("shards", [])
        except (OSError, ValueError) as exc:
            raise CodeShardError(manifest, f"unreadable codes manifest: {exc}") from exc
        # The pipeline lists shards as {"file": "part-00000.parquet", ...}; plain names are accepted too.
        names = [entry["file"] if isinstance(entry, dict) else str(entry) for entry in listed]
        paths = [codes_dir / Path(name).name for name in names]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise CodeShardError(manifest, f"lists shard(s) that do not exist: {missing[:5]}")
        if paths:
            return paths
    return sorted(codes_dir.glob(SHARD_GLOB))


def open_shards(codes_dir: str | Path) -> list[CodeShard]:
    """Validate every shard's schema and metadata up front (fail before any long pass).

    Every problem in every shard is collected into one error, so a user fixes them in one go.
    """
    codes_dir = Path(codes_dir)
    if not codes_dir.is_dir():
        raise CodeShardError(codes_dir, "codes folder does not exist")
    paths = _shard_paths(codes_dir)
    if not paths:
        raise CodeShardError(codes_dir, f"no {SHARD_GLOB} shards found")
    shards, problems = [], []
    for path in paths:
        try:
            shards.append(_inspect(path))
        except CodeShardError as exc:
            problems.append(str(exc))
    if problems:
        raise CodeShardError(codes_dir, "bad shard(s): " + "; ".join(problems))
    model_ids = {s.model_id for s in shards}
    bits = {s.bits for s in shards}
    if len(model_ids) > 1 or len(bits) > 1:
        raise CodeShardError(codes_dir, f"shards disagree: model_ids {sorted(model_ids)}, bits {sorted(bits)}")
    return shards


def _inspect(path: Path) -> CodeShard:
    try:
        meta = pq.read_metadata(path)
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise CodeShardError(path, f"unreadable Parquet file: {exc}") from exc
    kv = meta.metadata or {}
    if MODEL_ID_KEY not in kv or BITS_KEY not in kv:
        raise CodeShardError(path, "missing file metadata medhash.model_id / medhash.bits")
    try:
        bits = int(kv[BITS_KEY].decode())
    except ValueError as exc:
        raise CodeShardError(path, f"medhash.bits is not an integer: {kv[BITS_KEY]!r}") from exc
    if bits <= 0 or bits % 8:
        raise CodeShardError(path, f"medhash.bits={bits} is not a positive multiple of 8")
    missing = [c for c in ("image_id", "path", "code", "box") if c not in schema.names]
    if missing:
        raise CodeShardError(path, f"missing column(s) {missing}")
    code_type = schema.field("code").type
    if not (pa.types.is_fixed_size_binary(code_type) and code_type.byte_width == bits // 8):
        raise CodeShardError(path, f"column code is {code_type}, expected fixed_size_binary[{bits // 8}]")
    return CodeShard(path, kv[MODEL_ID_KEY].decode(), bits, meta.num_rows, "labels" in schema.names)


def codes_to_array(column: pa.Array, nbytes: int) -> np.ndarray:
    """fixed_size_binary[nbytes] Arrow array without nulls -> uint8 [N, nbytes] (zero-copy view)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    buf = column.buffers()[1]
    flat = np.frombuffer(buf, dtype=np.uint8, count=(column.offset + len(column)) * nbytes)
    return flat[column.offset * nbytes:].reshape(len(column), nbytes)


def _id_batch(batch: pa.RecordBatch, has_labels: bool) -> pa.RecordBatch:
    n = batch.num_rows
    labels = batch.column("labels") if has_labels else pa.nulls(n, pa.list_(pa.string()))
    box = batch.column("box")
    if box.type != ID_SCHEMA.field("box").type:
        box = box.cast(ID_SCHEMA.field("box").type)
    return pa.RecordBatch.from_arrays(
        [pa.nulls(n, pa.int64()), batch.column("image_id").cast(pa.string()), batch.column("path").cast(pa.string()),
         labels.cast(ID_SCHEMA.field("labels").type), box],
        schema=ID_SCHEMA,
    )


def iter_batches(shard: CodeShard, *, with_ids: bool = True, batch_rows: int = BATCH_ROWS) -> Iterator[CodeBatch]:
    """Yield the valid rows of one shard; rows with a null code or image_id are skipped and counted.

    with_ids=False reads only the code and image_id columns (the cheap pre-pass).
    """
    nbytes = shard.bits // 8
    columns = ["code", "image_id"]
    if with_ids:
        columns += ["path", "box"] + (["labels"] if shard.has_labels else [])
    try:
        reader = pq.ParquetFile(shard.path, pre_buffer=False, buffer_size=1 << 20)
        for batch in reader.iter_batches(batch_size=batch_rows, columns=columns):
            valid = pc.and_(pc.is_valid(batch.column("code")), pc.is_valid(batch.column("image_id")))
            skipped = batch.num_rows - pc.sum(valid).as_py() if batch.num_rows else 0
            if skipped:
                log.warning("%s: skipping %d row(s) with a null code or image_id", shard.path, skipped)
                batch = batch.filter(valid)
            yield CodeBatch(
                codes=codes_to_array(batch.column("code"), nbytes),
                image_ids=batch.column("image_id").cast(pa.string()),
                ids=_id_batch(batch, shard.has_labels) if with_ids else None,
                skipped=skipped,
            )
    except (OSError, pa.ArrowException) as exc:
        raise CodeShardError(shard.path, f"read failed: {exc}") from exc


def write_code_shard(path: str | Path, *, model_id: str, bits: int, image_ids, paths, codes: np.ndarray,
                     boxes: np.ndarray, labels=None) -> None:
    """Write one shard in the contract layout (tests, benchmarks and demos; the pipeline has its own writer)."""
    from medhash.atomic import atomic_path

    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n = len(codes)
    if codes.shape != (n, bits // 8):
        raise ValueError(f"codes shape {codes.shape} is not [N, {bits // 8}]")
    columns = {
        "image_id": pa.array(list(image_ids), pa.string()),
        "path": pa.array(list(paths), pa.string()),
        "code": pa.FixedSizeBinaryArray.from_buffers(pa.binary(bits // 8), n, [None, pa.py_buffer(codes.tobytes())]),
        "box": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(boxes, np.int32).reshape(-1)), 4),
    }
    if labels is not None:
        columns["labels"] = pa.array([list(x) for x in labels], pa.list_(pa.string()))
    table = pa.table(columns).replace_schema_metadata({MODEL_ID_KEY: model_id.encode(), BITS_KEY: str(bits).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_codes_manifest(codes_dir: str | Path, *, model_id: str, bits: int) -> None:
    """The folder's _manifest.json listing its shards (counts by shard)."""
    from medhash.atomic import write_text_atomic

    codes_dir = Path(codes_dir)
    shards = sorted(codes_dir.glob(SHARD_GLOB))
    counts = {p.name: pq.read_metadata(p).num_rows for p in shards}
    write_text_atomic(codes_dir / CODES_MANIFEST, json.dumps(
        {"model_id": model_id, "bits": bits, "shards": [p.name for p in shards], "counts": counts}, indent=2))
