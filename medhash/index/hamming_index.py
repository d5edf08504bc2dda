"""HammingIndex: open an index folder (manifest and checksums verified) and answer top-k queries, filtered or not.

ids.parquet is opened once and read through that handle: an `index add/remove` that replaces the
file while this object still answers (a server before its reload) leaves it reading the version it
opened. Filters (medhash.index.filters) are evaluated by a MetadataSelector into cached row
selections; image ids are found through a hash index (IdLookup), built on first use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medhash.errors import IndexManifestError, InvalidParameterError
from medhash.index._search import (DEFAULT_POLICY, FilteredSearch, GpuFlatSearch, LabelFilter, Searcher, SearchParams,
                                   ThreadPolicy)
from medhash.index._store import (IDS_FILE, INDEX_FILE, IdLookup, IdRecord, IndexManifest, load_manifest, read_faiss,
                                  records_at)
from medhash.index.filters import Filter, parse_filter
from medhash.index.autotune import warn_if_below_tuned
from medhash.index.kinds import get_kind
from medhash.index.maintain import UpdateReport, add_codes, remove_images
from medhash.index.selection import MetadataSelector, Selection

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

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        nearest = ", ".join(f"{i}@{d}" for i, d in zip(self.image_ids[:3], self.distances[:3].tolist()))
        return f"Hits({len(self.rows)} hits{': ' + nearest if nearest else ''}{', ...' if len(self.rows) > 3 else ''})"


class SearchResult:
    """Per-query lists (lengths differ with ties, or when the index holds fewer than k items).

    `strategy` says how a filtered search was answered (medhash.index._search.filtered); None unfiltered.
    """

    def __init__(self, hits: list[Hits], strategy: str | None = None, selected: int | None = None):
        self._hits = hits
        self.strategy = strategy
        self.selected = selected  # items the filter let through

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

    def __repr__(self) -> str:
        sizes = [len(h.rows) for h in self._hits]
        shown = ", ".join(map(str, sizes[:8])) + (", ..." if len(sizes) > 8 else "")
        return f"SearchResult({len(sizes)} queries, hits per query [{shown}]; image_ids, distances, rows per query)"


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
            cpu = kind.searcher(index, manifest.params, self.policy, True)
            self._searcher: Searcher = GpuFlatSearch(index, cpu)
        else:
            cpu = self._searcher = kind.searcher(index, manifest.params, self.policy, self.mapped)
        self._filtered: FilteredSearch = kind.filtered(index, cpu, manifest.params, self.policy)
        ids_path = self.index_dir / IDS_FILE
        self._ids_file = pq.ParquetFile(pa.OSFile(str(ids_path)))  # this version's file, even once replaced
        self._image_ids = self._ids_file.read(columns=["image_id"]).column("image_id").combine_chunks()
        labels = None if kind.dense_labels else self._ids_file.read(columns=["label"]).column("label").to_numpy()
        # Labels are strictly increasing; first 0 and last n-1 means label == row (nothing removed yet).
        self._labels = None if labels is None or not len(labels) or (labels[0] == 0 and labels[-1] == len(labels) - 1) else labels
        if len(self._image_ids) != manifest.count:
            raise IndexManifestError(ids_path, f"{len(self._image_ids)} rows, manifest says {manifest.count}")
        self._table: pa.Table | None = None
        self._lookup: IdLookup | None = None
        self._selector = MetadataSelector(self._ids_file, manifest.count, self.row_of)
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

    @property
    def generation(self) -> int:
        return self.manifest.generation

    def columns(self) -> list[str]:
        """The columns of ids.parquet (the metadata a filter can name, besides the fixed ones)."""
        return self._selector.columns()

    def __len__(self) -> int:
        return self.manifest.count

    def __repr__(self) -> str:
        return (f"HammingIndex({str(self.index_dir)!r}, kind={self.kind!r}, count={len(self)}, bits={self.bits}, "
                f"model_id={self.model_id!r})")

    # -- search -----------------------------------------------------------------------------------
    def search(self, codes: np.ndarray, k: int = 10, *, with_ties: bool = False, nprobe: int | None = None,
               ef_search: int | None = None, filter: str | dict | Filter | None = None) -> SearchResult:
        """Top-k by Hamming distance for each code (uint8 [B, bits/8] or one code [bits/8]).

        with_ties returns every item at the k-th distance too. nprobe (ivf) and ef_search (hnsw)
        override the index's defaults (autotuned at build) for this call; less than the tuned value warns.
        filter (medhash.index.filters: compact text, JSON text, dict or Filter) restricts the answer to
        the items it lets through; FilterError when it is malformed or names a column the index lacks.
        """
        flt = parse_filter(filter)
        codes = np.asarray(codes, dtype=np.uint8)
        if codes.ndim == 1:
            codes = codes[None, :]
        if codes.ndim != 2 or codes.shape[1] * 8 != self.bits:
            raise IndexManifestError(self.index_dir, f"query codes of shape {codes.shape} are not "
                                     f"{self.bits}-bit codes (expected [B, {self.bits // 8}] uint8)")
        if k < 1:
            raise InvalidParameterError(f"k must be >= 1, got {k}")
        params = SearchParams(nprobe=nprobe, ef_search=ef_search)
        if not flt.empty():
            selection = self.select(flt)
            found, strategy = self._filtered.search(codes, k, with_ties, params, self._label_filter(selection))
            return SearchResult([Hits(None, d, self._rows_of(labels), self._ids_at) for d, labels in found],
                                strategy, selection.count)
        if len(codes) == 0 or len(self) == 0:
            return SearchResult([Hits([], np.empty(0, np.int32), np.empty(0, np.int64)) for _ in codes])
        warn_if_below_tuned(self.manifest.tuning, params)
        found = self._searcher.search(codes, k, with_ties, params)
        return SearchResult([Hits(None, d, self._rows_of(labels), self._ids_at) for d, labels in found])

    def select(self, filter: str | dict | Filter) -> Selection:
        """The rows a filter lets through (cached per filter for this index version)."""
        return self._selector.select(parse_filter(filter))

    def _label_filter(self, selection: Selection) -> LabelFilter:
        rows = selection.rows
        labels = rows if self._labels is None else self._labels[rows]
        return LabelFilter(rows, labels, selection.mask, len(self))

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
        """The ids.parquet row of an image id, or None (a hash index, built on first use)."""
        if self._lookup is None:
            self._lookup = IdLookup(self._image_ids)
        return self._lookup.row_of(image_id)

    def records(self, rows: np.ndarray) -> list[IdRecord]:
        """image_id, path, labels, box and metadata of the given rows (ids.parquet is read on first use)."""
        if self._table is None:
            self._table = self._ids_file.read()
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
