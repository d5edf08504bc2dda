"""Add and remove items of an existing index folder, keeping index.faiss and ids.parquet in step.

Removal is real, never a tombstone: flat and ivf use FAISS remove_ids; multihash and hnsw have
none in FAISS, so they are rebuilt from their stored codes (fast for multihash, slow for hnsw).
After any change the FAISS label of each row matches ids.parquet: row positions for the dense kinds
(both sides compact the same way), the stable `label` column for ivf. An index that stores hash values
rewrites hash_values.npy beside ids.parquet, in the same row order; it refuses to add codes without them.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medhash.codes_format import iter_batches, open_shards
from medhash.errors import DuplicateImageIdError, IndexManifestError
from medhash.index._search import omp_threads
from medhash.index._store import (HASH_VALUES_FILE, IDS_FILE, INDEX_FILE, IndexManifest, check_compatible,
                                  copy_rows_except, copy_values_except, find_duplicates, id_rows, iter_id_batches,
                                  lean_arrow_memory, load_manifest, open_id_writer, open_values_writer, read_faiss,
                                  read_id_schema, rows_of_image_ids, write_faiss, write_manifest)
from medhash.index.kinds import IndexKind, get_kind

__all__ = ["UpdateReport", "add_codes", "remove_images"]

log = logging.getLogger(__name__)


@dataclass
class UpdateReport:
    added: int = 0
    removed: int = 0
    replaced: list[str] = field(default_factory=list)  # image ids whose old rows were replaced
    missing: list[str] = field(default_factory=list)  # ids asked to remove that were not indexed
    skipped_rows: int = 0
    count: int = 0  # items in the index afterwards


def _open_for_update(index_dir: Path) -> tuple[IndexManifest, IndexKind, object]:
    manifest = load_manifest(index_dir, verify=True)
    index = read_faiss(index_dir / INDEX_FILE)
    if index.ntotal != manifest.count:
        raise IndexManifestError(index_dir, f"index.faiss holds {index.ntotal} codes, manifest says {manifest.count}")
    return manifest, get_kind(manifest.kind), index


@contextlib.contextmanager
def _rewrite_values(index_dir: Path, manifest: IndexManifest, drop_rows: np.ndarray):
    """hash_values.npy's kept rows, then a writer for the new ones (None when the index stores no values)."""
    if not manifest.hash_values:
        yield None
        return
    path = index_dir / HASH_VALUES_FILE
    with open_values_writer(path, manifest.bits) as values:
        copy_values_except(path, values, drop_rows)
        yield values


def _commit(index_dir: Path, index, manifest: IndexManifest, rows: int) -> None:
    if index.ntotal != rows:
        raise RuntimeError(f"{index_dir}: index holds {index.ntotal} codes but ids.parquet {rows} rows")
    write_faiss(index, index_dir / INDEX_FILE)
    manifest.count = rows
    manifest.generation += 1  # what a running server watches for (medhash.serve.reload)
    write_manifest(index_dir, manifest)


def add_codes(index_dir: str | Path, codes_dir: str | Path, *, replace: bool = False) -> UpdateReport:
    """Add the rows of a codes folder. Refuses another model_id or bit length, and image ids already
    indexed unless replace=True (then their old rows are removed first)."""
    with omp_threads(1), lean_arrow_memory():  # see BuildConfig.threads for why
        return _add(Path(index_dir), Path(codes_dir), replace)


def _add(index_dir: Path, codes_dir: Path, replace: bool) -> UpdateReport:
    manifest, kind, index = _open_for_update(index_dir)
    shards = open_shards(codes_dir)
    check_compatible(codes_dir, manifest, model_id=shards[0].model_id, bits=shards[0].bits)
    if manifest.hash_values and not all(s.has_hash_values for s in shards):
        raise IndexManifestError(codes_dir, "holds no hash values, and this index stores them for re-ranking: "
                                 "encode with --store-hash-values")
    ids_path = index_dir / IDS_FILE

    def sources():
        for batch in iter_id_batches(ids_path, ["image_id"]):
            yield 0, batch.column("image_id")
        for shard in shards:
            for batch in iter_batches(shard, with_ids=False):
                yield 1, batch.image_ids

    dups = find_duplicates(sources, manifest.count + sum(s.rows for s in shards))
    twice_in_new = sorted(i for i, where in dups.items() if where.count(1) > 1)
    if twice_in_new:
        raise DuplicateImageIdError(codes_dir, twice_in_new, len(twice_in_new))
    already = sorted(i for i, where in dups.items() if 0 in where)
    if already and not replace:
        raise DuplicateImageIdError(f"{index_dir} (use replace / --replace)", already, len(already))

    report = UpdateReport(replaced=already)
    drop_rows = np.empty(0, np.int64)
    if already:
        drop_rows, drop_labels, _ = rows_of_image_ids(ids_path, already)
        index = kind.remove(index, drop_labels, manifest.params)
    schema = read_id_schema(ids_path)  # the index's columns; a new folder's rows are conformed to them
    with open_id_writer(ids_path, schema) as ids, _rewrite_values(index_dir, manifest, drop_rows) as values:
        copy_rows_except(ids_path, ids, drop_rows, relabel=kind.dense_labels)
        for shard in shards:
            for batch in iter_batches(shard, with_ids=True, with_hash_values=values is not None):
                n = len(batch.codes)
                first = ids.rows if kind.dense_labels else manifest.next_label
                labels = np.arange(first, first + n, dtype=np.int64)
                kind.add(index, batch.codes, labels)
                ids.write(id_rows(batch.columns, schema), labels)
                if values is not None:
                    values.write(batch.hash_values)
                manifest.next_label = max(manifest.next_label, int(first + n))
                report.added += n
                report.skipped_rows += batch.skipped
    manifest.skipped_rows += report.skipped_rows
    _commit(index_dir, index, manifest, ids.rows)
    report.count = ids.rows
    log.info("%s: added %d, replaced %d, now %d items", index_dir, report.added, len(already), ids.rows)
    return report


def remove_images(index_dir: str | Path, image_ids: list[str]) -> UpdateReport:
    """Remove the rows of the given image ids; ids not in the index are reported, not an error."""
    with omp_threads(1), lean_arrow_memory():
        return _remove(Path(index_dir), list(image_ids))


def _remove(index_dir: Path, image_ids: list[str]) -> UpdateReport:
    manifest, kind, index = _open_for_update(index_dir)
    ids_path = index_dir / IDS_FILE
    rows, labels, missing = rows_of_image_ids(ids_path, image_ids)
    report = UpdateReport(missing=missing, count=manifest.count)
    if missing:
        log.warning("%s: %d id(s) to remove are not in the index: %s", index_dir, len(missing), missing[:5])
    if len(rows) == 0:
        return report
    index = kind.remove(index, labels, manifest.params)
    with open_id_writer(ids_path, read_id_schema(ids_path)) as ids, _rewrite_values(index_dir, manifest, rows):
        copy_rows_except(ids_path, ids, rows, relabel=kind.dense_labels)
    _commit(index_dir, index, manifest, ids.rows)
    report.removed, report.count = len(rows), ids.rows
    return report
