"""HammingIndex: open an index folder (manifest and checksums verified) and answer top-k queries, filtered or not.

ids.parquet is opened once and read through that handle: an `index add/remove` that replaces the
file while this object still answers (a server before its reload) leaves it reading the version it
opened. Filters (medhash.index.filters) are evaluated by a MetadataSelector into cached row
selections; image ids are found through a hash index (IdLookup), built on first use.

A search, filtered or not, may re-rank its Hamming top-N by the cosine of the continuous hash values
(`search(..., rerank=N, query_values=...)`, medhash.index._search.rerank) when the folder stores
them (hash_values.npy, memory-mapped: a search reads only its shortlists' rows). A filtered search
re-ranks the filtered top-N.
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
                                   ThreadPolicy, rerank_neighbors)
from medhash.index._store import (HASH_VALUES_FILE, IDS_FILE, INDEX_FILE, IdLookup, IdRecord, IndexManifest,
                                  load_manifest, open_values, read_faiss, records_at)
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

    __slots__ = ("distances", "rows", "scores", "_resolve", "_image_ids")

    def __init__(self, image_ids: list[str] | None, distances: np.ndarray, rows: np.ndarray,
                 resolve: Callable[[np.ndarray], list[str]] | None = None, scores: np.ndarray | None = None):
        self.distances = distances  # int32 Hamming distances
        self.rows = rows  # int64 rows of ids.parquet
        self.scores = scores  # re-ranked searches: float64 cosine of the hash values, NaN after the shortlist
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
        self._values = open_values(self.index_dir / HASH_VALUES_FILE) if manifest.hash_values else None
        if self._values is not None and self._values.shape != (manifest.count, manifest.bits):
            raise IndexManifestError(self.index_dir, f"{HASH_VALUES_FILE} holds {self._values.shape}, "
                                     f"manifest says [{manifest.count}, {manifest.bits}]")
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
    def has_hash_values(self) -> bool:
        """Whether the folder stores hash values, which `search(..., rerank=N)` needs."""
        return self._values is not None

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
               ef_search: int | None = None, filter: str | dict | Filter | None = None, rerank: int | None = None,
               query_values: np.ndarray | None = None) -> SearchResult:
        """Top-k by Hamming distance for each code (uint8 [B, bits/8] or one code [bits/8]).

        with_ties returns every item at the k-th distance too. nprobe (ivf) and ef_search (hnsw)
        override the index's defaults (autotuned at build) for this call; less than the tuned value warns.
        filter (medhash.index.filters: compact text, JSON text, dict or Filter) restricts the answer to
        the items it lets through; FilterError when it is malformed or names a column the index lacks.
        rerank=N re-orders each query's Hamming top-N (the filtered top-N under a filter; ties at the
        N-th distance included) by the cosine between `query_values` (the queries' hash values, float
        [B, bits]: EncodeResult.hash_values) and the stored ones, the rest following in Hamming order;
        hits then carry `scores` (medhash.index._search.rerank). It needs an index built from codes
        encoded with --store-hash-values.
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
        if rerank is not None:
            self.check_rerank(rerank)
            query_values = self._query_values(query_values, len(codes))
        params = SearchParams(nprobe=nprobe, ef_search=ef_search)
        # Re-ranking fetches max(k, N) with ties: every item up to the N-th distance, the whole shortlist.
        fetch_k, fetch_ties = (k, with_ties) if rerank is None else (max(k, rerank), True)
        if not flt.empty():
            selection = self.select(flt)
            found, strategy = self._filtered.search(codes, fetch_k, fetch_ties, params, self._label_filter(selection))
            return SearchResult(self._hits(found, k, with_ties, rerank, query_values), strategy, selection.count)
        if len(codes) == 0 or len(self) == 0:
            return SearchResult([Hits([], np.empty(0, np.int32), np.empty(0, np.int64)) for _ in codes])
        warn_if_below_tuned(self.manifest.tuning, params)
        found = self._searcher.search(codes, fetch_k, fetch_ties, params)
        return SearchResult(self._hits(found, k, with_ties, rerank, query_values))

    def _hits(self, found: list, k: int, with_ties: bool, rerank: int | None,
              query_values: np.ndarray | None) -> list[Hits]:
        if rerank is None:
            return [Hits(None, d, self._rows_of(labels), self._ids_at) for d, labels in found]
        hits = []
        for (distances, labels), values in zip(found, query_values):
            d, rows, scores = rerank_neighbors(distances, self._rows_of(labels), self._values, values, rerank, k,
                                               with_ties)
            hits.append(Hits(None, d, rows, self._ids_at, scores=scores))
        return hits

    def check_rerank(self, rerank: int) -> None:
        """Raise InvalidParameterError (one line) unless `search(..., rerank=rerank)` can run on this index."""
        if self._values is None:
            raise InvalidParameterError(f"index {self.index_dir} stores no hash values, so it cannot re-rank: encode "
                                        "with --store-hash-values and build the index again")
        if rerank < 1:
            raise InvalidParameterError(f"rerank must be >= 1, got {rerank}")

    def _query_values(self, query_values: np.ndarray | None, n_queries: int) -> np.ndarray:
        if query_values is None:
            raise InvalidParameterError("rerank needs the queries' hash values (query_values; a code alone has none)")
        query_values = np.asarray(query_values, dtype=np.float32)
        if query_values.ndim == 1:
            query_values = query_values[None, :]
        if query_values.shape != (n_queries, self.bits):
            raise InvalidParameterError(f"query_values of shape {query_values.shape}, expected [{n_queries}, {self.bits}]")
        return query_values

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
