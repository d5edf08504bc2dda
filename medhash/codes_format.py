"""The codes folder: what the encoder writes and the index reads, defined once.

    CODES/part-NNNNN.parquet          one row per encoded image (the code shard)
    CODES/_errors/part-NNNNN.parquet  every image of that shard that failed (status "failed")
    CODES/_errors/inputs.parquet      files found but never planned: skipped by rule, or failed before
                                      encoding (unreadable file or folder)
    CODES/_stats/part-NNNNN.json      the shard's counts, timings, sha256 and rows (marks it complete)
    CODES/_plan.json                  the shard plan, written before any work (what a rerun replays)
    CODES/_manifest.json              written last: model, columns, shards with sha256, counts

Everything but the code shards begins with `_`, which readers of a folder as a dataset skip:
`pyarrow.dataset.dataset(CODES)`, `pandas.read_parquet(CODES)` and duckdb's
`read_parquet('CODES/*.parquet')` read exactly the codes.

A code shard has the columns image_id string, path string, code fixed_size_binary[bits/8],
box fixed_size_list<int32>[4]; then labels list<string> (when a label table was given; null: the
image is not in the table); then the metadata columns the job asked for (`MetadataColumns`:
label-table columns as strings, the non-identifying DICOM attributes `DICOM_COLUMNS`, and
`patient_key`, a keyed hash); then features list<float16> (when features are stored); then
hash_values fixed_size_list<float16>[bits] (when hash values are stored: the hash layer's tanh
outputs, whose signs are the code; what re-ranking a Hamming shortlist compares by cosine). Both
Parquet files carry the file metadata medhash.model_id and medhash.bits, and medhash.engine where
the writer knows the encoder engine. model_id binds codes to the model that made them: codes of two
models live in different Hamming spaces, so readers refuse to mix them.

Integrity: the manifest lists each shard's sha256 and row count. `open_shards` checks both before
any pass, so a flipped bit (disk, copy, network) is refused naming the shard, even one that leaves
a valid Parquet file (a changed code) which no Parquet reader could notice. A folder without
`_manifest.json` is not a finished codes folder and is refused as such.

Readers need only the metadata and the four fixed columns; they read the columns a pass needs one
record batch at a time, so memory stays bounded by the batch size whatever the folder holds.
Every file is written to a temp name and renamed (medhash.atomic). This module imports no torch:
the index reads codes without the model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medhash import __version__
from medhash.atomic import atomic_path, sha256_file, write_text_atomic
from medhash.errors import CodeShardError

__all__ = [
    "BATCH_ROWS",
    "COMPRESSION",
    "CODE_COLUMNS",
    "DICOM_COLUMNS",
    "ERRORS_DIR",
    "ERROR_COLUMNS",
    "HASH_VALUES_COLUMN",
    "INPUTS_ERRORS_FILE",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "META_BITS",
    "META_ENGINE",
    "META_MODEL_ID",
    "PATIENT_KEY_COLUMN",
    "PLAN_FILE",
    "SHARD_GLOB",
    "STATS_DIR",
    "CodeBatch",
    "CodeShard",
    "CodesManifest",
    "MetadataColumns",
    "ShardPaths",
    "code_columns",
    "codes_schema",
    "codes_to_array",
    "hash_values_to_array",
    "dicom_column_values",
    "errors_schema",
    "iter_batches",
    "open_shards",
    "shard_metadata",
    "shard_model_id",
    "write_code_shard",
    "write_codes_manifest",
    "write_errors_shard",
    "write_manifest",
]

log = logging.getLogger(__name__)

META_MODEL_ID = b"medhash.model_id"
META_BITS = b"medhash.bits"
META_ENGINE = b"medhash.engine"
COMPRESSION = "zstd"
SHARD_GLOB = "part-*.parquet"
ERRORS_DIR = "_errors"
STATS_DIR = "_stats"
INPUTS_ERRORS_FILE = f"{ERRORS_DIR}/inputs.parquet"
PLAN_FILE = "_plan.json"
MANIFEST_FILE = "_manifest.json"
MANIFEST_FORMAT = "medhash.encode-manifest"
CODE_COLUMNS = ("image_id", "path", "code", "box")  # every shard has these; the others are optional
ERROR_COLUMNS = ("path", "image_id", "status", "kind", "message")
# The non-identifying DICOM attributes (medhash.data.dicom_meta.DicomMeta), column -> type.
DICOM_COLUMNS: dict[str, pa.DataType] = {
    "modality": pa.string(),
    "view_position": pa.string(),
    "body_part": pa.string(),
    "patient_sex": pa.string(),
    "patient_age_years": pa.int16(),  # ages over 89 stored as 90 (HIPAA Safe Harbor)
    "photometric": pa.string(),
    "rows": pa.int32(),
    "columns": pa.int32(),
    "pixel_spacing": pa.list_(pa.float64(), 2),  # (row, column) spacing in mm
}
PATIENT_KEY_COLUMN = "patient_key"  # HMAC-SHA256 of the patient id under the site's secret, hex
# The hash layer's tanh outputs, float16 [bits] per row. Beside `features`, not instead: the fused
# features stay for users who want them, while re-ranking uses these (ranking by the cosine of the
# fused features was far worse than Hamming order on held-out data; these gave a small gain).
HASH_VALUES_COLUMN = "hash_values"
# Rows per streamed batch. 16k rather than 64k: at 10M codes the build's peak RSS fell from 2.5x to
# 2.2x the index size, and the build ran no slower (benchmarks/search_latency.py).
BATCH_ROWS = 16_384


# ------------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class ShardPaths:
    """The files of one shard in a codes folder."""

    codes: Path
    errors: Path
    stats: Path

    @classmethod
    def of(cls, codes_dir: str | Path, name: str) -> "ShardPaths":
        codes_dir = Path(codes_dir)
        return cls(codes_dir / f"{name}.parquet", codes_dir / ERRORS_DIR / f"{name}.parquet",
                   codes_dir / STATS_DIR / f"{name}.json")

    def existing(self) -> list[Path]:
        return [p for p in (self.codes, self.errors, self.stats) if p.exists()]


# ------------------------------------------------------------------------------------------ schema


@dataclass(frozen=True)
class MetadataColumns:
    """The optional metadata columns of a folder's shards, after labels and before features."""

    table: tuple[str, ...] = ()  # label-table columns, stored as the strings the table holds
    dicom: bool = False  # the DICOM_COLUMNS (null in rows of non-DICOM images)
    patient_key: bool = False  # PATIENT_KEY_COLUMN

    def fields(self) -> list[pa.Field]:
        fields = [pa.field(name, pa.string()) for name in self.table]
        if self.dicom:
            fields += [pa.field(name, kind) for name, kind in DICOM_COLUMNS.items()]
        if self.patient_key:
            fields.append(pa.field(PATIENT_KEY_COLUMN, pa.string()))
        return fields

    def names(self) -> list[str]:
        return [f.name for f in self.fields()]


def dicom_column_values(meta) -> dict:
    """A medhash.data.dicom_meta.DicomMeta as DICOM_COLUMNS values ("" and missing become null)."""
    values = {
        "modality": meta.modality, "view_position": meta.view_position, "body_part": meta.body_part_examined,
        "patient_sex": meta.patient_sex, "patient_age_years": meta.patient_age_years,
        "photometric": meta.photometric_interpretation, "rows": meta.rows, "columns": meta.columns,
        "pixel_spacing": list(meta.pixel_spacing) if meta.pixel_spacing else None,
    }
    return {name: (None if value == "" else value) for name, value in values.items()}


def shard_metadata(model_id: str, bits: int, engine: str | None = None) -> dict[bytes, bytes]:
    """The file metadata of both Parquet files of a shard (engine left out when unknown)."""
    meta = {META_MODEL_ID: model_id.encode(), META_BITS: str(bits).encode()}
    if engine is not None:
        meta[META_ENGINE] = engine.encode()
    return meta


def code_columns(with_labels: bool, store_features: bool, metadata: MetadataColumns = MetadataColumns(),
                 store_hash_values: bool = False) -> list[str]:
    return (list(CODE_COLUMNS) + (["labels"] if with_labels else []) + metadata.names()
            + (["features"] if store_features else []) + ([HASH_VALUES_COLUMN] if store_hash_values else []))


def codes_schema(bits: int, *, with_labels: bool, store_features: bool, metadata: dict[bytes, bytes],
                 columns: MetadataColumns = MetadataColumns(), store_hash_values: bool = False) -> pa.Schema:
    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("code", pa.binary(bits // 8), nullable=False),
        pa.field("box", pa.list_(pa.int32(), 4), nullable=False),
    ]
    if with_labels:
        fields.append(pa.field("labels", pa.list_(pa.string())))  # null: the image is not in the table
    fields += columns.fields()
    if store_features:
        fields.append(pa.field("features", pa.list_(pa.float16()), nullable=False))
    if store_hash_values:
        fields.append(pa.field(HASH_VALUES_COLUMN, pa.list_(pa.float16(), bits), nullable=False))
    return pa.schema(fields, metadata=metadata)


def errors_schema(metadata: dict[bytes, bytes]) -> pa.Schema:
    return pa.schema([pa.field(n, pa.string(), nullable=False) for n in ERROR_COLUMNS], metadata=metadata)


# ------------------------------------------------------------------------------------------ writers


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=COMPRESSION)


def write_code_shard(path: str | Path, *, model_id: str, bits: int, image_ids: Sequence[str], paths: Sequence[str],
                     codes: np.ndarray, boxes: np.ndarray, labels: Sequence[Sequence[str] | None] | None = None,
                     features: np.ndarray | None = None, engine: str | None = None,
                     columns: MetadataColumns = MetadataColumns(), values: Sequence[Mapping] = (),
                     hash_values: np.ndarray | None = None) -> None:
    """Write one code shard: codes uint8 [N, bits/8], boxes int [N, 4], features float [N, D],
    hash_values float [N, bits] (both stored as float16).

    labels=None / features=None / hash_values=None leave that column out; a None inside labels is a null row.
    `values` holds one mapping per row for the `columns` (a name missing from a mapping is null).
    """
    nbytes = bits // 8
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n = len(image_ids)
    if codes.shape != (n, nbytes):
        raise ValueError(f"codes shape {codes.shape} is not [{n}, {nbytes}]")
    boxes = np.ascontiguousarray(boxes, dtype=np.int32)
    schema = codes_schema(bits, with_labels=labels is not None, store_features=features is not None,
                          metadata=shard_metadata(model_id, bits, engine), columns=columns,
                          store_hash_values=hash_values is not None)
    arrays = [
        pa.array(list(image_ids), pa.string()),
        pa.array(list(paths), pa.string()),
        pa.FixedSizeBinaryArray.from_buffers(pa.binary(nbytes), n, [None, pa.py_buffer(codes.tobytes())]),
        pa.FixedSizeListArray.from_arrays(pa.array(boxes.reshape(-1), pa.int32()), 4),
    ]
    if labels is not None:
        arrays.append(pa.array([None if lb is None else list(lb) for lb in labels], pa.list_(pa.string())))
    fields = columns.fields()
    if fields and len(values) != n:
        raise ValueError(f"{len(values)} metadata rows for {n} codes")
    arrays += [pa.array([row.get(f.name) for row in values], f.type) for f in fields]
    if features is not None:
        features = np.asarray(features).astype(np.float16, copy=False)
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * features.shape[1], pa.int32())
        arrays.append(pa.ListArray.from_arrays(offsets, pa.array(features.reshape(-1), pa.float16())))
    if hash_values is not None:
        hash_values = np.ascontiguousarray(hash_values, dtype=np.float16)
        if hash_values.shape != (n, bits):
            raise ValueError(f"hash values shape {hash_values.shape} is not [{n}, {bits}]")
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(hash_values.reshape(-1), pa.float16()), bits))
    _write_parquet(pa.Table.from_arrays(arrays, schema=schema), Path(path))


def write_errors_shard(path: str | Path, errors: Sequence[tuple[str, str, str, str, str]], *, model_id: str, bits: int,
                       engine: str | None = None) -> None:
    """Write the (path, image_id, status, kind, message) of each file that was not encoded."""
    arrays = [pa.array([e[i] for e in errors], pa.string()) for i in range(len(ERROR_COLUMNS))]
    schema = errors_schema(shard_metadata(model_id, bits, engine))
    _write_parquet(pa.Table.from_arrays(arrays, schema=schema), Path(path))


@dataclass
class CodesManifest:
    """The fields of _manifest.json. Readers use `shards[i]["file"]`, `"sha256"` and `"rows"`."""

    model_id: str
    bits: int
    engine: str | None
    with_labels: bool
    store_features: bool
    shards: list[dict]  # {"name", "file", "rows", "sha256", "errors_file", "items", "encoded", "failed"} in order
    counts: dict  # found, encoded, failed, skipped, ... over the folder
    request: dict = field(default_factory=dict)  # the inputs and options that produced the folder
    timing: dict = field(default_factory=dict)
    metadata_columns: MetadataColumns = MetadataColumns()
    store_hash_values: bool = False

    def to_json(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "medhash_version": __version__,
            "model_id": self.model_id,
            "bits": self.bits,
            "engine": self.engine,
            "with_labels": self.with_labels,
            "store_features": self.store_features,
            "store_hash_values": self.store_hash_values,
            "columns": code_columns(self.with_labels, self.store_features, self.metadata_columns,
                                    self.store_hash_values),
            "request": self.request,
            "counts": self.counts,
            "shards": self.shards,
            "timing": self.timing,
        }


def write_manifest(codes_dir: str | Path, manifest: CodesManifest) -> dict:
    """Write _manifest.json atomically (the last file of a finished folder); returns what was written."""
    data = manifest.to_json()
    write_text_atomic(Path(codes_dir) / MANIFEST_FILE, json.dumps(data, indent=1))
    return data


def write_codes_manifest(codes_dir: str | Path, *, model_id: str, bits: int) -> dict:
    """The manifest of the code shards already in a folder, read off their files (tests, benchmarks).

    The encoder writes its own through `write_manifest`, with the counts of failed images and timings.
    """
    codes_dir = Path(codes_dir)
    paths = sorted(codes_dir.glob(SHARD_GLOB))
    metas = [pq.read_metadata(p) for p in paths]
    rows = [m.num_rows for m in metas]
    names = metas[0].schema.to_arrow_schema().names if metas else []
    engine = (metas[0].metadata or {}).get(META_ENGINE) if metas else None
    shards = [{"name": p.name[: -len(".parquet")], "file": p.name, "rows": r, "sha256": sha256_file(p),
               "items": r, "encoded": r, "failed": 0} for p, r in zip(paths, rows)]
    return write_manifest(codes_dir, CodesManifest(
        model_id=model_id, bits=bits, engine=engine.decode() if engine is not None else None,
        with_labels="labels" in names, store_features="features" in names, shards=shards,
        store_hash_values=HASH_VALUES_COLUMN in names,
        counts={"found": sum(rows), "encoded": sum(rows), "failed": 0, "skipped": 0, "shards": len(shards)}))


# ------------------------------------------------------------------------------------------ readers


@dataclass(frozen=True)
class CodeShard:
    path: Path
    model_id: str
    bits: int
    rows: int
    has_labels: bool
    # The metadata columns (label-table columns, DICOM_COLUMNS, patient_key) in shard order: what an
    # index carries into its ids.parquet so searches can filter on them.
    metadata: tuple[pa.Field, ...] = ()
    has_hash_values: bool = False

    @property
    def metadata_names(self) -> list[str]:
        return [f.name for f in self.metadata]


@dataclass(frozen=True)
class CodeBatch:
    """One batch of valid rows: the codes as uint8 [B, bits/8] and the columns read, as Arrow."""

    codes: np.ndarray
    image_ids: pa.Array  # string
    columns: pa.RecordBatch  # code, image_id, and path, box, labels and metadata (when present) if asked for
    skipped: int  # rows dropped because code or image_id was null
    hash_values: np.ndarray | None = None  # float16 [B, bits] when asked for (iter_batches with_hash_values)


def _manifest_entries(codes_dir: Path) -> list[dict]:
    """The shards the manifest lists; a missing or unreadable manifest is refused as such."""
    manifest = codes_dir / MANIFEST_FILE
    if not manifest.exists():
        raise CodeShardError(codes_dir, f"no {MANIFEST_FILE}: not a finished codes folder (encode writes it last; "
                             "rerun the encode to finish it, or write one with codes_format.write_codes_manifest)")
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["shards"]
        for entry in listed:
            Path(entry["file"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CodeShardError(manifest, f"unreadable codes manifest: {exc}") from exc
    return listed


def _verify(path: Path, entry: dict) -> None:
    """The shard's row count and sha256 against the manifest's (entries written without them are not checked)."""
    rows, digest = entry.get("rows"), entry.get("sha256")
    if rows is not None and pq.read_metadata(path).num_rows != rows:
        raise CodeShardError(path, f"holds {pq.read_metadata(path).num_rows} rows, the manifest says {rows}: "
                             "the shard changed after it was written; rerun the encode into this folder to redo it")
    if digest is not None and sha256_file(path) != digest:
        raise CodeShardError(path, "sha256 differs from the manifest's: the shard changed after it was written "
                             "(damaged disk or copy?); rerun the encode into this folder to redo it")


def open_shards(codes_dir: str | Path, *, verify: bool = True) -> list[CodeShard]:
    """Validate every shard's schema, metadata and (verify=True) checksum up front (fail before any long pass).

    Every problem in every shard is collected into one error, so a user fixes them in one go.
    """
    codes_dir = Path(codes_dir)
    if not codes_dir.is_dir():
        raise CodeShardError(codes_dir, "codes folder does not exist")
    entries = _manifest_entries(codes_dir)
    if not entries:
        raise CodeShardError(codes_dir / MANIFEST_FILE, "lists no shards")
    shards, problems = [], []
    for entry in entries:
        path = codes_dir / Path(entry["file"]).name
        try:
            if not path.exists():
                raise CodeShardError(path, "listed in the manifest but missing")
            shard = _inspect(path)
            if verify:
                _verify(path, entry)
            shards.append(shard)
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
    if META_MODEL_ID not in kv or META_BITS not in kv:
        raise CodeShardError(path, "missing file metadata medhash.model_id / medhash.bits")
    try:
        bits = int(kv[META_BITS].decode())
    except ValueError as exc:
        raise CodeShardError(path, f"medhash.bits is not an integer: {kv[META_BITS]!r}") from exc
    if bits <= 0 or bits % 8:
        raise CodeShardError(path, f"medhash.bits={bits} is not a positive multiple of 8")
    missing = [c for c in CODE_COLUMNS if c not in schema.names]
    if missing:
        raise CodeShardError(path, f"missing column(s) {missing}")
    code_type = schema.field("code").type
    if not (pa.types.is_fixed_size_binary(code_type) and code_type.byte_width == bits // 8):
        raise CodeShardError(path, f"column code is {code_type}, expected fixed_size_binary[{bits // 8}]")
    if HASH_VALUES_COLUMN in schema.names:
        values_type = schema.field(HASH_VALUES_COLUMN).type
        if not (pa.types.is_fixed_size_list(values_type) and values_type.list_size == bits
                and pa.types.is_float16(values_type.value_type)):
            raise CodeShardError(path, f"column {HASH_VALUES_COLUMN} is {values_type}, expected "
                                 f"fixed_size_list<float16>[{bits}]")
    not_metadata = set(CODE_COLUMNS) | {"labels", "features", HASH_VALUES_COLUMN}
    metadata = tuple(f for f in schema if f.name not in not_metadata)
    return CodeShard(path, kv[META_MODEL_ID].decode(), bits, meta.num_rows, "labels" in schema.names, metadata,
                     HASH_VALUES_COLUMN in schema.names)


def shard_model_id(path: Path) -> str | None:
    """The model_id in a Parquet file's metadata (None: unreadable or not ours)."""
    try:
        meta = pq.read_metadata(path).metadata or {}
    except Exception:  # noqa: BLE001 - a damaged file simply has no usable id
        return None
    value = meta.get(META_MODEL_ID)
    return value.decode() if value is not None else None


def codes_to_array(column: pa.Array, nbytes: int) -> np.ndarray:
    """fixed_size_binary[nbytes] Arrow array without nulls -> uint8 [N, nbytes] (zero-copy view)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    buf = column.buffers()[1]
    flat = np.frombuffer(buf, dtype=np.uint8, count=(column.offset + len(column)) * nbytes)
    return flat[column.offset * nbytes:].reshape(len(column), nbytes)


def hash_values_to_array(column: pa.Array, bits: int) -> np.ndarray:
    """fixed_size_list<float16>[bits] Arrow array without nulls -> float16 [N, bits]."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), bits)


def iter_batches(shard: CodeShard, *, with_ids: bool = True, batch_rows: int = BATCH_ROWS,
                 with_hash_values: bool = False) -> Iterator[CodeBatch]:
    """Yield the valid rows of one shard; rows with a null code or image_id are skipped and counted.

    with_ids=False reads only the code and image_id columns (the cheap pre-pass); with_ids=True
    adds path, box, labels and the metadata columns (when the shard has them). with_hash_values=True
    also yields the stored hash values (the shard must have them: `CodeShard.has_hash_values`).
    """
    nbytes = shard.bits // 8
    columns = ["code", "image_id"]
    if with_ids:
        columns += ["path", "box"] + (["labels"] if shard.has_labels else []) + shard.metadata_names
    if with_hash_values:
        if not shard.has_hash_values:
            raise CodeShardError(shard.path, f"has no {HASH_VALUES_COLUMN} column (encode with --store-hash-values)")
        columns.append(HASH_VALUES_COLUMN)
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
                columns=batch,
                skipped=skipped,
                hash_values=(hash_values_to_array(batch.column(HASH_VALUES_COLUMN), shard.bits)
                             if with_hash_values else None),
            )
    except (OSError, pa.ArrowException) as exc:
        raise CodeShardError(shard.path, f"read failed: {exc}") from exc
