"""Searchers for the approximate kinds (IVF, HNSW): per-call parameters, query slices in parallel."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from medhash.index._search.neighbors import Neighbors, SearchParams, knn_with_ties
from medhash.index._search.threads import ThreadPolicy, omp_threads, shared_pool

__all__ = ["ApproxSearch", "hnsw_params", "ivf_params"]


class ApproxSearch:
    """`make_params(fetch, SearchParams) -> faiss.SearchParameters` turns per-call knobs into FAISS's."""

    def __init__(self, index, make_params: Callable[[int, SearchParams], object], policy: ThreadPolicy):
        self.index = index
        self.make_params = make_params
        self.policy = policy
        self.pool = shared_pool(policy.search_threads) if policy.search_threads > 1 else None

    def search(self, queries: np.ndarray, k: int, with_ties: bool = False,
               params: SearchParams = SearchParams()) -> list[Neighbors]:
        queries = np.ascontiguousarray(queries, dtype=np.uint8)

        def faiss_search(qs: np.ndarray, fetch: int):
            return self.index.search(qs, fetch, params=self.make_params(fetch, params))

        def run(qs: np.ndarray) -> list[Neighbors]:
            return knn_with_ties(faiss_search, qs, k, self.index.ntotal, with_ties)

        with omp_threads(self.policy.omp_threads):
            if len(queries) <= 1 or self.pool is None:
                return run(queries)
            step = max(1, math.ceil(len(queries) / (4 * self.policy.search_threads)))
            tasks = [lambda i=i: run(queries[i:i + step]) for i in range(0, len(queries), step)]
            return [hit for part in self.pool.run(tasks) for hit in part]


def _cached(build: Callable[[int], object]) -> Callable[[int], object]:
    """FAISS parameter objects are read-only during a search: build one per value and reuse it."""
    cache: dict[int, object] = {}

    def get(value: int):
        if value not in cache:
            cache[value] = build(value)
        return cache[value]

    return get


def ivf_params(default_nprobe: int, nlist: int) -> Callable[[int, SearchParams], object]:
    import faiss

    def build(nprobe: int):
        p = faiss.SearchParametersIVF()
        p.nprobe = nprobe
        return p

    get = _cached(build)
    return lambda fetch, params: get(max(1, min(nlist, params.nprobe or default_nprobe)))


def hnsw_params(default_ef: int) -> Callable[[int, SearchParams], object]:
    import faiss

    def build(ef: int):
        p = faiss.SearchParametersHNSW()
        p.efSearch = ef
        return p

    get = _cached(build)
    # HNSW cannot return more than efSearch results: never let a large k be cut by it.
    return lambda fetch, params: get(max(fetch, params.ef_search or default_ef))
