"""The ranking of a re-ranked shortlist as distances the tie-aware metrics take.

A re-ranked search (medhash.index's `rerank=N`) orders a query's shortlist (its Hamming top-N with the
ties at the N-th distance) by cosine similarity of the hash values, highest first, then by Hamming
distance, and leaves the rest in Hamming order. `reranked_distances` turns that ranking into one real
"distance" per item that sorts the same way and ties exactly where the ranking's keys tie: inside the
shortlist the dense rank of (-cosine, distance), after it the item count plus the Hamming distance
(beyond every shortlist rank). `evaluate_scores` and `query_metrics` on these distances give the
tie-aware figures of the re-ranked list over the whole database.
"""

from __future__ import annotations

import numpy as np

__all__ = ["reranked_distances", "shortlist_mask"]


def shortlist_mask(distances: np.ndarray, n: int) -> np.ndarray:
    """bool like `distances` [..., N]: the items within each row's n-th smallest distance (ties included)."""
    distances = np.asarray(distances)
    if distances.shape[-1] <= n:
        return np.ones(distances.shape, dtype=bool)
    nth = np.partition(distances, n - 1, axis=-1)[..., n - 1:n]
    return distances <= nth


def _row(distances: np.ndarray, cosine: np.ndarray, shortlisted: np.ndarray) -> np.ndarray:
    out = distances.astype(np.float64) + len(distances)
    head = np.flatnonzero(shortlisted)
    if len(head):
        order = np.lexsort((distances[head], -cosine[head]))
        keys = np.stack([-cosine[head][order], distances[head][order].astype(np.float64)])
        new_group = np.concatenate([[True], (np.diff(keys, axis=1) != 0).any(axis=0)])
        out[head[order]] = np.cumsum(new_group) - 1
    return out


def reranked_distances(distances: np.ndarray, cosine: np.ndarray, shortlisted: np.ndarray) -> np.ndarray:
    """float64 like `distances` ([N] or [Q, N]): the composite distance of each item (see the module)."""
    distances, cosine, shortlisted = np.asarray(distances), np.asarray(cosine), np.asarray(shortlisted, dtype=bool)
    if not distances.shape == cosine.shape == shortlisted.shape:
        raise ValueError(f"shapes differ: distances {distances.shape}, cosine {cosine.shape}, shortlisted {shortlisted.shape}")
    if distances.ndim == 1:
        return _row(distances, cosine, shortlisted)
    out = np.zeros(distances.shape)
    for q in range(len(distances)):
        out[q] = _row(distances[q], cosine[q], shortlisted[q])
    return out
