"""How an index is searched: one searcher per family of kinds, and the rules they all share.

Every searcher answers `search(queries, k, with_ties=False, params=SearchParams()) -> list[Neighbors]`
(the `Searcher` protocol); the kinds registry (medhash.index.kinds) picks one per kind:
- exact.ExactScan (flat): range scan per query, knn per batch of queries, split over threads;
- multihash.MultiHashSearch (multihash): FAISS's multi-index hashing, made exact by a pigeonhole
  check, with ExactScan as the fallback;
- approx.ApproxSearch (ivf, hnsw): per-call nprobe / ef_search;
- gpu.GpuFlatSearch (flat on a GPU), and GPU training of the IVF quantizer;
- filtered.FilteredSearch: the top-k among the items a filter lets through, for every kind (exact
  kinds exactly; approximate kinds never return an unselected item).
rerank re-orders a Hamming shortlist (filtered or not) by the cosine of the stored hash values.
neighbors holds the neighbour-list type and the ordering and tie rules; threads the thread policy
and the scan pool the searchers share. faiss is imported inside functions only.
"""

from medhash.index._search.approx import ApproxSearch, hnsw_params, ivf_params
from medhash.index._search.exact import ExactScan, flat_codes, flat_codes_buffer, gather_codes, hamming_distances
from medhash.index._search.filtered import FilteredSearch, LabelFilter
from medhash.index._search.gpu import GpuFlatSearch, gpu_support, use_gpu_for_training
from medhash.index._search.multihash import MultiHashSearch
from medhash.index._search.neighbors import Neighbors, Searcher, SearchParams
from medhash.index._search.rerank import cosine_similarity, rerank_neighbors
from medhash.index._search.threads import DEFAULT_POLICY, ScanPool, ThreadPolicy, omp_threads

__all__ = [
    "DEFAULT_POLICY",
    "ApproxSearch",
    "ExactScan",
    "FilteredSearch",
    "GpuFlatSearch",
    "LabelFilter",
    "MultiHashSearch",
    "Neighbors",
    "ScanPool",
    "SearchParams",
    "Searcher",
    "ThreadPolicy",
    "cosine_similarity",
    "flat_codes",
    "flat_codes_buffer",
    "gather_codes",
    "gpu_support",
    "hamming_distances",
    "hnsw_params",
    "ivf_params",
    "omp_threads",
    "rerank_neighbors",
    "use_gpu_for_training",
]
