"""Re-ranking a Hamming shortlist by the cosine similarity of the continuous hash values.

The shortlist of a query is its Hamming top-N with every item tied at the N-th distance (so it
never depends on how ties were broken). Its items are ordered by cosine similarity between the
query's hash values (the hash layer's tanh outputs, as the encoder returns them) and the item's
stored float16 values, highest first; equal cosines fall back to Hamming distance, then row order.
Items after the shortlist keep their Hamming order, so any k is answered: the first min(k, |shortlist|)
hits are re-ranked, the rest follow by distance.

Exact: the cosine is computed in float64 from the float16 values as stored and the query's values as
given, so the order equals a brute-force re-ranking of the same shortlist. "With ties" keeps every
hit whose sort key equals the k-th's: the same (cosine, distance) inside the shortlist, the same
distance after it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_similarity", "rerank_neighbors", "shortlist_size"]


def cosine_similarity(stored: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine between each row of `stored` [m, bits] and `query`: float64 [m] for one query [bits], [Q, m] for
    queries [Q, bits] (0 where a norm is 0). In float64 from the values as given (float16 as stored)."""
    stored = np.asarray(stored, dtype=np.float64)
    queries = np.atleast_2d(np.asarray(query, dtype=np.float64))
    norms = np.linalg.norm(queries, axis=1)[:, None] * np.linalg.norm(stored, axis=1)[None, :]
    dots = queries @ stored.T
    cosine = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return cosine[0] if np.ndim(query) == 1 else cosine


def shortlist_size(distances: np.ndarray, n: int) -> int:
    """How many of the Hamming-sorted `distances` lie within the n-th's distance (ties included)."""
    if len(distances) <= n:
        return len(distances)
    return int(np.searchsorted(distances, distances[n - 1], side="right"))


def rerank_neighbors(distances: np.ndarray, rows: np.ndarray, values: np.ndarray, query_values: np.ndarray,
                     n: int, k: int, with_ties: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One query's Hamming-sorted neighbours (every item up to the n-th distance included) -> its top k
    re-ranked: (distances int32, rows int64, scores float64: the cosine, NaN after the shortlist)."""
    size = shortlist_size(distances, n)
    head_rows = rows[:size]
    cosine = cosine_similarity(values[head_rows], query_values)
    order = np.lexsort((head_rows, distances[:size], -cosine))
    scores = np.concatenate([cosine[order], np.full(len(rows) - size, np.nan)])
    distances = np.concatenate([distances[order], distances[size:]])
    rows = np.concatenate([head_rows[order], rows[size:]])
    end = min(k, len(rows))
    if with_ties and end < len(rows):
        if end <= size:  # the k-th hit is re-ranked: its ties share its cosine and distance
            same = (scores[end:size] == scores[end - 1]) & (distances[end:size] == distances[end - 1])
        else:
            same = distances[end:] == distances[end - 1]
        end += int(np.argmin(same)) if not same.all() else len(same)
    return distances[:end].astype(np.int32, copy=False), rows[:end].astype(np.int64, copy=False), scores[:end]
