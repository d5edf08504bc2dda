"""`build_index`: Parquet code shards -> an index folder, streaming (memory bounded by one batch + the index).

Pass 1 reads only the code and image_id columns: counts the valid rows, hashes the ids to refuse
duplicates before the expensive part, and draws the training sample for kinds that train (IVF).
Pass 2 reads code + id-map columns (with the metadata columns: label-table columns, DICOM
attributes, patient_key) one batch at a time, adds the codes to FAISS and appends the id-map rows
to ids.parquet with a ParquetWriter. Nothing ever holds all rows of all columns.
When every shard carries hash values (`encode --store-hash-values`), pass 2 also appends them to
hash_values.npy, row for row with ids.parquet, for re-ranking.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medhash.codes_format import BATCH_ROWS, CodeShard, iter_batches, open_shards
from medhash.errors import DuplicateImageIdError, IndexManifestError
from medhash.index._search import omp_threads
from medhash.index.autotune import ExactTruth, TuneConfig, tune
from medhash.index._store import (HASH_VALUES_FILE, IDS_FILE, INDEX_FILE, MANIFEST_FILE, IdHashes, IndexManifest,
                                  confirm_duplicates, id_rows, id_schema, lean_arrow_memory, open_id_writer,
                                  open_values_writer, write_faiss, write_manifest)
from medhash.index.kinds import get_kind
from medhash.timing import Timings

__all__ = ["BuildConfig", "build_index"]

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    kind: str = "flat"
    params: dict = field(default_factory=dict)  # overrides of the parameters chosen from the size
    overwrite: bool = False  # replace an existing index folder
    gpu: bool = False  # train the IVF quantizer on the GPU where faiss-gpu and a GPU exist
    batch_rows: int = BATCH_ROWS
    seed: int = 0  # training-sample draw
    # FAISS OpenMP threads for training/adding. 1 by default: on the shared 2-core dev machine an
    # HNSW add of 50k codes took 4.0 s with 1 thread and 6.1 s with 2 (3k codes: 0.12 vs 0.96 s),
    # because OpenMP barriers wait for a thread the busy core has descheduled. Raise it on an idle box.
    threads: int = 1
    tune: TuneConfig = field(default_factory=TuneConfig)  # autotune the search knob to a recall target


@dataclass
class InputScan:
    rows: int  # valid rows
    skipped: int  # rows with a null code or image_id
    train_codes: np.ndarray | None
    query_codes: np.ndarray  # archive codes drawn for autotuning
    query_labels: np.ndarray  # their valid-row positions == their FAISS labels in pass 2


def _draw(rng, total: int, rows: int) -> np.ndarray:
    return np.sort(rng.choice(total, size=min(rows, total), replace=False)) if rows else np.empty(0, np.int64)


def scan_inputs(shards: list[CodeShard], sample_rows: int, batch_rows: int, seed: int,
                where: str | Path, query_rows: int = 0) -> InputScan:
    """Pass 1: count, refuse duplicate ids, draw a uniform training sample of `sample_rows` codes
    (and `query_rows` codes as autotuning queries)."""
    total = sum(s.rows for s in shards)
    rng = np.random.default_rng(seed)
    positions = _draw(rng, total, sample_rows)
    query_positions = _draw(rng, total, query_rows)
    picked: list[np.ndarray] = []
    queries: list[np.ndarray] = []
    hashes = IdHashes(total)
    rows = skipped = 0
    for shard in shards:
        for batch in iter_batches(shard, with_ids=False, batch_rows=batch_rows):
            n = len(batch.codes)
            lo, hi = np.searchsorted(positions, [rows, rows + n])
            if hi > lo:
                picked.append(batch.codes[positions[lo:hi] - rows].copy())
            lo, hi = np.searchsorted(query_positions, [rows, rows + n])
            if hi > lo:
                queries.append(batch.codes[query_positions[lo:hi] - rows].copy())
            hashes.add(batch.image_ids)
            rows += n
            skipped += batch.skipped
    repeated = hashes.repeated()
    if len(repeated):
        sources = ((0, b.image_ids) for s in shards for b in iter_batches(s, with_ids=False, batch_rows=batch_rows))
        dups = confirm_duplicates(sources, repeated)
        if dups:
            raise DuplicateImageIdError(where, sorted(dups), len(dups))
    train = np.concatenate(picked) if picked else None
    query_labels = query_positions[query_positions < rows]  # positions past the valid rows drew nothing
    query_codes = np.concatenate(queries) if queries else np.empty((0, shards[0].bits // 8), np.uint8)
    return InputScan(rows, skipped, train, query_codes, query_labels)


def build_index(codes_dir: str | Path, out_dir: str | Path, config: BuildConfig = BuildConfig()) -> IndexManifest:
    """Build an index folder from a codes folder; returns the written manifest."""
    with omp_threads(config.threads), lean_arrow_memory():
        return _build(Path(codes_dir), Path(out_dir), config)


def _build(codes_dir: Path, out_dir: Path, config: BuildConfig) -> IndexManifest:
    kind = get_kind(config.kind)
    kind.check_overrides(config.params)  # refuse bad keys and values before touching the output folder
    if (out_dir / MANIFEST_FILE).exists():
        if not config.overwrite:
            raise IndexManifestError(out_dir, "an index already exists here (use overwrite / --overwrite to rebuild)")
        # Without a manifest a half-rebuilt folder reads as "build never finished", not as the old index.
        (out_dir / MANIFEST_FILE).unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = Timings()
    shards = open_shards(codes_dir)
    bits, model_id = shards[0].bits, shards[0].model_id
    total_rows = sum(s.rows for s in shards)
    params = kind.resolve_params(total_rows, bits, config.params)

    tuning = config.tune.target_recall is not None
    with timings("scan"):
        scan = scan_inputs(shards, kind.train_rows(params, total_rows), config.batch_rows, config.seed, codes_dir,
                           query_rows=config.tune.queries if tuning else 0)
    if scan.rows == 0:
        raise IndexManifestError(codes_dir, "no valid rows to index (every code or image_id is null)")
    kind.check_fit(params, scan.rows, bits)  # again on the valid rows: null rows were counted above
    drawn = 0 if scan.train_codes is None else len(scan.train_codes)
    if drawn < kind.min_train_rows(params):  # null rows in the sample: FAISS would refuse to train
        raise IndexManifestError(codes_dir, f"only {drawn} valid codes were drawn to train {kind.name}, "
                                            f"which needs {kind.min_train_rows(params)} (params {params})")
    with timings("train"):
        index = kind.create(bits, params, scan.train_codes, gpu=config.gpu)
    del scan.train_codes
    with_values = all(s.has_hash_values for s in shards)
    if not with_values:
        (out_dir / HASH_VALUES_FILE).unlink(missing_ok=True)  # an earlier build's, before --overwrite
        if any(s.has_hash_values for s in shards):
            log.warning("%s: only some shards hold hash values; the index stores none (no re-ranking)", codes_dir)
    # The metadata columns of the codes folder travel into ids.parquet, where filters read them.
    schema = id_schema(shards[0].metadata)
    truth = ExactTruth(scan.query_codes, scan.query_labels, config.tune.k)
    with contextlib.ExitStack() as files:
        files.enter_context(timings("add"))
        ids = files.enter_context(open_id_writer(out_dir / IDS_FILE, schema))
        values = files.enter_context(open_values_writer(out_dir / HASH_VALUES_FILE, bits)) if with_values else None
        add = kind.bulk_adder(index, scan.rows)
        for shard in shards:
            for batch in iter_batches(shard, with_ids=True, batch_rows=config.batch_rows, with_hash_values=with_values):
                labels = np.arange(ids.rows, ids.rows + len(batch.codes), dtype=np.int64)
                add(batch.codes, labels)
                if tuning:
                    truth.update(batch.codes)
                ids.write(id_rows(batch.columns, schema), labels)
                if values is not None:
                    values.write(batch.hash_values)
    if index.ntotal != ids.rows:
        raise RuntimeError(f"index holds {index.ntotal} codes but ids.parquet {ids.rows} rows")
    record = {}
    if tuning and ids.rows > 1:
        with timings("tune"):
            params, record = tune(kind, index, params, truth, config.tune, set(config.params))
        kind.apply_search_params(index, params)
    with timings("write"):
        write_faiss(index, out_dir / INDEX_FILE)
        if record:
            record["memory_bytes"] = {"index_file": (out_dir / INDEX_FILE).stat().st_size}
        manifest = write_manifest(out_dir, IndexManifest(
            model_id=model_id, bits=bits, kind=kind.name, params=params, count=ids.rows,
            next_label=ids.rows, skipped_rows=scan.skipped, build_seconds=timings.as_dict(), tuning=record,
            hash_values=with_values))
    log.info("built %s index of %d codes in %s", kind.name, ids.rows, out_dir)
    log.debug("index build timings: %s", timings.as_dict())
    return manifest
