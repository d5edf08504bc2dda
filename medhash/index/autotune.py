"""Autotuning an approximate index to a recall target, measured on the archive's own codes.

`build_index` draws a sample of the archive's codes as queries in its first pass (`draw_queries`),
keeps their exact neighbour distances up to date while it adds the codes (`ExactTruth.update`, one
FAISS flat scan of each added batch: memory is queries x (k+1) distances, never the archive), and
then `tune` searches the built index with each value of the kind's knob (IVF nprobe, HNSW
ef_search), cheapest first, until the tie-aware recall@k reaches the target:

- a query is a code of the archive, so its own row is excluded from both the exact answer and the
  approximate one (otherwise every query would score its distance-0 self as a free hit);
- tie-aware recall: a returned item at the exact k-th distance or closer is a hit, so an index that
  returns another item of a tie instead of the one the flat scan happened to list is not penalised;
- the knob grows geometrically (x1.5 steps) and recall is monotone in it, so the first value that
  reaches the target bounds the cheapest one, which bisection between it and the step before finds
  (at 1M realistic codes nprobe 9 measured 0.948 and 14 0.981: the steps alone would overpay); the latency of each value is measured on the same
  queries with one thread.

The chosen value replaces the kind's default in the manifest's params (so it is what every search
uses unless a call overrides it), and `manifest.tuning` records the target, the measured recall,
the estimated latency, the memory and every value tried (as autofaiss's index_infos does).
A value the user set explicitly is not changed: it is measured, and a warning says when it falls
short of the target. `warn_if_below_tuned` warns when a search asks for less than the tuned value.

Sampling archive codes (rather than fresh images) measures the recall that archive-like queries get;
queries from a different distribution (other scanners, other populations) may get less.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from medhash.index._search import SearchParams, ThreadPolicy

__all__ = ["DEFAULT_TARGET_RECALL", "ExactTruth", "TuneConfig", "tie_aware_recall", "tune", "warn_if_below_tuned"]

log = logging.getLogger(__name__)

DEFAULT_TARGET_RECALL = 0.95
ONE_THREAD = ThreadPolicy(omp_threads=1, search_threads=1)


@dataclass(frozen=True)
class TuneConfig:
    target_recall: float | None = DEFAULT_TARGET_RECALL  # None: no tuning, the size-derived defaults stay
    k: int = 100  # recall@k
    queries: int = 500  # archive codes drawn as queries


class ExactTruth:
    """The exact distances of `queries` (codes of the archive, FAISS labels `labels`) to their k nearest
    other items, accumulated batch by batch while the archive is added."""

    def __init__(self, queries: np.ndarray, labels: np.ndarray, k: int):
        self.queries = np.ascontiguousarray(queries, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.k = k
        self.best = np.full((len(queries), 0), 0, dtype=np.int32)  # the k+1 smallest so far (self included)

    def update(self, codes: np.ndarray) -> None:
        import faiss

        if not len(codes) or not len(self.queries):
            return
        flat = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        flat.add(np.ascontiguousarray(codes))
        D, _ = flat.search(self.queries, min(self.k + 1, len(codes)))
        merged = np.concatenate([self.best, D.astype(np.int32)], axis=1)
        merged.sort(axis=1)
        self.best = merged[:, : self.k + 1]

    def kth(self) -> np.ndarray:
        """Per query, the exact k-th distance among the other items (its own code, at 0, dropped)."""
        k = min(self.k, self.best.shape[1] - 1)
        return self.best[:, k]


def tie_aware_recall(found: list[tuple[np.ndarray, np.ndarray]], own_labels: np.ndarray, kth: np.ndarray,
                     k: int) -> float:
    """Mean over queries of (returned items other than the query itself, among its first k, with a
    distance <= the exact k-th) / k."""
    hits = []
    for (distances, labels), own, limit in zip(found, own_labels, kth):
        others = distances[labels != own][:k]
        hits.append(float((others <= limit).sum()) / k)
    return float(np.mean(hits)) if hits else 1.0


def _measure(searcher, truth: ExactTruth, k: int, knob: str | None, value: int | None) -> dict:
    params = SearchParams(**{knob: value}) if knob else SearchParams()
    started = time.perf_counter()
    found = searcher.search(truth.queries, k + 1, False, params)
    ms = (time.perf_counter() - started) * 1e3 / max(1, len(truth.queries))
    recall = tie_aware_recall(found, truth.labels, truth.kth(), k)
    row = {"recall": round(recall, 4), "latency_ms_per_query": round(ms, 4)}
    return {knob: value, **row} if knob else row


def tune(kind, index, params: dict, truth: ExactTruth, config: TuneConfig, explicit: set[str]) -> tuple[dict, dict]:
    """Pick the cheapest knob value reaching config.target_recall; returns (params, tuning record).

    `explicit`: parameter names the user set, which are measured but never changed."""
    target, k = config.target_recall, min(truth.k, max(1, int(index.ntotal) - 1))
    knob = kind.tuning_knob
    # archive_count: later adds and removals change the recall a setting gets; rebuild to retune.
    record = {"target_recall": target, "k": k, "queries": int(len(truth.queries)), "archive_count": int(index.ntotal),
              "queries_from": "archive codes, each excluded from its own results"}
    searcher = kind.searcher(index, params, ONE_THREAD, False)
    if knob is None or knob in explicit:
        chosen = _measure(searcher, truth, k, None, None)
        record.update(knob=knob, value=params.get(knob) if knob else None, tried=[], **chosen,
                      chosen_by="exact kind" if knob is None else "explicit setting")
        if knob and chosen["recall"] < target:
            log.warning("%s=%s measures recall@%d %.3f on %d archive queries, below the target %.2f "
                        "(leave %s unset to autotune it)", knob, params[knob], k, chosen["recall"],
                        len(truth.queries), target, knob)
        return params, record
    tried = []
    for value in kind.knob_values(params, k):
        row = _measure(searcher, truth, k, knob, value)
        tried.append(row)
        if row["recall"] >= target:
            break
    best = tried[-1]
    if best["recall"] >= target and len(tried) > 1:  # bisect the last step: the cheapest value, not the step's
        low, high = tried[-2][knob], best[knob]
        while high - low > 1:
            row = _measure(searcher, truth, k, knob, (low + high) // 2)
            tried.append(row)
            if row["recall"] >= target:
                high, best = row[knob], row
            else:
                low = row[knob]
        tried.sort(key=lambda row: row[knob])
    if best["recall"] < target:
        log.warning("%s: the largest %s tried (%d) measures recall@%d %.3f, below the target %.2f",
                    kind.name, knob, best[knob], k, best["recall"], target)
    record.update(knob=knob, value=best[knob], recall=best["recall"],
                  latency_ms_per_query=best["latency_ms_per_query"], tried=tried, chosen_by="autotune")
    return {**params, knob: best[knob]}, record


def warn_if_below_tuned(tuning: dict | None, params: SearchParams) -> None:
    """Warn (once per value) when a search asks for less than the autotuned knob value."""
    if not tuning or tuning.get("chosen_by") != "autotune":
        return
    knob, value = tuning["knob"], getattr(params, tuning["knob"], None)
    if value is not None and value < tuning["value"] and (knob, value) not in _warned:
        _warned.add((knob, value))
        log.warning("%s=%d is below the autotuned %s=%d, which measured recall@%d %.3f (target %.2f): "
                    "expect lower recall", knob, value, knob, tuning["value"], tuning["k"], tuning["recall"],
                    tuning["target_recall"])


_warned: set[tuple[str, int]] = set()
