"""Exact Hamming top-k over flat binary codes, faster than one `IndexBinaryFlat.search` call.

Two measured effects (1M random 64-bit codes, one query, k=100, one core):
- `range_search(q, r)` scans 1M codes in ~0.52 ms where `search(q, 100)` takes ~0.72 ms (the
  range loop keeps no heap). If a radius r returns at least k codes, those contain the exact
  top-k and every code tied with the k-th (all have distance < r), so one range scan answers a
  query exactly, ties included. r is estimated from a 16k-code sample of the index (~15 us) so
  that about 4k codes fall inside it; if fewer than k do, r grows and the scan is repeated (rare).
- The codes are split into one shard per search thread, and while a core is free
  (ThreadPolicy.fan_out) the shards of one query are scanned at the same time (`ScanPool`).
Batches run FAISS's knn over query slices instead, one slice per thread: it reads each block of
codes once for the whole slice, which at 10M codes gave raw FAISS 102 queries/s against 45 for
one range scan per query.
"""

from __future__ import annotations

import math

import numpy as np

from medhash.index._search.neighbors import Neighbors, SearchParams, select
from medhash.index._search.threads import ThreadPolicy, omp_threads, shared_pool

__all__ = ["ExactScan", "flat_codes", "flat_codes_buffer", "gather_codes", "hamming_distances"]

SAMPLE_ROWS = 16_384
RANGE_OVERSAMPLE = 4  # aim the radius at ~4k expected hits: few retries, few extra results
# A filtered scan drops the unselected codes inside the radius, so every extra code costs; its radius
# is aimed at 2k selected codes (measured at 1M clustered codes, 54% selected: 0.645 ms vs 0.677 ms at
# 4k, unfiltered 0.62 ms), still rarely short of k.
MASKED_OVERSAMPLE = 2


def flat_codes_buffer(flat, rows: int) -> np.ndarray:
    """Zero-copy uint8 [rows, code_size] view of an IndexBinaryFlat's code buffer (valid while it lives)."""
    import faiss

    cs = flat.code_size
    if rows == 0:
        return np.empty((0, cs), dtype=np.uint8)
    return faiss.rev_swig_ptr(flat.xb.data(), rows * cs).reshape(rows, cs)


def flat_codes(flat) -> np.ndarray:
    """The index's ntotal codes, zero-copy."""
    return flat_codes_buffer(flat, flat.ntotal)


def gather_codes(codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """codes[rows] for uint8 [N, code_size], copying whole codes (~10x faster than 2-D fancy indexing)."""
    cs = codes.shape[1]
    return np.take(np.ascontiguousarray(codes).view(f"V{cs}").ravel(), rows).view(np.uint8).reshape(len(rows), cs)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming_distances(q: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """int32 Hamming distance from one uint8 code to each row of uint8 [N, code_size]."""
    nbytes = codes.shape[1]
    if nbytes % 8 == 0 and len(codes):
        x = np.ascontiguousarray(codes).view(np.uint64) ^ np.ascontiguousarray(q.reshape(1, -1)).view(np.uint64)
        if hasattr(np, "bitwise_count"):
            if x.shape[1] == 1:
                return np.bitwise_count(x[:, 0]).astype(np.int32)
            return np.bitwise_count(x).sum(axis=1, dtype=np.int32)
        x = x.view(np.uint8)
    else:
        x = codes ^ q.reshape(1, -1)
    return _POPCOUNT8[x].sum(axis=1, dtype=np.int32)


def _flat_of(codes: np.ndarray, bits: int):
    import faiss

    index = faiss.IndexBinaryFlat(bits)
    if len(codes):
        index.add(np.ascontiguousarray(codes))
    return index


class ExactScan:
    """Exact search over an IndexBinaryFlat (or any storage that is one).

    split=True copies the codes into per-thread shards (the caller should then drop its own
    reference to `flat` to keep one copy in memory); split=False searches `flat` in place, which
    keeps an mmap-loaded index mapped instead of copying it into RAM.
    """

    def __init__(self, flat, policy: ThreadPolicy, *, split: bool = True, sample_rows: int = SAMPLE_ROWS):
        self.bits = flat.d
        self.ntotal = flat.ntotal
        self.policy = policy
        codes = flat_codes(flat)
        nshards = min(policy.search_threads, self.ntotal // max(1, policy.min_rows_per_thread)) if split else 1
        if nshards > 1:
            edges = np.linspace(0, self.ntotal, nshards + 1).astype(np.int64)
            self.shards = [_flat_of(codes[lo:hi], self.bits) for lo, hi in zip(edges[:-1], edges[1:])]
            self.offsets = [int(lo) for lo in edges[:-1]]
        else:
            self.shards, self.offsets = [flat], [0]
        sample_step = self.ntotal // sample_rows
        # Only worth it when the sample is much smaller than the index.
        self.sample = _flat_of(codes[::sample_step][:sample_rows], self.bits) if sample_step >= RANGE_OVERSAMPLE else None
        self.sample_rows = np.arange(0, self.ntotal, max(1, sample_step), dtype=np.int64)[:sample_rows]
        self._selected_sample: tuple | None = None  # filtered searches: the last selection's sample codes
        self.pool = shared_pool(policy.search_threads) if policy.search_threads > 1 else None

    # -- shard fan-out -------------------------------------------------------------------------
    def _over_shards(self, fn, parallel: bool) -> list:
        tasks = [lambda s=s, o=o: fn(s, o) for s, o in zip(self.shards, self.offsets)]
        return self.pool.run(tasks) if parallel and self.pool is not None else [t() for t in tasks]

    def _range(self, q: np.ndarray, radius: int, parallel: bool) -> tuple[np.ndarray, np.ndarray]:
        def one(shard, offset):
            lims, D, I = shard.range_search(q, int(radius))
            return D, I + offset

        parts = self._over_shards(one, parallel)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _knn(self, queries: np.ndarray, k: int, parallel: bool) -> tuple[np.ndarray, np.ndarray]:
        def one(shard, offset):
            D, I = shard.search(queries, min(k, shard.ntotal))
            return D, np.where(I >= 0, I + offset, -1)

        parts = [p for p in self._over_shards(one, parallel) if p[0].shape[1]]
        if not parts:
            return np.empty((len(queries), 0), np.int32), np.empty((len(queries), 0), np.int64)
        return np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1)

    # -- one query -------------------------------------------------------------------------------
    def _sample_kth(self, q: np.ndarray, expected: int) -> int | None:
        """Distance within which ~`expected` codes of the index lie, read off the sample (None: no sample)."""
        if self.sample is None:
            return None
        m = self.sample.ntotal
        kk = math.ceil(expected * m / self.ntotal)
        if kk >= m:
            return None
        D, _ = self.sample.search(q.reshape(1, -1), kk)
        return int(D[0, -1])

    def estimate_kth(self, q: np.ndarray, k: int) -> int | None:
        """A cheap estimate of the k-th nearest distance (for callers choosing a strategy)."""
        return self._sample_kth(q, k)

    def _radius_guess(self, q: np.ndarray, k: int) -> int | None:
        kth = self._sample_kth(q, RANGE_OVERSAMPLE * k)
        return None if kth is None else kth + 1

    def _finish_knn(self, q: np.ndarray, D: np.ndarray, I: np.ndarray, k: int, with_ties: bool,
                    parallel: bool) -> Neighbors:
        """Exact answer from the merged top-(k+1) per shard (k+1 tells whether ties continue past k)."""
        d, lab = select(D, I, k + 1, False)
        if with_ties and len(d) > k and d[k] == d[k - 1]:
            # More codes may share the k-th distance than were fetched: collect all of them.
            return select(*self._range(q.reshape(1, -1), int(d[k - 1]) + 1, parallel), k, True)
        return select(d, lab, k, with_ties)

    def query(self, q: np.ndarray, k: int, with_ties: bool, parallel: bool = True) -> Neighbors:
        q = q.reshape(1, -1)
        if k >= self.ntotal:
            return select(*self._range(q, self.bits + 1, parallel), k, with_ties)
        radius = self._radius_guess(q, k)
        if radius is None:
            D, I = self._knn(q, k + 1 if with_ties else k, parallel)
            return self._finish_knn(q, D, I, k, with_ties, parallel)
        while True:
            D, I = self._range(q, radius, parallel)
            if len(D) >= k or radius > self.bits:
                return select(D, I, k, with_ties)
            radius += max(1, radius // 4)

    # -- filtered (mask: bool by row, the rows that may be returned) ------------------------------
    def codes_at(self, rows: np.ndarray) -> np.ndarray:
        """uint8 [len(rows), code_size] codes of the given sorted rows, gathered from the shards."""
        if len(self.shards) == 1:
            return gather_codes(flat_codes(self.shards[0]), rows)
        bounds = np.searchsorted(rows, self.offsets[1:] + [self.ntotal])
        parts, start = [], 0
        for shard, offset, end in zip(self.shards, self.offsets, bounds):
            parts.append(gather_codes(flat_codes(shard), rows[start:end] - offset))
            start = end
        return np.concatenate(parts)

    def _masked_radius(self, q: np.ndarray, k: int, mask: np.ndarray) -> int | None:
        """A radius holding ~RANGE_OVERSAMPLE * k selected codes, read off the selected part of the sample.

        Every sample distance is computed (popcount over 16k codes, cheaper than FAISS's knn with the
        larger k a sparse selection would need) and the selected ones' histogram gives the radius.
        """
        if self.sample is None:
            return None
        cached = self._selected_sample  # (mask, its selected sample codes): one selection repeats across queries
        if cached is None or cached[0] is not mask:
            cached = (mask, flat_codes(self.sample)[mask[self.sample_rows]].copy())
            self._selected_sample = cached
        m = self.sample.ntotal
        want = math.ceil(MASKED_OVERSAMPLE * k * m / self.ntotal)  # selected sample codes inside the radius
        if len(cached[1]) < want:
            return None
        passing = hamming_distances(q.reshape(-1), cached[1])
        return int(np.searchsorted(np.cumsum(np.bincount(passing)), want)) + 1

    def query_masked(self, q: np.ndarray, k: int, with_ties: bool, mask: np.ndarray, fraction: float,
                     parallel: bool = True) -> Neighbors:
        """Exact top-k among the rows where mask is True: range scans of every code, unselected ones dropped.

        The scan costs what the unfiltered one does (the mask is applied to the few thousand codes
        inside the radius); the radius is aimed with the selected part of the sample, so a filter
        whose rows lie far from the query starts wide instead of growing many times.
        """
        q = q.reshape(1, -1)
        radius = self._masked_radius(q, k, mask)
        if radius is None:
            radius = self.bits + 1
        while True:
            D, I = self._range(q, radius, parallel)
            keep = mask[I]
            if int(np.count_nonzero(keep)) >= k or radius > self.bits:
                return select(D[keep], I[keep], k, with_ties)
            radius += max(1, radius // 4)

    # -- many queries ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, with_ties: bool = False,
               params: SearchParams = SearchParams()) -> list[Neighbors]:
        """`params` is ignored: an exact scan has no per-call knobs."""
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        with omp_threads(self.policy.omp_threads):
            if len(queries) == 1:
                return [self.query(queries[0], k, with_ties, parallel=self.policy.split_single_query())]
            if k >= self.ntotal:
                return [self.query(q, k, with_ties, parallel=False) for q in queries]
            # Batches: FAISS's knn over a slice of queries reads each block of codes once for the
            # whole slice (cache-friendly: at 10M codes, 2.3x the throughput of one range scan per query).
            step = max(1, math.ceil(len(queries) / (2 * self.policy.search_threads)))

            def run(qs: np.ndarray) -> list[Neighbors]:
                D, I = self._knn(qs, k + 1, parallel=False)
                return [self._finish_knn(q, D[i], I[i], k, with_ties, parallel=False) for i, q in enumerate(qs)]

            tasks = [lambda i=i: run(queries[i:i + step]) for i in range(0, len(queries), step)]
            runs = self.pool.run(tasks) if self.pool is not None else [t() for t in tasks]
            return [hit for part in runs for hit in part]
