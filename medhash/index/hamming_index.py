"""HammingIndex: open an index folder (manifest and checksums verified) and answer top-k queries."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medhash.errors import IndexManifestError, InvalidParameterError
from medhash.index._search import DEFAULT_POLICY, GpuFlatSearch, Searcher, SearchParams, ThreadPolicy
from medhash.index._store import (IDS_FILE, INDEX_FILE, IdRecord, IndexManifest, load_manifest, read_column,
                                  read_faiss, records_at)
from medhash.index.autotune import warn_if_below_tuned
from medhash.index.kinds import get_kind
from medhash.index.maintain import UpdateReport, add_codes, remove_images

__all__ = ["HammingIndex", "Hits", "SearchResult"]

log = logging.getLogger(__name__)


class Hits:
    """One query's neighbours, nearest first (ties in ids.parquet row order).

    `image_ids` are looked up on first access: the search itself returns rows and distances, and
    callers that read whole records (`HammingIndex.records`, the server) never pay for the ids
    (~35 us per 100 ids at 1M rows, a third of a single IVF query).
    """

    __slots__ = ("distances", "rows", "_resolve", "_image_ids")

    def __init__(self, image_ids: list[str] | None, distances: np.ndarray, rows: np.ndarray,
                 resolve: Callable[[np.ndarray], list[str]] | None = None):
        self.distances = distances  # int32 Hamming distances
        self.rows = rows  # int64 rows of ids.parquet
        self._image_ids, self._resolve = image_ids, resolve

    @property
    def image_ids(self) -> list[str]:
        if self._image_ids is None:
            self._image_ids = self._resolve(self.rows) if len(self.rows) else []
        return self._image_ids


class SearchResult:
    """Per-query lists (lengths differ with ties, or when the index holds fewer than k items)."""

    def __init__(self, hits: list[Hits]):
        self._hits = hits

    @property
    def image_ids(self) -> list[list[str]]:
        return [h.image_ids for h in self._hits]

    @property
    def distances(self) -> list[np.ndarray]:
        return [h.distances for h in self._hits]

    @property
    def rows(self) -> list[np.ndarray]:
        return [h.rows for h in self._hits]

    def __len__(self) -> int:
        return len(self._hits)

    def __getitem__(self, i: int) -> Hits:
        return self._hits[i]

    def __iter__(self) -> Iterator[Hits]:
        return iter(self._hits)


class HammingIndex:
    """A searchable index folder.

    mmap=True maps the index file instead of reading it (flat, ivf); other kinds are read into RAM.
    gpu=True searches a flat index on the GPU (GpuUnavailableError says why it cannot).
    """

    def __init__(self, index_dir: str | Path, *, mmap: bool = False, verify: bool = True,
                 policy: ThreadPolicy = DEFAULT_POLICY, gpu: bool = False):
        self.index_dir = Path(index_dir)
        self.mmap, self.verify, self.policy, self.gpu = mmap, verify, policy, gpu
        self._load()

    def _load(self) -> None:
        manifest = load_manifest(self.index_dir, verify=self.verify)
        kind = get_kind(manifest.kind)
        flags = kind.mmap_flags() if self.mmap else 0
        if self.mmap and flags is None:
            log.info("%s: kind %s cannot be memory-mapped; reading it into RAM", self.index_dir, kind.name)
        self.mapped = bool(flags)
        index = read_faiss(self.index_dir / INDEX_FILE, flags or 0)
        if index.ntotal != manifest.count or index.d != manifest.bits:
            raise IndexManifestError(self.index_dir, f"index.faiss has {index.ntotal} codes of {index.d} bits, "
                                     f"manifest says {manifest.count} of {manifest.bits}")
        if self.gpu:
            if kind.name != "flat":
                raise InvalidParameterError(f"GPU search is implemented for flat indexes, this one is {kind.name}")
            self._searcher: Searcher = GpuFlatSearch(index, kind.searcher(index, manifest.params, self.policy, True))
        else:
            self._searcher = kind.searcher(index, manifest.params, self.policy, self.mapped)
        ids_path = self.index_dir / IDS_FILE
        self._image_ids = read_column(ids_path, "image_id")
        labels = None if kind.dense_labels else read_column(ids_path, "label").to_numpy()
        # Labels are strictly increasing; first 0 and last n-1 means label == row (nothing removed yet).
        self._labels = None if labels is None or not len(labels) or (labels[0] == 0 and labels[-1] == len(labels) - 1) else labels
        if len(self._image_ids) != manifest.count:
            raise IndexManifestError(ids_path, f"{len(self._image_ids)} rows, manifest says {manifest.count}")
        self._table: pa.Table | None = None
        self.manifest: IndexManifest = manifest

    # -- facts ------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def bits(self) -> int:
        return self.manifest.bits

    @property
    def kind(self) -> str:
        return self.manifest.kind

    def __len__(self) -> int:
        return self.manifest.count

    # -- search -----------------------------------------------------------------------------------
    def search(self, codes: np.ndarray, k: int = 10, *, with_ties: bool = False, nprobe: int | None = None,
               ef_search: int | None = None) -> SearchResult:
        """Top-k by Hamming distance for each code (uint8 [B, bits/8] or one code [bits/8]).

        with_ties returns every item at the k-th distance too. nprobe (ivf) and ef_search (hnsw)
        override the index's defaults (autotuned at build) for this call; less than the tuned value warns.
        """
        codes = np.asarray(codes, dtype=np.uint8)
        if codes.ndim == 1:
            codes = codes[None, :]
        if codes.ndim != 2 or codes.shape[1] * 8 != self.bits:
            raise IndexManifestError(self.index_dir, f"query codes of shape {codes.shape} are not "
                                     f"{self.bits}-bit codes (expected [B, {self.bits // 8}] uint8)")
        if k < 1:
            raise InvalidParameterError(f"k must be >= 1, got {k}")
        if len(codes) == 0 or len(self) == 0:
            return SearchResult([Hits([], np.empty(0, np.int32), np.empty(0, np.int64)) for _ in codes])
        params = SearchParams(nprobe=nprobe, ef_search=ef_search)
        warn_if_below_tuned(self.manifest.tuning, params)
        found = self._searcher.search(codes, k, with_ties, params)
        return SearchResult([Hits(None, d, self._rows_of(labels), self._ids_at) for d, labels in found])

    def _ids_at(self, rows: np.ndarray) -> list[str]:
        return self._image_ids.take(pa.array(rows)).to_pylist()

    def _rows_of(self, labels: np.ndarray) -> np.ndarray:
        if self._labels is None:
            return labels
        rows = np.searchsorted(self._labels, labels)
        if len(rows) and (rows.max() >= len(self._labels) or not np.array_equal(self._labels[rows], labels)):
            raise IndexManifestError(self.index_dir, "FAISS returned labels missing from ids.parquet")
        return rows

    def row_of(self, image_id: str) -> int | None:
        """The ids.parquet row of an image id, or None (a linear scan: ~5 ms per million rows)."""
        import pyarrow.compute as pc

        row = pc.index(self._image_ids, value=pa.scalar(image_id, pa.string())).as_py()
        return None if row is None or row < 0 else int(row)

    def records(self, rows: np.ndarray) -> list[IdRecord]:
        """image_id, path, labels and box of the given rows (ids.parquet is read on first use)."""
        if self._table is None:
            self._table = pq.read_table(self.index_dir / IDS_FILE)
        return records_at(self._table, rows)

    # -- maintenance (writes the folder, then reloads) --------------------------------------------
    def add(self, codes_dir: str | Path, *, replace: bool = False) -> UpdateReport:
        report = add_codes(self.index_dir, codes_dir, replace=replace)
        self._load()
        return report

    def remove(self, image_ids: list[str]) -> UpdateReport:
        report = remove_images(self.index_dir, image_ids)
        self._load()
        return report
