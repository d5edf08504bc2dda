"""Exact multi-index hashing on top of faiss.IndexBinaryMultiHash.

FAISS's multi-hash index splits each code into `nhash` substrings of `b` bits, and a query visits
the buckets of every substring within `nflip` bit flips; it is approximate for k-NN as such.
Pigeonhole makes it exact when checked: if a code is at distance D < nhash * (nflip + 1), at least
one of its substrings is within nflip flips, so it was a candidate. Hence, when the k-th distance
found satisfies d_k < nhash * (nflip + 1), the top-k (and every tie of d_k, via a range search at
the same nflip) is exact. Otherwise the query is repeated with nflip = d_k // nhash, which is
certain to pass; and when that nflip would cost more than a flat scan (`max_nflip`) the query
falls back to `ExactScan` over the index's own storage. Each query starts at the nflip that a
16k-code sample predicts (d_k estimate // nhash), so hopeless queries go to the flat scan at once
and close ones skip rounds that could not certify them. Clustered codes (real hash codes are)
have small d_k and are answered from a few buckets; uniformly random 64-bit codes usually fall
back, so this kind is never slower than flat by more than one cheap bucket probe.
"""

from __future__ import annotations

import threading

import numpy as np

from medhash.index.exact_scan import ExactScan
from medhash.index.neighbors import Neighbors, select
from medhash.index.threads import ThreadPolicy, omp_threads


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
        self.fallback = ExactScan(faiss.downcast_IndexBinary(index.storage), policy)
        # nflip is a field of the shared FAISS object: searches that set it must not interleave.
        self._lock = threading.Lock()
        self.fallbacks = 0  # queries answered by the flat scan (for benchmarks / info)

    def _first_nflip(self, q: np.ndarray, k: int) -> int:
        kth = self.fallback.estimate_kth(q, k)
        return self.start_nflip if kth is None else max(self.start_nflip, kth // self.nhash)

    def _at(self, nflip: int, queries: np.ndarray, k: int):
        self.index.nflip = nflip
        return self.index.search(queries, k)

    def search(self, queries: np.ndarray, k: int, with_ties: bool = False) -> list[Neighbors]:
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        nq, ntotal = len(queries), self.index.ntotal
        results: list[Neighbors | None] = [None] * nq
        need = {int(q): self._first_nflip(queries[q], k) for q in range(nq)}  # query -> nflip to try next
        to_scan: list[int] = []
        with self._lock, omp_threads(self.policy.omp_threads):
            while need:
                nflip = min(need.values())
                if nflip > self.max_nflip:
                    to_scan.extend(need)
                    break
                batch = np.array(sorted(q for q, f in need.items() if f == nflip))
                D, I = self._at(nflip, queries[batch], k)
                for row, q in enumerate(batch):
                    found = int((I[row] >= 0).sum())
                    if found >= min(k, ntotal) and (found == ntotal or certified(int(D[row, k - 1]), self.nhash, nflip)):
                        del need[int(q)]
                        results[q] = self._finish(queries[q], D[row], I[row], k, with_ties, nflip)
                    elif found >= k:
                        need[int(q)] = int(D[row, k - 1]) // self.nhash  # certain to pass
                    else:
                        need[int(q)] = nflip + 1
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
