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

Each kind declares its parameters (`param_specs`, medhash.index.params) and `resolve_params` checks
user overrides against them, then the bounds that depend on the data (`check_fit`), before any FAISS
call: FAISS itself aborts or allocates without bound on values such as hnsw M=0 or M=-1.
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np

from medhash.errors import InvalidParameterError
from medhash.index.params import MAX_EF, ParamSpec, check_declared, refuse
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
    param_specs: tuple[ParamSpec, ...] = ()

    def default_params(self, n: int, bits: int, given: dict | None = None) -> dict:
        """Parameters chosen from the index size; those not `given` are derived from the `given` ones."""
        return {}

    def resolve_params(self, n: int, bits: int, overrides: dict) -> dict:
        """The parameters to build `n` codes of `bits` bits with: defaults, then the checked overrides."""
        given = self.check_overrides(overrides)
        params = {**self.default_params(n, bits, given), **given}
        self.check_fit(params, n, bits)
        return params

    def check_overrides(self, overrides: dict) -> dict:
        """Refuse unknown keys and values outside the declared bounds (needs no data)."""
        others = {kind.name: kind.param_specs for kind in KINDS.values() if kind.name != self.name}
        return check_declared(self.name, self.param_specs, overrides, others)

    def check_fit(self, params: dict, n: int, bits: int) -> None:
        """Refuse parameters that do not fit `n` codes of `bits` bits (one-line InvalidParameterError)."""

    def train_rows(self, params: dict, n: int) -> int:
        return 0

    def min_train_rows(self, params: dict) -> int:
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
    param_specs = (
        ParamSpec("nhash", 1, 256, "hash tables, one per substring; nhash * b <= bits"),
        ParamSpec("b", 1, 32, "bits per substring"),
        ParamSpec("nflip", 0, 32, "bit flips probed per substring at first; at most b"),
        ParamSpec("max_nflip", 0, 32, "most flips probed before a flat scan; at most b"),
        ParamSpec("budget", 0.0, 1e12, "probe cost allowed, in flat scans, before falling back to one", float),
    )

    def default_params(self, n, bits, given=None):
        # Substrings of ~log2(n) bits give ~1 code per bucket (MIH's optimum), capped at 16 bits
        # so each table keeps <= 65,536 buckets; nhash tables cover bits // b * b bits.
        given = given or {}
        b = given.get("b") or min(int(min(16, max(8, round(math.log2(max(n, 2)))))), bits)
        nhash = given.get("nhash") or max(1, bits // b)
        return {"nhash": nhash, "b": b, "nflip": 1, "max_nflip": self._max_nflip(n, nhash, b)}

    def check_fit(self, params, n, bits):
        nhash, b = params["nhash"], params["b"]
        if nhash * b > bits:
            refuse(self.name, f"nhash * b = {nhash} * {b} = {nhash * b} is more than the {bits} bits of a code; "
                              f"lower nhash or b so that nhash * b <= {bits}")
        for key in ("nflip", "max_nflip"):
            if params[key] > b:
                refuse(self.name, f"{key}={params[key]} is more than b={b}; {key} takes an integer in [0, {b}]")

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
    param_specs = (
        ParamSpec("nlist", 1, 65_536, "inverted lists; at most the number of codes"),
        ParamSpec("nprobe", 1, 65_536, "lists visited per query; at most nlist"),
        ParamSpec("train_per_list", 1, 4_096, "training codes drawn per list"),
    )

    def default_params(self, n, bits, given=None):
        # nlist ~ 4 sqrt(n) (power of two; FAISS's guide says 4-16 sqrt(n)), never more lists than 39
        # training codes each can support, and at most 4096: k-means cost grows with nlist x training
        # codes. At 1M clustered codes 4096 lists reached recall@100 0.965 at nprobe 2 in 0.064 ms vs
        # 0.086 ms (nprobe 4, recall 0.93) with 1024 lists.
        nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
        nlist = (given or {}).get("nlist") or int(max(1, min(nlist, 4096, n // 39 or 1)))
        return {"nlist": nlist, "nprobe": max(1, nlist // 32), "train_per_list": 64}

    def check_fit(self, params, n, bits):
        if params["nlist"] > n:
            refuse(self.name, f"nlist={params['nlist']} is more than the {n} codes to cluster; "
                              f"nlist takes an integer in [1, {n}] here")
        if params["nprobe"] > params["nlist"]:
            refuse(self.name, f"nprobe={params['nprobe']} is more than nlist={params['nlist']}; "
                              f"nprobe takes an integer in [1, {params['nlist']}]")

    def min_train_rows(self, params):
        return params["nlist"]  # k-means needs at least one training code per list

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
    param_specs = (
        # M < 2 breaks FAISS's level sampling (1/log M): M=0 aborts, M=-1 allocates without bound.
        ParamSpec("M", 2, 256, "graph neighbours per node"),
        ParamSpec("ef_construction", 1, MAX_EF, "candidate list while building"),
        ParamSpec("ef_search", 1, MAX_EF, "candidate list while searching"),
    )

    def default_params(self, n, bits, given=None):
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
        raise InvalidParameterError(f"unknown index kind {name!r}; known: {', '.join(sorted(KINDS))}") from None
