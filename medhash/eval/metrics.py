"""Retrieval metrics for rankings with tied distances: mAP, mAP@k, P@k, R@k, tie-aware and stable.

Relevance: a database item is relevant to a query when they share at least one label
(labels are multi-hot bool matrices [N, C]).

Ranking: ascending distance. With Hamming distances at 16-64 bits many items tie, and the order
inside a tie group decides the score. Two answers are reported:

* tie-aware: the expected value of the metric over all orders of the items inside each tie group
  (every order equally likely), computed in closed form (McSherry & Najork 2008, "Computing
  information retrieval performance measures efficiently in the presence of tied scores");
* stable: the value for one fixed order, ties broken by database index (what argsort(kind="stable")
  and most index searches return).

The database is ranked per query row (radix argsort of small integer distances, cache sized) and
the tie-aware formulas work on per-query group histograms [Q, bits+1]; rows are processed in
chunks on a thread pool, so memory stays O(chunk * bits + N).

Normalization of AP@k (the `normalization` argument):

* "relevant_retrieved" (default, the deep-hashing convention of HashNet/DPSH code): sum of the
  precisions at the relevant ranks within the top k, divided by the number of relevant items in
  the top k; 0 when the top k holds no relevant item. Tie-aware, that count is random when a tie
  group straddles rank k, so the expectation mixes over its hypergeometric distribution.
* "min_relevant_k": the same sum divided by min(R, k), R = relevant items in the whole database.

P@k divides by min(k, n_ranked); R@k by R. Queries without any relevant item get NaN per query
and are left out of every mean (counted in `n_queries_without_relevant`).

One classification score sits here too: `macro_auroc`, with which training validates its branch
classifiers (numpy arrays in, like everything in eval/).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Literal, Sequence

import numpy as np
from scipy.special import gammaln

Normalization = Literal["relevant_retrieved", "min_relevant_k"]
NORMALIZATIONS: tuple[str, ...] = ("relevant_retrieved", "min_relevant_k")

# Rows of the hypergeometric mixture evaluated at once: bounds memory when k is large.
_MIXTURE_CELLS = 2_000_000


# --------------------------------------------------------------------------- packing / distances


def _as_words(packed: np.ndarray) -> np.ndarray:
    """uint8 [N, B] -> unsigned words [W, N], word size the largest of 8/4/2/1 bytes dividing B.

    Transposed so that one word of every database item is contiguous (row-wise XOR/AND)."""
    n_bytes = packed.shape[1]
    word_bytes = next(size for size in (8, 4, 2, 1) if n_bytes % size == 0)
    words = np.ascontiguousarray(packed).view(np.dtype(f"<u{word_bytes}"))
    return np.ascontiguousarray(words.T)


def _check_codes(codes: np.ndarray, name: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(
            f"{name} must be packed uint8 codes [N, bits/8] (np.packbits), got {codes.dtype} {codes.shape}"
        )
    return codes


def _hamming_row(query_words: np.ndarray, db_words: np.ndarray, out: np.ndarray, xor_buf: np.ndarray,
                 count_buf: np.ndarray) -> np.ndarray:
    """Distances from one query ([W] words) to every database item ([W, N] words) into `out`."""
    np.bitwise_xor(db_words[0], query_words[0], out=xor_buf)
    np.bitwise_count(xor_buf, out=out)
    for w in range(1, db_words.shape[0]):
        np.bitwise_xor(db_words[w], query_words[w], out=xor_buf)
        np.bitwise_count(xor_buf, out=count_buf)
        out += count_buf
    return out


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """Hamming distances uint16 [Q, N] between packed codes (uint8 [Q, bits/8] and [N, bits/8]).

    popcount(xor) on 64/32/16/8-bit words with np.bitwise_count. Memory is Q*N*2 bytes for the
    result plus a bounded temporary, so call it on query chunks for large Q*N."""
    query_codes = _check_codes(query_codes, "query_codes")
    db_codes = _check_codes(db_codes, "db_codes")
    if query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(f"code lengths differ: queries {query_codes.shape[1]} bytes, database {db_codes.shape[1]} bytes")
    query_words = _as_words(query_codes)  # [W, Q]
    db_words = _as_words(db_codes)  # [W, N]
    n_queries, n_db = query_codes.shape[0], db_codes.shape[0]
    out = np.zeros((n_queries, n_db), dtype=np.uint16)
    rows_per_block = max(1, (1 << 22) // max(n_db, 1))  # temporary <= 32 MiB of words
    for start in range(0, n_queries, rows_per_block):
        stop = min(start + rows_per_block, n_queries)
        for w in range(db_words.shape[0]):
            xor = np.bitwise_xor(query_words[w, start:stop, None], db_words[w][None, :])
            out[start:stop] += np.bitwise_count(xor)
    return out


# --------------------------------------------------------------------------- labels / relevance


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be a multi-hot matrix [N, C], got shape {labels.shape}")
    if labels.dtype != np.bool_:
        if not np.issubdtype(labels.dtype, np.integer) or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{name} must be bool or 0/1 integers, got {labels.dtype}")
        labels = labels.astype(bool)
    return labels


def _label_words(labels: np.ndarray) -> np.ndarray:
    return _as_words(np.packbits(labels, axis=1))


def _relevance_row(query_words: np.ndarray, db_words: np.ndarray, out: np.ndarray, and_buf: np.ndarray,
                   any_buf: np.ndarray) -> np.ndarray:
    """out[i] = database item i shares at least one label with the query (packed label words)."""
    np.bitwise_and(db_words[0], query_words[0], out=any_buf if db_words.shape[0] > 1 else and_buf)
    if db_words.shape[0] == 1:
        return np.not_equal(and_buf, 0, out=out)
    for w in range(1, db_words.shape[0]):
        np.bitwise_and(db_words[w], query_words[w], out=and_buf)
        any_buf |= and_buf
    return np.not_equal(any_buf, 0, out=out)


def relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """bool [Q, N]: query q and database item i share at least one label (multi-hot [Q, C], [N, C])."""
    query_labels = _check_labels(query_labels, "query_labels")
    db_labels = _check_labels(db_labels, "db_labels")
    if query_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(f"label widths differ: queries {query_labels.shape[1]}, database {db_labels.shape[1]}")
    shared = query_labels.astype(np.float32) @ db_labels.astype(np.float32).T  # exact: counts < 2**24
    return shared > 0


# --------------------------------------------------------------------------- tie-aware closed form


def _harmonic_numbers(n_max: int) -> np.ndarray:
    """H[0..n_max], H[n] = sum_{j<=n} 1/j. Differences H[a+m]-H[a] lose no accuracy to the prefix:
    both share its rounding, only the m added terms differ."""
    harmonic = np.zeros(n_max + 1)
    np.cumsum(1.0 / np.arange(1, n_max + 1), out=harmonic[1:])
    return harmonic


def _expected_precision_sum(n, r, n_before, r_before, m, harmonic: np.ndarray) -> np.ndarray:
    """Expected sum of the precisions at the ranks of the relevant items that fall in the first m
    slots of a tie group whose order is a uniformly random permutation.

    The group holds n items, r relevant; n_before items (r_before relevant) rank ahead of it.
    Slot p (1-based) is relevant with probability r/n; given that, the other r-1 relevant items
    are spread uniformly over the other n-1 slots, so (p-1)(r-1)/(n-1) of them are expected ahead
    of it, and the precision's denominator n_before+p is fixed. By linearity
        sum_{p=1..m} (r/n) (r_before + 1 + (p-1) c) / (n_before + p),   c = (r-1)/(n-1)
      = (r/n) [a (H(n_before+m) - H(n_before)) + m c],                 a = r_before + 1 - c (n_before+1)
    since (p-1) c = c (n_before+p) - c (n_before+1). m = n gives the group's full contribution to AP.
    Integer array arguments broadcast together; empty groups (n = 0) and m = 0 give 0."""
    n_f = np.asarray(n, dtype=np.float64)
    r_f = np.asarray(r, dtype=np.float64)
    m_f = np.asarray(m, dtype=np.float64)
    c = np.where(n_f > 1, (r_f - 1) / np.maximum(n_f - 1, 1), 0.0)  # n = 1: only p = 1, c unused
    a = np.asarray(r_before, dtype=np.float64) + 1 - c * (np.asarray(n_before, dtype=np.float64) + 1)
    harmonic_gain = harmonic[np.asarray(n_before) + np.asarray(m)] - harmonic[np.asarray(n_before)]
    return (r_f / np.maximum(n_f, 1)) * (a * harmonic_gain + m_f * c)


def _hypergeometric_pmf(x: np.ndarray, population: np.ndarray, successes: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """P(X = x), X relevant among `draws` taken without replacement; 0 outside the support."""
    valid = (x >= 0) & (x <= successes) & (x <= draws) & (draws - x <= population - successes)
    log_pmf = (
        _log_binomial(successes, x)
        + _log_binomial(population - successes, draws - x)
        - _log_binomial(population, draws)
    )
    return np.where(valid, np.exp(np.where(valid, log_pmf, 0.0)), 0.0)


def _log_binomial(n, k):
    """log C(n, k), k clipped into [0, n] so that cells outside the support stay finite."""
    n = np.asarray(n, dtype=np.float64)
    k = np.clip(np.asarray(k, dtype=np.float64), 0, np.maximum(n, 0))
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), 0.0)


def _expected_ap_at_k_relevant_retrieved(n, r, n_before, r_before, m, slot_sums, harmonic) -> np.ndarray:
    """E[(sum of precisions at relevant ranks <= k) / (relevant items in the top k)] per row.

    Groups fully inside the top k are always retrieved, so only the group straddling rank k
    (0 < m < n: its first m slots are inside) makes the count random: X ~ Hypergeometric(n, r, m).
    Given X = x, the x relevant items are a uniformly random subset of those m slots, i.e. a group
    of m items with x relevant, fully retrieved. So E = sum_x P(X=x) (S + T(x)) / (R_full + x),
    S, R_full from the full groups, T(x) = _expected_precision_sum(m, x, ..., m); 0 when nothing
    relevant is retrieved."""
    full = m == n
    precision_full = np.where(full, slot_sums, 0.0).sum(axis=1)
    relevant_full = np.where(full, r, 0).sum(axis=1)
    straddles = (m > 0) & (m < n)  # at most one group per row
    has_straddle = straddles.any(axis=1)
    column = np.argmax(straddles, axis=1)[:, None]

    def straddling(values):
        return np.where(has_straddle, np.take_along_axis(values, column, axis=1)[:, 0], 0)

    group_n, group_r, group_m = straddling(n), straddling(r), straddling(m)
    group_n_before, group_r_before = straddling(n_before), straddling(r_before)

    result = np.empty(n.shape[0])
    x_max = int(np.minimum(group_m, group_r).max(initial=0))
    x = np.arange(x_max + 1)[None, :]
    block = max(1, _MIXTURE_CELLS // (x_max + 1))
    for start in range(0, n.shape[0], block):
        rows = slice(start, start + block)

        def col(values):
            return values[rows, None]

        pmf = _hypergeometric_pmf(x, col(group_n), col(group_r), col(group_m))
        slots = _expected_precision_sum(col(group_m), x, col(group_n_before), col(group_r_before), col(group_m), harmonic)
        value = _safe_divide(col(precision_full) + slots, col(relevant_full) + x)
        result[rows] = (pmf * value).sum(axis=1)
    return result


# --------------------------------------------------------------------------- per-query results


@dataclass(frozen=True)
class QueryMetrics:
    """Per-query metric arrays [Q]; NaN for queries without any relevant item.

    `*_stable` use ties broken by database index; the others are tie-aware expectations."""

    n_relevant: np.ndarray
    ap_tie_aware: np.ndarray
    ap_stable: np.ndarray
    ap_at_k: dict[int, np.ndarray]
    ap_at_k_stable: dict[int, np.ndarray]
    p_at_k: dict[int, np.ndarray]
    p_at_k_stable: dict[int, np.ndarray]
    r_at_k: dict[int, np.ndarray]
    r_at_k_stable: dict[int, np.ndarray]

    @staticmethod
    def concatenate(parts: Sequence["QueryMetrics"]) -> "QueryMetrics":
        joined = {}
        for f in fields(QueryMetrics):
            values = [getattr(part, f.name) for part in parts]
            if isinstance(values[0], dict):
                joined[f.name] = {k: np.concatenate([v[k] for v in values]) for k in values[0]}
            else:
                joined[f.name] = np.concatenate(values)
        return QueryMetrics(**joined)


@dataclass
class _ChunkRanking:
    """What the metrics need from the rankings of a chunk of queries.

    group_sizes / group_relevant: int64 [c, G], tie groups in rank order (zero-padded);
    n_ranked: int64 [c] items ranked per query; relevant_positions: per query, 0-based positions of
    the relevant items in the stable order (ascending)."""

    group_sizes: np.ndarray
    group_relevant: np.ndarray
    n_ranked: np.ndarray
    relevant_positions: list[np.ndarray]


def _tie_aware_metrics(ranking: _ChunkRanking, ks: Sequence[int], normalization: str, harmonic: np.ndarray):
    n = ranking.group_sizes
    r = ranking.group_relevant
    n_before = np.cumsum(n, axis=1) - n
    r_before = np.cumsum(r, axis=1) - r
    n_relevant = r.sum(axis=1)
    ap = _safe_divide(_expected_precision_sum(n, r, n_before, r_before, n, harmonic).sum(axis=1), n_relevant)
    ap_at_k, p_at_k, r_at_k = {}, {}, {}
    for k in ks:
        m = np.clip(k - n_before, 0, n)  # slots of each group inside the top k
        # hypergeometric expectation: the straddling group contributes r * m / n relevant items
        relevant_top_k = (r * _safe_divide(m, n)).sum(axis=1)
        p_at_k[k] = _safe_divide(relevant_top_k, np.minimum(k, ranking.n_ranked))
        r_at_k[k] = _safe_divide(relevant_top_k, n_relevant)
        slot_sums = _expected_precision_sum(n, r, n_before, r_before, m, harmonic)
        if normalization == "min_relevant_k":
            ap_at_k[k] = _safe_divide(slot_sums.sum(axis=1), np.minimum(n_relevant, k))
        else:
            ap_at_k[k] = _expected_ap_at_k_relevant_retrieved(n, r, n_before, r_before, m, slot_sums, harmonic)
    return n_relevant, ap, ap_at_k, p_at_k, r_at_k


def _stable_metrics(ranking: _ChunkRanking, ks: Sequence[int], normalization: str, reciprocal_rank: np.ndarray):
    """AP, AP@k, P@k, R@k of the stable order: the j-th relevant item (1-based) at 0-based position
    p has precision j / (p+1). reciprocal_rank[p] = 1 / (p+1)."""
    n_rows = len(ranking.relevant_positions)
    ap = np.zeros(n_rows)
    ap_at_k = {k: np.zeros(n_rows) for k in ks}
    hits_at_k = {k: np.zeros(n_rows) for k in ks}
    longest = max((p.size for p in ranking.relevant_positions), default=0)
    relevant_rank = np.arange(1, longest + 1, dtype=np.float64)
    for row, positions in enumerate(ranking.relevant_positions):
        n_relevant = positions.size
        if n_relevant == 0:
            continue
        # precisions j / (p+1); multiply + sum rather than np.dot, whose BLAS threads spin
        precisions = np.multiply(relevant_rank[:n_relevant], reciprocal_rank.take(positions))
        ap[row] = precisions.sum() / n_relevant
        for k in ks:
            hits = int(np.searchsorted(positions, k))
            hits_at_k[k][row] = hits
            normalizer = hits if normalization == "relevant_retrieved" else min(n_relevant, k)
            if normalizer:
                ap_at_k[k][row] = precisions[:hits].sum() / normalizer
    n_relevant = np.array([p.size for p in ranking.relevant_positions])
    p_at_k = {k: _safe_divide(hits_at_k[k], np.minimum(k, ranking.n_ranked)) for k in ks}
    r_at_k = {k: _safe_divide(hits_at_k[k], n_relevant) for k in ks}
    return ap, ap_at_k, p_at_k, r_at_k


def _chunk_metrics(ranking: _ChunkRanking, ks, normalization, harmonic: np.ndarray) -> QueryMetrics:
    """harmonic: H[0..N]; its differences are also the reciprocal ranks the stable metrics use."""
    n_relevant, ap, ap_at_k, p_at_k, r_at_k = _tie_aware_metrics(ranking, ks, normalization, harmonic)
    reciprocal_rank = 1.0 / np.arange(1, harmonic.size)
    ap_stable, ap_at_k_stable, p_at_k_stable, r_at_k_stable = _stable_metrics(
        ranking, ks, normalization, reciprocal_rank
    )
    missing = n_relevant == 0

    def blank(values):
        return np.where(missing, np.nan, values)

    def blank_all(per_k):
        return {k: blank(v) for k, v in per_k.items()}

    return QueryMetrics(
        n_relevant=n_relevant,
        ap_tie_aware=blank(ap),
        ap_stable=blank(ap_stable),
        ap_at_k=blank_all(ap_at_k),
        ap_at_k_stable=blank_all(ap_at_k_stable),
        p_at_k=blank_all(p_at_k),
        p_at_k_stable=blank_all(p_at_k_stable),
        r_at_k=blank_all(r_at_k),
        r_at_k_stable=blank_all(r_at_k_stable),
    )


def _group_relevant(relevant_positions: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    """Relevant items per tie group, from their stable positions and the group sizes."""
    relevant_before_end = np.searchsorted(relevant_positions, np.cumsum(group_sizes))
    return np.diff(relevant_before_end, prepend=0)


# --------------------------------------------------------------------------- rankers


def _rank_general_row(distances: np.ndarray, relevant: np.ndarray):
    """Tie groups by exact equality of any sortable distances (one query, stable order)."""
    order = np.argsort(distances, kind="stable")
    ranked = distances[order]
    new_group = np.empty(ranked.size, dtype=bool)
    new_group[:1] = True
    np.not_equal(ranked[1:], ranked[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    group_sizes = np.diff(starts, append=ranked.size)
    positions = np.flatnonzero(relevant[order])
    return group_sizes, _group_relevant(positions, group_sizes), positions


def _pad_rows(rows: list[np.ndarray]) -> np.ndarray:
    # at least one (empty) group column, so an empty database still has a group axis to reduce
    out = np.zeros((len(rows), max([1, *(row.size for row in rows)])), dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : row.size] = row
    return out


def _chunk_from_rows(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> _ChunkRanking:
    group_sizes = _pad_rows([sizes for sizes, _, _ in rows])
    return _ChunkRanking(
        group_sizes=group_sizes,
        group_relevant=_pad_rows([relevant for _, relevant, _ in rows]),
        n_ranked=group_sizes.sum(axis=1),
        relevant_positions=[positions for _, _, positions in rows],
    )


class _HammingRanker:
    """Ranks the database for chunks of queries by Hamming distance, one query row at a time (the
    row's buffers stay in cache; small-integer distances sort by radix in O(N)).

    Per row: key = distance << 1 | relevant is gathered in the stable distance order once; its
    low bit gives the relevant positions, and since key < 2v exactly for distances < v, the
    gathered keys are searchsorted for the group boundaries (cheaper than a bincount)."""

    def __init__(self, query_codes, db_codes, query_labels, db_labels, self_index: np.ndarray):
        self.query_words = _as_words(query_codes).T  # [Q, W]
        self.db_words = _as_words(db_codes)  # [W, N]
        self.query_label_words = _label_words(query_labels).T
        self.db_label_words = _label_words(db_labels)
        self.self_index = self_index
        self.bits = 8 * query_codes.shape[1]
        self.parking_distance = self.bits + 1  # an excluded item ranks behind every real one
        self.distance_dtype = np.uint8 if self.parking_distance <= np.iinfo(np.uint8).max else np.uint16
        key_max = 2 * self.parking_distance + 1
        self.key_dtype = next(t for t in (np.uint8, np.uint16, np.uint32) if key_max <= np.iinfo(t).max)

    def __call__(self, rows: range) -> _ChunkRanking:
        n_db = self.db_words.shape[1]
        distances = np.empty(n_db, dtype=self.distance_dtype)
        xor_buf = np.empty(n_db, dtype=self.db_words.dtype)
        count_buf = np.empty(n_db, dtype=np.uint8)
        relevant = np.empty(n_db, dtype=bool)
        and_buf = np.empty(n_db, dtype=self.db_label_words.dtype)
        any_buf = np.empty(n_db, dtype=self.db_label_words.dtype)
        key = np.empty(n_db, dtype=self.key_dtype)
        ranked_key = np.empty(n_db, dtype=self.key_dtype)
        low_bit = np.empty(n_db, dtype=np.uint8)
        group_key_bounds = 2 * np.arange(1, self.bits + 2, dtype=self.key_dtype)  # ends of distances 0..bits
        group_sizes = np.empty((len(rows), self.bits + 1), dtype=np.int64)
        group_relevant = np.empty((len(rows), self.bits + 1), dtype=np.int64)
        positions_per_row = []
        for i, query in enumerate(rows):
            _hamming_row(self.query_words[query], self.db_words, distances, xor_buf, count_buf)
            _relevance_row(self.query_label_words[query], self.db_label_words, relevant, and_buf, any_buf)
            excluded = self.self_index[query]
            if excluded >= 0:
                distances[excluded] = self.parking_distance
                relevant[excluded] = False
            order = np.argsort(distances, kind="stable")
            np.left_shift(distances, 1, out=key, dtype=self.key_dtype)  # widen before the shift
            key |= relevant
            np.take(key, order, out=ranked_key)
            group_ends = np.searchsorted(ranked_key, group_key_bounds)
            group_sizes[i] = np.diff(group_ends, prepend=0)
            # the 0/1 bytes viewed as bool take numpy's fast nonzero path (uint8 is ~5x slower)
            positions = np.flatnonzero(np.bitwise_and(ranked_key, 1, out=low_bit).view(bool))
            group_relevant[i] = _group_relevant(positions, group_sizes[i])
            positions_per_row.append(positions)
        n_ranked = n_db - (self.self_index[rows.start : rows.stop] >= 0)
        return _ChunkRanking(group_sizes, group_relevant, n_ranked, positions_per_row)


class _MatrixRanker:
    """Ranks rows of a precomputed distance matrix; ties by exact equality."""

    def __init__(self, distances: np.ndarray, query_labels, db_labels, self_index: np.ndarray):
        self.distances = distances
        self.query_label_words = _label_words(query_labels).T
        self.db_label_words = _label_words(db_labels)
        self.self_index = self_index

    def __call__(self, rows: range) -> _ChunkRanking:
        n_db = self.distances.shape[1]
        relevant = np.empty(n_db, dtype=bool)
        and_buf = np.empty(n_db, dtype=self.db_label_words.dtype)
        any_buf = np.empty(n_db, dtype=self.db_label_words.dtype)
        ranked_rows = []
        for query in rows:
            _relevance_row(self.query_label_words[query], self.db_label_words, relevant, and_buf, any_buf)
            distances, relevant_row = self.distances[query], relevant
            excluded = self.self_index[query]
            if excluded >= 0:
                distances, relevant_row = np.delete(distances, excluded), np.delete(relevant, excluded)
            ranked_rows.append(_rank_general_row(distances, relevant_row))
        return _chunk_from_rows(ranked_rows)


# --------------------------------------------------------------------------- report / drivers


def _mean_over_answerable(values: np.ndarray) -> float:
    answerable = ~np.isnan(values)
    return float(values[answerable].mean()) if answerable.any() else float("nan")


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass
class RetrievalReport:
    """Mean retrieval metrics over the queries that have at least one relevant database item.

    map_at_k, p_at_k, r_at_k are tie-aware (expected over orders inside tie groups); the `_stable`
    twins break ties by database index. `normalization` names the AP@k convention (module doc).
    ndcg_at_k, acg_at_k and wmap are the graded metrics (tie-aware; see the graded block below),
    filled in by evaluate_codes / evaluate_scores (`with_graded`)."""

    n_queries: int
    n_db: int
    n_queries_without_relevant: int
    normalization: str
    map_tie_aware: float
    map_stable: float
    map_at_k: dict[int, float]
    map_at_k_stable: dict[int, float]
    p_at_k: dict[int, float]
    p_at_k_stable: dict[int, float]
    r_at_k: dict[int, float]
    r_at_k_stable: dict[int, float]
    per_query: QueryMetrics | None = None
    ndcg_at_k: dict[int, float] = field(default_factory=dict)
    acg_at_k: dict[int, float] = field(default_factory=dict)
    wmap: float = math.nan

    @classmethod
    def from_query_metrics(cls, metrics: QueryMetrics, n_db: int, normalization: str, keep_per_query: bool):
        def means(per_k):
            return {k: _mean_over_answerable(v) for k, v in per_k.items()}

        return cls(
            n_queries=int(metrics.n_relevant.size),
            n_db=n_db,
            n_queries_without_relevant=int((metrics.n_relevant == 0).sum()),
            normalization=normalization,
            map_tie_aware=_mean_over_answerable(metrics.ap_tie_aware),
            map_stable=_mean_over_answerable(metrics.ap_stable),
            map_at_k=means(metrics.ap_at_k),
            map_at_k_stable=means(metrics.ap_at_k_stable),
            p_at_k=means(metrics.p_at_k),
            p_at_k_stable=means(metrics.p_at_k_stable),
            r_at_k=means(metrics.r_at_k),
            r_at_k_stable=means(metrics.r_at_k_stable),
            per_query=metrics if keep_per_query else None,
        )

    def as_dict(self) -> dict:
        """JSON-ready: k keys as strings, NaN as None, per-query arrays left out."""
        out: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "per_query":
                continue
            if isinstance(value, dict):
                out[f.name] = {str(k): _json_number(v) for k, v in value.items()}
            elif isinstance(value, float):
                out[f.name] = _json_number(value)
            else:
                out[f.name] = value
        return out


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {ks}")
    return ks


def _self_index(n_queries: int, n_db: int, exclude_self: bool, query_db_index) -> np.ndarray:
    if exclude_self and query_db_index is not None:
        raise ValueError("give exclude_self or query_db_index, not both")
    if exclude_self:
        if n_queries != n_db:
            raise ValueError(f"exclude_self needs query i to be database item i, but Q={n_queries} != N={n_db}")
        return np.arange(n_queries)
    if query_db_index is None:
        return np.full(n_queries, -1)
    index = np.asarray(query_db_index, dtype=np.int64)
    if index.shape != (n_queries,) or (index < -1).any() or (index >= n_db).any():
        raise ValueError(f"query_db_index must be [Q={n_queries}] ints in [-1, {n_db}), got shape {index.shape}")
    return index


def _run_chunks(rank_chunk: Callable[[range], _ChunkRanking], n_queries: int, n_db: int, ks, normalization,
                chunk: int, workers: int | None) -> QueryMetrics:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    harmonic = _harmonic_numbers(n_db)

    def evaluate(rows: range) -> QueryMetrics:
        return _chunk_metrics(rank_chunk(rows), ks, normalization, harmonic)

    chunks = [range(start, min(start + chunk, n_queries)) for start in range(0, n_queries, chunk)]
    if not chunks:
        return _chunk_metrics(_chunk_from_rows([]), ks, normalization, harmonic)
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    if workers == 1:
        return QueryMetrics.concatenate([evaluate(rows) for rows in chunks])
    # numpy releases the GIL in the row kernels (xor, popcount, sort, take), so threads scale
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return QueryMetrics.concatenate(list(pool.map(evaluate, chunks)))


def evaluate_codes(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    ks: Sequence[int] = (10, 100),
    exclude_self: bool = False,
    chunk: int = 256,
    *,
    query_db_index: Sequence[int] | np.ndarray | None = None,
    normalization: Normalization = "relevant_retrieved",
    per_query: bool = False,
    workers: int | None = None,
) -> RetrievalReport:
    """Hamming-ranking retrieval metrics of packed codes (uint8 [Q, bits/8], [N, bits/8]).

    exclude_self: query i is database item i (Q == N) and is dropped from its own ranking;
    query_db_index: the database index to drop per query (-1: none), for queries taken from the
    database. chunk: queries per work unit; workers: threads (default: all cores).
    per_query=True keeps the per-query arrays in `report.per_query`."""
    query_codes = _check_codes(query_codes, "query_codes")
    db_codes = _check_codes(db_codes, "db_codes")
    if query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(f"code lengths differ: queries {query_codes.shape[1]} bytes, database {db_codes.shape[1]} bytes")
    query_labels, db_labels = _check_label_pair(query_labels, db_labels, query_codes.shape[0], db_codes.shape[0])
    ks = _check_ks(ks)
    n_queries, n_db = query_codes.shape[0], db_codes.shape[0]
    self_index = _self_index(n_queries, n_db, exclude_self, query_db_index)
    ranker = _HammingRanker(query_codes, db_codes, query_labels, db_labels, self_index)
    metrics = _run_chunks(ranker, n_queries, n_db, ks, normalization, chunk, workers)
    graded = _graded_codes(query_codes, db_codes, query_labels, db_labels, ks, self_index, workers)
    return with_graded(RetrievalReport.from_query_metrics(metrics, n_db, normalization, per_query), graded)


def evaluate_scores(
    distances: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    ks: Sequence[int] = (10, 100),
    exclude_self: bool = False,
    chunk: int = 64,
    *,
    query_db_index: Sequence[int] | np.ndarray | None = None,
    normalization: Normalization = "relevant_retrieved",
    per_query: bool = False,
    workers: int | None = None,
) -> RetrievalReport:
    """Retrieval metrics from a distance matrix [Q, N] (smaller = closer; any real dtype, e.g.
    cosine or Euclidean distances of continuous features, see `feature_distances`). Ties are
    groups of exactly equal distances. Other arguments as in `evaluate_codes`."""
    distances = np.asarray(distances)
    if distances.ndim != 2 or not np.issubdtype(distances.dtype, np.number) or np.iscomplexobj(distances):
        raise ValueError(f"distances must be a real matrix [Q, N], got {distances.dtype} {distances.shape}")
    if np.issubdtype(distances.dtype, np.floating) and np.isnan(distances).any():
        raise ValueError("distances contain NaN: a NaN distance has no rank")
    query_labels, db_labels = _check_label_pair(query_labels, db_labels, *distances.shape)
    ks = _check_ks(ks)
    self_index = _self_index(*distances.shape, exclude_self, query_db_index)
    ranker = _MatrixRanker(distances, query_labels, db_labels, self_index)
    metrics = _run_chunks(ranker, distances.shape[0], distances.shape[1], ks, normalization, chunk, workers)
    graded = _graded_scores(distances, query_labels, db_labels, ks, self_index, workers)
    return with_graded(RetrievalReport.from_query_metrics(metrics, distances.shape[1], normalization, per_query), graded)


def _check_label_pair(query_labels, db_labels, n_queries: int, n_db: int):
    query_labels = _check_labels(query_labels, "query_labels")
    db_labels = _check_labels(db_labels, "db_labels")
    if query_labels.shape[0] != n_queries or db_labels.shape[0] != n_db:
        raise ValueError(
            f"label rows do not match: {query_labels.shape[0]} query labels for {n_queries} queries, "
            f"{db_labels.shape[0]} database labels for {n_db} items"
        )
    if query_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(f"label widths differ: queries {query_labels.shape[1]}, database {db_labels.shape[1]}")
    return query_labels, db_labels


# --------------------------------------------------------------------------- feature distances


def _euclidean(query: np.ndarray, db: np.ndarray) -> np.ndarray:
    squared = (query**2).sum(1)[:, None] + (db**2).sum(1)[None, :] - 2 * query @ db.T
    return np.sqrt(np.maximum(squared, 0))


def _cosine(query: np.ndarray, db: np.ndarray) -> np.ndarray:
    def unit(x):
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norm > 0, norm, 1)

    return 1 - unit(query) @ unit(db).T


FEATURE_DISTANCES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "euclidean": _euclidean,
    "cosine": _cosine,
}


def feature_distances(query_features: np.ndarray, db_features: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """float64 [Q, N] distances between feature rows ([Q, D], [N, D]) under a FEATURE_DISTANCES metric."""
    if metric not in FEATURE_DISTANCES:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(FEATURE_DISTANCES)}")
    query = np.asarray(query_features, dtype=np.float64)
    db = np.asarray(db_features, dtype=np.float64)
    if query.ndim != 2 or db.ndim != 2 or query.shape[1] != db.shape[1]:
        raise ValueError(f"features must be [Q, D] and [N, D], got {query.shape} and {db.shape}")
    return FEATURE_DISTANCES[metric](query, db)


# --------------------------------------------------------------------------- single queries


def _single_query(distances_1d, relevant_1d, ks: Sequence[int], normalization: str) -> QueryMetrics:
    distances = np.asarray(distances_1d)
    relevant = np.asarray(relevant_1d, dtype=bool)
    if distances.ndim != 1 or relevant.shape != distances.shape:
        raise ValueError(f"need 1-d distances and relevance of one length, got {distances.shape} and {relevant.shape}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    ranking = _chunk_from_rows([_rank_general_row(distances, relevant)])
    return _chunk_metrics(ranking, _check_ks(ks), normalization, _harmonic_numbers(distances.size))


def average_precision_tie_aware(distances_1d, relevant_1d) -> float:
    """Expected AP of one query over all orders inside groups of equal distance (NaN: no relevant)."""
    return float(_single_query(distances_1d, relevant_1d, (), "relevant_retrieved").ap_tie_aware[0])


def average_precision_stable(distances_1d, relevant_1d) -> float:
    """AP of one query ranked by argsort(distances, kind="stable") (NaN: no relevant)."""
    return float(_single_query(distances_1d, relevant_1d, (), "relevant_retrieved").ap_stable[0])


def average_precision_at_k_tie_aware(distances_1d, relevant_1d, k: int,
                                     normalization: Normalization = "relevant_retrieved") -> float:
    """Expected AP@k of one query over orders inside tie groups (normalization: module doc)."""
    return float(_single_query(distances_1d, relevant_1d, (k,), normalization).ap_at_k[k][0])


def precision_recall_at_k_tie_aware(distances_1d, relevant_1d, k: int) -> tuple[float, float]:
    """Expected (P@k, R@k) of one query over orders inside tie groups."""
    metrics = _single_query(distances_1d, relevant_1d, (k,), "relevant_retrieved")
    return float(metrics.p_at_k[k][0]), float(metrics.r_at_k[k][0])


def query_metrics(distances_1d, relevant_1d, ks: Sequence[int] = (10, 100),
                  normalization: Normalization = "relevant_retrieved") -> QueryMetrics:
    """Every metric of one query (arrays of length 1), tie-aware and stable."""
    return _single_query(distances_1d, relevant_1d, ks, normalization)


# =========================================================================== graded relevance
# nDCG@k, ACG@k and weighted mAP: how many labels a hit shares with the query, not only whether it
# shares one. Computed in a pass of their own (distances, label overlaps, per-query tie-group sums),
# every figure the expectation over all orders inside tie groups, in closed form.
#
# Per query q and database item i: C(q, i) = number of shared labels, J(q, i) = Jaccard similarity
# C / |labels(q) u labels(i)| (0 when both are empty); i is relevant when C > 0, as above.
#
# * nDCG@k: DCG@k / IDCG@k, gain J, discount 1 / log2(1 + rank). Tie-aware: an item of a tie group
#   holding ranks a+1..a+n sits at each with probability 1/n, so its expected discounted gain is J
#   times the mean discount of those ranks, ranks beyond k counting 0 (a group straddling k is thus
#   counted in expectation). IDCG@k orders the whole database by J, so it does not depend on ties.
# * ACG@k: (1 / min(k, n_ranked)) sum of C over the top k (Zhao et al. 2015, "Deep semantic ranking
#   based hashing"); tie-aware, a straddling group adds its mean C times the slots it has in the top k.
# * weighted AP (WAP, Zhao et al. 2015), over the whole ranking of n items:
#       WAP = (1 / R) sum_{r=1..n} rel(r) ACG@r,   ACG@r = (1/r) sum_{j<=r} C(j),   R = relevant items,
#   AP with each relevant rank's precision replaced by the mean shared-label count above it; the
#   mean of WAP over queries is wmap. Tie-aware in closed form, see _expected_graded_precision_sum.
#
# Queries without any relevant item get NaN and are left out of the means, as for the binary metrics.

# distance / overlap cells of one chunk of queries (bounds the memory of the graded pass)
_GRADED_CELLS = 1 << 21


@dataclass(frozen=True)
class GradedMetrics:
    """Per-query graded metric arrays [Q] (tie-aware expectations, defined in the comment heading this
    block); NaN for queries without a relevant item."""

    ndcg_at_k: dict[int, np.ndarray]
    acg_at_k: dict[int, np.ndarray]
    wap: np.ndarray

    @staticmethod
    def concatenate(parts: Sequence["GradedMetrics"]) -> "GradedMetrics":
        """The rows of several query sets, in order (at least one part)."""
        ks = parts[0].ndcg_at_k.keys()
        return GradedMetrics({k: np.concatenate([p.ndcg_at_k[k] for p in parts]) for k in ks},
                             {k: np.concatenate([p.acg_at_k[k] for p in parts]) for k in ks},
                             np.concatenate([p.wap for p in parts]))


def label_overlap(query_labels: np.ndarray, db_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shared label counts int32 [Q, N], Jaccard similarities float64 [Q, N]) of multi-hot label sets."""
    query_labels = _check_labels(query_labels, "query_labels")
    db_labels = _check_labels(db_labels, "db_labels")
    if query_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(f"label widths differ: queries {query_labels.shape[1]}, database {db_labels.shape[1]}")
    shared = query_labels.astype(np.float32) @ db_labels.astype(np.float32).T  # exact: counts < 2**24
    union = query_labels.sum(axis=1)[:, None] + db_labels.sum(axis=1)[None, :] - shared
    return shared.astype(np.int32), _safe_divide(shared, union)


def _discount_prefix(n_max: int) -> np.ndarray:
    """D[0..n_max], D[p] = sum_{j<=p} 1 / log2(1 + j): the DCG discount summed over ranks 1..p."""
    prefix = np.zeros(n_max + 1)
    np.cumsum(1.0 / np.log2(np.arange(2, n_max + 2)), out=prefix[1:])
    return prefix


def _expected_graded_precision_sum(n, r, s, s_before, n_before, harmonic: np.ndarray) -> np.ndarray:
    """Expected sum of rel(rank) * ACG@rank over the ranks of a tie group (the group's share of
    R * WAP), over uniformly random orders inside the group.

    The group holds n items, r relevant, shared-label total s; n_before items with total s_before
    rank ahead of it. At slot p (1-based, rank n_before + p), since C > 0 exactly for relevant items:
        E[rel(p) C(p)]                   = s / n
        E[rel(p) C(j)], j an earlier slot = s (r - 1) / (n (n - 1))   (two distinct slots)
        E[rel(p)] * (C above the group)   = (r / n) s_before
    so the slot adds (alpha + (p - 1) beta) / (n_before + p), alpha = (r s_before + s) / n,
    beta = s (r - 1) / (n (n - 1)), and summed over p = 1..n (as in _expected_precision_sum)
        (alpha - beta (n_before + 1)) (H(n_before + n) - H(n_before)) + n beta.
    With C = rel this is the AP numerator. Empty groups give 0."""
    n_f = np.asarray(n, dtype=np.float64)
    alpha = _safe_divide(np.asarray(r, dtype=np.float64) * s_before + s, n_f)
    beta = _safe_divide(s * (np.asarray(r, dtype=np.float64) - 1), n_f * (n_f - 1))  # n = 1: one slot, beta unused
    harmonic_gain = harmonic[np.asarray(n_before) + np.asarray(n)] - harmonic[np.asarray(n_before)]
    return (alpha - beta * (np.asarray(n_before, dtype=np.float64) + 1)) * harmonic_gain + n_f * beta


def _graded_from_groups(group_ids: np.ndarray, n_groups: int, shared: np.ndarray, jaccard: np.ndarray,
                        valid: np.ndarray, ks: Sequence[int], harmonic: np.ndarray, discount: np.ndarray) -> GradedMetrics:
    """Graded metrics of a chunk of queries from each item's tie group (ids [c, N] in rank order of
    the groups, 0..n_groups-1), shared-label count and Jaccard; items with valid False are left out."""
    n_rows = group_ids.shape[0]
    flat = (group_ids + n_groups * np.arange(n_rows)[:, None]).ravel()

    def per_group(weights: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=(weights * valid).ravel(), minlength=n_rows * n_groups).reshape(n_rows, n_groups)

    n = per_group(np.ones(group_ids.shape)).astype(np.int64)
    r = per_group(shared > 0).astype(np.int64)
    s = per_group(shared)
    gain = per_group(jaccard)
    n_before = np.cumsum(n, axis=1) - n
    n_ranked = n.sum(axis=1)
    n_relevant = r.sum(axis=1)
    missing = n_relevant == 0

    def blank(values: np.ndarray) -> np.ndarray:
        return np.where(missing, np.nan, values)

    wap = _safe_divide(_expected_graded_precision_sum(n, r, s, np.cumsum(s, axis=1) - s, n_before, harmonic).sum(axis=1),
                       n_relevant)
    k_top = min(max(ks, default=0), group_ids.shape[1])
    ideal = np.where(valid, jaccard, 0.0)
    if 0 < k_top < ideal.shape[1]:
        ideal = -np.partition(-ideal, k_top - 1, axis=1)[:, :k_top]
    ideal_dcg = np.cumsum(-np.sort(-ideal, axis=1)[:, :k_top] * np.diff(discount[: k_top + 1]), axis=1)
    ndcg_at_k, acg_at_k = {}, {}
    for k in ks:
        slots_end = np.minimum(n_before + n, k)
        dcg = (_safe_divide(gain, n) * (discount[slots_end] - discount[np.minimum(n_before, k)])).sum(axis=1)
        cut = np.minimum(k, n_ranked)
        ideal_at_k = np.zeros(n_rows)
        if k_top:
            ideal_at_k = np.where(cut > 0, np.take_along_axis(ideal_dcg, np.maximum(cut, 1)[:, None] - 1, axis=1)[:, 0], 0.0)
        ndcg_at_k[k] = blank(_safe_divide(dcg, ideal_at_k))
        slots = np.clip(k - n_before, 0, n)
        acg_at_k[k] = blank(_safe_divide((_safe_divide(s, n) * slots).sum(axis=1), cut))
    return GradedMetrics(ndcg_at_k, acg_at_k, blank(wap))


def _tie_group_ids(distances: np.ndarray) -> tuple[np.ndarray, int]:
    """Rank of each item's distance among the distinct distances of its row [c, N], and the group count."""
    ids = np.empty(distances.shape, dtype=np.int64)
    n_groups = 1
    for row, values in enumerate(distances):
        _, ids[row] = np.unique(values, return_inverse=True)
        n_groups = max(n_groups, int(ids[row].max(initial=0)) + 1)
    return ids, n_groups


def graded_metrics(distances: np.ndarray, shared: np.ndarray, jaccard: np.ndarray, ks: Sequence[int] = (10, 100),
                   valid: np.ndarray | None = None) -> GradedMetrics:
    """Tie-aware nDCG@k, ACG@k and WAP per query of a ranking by `distances` [Q, N] (smaller = closer;
    ties = exactly equal values), given each item's shared-label count and Jaccard similarity [Q, N]
    (see `label_overlap`). valid [Q, N] bool: items to rank (default all)."""
    distances = np.asarray(distances)
    if distances.ndim != 2 or np.shape(shared) != distances.shape or np.shape(jaccard) != distances.shape:
        raise ValueError(f"distances, shared and jaccard must be [Q, N] of one shape, got "
                         f"{distances.shape}, {np.shape(shared)}, {np.shape(jaccard)}")
    valid = np.ones(distances.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    ids, n_groups = _tie_group_ids(distances)
    n_db = distances.shape[1]
    return _graded_from_groups(ids, n_groups, np.asarray(shared), np.asarray(jaccard, dtype=np.float64), valid,
                               _check_ks(ks), _harmonic_numbers(n_db), _discount_prefix(n_db))


def _graded_chunked(distance_rows: Callable[[range], tuple[np.ndarray, int | None]], query_labels, db_labels,
                    self_index: np.ndarray, ks: Sequence[int], workers: int | None) -> GradedMetrics:
    """Graded metrics of every query, in chunks of rows on a thread pool. distance_rows(rows) gives the
    rows' distances [c, N] and, for small integer distances (Hamming), the group count (distances are
    then the group ids); None: tie groups by np.unique."""
    n_queries, n_db = query_labels.shape[0], db_labels.shape[0]
    harmonic, discount = _harmonic_numbers(n_db), _discount_prefix(n_db)

    def evaluate(rows: range) -> GradedMetrics:
        distances, n_groups = distance_rows(rows)
        ids, n_groups = (distances.astype(np.int64), n_groups) if n_groups else _tie_group_ids(distances)
        shared, jaccard = label_overlap(query_labels[rows.start:rows.stop], db_labels)
        valid = np.ones(distances.shape, dtype=bool)
        excluded = self_index[rows.start:rows.stop]
        valid[np.flatnonzero(excluded >= 0), excluded[excluded >= 0]] = False
        return _graded_from_groups(ids, n_groups, shared, jaccard, valid, ks, harmonic, discount)

    rows_per_chunk = max(1, _GRADED_CELLS // max(n_db, 1))
    chunks = [range(start, min(start + rows_per_chunk, n_queries)) for start in range(0, n_queries, rows_per_chunk)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    if workers == 1:
        parts = [evaluate(rows) for rows in chunks]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(evaluate, chunks))
    if not parts:
        return GradedMetrics({k: np.zeros(0) for k in ks}, {k: np.zeros(0) for k in ks}, np.zeros(0))
    return GradedMetrics.concatenate(parts)


def _graded_codes(query_codes, db_codes, query_labels, db_labels, ks, self_index, workers) -> GradedMetrics:
    n_groups = 8 * query_codes.shape[1] + 1  # Hamming distances 0..bits are the group ids

    def distance_rows(rows: range):
        return hamming_distances(query_codes[rows.start:rows.stop], db_codes), n_groups

    return _graded_chunked(distance_rows, query_labels, db_labels, self_index, ks, workers)


def _graded_scores(distances, query_labels, db_labels, ks, self_index, workers) -> GradedMetrics:
    return _graded_chunked(lambda rows: (distances[rows.start:rows.stop], None), query_labels, db_labels,
                           self_index, ks, workers)


def with_graded(report: RetrievalReport, graded: GradedMetrics) -> RetrievalReport:
    """The report with the means of the graded metrics filled in (over queries with a relevant item)."""
    return replace(report,
                   ndcg_at_k={k: _mean_over_answerable(v) for k, v in graded.ndcg_at_k.items()},
                   acg_at_k={k: _mean_over_answerable(v) for k, v in graded.acg_at_k.items()},
                   wmap=_mean_over_answerable(graded.wap))
# --------------------------------------------------------------------------- classification


def _tie_averaged_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks (scipy.stats.rankdata "average").

    Written here because importing scipy.stats costs far more than this computation; NaN anywhere
    gives NaN ranks (rankdata's default)."""
    if np.isnan(values).any():
        return np.full(values.shape, np.nan)
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[group.reshape(-1)]


def macro_auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over classes that have both positives and negatives (rank formula, ties averaged).

    scores: float [N, C]; targets: [N, C], positive where > 0.5. NaN when no class qualifies."""
    aucs = []
    for c in range(targets.shape[1]):
        pos = targets[:, c] > 0.5
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos and n_neg:
            ranks = _tie_averaged_ranks(scores[:, c])
            aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")
