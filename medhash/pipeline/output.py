"""A shard's three output files and how to tell that a shard is complete.

- `part-NNNNN.parquet`: one row per encoded image. Columns (CONTEXT contract): image_id string,
  path string, code fixed_size_binary[bits/8], box fixed_size_list<int32>[4], labels list<string>
  (when a label table was given), features list<float16> (with --store-features). File metadata:
  medhash.model_id, medhash.bits, medhash.engine.
- `part-NNNNN.errors.parquet`: path, image_id, kind, message for every item that failed.
- `part-NNNNN.stats.json`: counts and timings; written last, so it marks the shard as complete.

Each file is written to a temp name and renamed (medhash.atomic). A shard counts as done only when
all three exist, agree with each other and with the plan, and carry the folder's model_id.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medhash.atomic import atomic_path, write_text_atomic
from medhash.pipeline.plan import OutputSpec, ShardPlan

META_MODEL_ID = b"medhash.model_id"
META_BITS = b"medhash.bits"
META_ENGINE = b"medhash.engine"
PARQUET_COMPRESSION = "zstd"


@dataclass(frozen=True)
class ShardFiles:
    codes: Path
    errors: Path
    stats: Path

    @classmethod
    def of(cls, out_dir: Path, name: str) -> "ShardFiles":
        return cls(out_dir / f"{name}.parquet", out_dir / f"{name}.errors.parquet", out_dir / f"{name}.stats.json")

    def existing(self) -> list[Path]:
        return [p for p in (self.codes, self.errors, self.stats) if p.exists()]


@dataclass
class ShardStats:
    shard: str
    model_id: str
    items: int
    encoded: int
    failed: int
    failed_by_kind: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # process CPU time and page faults during the shard
    worker: str = ""
    pid: int = 0
    torch_threads: int = 0
    peak_rss_mb: float = 0.0  # the worker process's peak so far
    rss_mb: float = 0.0  # the worker process's resident memory when the shard was done

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ShardRows:
    """What one shard produced, in plan order."""

    image_ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    codes: list[np.ndarray] = field(default_factory=list)  # uint8 [b, bits/8] per batch
    boxes: list[np.ndarray] = field(default_factory=list)  # int32 [b, 4] per batch
    labels: list[tuple[str, ...] | None] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)  # float32 [b, D] per batch
    errors: list[tuple[str, str, str, str]] = field(default_factory=list)  # path, image_id, kind, message


def _metadata(spec: OutputSpec) -> dict[bytes, bytes]:
    return {META_MODEL_ID: spec.model_id.encode(), META_BITS: str(spec.bits).encode(), META_ENGINE: spec.engine.encode()}


def codes_schema(spec: OutputSpec):
    import pyarrow as pa

    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("code", pa.binary(spec.bits // 8), nullable=False),
        pa.field("box", pa.list_(pa.int32(), 4), nullable=False),
    ]
    if spec.with_labels:
        fields.append(pa.field("labels", pa.list_(pa.string())))  # null: the image is not in the table
    if spec.store_features:
        fields.append(pa.field("features", pa.list_(pa.float16()), nullable=False))
    return pa.schema(fields, metadata=_metadata(spec))


def errors_schema(spec: OutputSpec):
    import pyarrow as pa

    names = ("path", "image_id", "kind", "message")
    return pa.schema([pa.field(n, pa.string(), nullable=False) for n in names], metadata=_metadata(spec))


def _stack(parts: list[np.ndarray], width: int, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros((0, width), dtype)


def codes_table(rows: ShardRows, spec: OutputSpec):
    import pyarrow as pa

    schema = codes_schema(spec)
    n = len(rows.image_ids)
    code_bytes = np.ascontiguousarray(_stack(rows.codes, spec.bits // 8, np.uint8))
    boxes = np.ascontiguousarray(_stack(rows.boxes, 4, np.int32))
    columns = [
        pa.array(rows.image_ids, pa.string()),
        pa.array(rows.paths, pa.string()),
        pa.FixedSizeBinaryArray.from_buffers(pa.binary(spec.bits // 8), n, [None, pa.py_buffer(code_bytes.tobytes())]),
        pa.FixedSizeListArray.from_arrays(pa.array(boxes.reshape(-1), pa.int32()), 4),
    ]
    if spec.with_labels:
        columns.append(pa.array([None if lb is None else list(lb) for lb in rows.labels], pa.list_(pa.string())))
    if spec.store_features:
        features = _stack(rows.features, 0, np.float16) if rows.features else np.zeros((0, 0), np.float16)
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * features.shape[1], pa.int32())
        columns.append(pa.ListArray.from_arrays(offsets, pa.array(features.reshape(-1), pa.float16())))
    return pa.Table.from_arrays(columns, schema=schema)


def errors_table(rows: ShardRows, spec: OutputSpec):
    import pyarrow as pa

    schema = errors_schema(spec)
    columns = [pa.array([e[i] for e in rows.errors], pa.string()) for i in range(4)]
    return pa.Table.from_arrays(columns, schema=schema)


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=PARQUET_COMPRESSION)


def write_shard(files: ShardFiles, rows: ShardRows, spec: OutputSpec, stats: ShardStats) -> None:
    """Errors, then codes, then the stats file that marks the shard complete; each atomically."""
    _write_parquet(errors_table(rows, spec), files.errors)
    _write_parquet(codes_table(rows, spec), files.codes)
    write_text_atomic(files.stats, json.dumps(stats.to_json(), indent=1, sort_keys=True))


def read_stats(path: Path) -> ShardStats | None:
    try:
        return ShardStats(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def parquet_model_id(path: Path) -> str | None:
    """The model_id in a Parquet file's metadata (None: unreadable or not ours)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path).metadata or {}
    except Exception:  # noqa: BLE001 - a damaged file simply has no usable id
        return None
    value = meta.get(META_MODEL_ID)
    return value.decode() if value is not None else None


def complete_shard_stats(out_dir: Path, shard: ShardPlan, spec: OutputSpec) -> ShardStats | None:
    """The shard's stats when its outputs are complete and valid for `spec`; None when it must be (re)done."""
    import pyarrow.parquet as pq

    files = ShardFiles.of(out_dir, shard.name)
    stats = read_stats(files.stats)
    if stats is None or stats.model_id != spec.model_id or stats.items != len(shard):
        return None
    if stats.encoded + stats.failed != stats.items:
        return None
    try:
        codes_meta, errors_meta = pq.read_metadata(files.codes), pq.read_metadata(files.errors)
    except Exception:  # noqa: BLE001 - missing or damaged file: redo the shard
        return None
    expected = _metadata(spec)
    for meta, rows in ((codes_meta, stats.encoded), (errors_meta, stats.failed)):
        stored = meta.metadata or {}
        if meta.num_rows != rows or any(stored.get(k) != v for k, v in expected.items()):
            return None
    return stats
