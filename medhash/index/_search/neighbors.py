"""Per-query neighbour lists and the two rules every searcher shares: ordering and ties.

A neighbour list is (distances int32 [m], labels int64 [m]) sorted by (distance, label), so equal
distances come back in a deterministic order. "With ties" means: keep every item whose distance
equals the k-th distance, so the list may be longer than k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

__all__ = ["Neighbors", "SearchParams", "Searcher", "knn_with_ties", "select"]

Neighbors = tuple[np.ndarray, np.ndarray]  # (distances int32 [m], labels int64 [m])


@dataclass(frozen=True)
class SearchParams:
    """Per-call knobs of the approximate kinds; None means the index's default."""

    nprobe: int | None = None  # IVF: inverted lists visited
    ef_search: int | None = None  # HNSW: candidate list size


class Searcher(Protocol):
    """What every searcher answers: per query, its top-k (with ties: past k while tied with the k-th)."""

    def search(self, queries: np.ndarray, k: int, with_ties: bool = False,
               params: SearchParams = SearchParams()) -> list[Neighbors]: ...


def select(distances: np.ndarray, labels: np.ndarray, k: int, with_ties: bool) -> Neighbors:
    """Drop FAISS's -1 padding, order by (distance, label), cut at k (or past the k-th's ties)."""
    distances = np.asarray(distances).ravel()
    labels = np.asarray(labels).ravel()
    keep = labels >= 0
    distances, labels = distances[keep], labels[keep]
    order = np.lexsort((labels, distances))
    if len(order) > k:
        if with_ties and k > 0:
            ordered = distances[order]
            order = order[: int(np.searchsorted(ordered, ordered[k - 1], side="right"))]
        else:
            order = order[:k]
    return distances[order].astype(np.int32, copy=False), labels[order].astype(np.int64, copy=False)


def knn_with_ties(search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], queries: np.ndarray,
                  k: int, ntotal: int, with_ties: bool) -> list[Neighbors]:
    """Top-k through a plain `search(queries, k) -> (D, I)`; ties found by doubling the fetch.

    A query is finished when the fetched list is not full (the searcher has nothing more) or the
    last fetched distance is beyond the k-th. For an approximate searcher the ties are those
    that the searcher can reach, which is the most any caller can ask of it.
    """
    nq = len(queries)
    results: list[Neighbors | None] = [None] * nq
    fetch = min(ntotal, 2 * k if with_ties else k)
    pending = np.arange(nq)
    while len(pending):
        D, I = search(queries[pending], max(fetch, 1))
        again = []
        for row, q in enumerate(pending):
            d, lab = D[row], I[row]
            found = int((lab >= 0).sum())
            if with_ties and found == fetch and fetch < ntotal and found >= k and d[found - 1] == d[k - 1]:
                again.append(q)
            else:
                results[q] = select(d, lab, k, with_ties)
        pending = np.asarray(again, dtype=np.int64)
        fetch = min(ntotal, 2 * fetch)
    return results  # type: ignore[return-value]
