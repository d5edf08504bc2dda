"""The registry of index kinds. Each kind picks its parameters from the index size, builds, updates
and searches one FAISS binary index type; `searcher()` hands the loaded index to the searcher of its
family (medhash.index._search).

| kind      | FAISS type             | exact? | labels                      | remove            | --mmap            |
| flat      | IndexBinaryFlat        | yes    | row positions               | remove_ids        | IO_FLAG_MMAP_IFC  |
| multihash | IndexBinaryMultiHash   | yes*   | row positions               | rebuild (fast)    | no (hash maps)    |
| ivf       | IndexBinaryIVF         | no     | explicit, stable, increasing| remove_ids        | IO_FLAG_MMAP      |
| hnsw      | IndexBinaryHNSW        | no     | row positions               | rebuild (slow)    | no (graph)        |
* exact through the pigeonhole check in _search/multihash.py.

"Row positions" means FAISS label == row of ids.parquet; removing compacts both, so they stay equal.
IVF keeps explicit labels (remove_ids leaves the others untouched) and ids.parquet stores them in a
sorted `label` column; rows are found by binary search.
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np

from medhash.index._search import (ApproxSearch, ExactScan, FilteredSearch, MultiHashSearch, Searcher, ThreadPolicy,
                                   flat_codes, flat_codes_buffer, gather_codes, hnsw_params, ivf_params, use_gpu_for_training)

__all__ = ["KINDS", "IndexKind", "get_kind"]

log = logging.getLogger(__name__)


def _selector(labels: np.ndarray):
    import faiss

    return faiss.IDSelectorBatch(np.ascontiguousarray(labels, dtype=np.int64))


def _codes_without(index_storage, labels: np.ndarray) -> np.ndarray:
    codes = flat_codes(index_storage)
    keep = np.ones(len(codes), dtype=bool)
    keep[labels] = False
    return codes[keep].copy()


class IndexKind:
    name: str = ""
    dense_labels: bool = True  # FAISS label == row position
    needs_training: bool = False

    def default_params(self, n: int, bits: int) -> dict:
        return {}

    def train_rows(self, params: dict, n: int) -> int:
        return 0

    def create(self, bits: int, params: dict, train_codes: np.ndarray | None = None, gpu: bool = False):
        raise NotImplementedError

    def add(self, index, codes: np.ndarray, labels: np.ndarray) -> None:
        index.add(np.ascontiguousarray(codes))

    def bulk_adder(self, index, total: int):
        """A function add(codes, labels) for a build that will add exactly `total` codes."""
        return lambda codes, labels: self.add(index, codes, labels)

    def remove(self, index, labels: np.ndarray, params: dict):
        """Remove FAISS labels; returns the index to keep using (the same one, or a rebuilt one)."""
        removed = index.remove_ids(_selector(labels))
        if removed != len(labels):
            raise RuntimeError(f"{self.name}: asked to remove {len(labels)} labels, FAISS removed {removed}")
        return index

    def mmap_flags(self) -> int | None:
        """FAISS io flags for a memory-mapped load, or None where the kind must be read into RAM."""
        return None

    def searcher(self, index, params: dict, policy: ThreadPolicy, mapped: bool) -> Searcher:
        """The searcher of this kind's family over a loaded index (mapped: the index file is memory-mapped)."""
        raise NotImplementedError

    def filtered(self, index, searcher: Searcher, params: dict, policy: ThreadPolicy) -> FilteredSearch:
        """Filtered search over the loaded index and its searcher (medhash.index._search.filtered)."""
        raise NotImplementedError


class FlatKind(IndexKind):
    name = "flat"

    def create(self, bits, params, train_codes=None, gpu=False):
        import faiss

        return faiss.IndexBinaryFlat(bits)

    def bulk_adder(self, index, total):
        # Size the code buffer once and fill it in place: batch-wise add() would grow a
        # std::vector by doubling, holding old + new copies (2x the index) at each regrowth.
        index.xb.resize(total * index.code_size)
        view = flat_codes_buffer(index, total)

        def add(codes, labels):
            start = index.ntotal
            view[start:start + len(codes)] = codes
            index.ntotal = start + len(codes)

        return add

    def mmap_flags(self):
        import faiss

        # IO_FLAG_MMAP is ignored for binary flat codes (measured: RSS grew by the file size);
        # IO_FLAG_MMAP_IFC maps the codes in place (RSS +0.5 MB for a 200 MB index).
        return faiss.IO_FLAG_MMAP_IFC

    def searcher(self, index, params, policy, mapped):
        # A mapped index is searched in place (no per-thread copies), trading latency for memory.
        return ExactScan(index, policy, split=not mapped)

    def filtered(self, index, searcher, params, policy):
        return FilteredSearch(codes_at=searcher.codes_at, policy=policy, exact=searcher)


class MultiHashKind(IndexKind):
    name = "multihash"

    def default_params(self, n, bits):
        # Substrings of ~log2(n) bits give ~1 code per bucket (MIH's optimum), capped at 16 bits
        # so each table keeps <= 65,536 buckets; nhash tables cover bits // b * b bits.
        b = int(min(16, max(8, round(math.log2(max(n, 2))))))
        b = min(b, bits)
        nhash = max(1, bits // b)
        return {"nhash": nhash, "b": b, "nflip": 1, "max_nflip": self._max_nflip(n, nhash, b)}

    @staticmethod
    def _max_nflip(n: int, nhash: int, b: int) -> int:
        """Largest nflip whose bucket probes cost at most half a flat scan (rough ns cost model)."""
        flat_ns = 0.6 * n
        per_probe_ns = 60 + 4 * n / 2 ** b  # hash lookup + checking the bucket's codes
        best, probes = 0, 0
        for r in range(0, b + 1):
            probes += math.comb(b, r)
            if nhash * probes * per_probe_ns > 0.5 * flat_ns:
                break
            best = r
        return best

    def create(self, bits, params, train_codes=None, gpu=False):
        import faiss

        index = faiss.IndexBinaryMultiHash(bits, int(params["nhash"]), int(params["b"]))
        index.nflip = int(params.get("nflip", 1))
        return index

    def remove(self, index, labels, params):
        # IndexBinaryMultiHash has no remove_ids: rebuild the hash tables from the kept codes.
        import faiss

        kept = _codes_without(faiss.downcast_IndexBinary(index.storage), labels)
        rebuilt = self.create(index.d, params)
        rebuilt.add(kept)
        return rebuilt

    def searcher(self, index, params, policy, mapped):
        return MultiHashSearch(index, params, policy)

    def filtered(self, index, searcher, params, policy):
        # The pigeonhole check does not carry over to a subset; the storage's exact scan does.
        return FilteredSearch(codes_at=searcher.fallback.codes_at, policy=policy, exact=searcher.fallback)


class IVFKind(IndexKind):
    name = "ivf"
    dense_labels = False
    needs_training = True

    def default_params(self, n, bits):
        # nlist ~ 4 sqrt(n) (power of two; FAISS's guide says 4-16 sqrt(n)), never more lists than 39
        # training codes each can support, and at most 4096: k-means cost grows with nlist x training
        # codes. At 1M clustered codes 4096 lists reached recall@100 0.965 at nprobe 2 in 0.064 ms vs
        # 0.086 ms (nprobe 4, recall 0.93) with 1024 lists.
        nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
        nlist = int(max(1, min(nlist, 4096, n // 39 or 1)))
        return {"nlist": nlist, "nprobe": max(1, nlist // 32), "train_per_list": 64}

    def train_rows(self, params, n):
        return int(min(n, params["nlist"] * params.get("train_per_list", 64)))

    def create(self, bits, params, train_codes=None, gpu=False):
        import faiss

        quantizer = faiss.IndexBinaryFlat(bits)
        index = faiss.IndexBinaryIVF(quantizer, bits, int(params["nlist"]))
        index.nprobe = int(params["nprobe"])
        if gpu:
            use_gpu_for_training(index, bits)
        index.train(np.ascontiguousarray(train_codes))
        return index

    def add(self, index, codes, labels):
        index.add_with_ids(np.ascontiguousarray(codes), np.ascontiguousarray(labels, dtype=np.int64))

    def mmap_flags(self):
        import faiss

        return faiss.IO_FLAG_MMAP  # inverted lists stay mapped (RSS +1.6 MB for a 64 MB index)

    def searcher(self, index, params, policy, mapped):
        return ApproxSearch(index, ivf_params(int(params["nprobe"]), int(params["nlist"])), policy)

    def filtered(self, index, searcher, params, policy):
        return FilteredSearch(codes_at=_IvfCodes(index), policy=policy, approx=searcher, approx_knob="nprobe",
                              default_knob=int(params["nprobe"]), max_knob=int(params["nlist"]))


class HNSWKind(IndexKind):
    name = "hnsw"

    def default_params(self, n, bits):
        return {"M": 16, "ef_construction": 40, "ef_search": 128}

    def create(self, bits, params, train_codes=None, gpu=False):
        import faiss

        index = faiss.IndexBinaryHNSW(bits, int(params["M"]))
        index.hnsw.efConstruction = int(params["ef_construction"])
        index.hnsw.efSearch = int(params["ef_search"])
        return index

    def remove(self, index, labels, params):
        import faiss

        log.warning("hnsw has no removal in FAISS: rebuilding the graph from %d kept codes",
                    index.ntotal - len(labels))
        kept = _codes_without(faiss.downcast_IndexBinary(index.storage), labels)
        rebuilt = self.create(index.d, params)
        self.add(rebuilt, kept, np.empty(0))
        return rebuilt

    def searcher(self, index, params, policy, mapped):
        return ApproxSearch(index, hnsw_params(int(params["ef_search"])), policy)

    def filtered(self, index, searcher, params, policy):
        import faiss

        # The graph's storage is a flat code array, so a filtered HNSW search is answered exactly: at 1M codes
        # with 54% selected, widening the graph search (ef 384) reached recall@100 0.91 in 1.07 ms where the
        # masked scan of the storage (searched in place, no copy) is exact in 0.83 ms.
        storage = faiss.downcast_IndexBinary(index.storage)
        scan = ExactScan(storage, policy, split=False)
        return FilteredSearch(codes_at=scan.codes_at, policy=policy, exact=scan)


class _IvfCodes:
    """codes_at(rows) for an IVF index: its inverted lists' codes in label order (== row order), built on
    first use (one copy of the codes; a filtered search that never falls back to a scan never builds it)."""

    def __init__(self, index):
        self.index = index
        self._codes: np.ndarray | None = None
        self._lock = threading.Lock()

    def _build(self) -> np.ndarray:
        import faiss

        invlists, cs = self.index.invlists, self.index.code_size
        codes, ids = [], []
        for lst in range(invlists.nlist):
            size = invlists.list_size(lst)
            if size:
                codes.append(faiss.rev_swig_ptr(invlists.get_codes(lst), size * cs).reshape(size, cs).copy())
                ids.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
        if not codes:
            return np.empty((0, cs), np.uint8)
        order = np.argsort(np.concatenate(ids), kind="stable")
        return np.concatenate(codes)[order]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if self._codes is None:
            with self._lock:
                if self._codes is None:
                    self._codes = self._build()
        return gather_codes(self._codes, rows)


KINDS: dict[str, IndexKind] = {kind.name: kind for kind in (FlatKind(), MultiHashKind(), IVFKind(), HNSWKind())}


def get_kind(name: str) -> IndexKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown index kind {name!r}; known: {sorted(KINDS)}") from None
