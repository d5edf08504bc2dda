"""Exact multi-index hashing on top of faiss.IndexBinaryMultiHash.

FAISS's multi-hash index splits each code into `nhash` substrings of `b` bits, and a query visits
the buckets of every substring within `nflip` bit flips; as such it is approximate for k-NN.
Pigeonhole makes it exact when checked: a code at distance D < nhash * (nflip + 1) has a substring
within nflip flips, so it was a candidate. Hence when the k-th distance found satisfies
d_k < nhash * (nflip + 1), the top-k (and every tie of d_k, via a range search at the same nflip)
is exact. Otherwise the query is repeated with nflip = d_k // nhash, which is certain to pass.

Falling back to `ExactScan` over the index's own storage (also exact) happens when:
- a 16k-code sample estimates d_k so high that nflip would exceed max_nflip + 1 (checked before
  any probe). The estimate runs high on clustered codes, so it only rules queries out and never
  raises the starting nflip: starting at the estimate sent 180 instead of 34 of 1708 clustered 1M
  queries to the flat scan;
- the next round would exceed max_nflip, or its cost, predicted from the measured cost of the last
  round (probes grow as sum_{i<=nflip} C(b, i); bucket sizes depend on how the codes cluster),
  exceeds `budget` x one flat scan (timed when the searcher is built). On 10M random codes an
  unguarded nflip=3 round took ~0.47 s against a 30 ms flat scan.
Clustered codes (real hash codes are) have small d_k and are answered from a few buckets;
uniformly random 64-bit codes go to the flat scan, mostly without probing at all.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from medhash.index._search.exact import ExactScan, flat_codes
from medhash.index._search.neighbors import Neighbors, SearchParams, select
from medhash.index._search.threads import ThreadPolicy, omp_threads

__all__ = ["MultiHashSearch", "certified"]


def certified(d_k: int, nhash: int, nflip: int) -> bool:
    return d_k < nhash * (nflip + 1)


class MultiHashSearch:
    def __init__(self, index, params: dict, policy: ThreadPolicy):
        import faiss

        self.index = index
        self.nhash, self.b = index.nhash, index.b
        self.start_nflip = int(params.get("nflip", 1))
        self.max_nflip = int(params.get("max_nflip", 2))
        self.policy = policy
        self.budget = float(params.get("budget", 0.5))
        self.fallback = ExactScan(faiss.downcast_IndexBinary(index.storage), policy)
        self.flat_seconds = self._time_flat_scan()
        # nflip is a field of the shared FAISS object: searches that set it must not interleave.
        self._lock = threading.Lock()
        self.fallbacks = 0  # queries answered by the flat scan (for benchmarks / info)

    def _time_flat_scan(self) -> float:
        codes = self.fallback.shards[0]
        if codes.ntotal == 0:
            return 0.0
        probes = flat_codes(codes)[:: max(1, codes.ntotal // 3)][:3].copy()
        seconds = []
        with omp_threads(1):
            for q in probes:
                start = time.perf_counter()
                self.fallback.query(q, 10, False, parallel=False)
                seconds.append(time.perf_counter() - start)
        return float(np.median(seconds))

    def _probes(self, nflip: int) -> int:
        return sum(math.comb(self.b, i) for i in range(nflip + 1))

    def _hopeless(self, q: np.ndarray, k: int) -> bool:
        kth = self.fallback.estimate_kth(q, k)
        return kth is not None and kth // self.nhash > self.max_nflip + 1

    def _at(self, nflip: int, queries: np.ndarray, k: int):
        self.index.nflip = nflip
        return self.index.search(queries, k)

    def search(self, queries: np.ndarray, k: int, with_ties: bool = False,
               params: SearchParams = SearchParams()) -> list[Neighbors]:
        """`params` is ignored: the search is exact, nflip is chosen per query."""
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        nq, ntotal = len(queries), self.index.ntotal
        results: list[Neighbors | None] = [None] * nq
        need: dict[int, int] = {}  # query -> nflip to try next
        to_scan: list[int] = []
        for q in range(nq):
            if self._hopeless(queries[q], k):
                to_scan.append(q)
            else:
                need[q] = self.start_nflip
        with self._lock, omp_threads(self.policy.omp_threads):
            while need:
                nflip = min(need.values())
                if nflip > self.max_nflip:
                    to_scan.extend(need)
                    break
                batch = np.array(sorted(q for q, f in need.items() if f == nflip))
                start = time.perf_counter()
                D, I = self._at(nflip, queries[batch], k)
                per_query = (time.perf_counter() - start) / len(batch)
                for row, q in enumerate(batch):
                    found = int((I[row] >= 0).sum())
                    if found >= min(k, ntotal) and (found == ntotal or certified(int(D[row, k - 1]), self.nhash, nflip)):
                        del need[int(q)]
                        results[q] = self._finish(queries[q], D[row], I[row], k, with_ties, nflip)
                    else:
                        # found >= k: nflip = d_k // nhash is certain to pass; else try one more flip
                        nxt = int(D[row, k - 1]) // self.nhash if found >= k else nflip + 1
                        predicted = per_query * self._probes(nxt) / self._probes(nflip)
                        if predicted > self.budget * self.flat_seconds:
                            del need[int(q)]
                            to_scan.append(int(q))
                        else:
                            need[int(q)] = nxt
        if to_scan:
            self.fallbacks += len(to_scan)
            for q, hits in zip(to_scan, self.fallback.search(queries[to_scan], k, with_ties)):
                results[q] = hits
        return results  # type: ignore[return-value]

    def _finish(self, q: np.ndarray, D, I, k: int, with_ties: bool, nflip: int) -> Neighbors:
        hits = select(D, I, k, False)
        if not with_ties or len(hits[0]) < k:
            return hits
        # Every code at distance <= d_k is a candidate at this nflip, so the range search is exact.
        self.index.nflip = nflip
        _, Dr, Ir = self.index.range_search(q.reshape(1, -1), int(hits[0][k - 1]) + 1)
        return select(Dr, Ir, k, True)
