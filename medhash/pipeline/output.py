"""A shard's three output files (medhash.codes_format.ShardPaths) and how to tell that a shard is complete.

- `part-NNNNN.parquet`: the code shard, one row per encoded image; and `_errors/part-NNNNN.parquet`:
  every item that failed. Their columns and metadata are the codes format (medhash.codes_format).
- `_stats/part-NNNNN.json`: counts, timings, and the sha256 of the two Parquet files; written last,
  so it marks the shard as complete.

Each file is written to a temp name and renamed (medhash.atomic). A shard counts as done only when
all three exist, agree with each other, with the plan and with their recorded sha256, and carry the
folder's model_id: a shard damaged after it was written (one flipped bit) is encoded again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medhash.atomic import sha256_file, write_text_atomic
from medhash.codes_format import ShardPaths, shard_metadata, write_code_shard, write_errors_shard
from medhash.pipeline.plan import OutputSpec, ShardPlan


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
    sha256: str = ""  # of part-NNNNN.parquet, as written
    errors_sha256: str = ""  # of _errors/part-NNNNN.parquet, as written

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
    hash_values: list[np.ndarray] = field(default_factory=list)  # float32 [b, bits] per batch
    values: list[dict] = field(default_factory=list)  # metadata column -> value, per encoded image
    errors: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # path, image_id, status, kind, message


def _stack(parts: list[np.ndarray], width: int, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros((0, width), dtype)


def write_shard(files: ShardPaths, rows: ShardRows, spec: OutputSpec, stats: ShardStats) -> None:
    """Errors, then codes, then the stats file (with both files' sha256) that marks the shard complete."""
    write_errors_shard(files.errors, rows.errors, model_id=spec.model_id, bits=spec.bits, engine=spec.engine)
    features = None
    if spec.store_features:
        features = _stack(rows.features, 0, np.float16) if rows.features else np.zeros((0, 0), np.float16)
    write_code_shard(files.codes, model_id=spec.model_id, bits=spec.bits, engine=spec.engine,
                     image_ids=rows.image_ids, paths=rows.paths, codes=_stack(rows.codes, spec.bits // 8, np.uint8),
                     boxes=_stack(rows.boxes, 4, np.int32), labels=rows.labels if spec.with_labels else None,
                     features=features, columns=spec.metadata_columns, values=rows.values,
                     hash_values=_stack(rows.hash_values, spec.bits, np.float16) if spec.store_hash_values else None)
    stats.sha256, stats.errors_sha256 = sha256_file(files.codes), sha256_file(files.errors)
    write_text_atomic(files.stats, json.dumps(stats.to_json(), indent=1, sort_keys=True))


def read_stats(path: Path) -> ShardStats | None:
    try:
        return ShardStats(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def complete_shard_stats(out_dir: Path, shard: ShardPlan, spec: OutputSpec) -> ShardStats | None:
    """The shard's stats when its outputs are complete and valid for `spec`; None when it must be (re)done."""
    import pyarrow.parquet as pq

    files = ShardPaths.of(out_dir, shard.name)
    stats = read_stats(files.stats)
    if stats is None or stats.model_id != spec.model_id or stats.items != len(shard):
        return None
    if stats.encoded + stats.failed != stats.items:
        return None
    try:
        codes_meta, errors_meta = pq.read_metadata(files.codes), pq.read_metadata(files.errors)
    except Exception:  # noqa: BLE001 - missing or damaged file: redo the shard
        return None
    expected = shard_metadata(spec.model_id, spec.bits, spec.engine)
    for meta, rows in ((codes_meta, stats.encoded), (errors_meta, stats.failed)):
        stored = meta.metadata or {}
        if meta.num_rows != rows or any(stored.get(k) != v for k, v in expected.items()):
            return None
    if sha256_file(files.codes) != stats.sha256 or sha256_file(files.errors) != stats.errors_sha256:
        return None  # changed after it was written
    return stats
