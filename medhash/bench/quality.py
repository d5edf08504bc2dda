"""Retrieval quality through the search API: mAP, mAP@k, P@k (tie-aware) and a precision-recall curve by radius.

Each query image is uploaded with k = the index's count (capped by the server's max_k) and
with_ties, so the hits are the whole ranked database, or a prefix that holds every item up to its
last distance. A hit is relevant when it shares at least one of the 15 classes with the query; the
hits carry their labels. The metrics are medhash.eval.metrics' tie-aware ones, per query
(`query_metrics`) and averaged by its RetrievalReport, so the figures equal `evaluate_codes` on the
same codes.

Self-exclusion (on by default): a query set drawn from the archive would find each query at
distance 0 and inflate every figure, so the hit whose image_id equals the query's is dropped
before ranking (evaluate_codes' `query_db_index`). Queries not in the index are unaffected.

Re-ranked searches (`--rerank N`): the hits' order is no longer by distance, so the metrics rank by
medhash.eval.reranked_distances (the shortlist by its cosine scores, ties only where scores and
distances tie, then the rest by distance); the precision-recall curve by radius is a set per radius
and does not change.

Graded figures (nDCG@k, ACG@k, wmap; medhash.eval.metrics' graded block) count the labels a hit
shares with the query, from the hits' labels.

Truncated rankings (count > max_k): the full-ranking figures (mAP, R@k, wmap, and nDCG@k, whose
ideal order is over the whole database) cannot be computed from a prefix and are reported as null;
mAP@k, P@k and ACG@k are exact for every k up to k_eval (the requested k, less one when
self-exclusion is on): with ties included, the prefix holds every order of the top k_eval. The
server cuts every response at max_k hits, ties included, so half of max_k is requested and the
other half left for ties; a response cut anyway says `truncated`, and the number of such queries
is reported (`ties_cut`: their figures at k_eval may be off). A labeled query whose prefix holds nothing relevant scores 0 there (it is assumed
have relevant items further down, which is the case evaluate_codes counts as 0 too).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from medhash.bench.load import run_load
from medhash.bench.queries import QuerySet
from medhash.data.labels import CLASSES, LabelRecord
from medhash.eval import reranked_distances
from medhash.eval.metrics import GradedMetrics, QueryMetrics, RetrievalReport, graded_metrics, query_metrics, with_graded


@dataclass(frozen=True)
class Ranking:
    """One query's hits in rank order, after self-exclusion."""

    distances: np.ndarray  # int64 [n]
    relevant: np.ndarray  # bool [n]
    labeled: bool  # the query has at least one of CLASSES (else nothing can be relevant)
    self_excluded: bool
    shared: np.ndarray | None = None  # int64 [n] labels shared with the query (None: graded figures left out)
    jaccard: np.ndarray | None = None  # float64 [n] Jaccard similarity of the label sets
    ties_cut: bool = False  # the server cut the ties at the last distance (its max_k)
    rank_distances: np.ndarray | None = None  # re-ranked hits: what orders them (None: the Hamming distances)

    @property
    def order(self) -> np.ndarray:
        """What the metrics rank by: smaller first, ties where equal."""
        return self.distances if self.rank_distances is None else self.rank_distances


@dataclass(frozen=True)
class QualityPlan:
    k_request: int  # hits asked per query (with ties)
    complete: bool  # the hits are the whole database
    k_eval: int | None  # truncated rankings: the largest k whose metrics are exact


def plan_quality(count: int, max_k: int, exclude_self: bool) -> QualityPlan:
    if count <= max_k:
        return QualityPlan(max(1, count), True, None)
    k_request = max(1, max_k // 2)  # the other half of max_k holds the ties at the k-th distance
    return QualityPlan(k_request, False, max(1, k_request - (1 if exclude_self else 0)))


def ranking_from_response(response: dict, query: LabelRecord, exclude_self: bool) -> Ranking:
    wanted = set(query.labels) & set(CLASSES)
    hits = response["hits"]
    kept = [h for h in hits if not (exclude_self and h["image_id"] == query.image_id)]
    hit_labels = [set(h["labels"]) & set(CLASSES) for h in kept]
    shared = np.array([len(wanted & labels) for labels in hit_labels], dtype=np.int64)
    union = np.array([len(wanted | labels) for labels in hit_labels], dtype=np.float64)
    distances = np.array([h["distance"] for h in kept], dtype=np.int64)
    scores = np.array([np.nan if h.get("score") is None else h["score"] for h in kept], dtype=np.float64)
    reranked = bool(np.isfinite(scores).any())
    return Ranking(distances=distances,
                   relevant=shared > 0, labeled=bool(wanted), self_excluded=len(kept) < len(hits), shared=shared,
                   jaccard=np.divide(shared, union, out=np.zeros(len(kept)), where=union > 0),
                   ties_cut=bool(response.get("truncated", False)),
                   rank_distances=reranked_distances(distances, np.nan_to_num(scores), np.isfinite(scores))
                   if reranked else None)


def _zero_unanswered(values: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(values) & labeled, 0.0, values)


def retrieval_report(rankings: list[Ranking], ks: tuple[int, ...], plan: QualityPlan, n_db: int,
                     normalization: str = "relevant_retrieved") -> dict:
    """Mean tie-aware metrics over the rankings (RetrievalReport.as_dict), with what a truncated ranking cannot give nulled."""
    ks = tuple(sorted(set(ks))) if plan.complete else tuple(sorted({k for k in ks if k <= plan.k_eval} | {plan.k_eval}))
    if not rankings:
        return {"n_queries": 0, "ks": list(ks)}
    metrics = QueryMetrics.concatenate([query_metrics(r.order, r.relevant, ks, normalization) for r in rankings])
    if not plan.complete:
        labeled = np.array([r.labeled for r in rankings])
        metrics = replace(metrics, **{name: {k: _zero_unanswered(v, labeled) for k, v in getattr(metrics, name).items()}
                                      for name in ("ap_at_k", "ap_at_k_stable", "p_at_k", "p_at_k_stable")})
    report = RetrievalReport.from_query_metrics(metrics, n_db, normalization, keep_per_query=False)
    if all(r.shared is not None for r in rankings):
        graded = GradedMetrics.concatenate([graded_metrics(r.order[None], r.shared[None], r.jaccard[None], ks)
                                            for r in rankings])
        if not plan.complete:
            graded = replace(graded, acg_at_k={k: _zero_unanswered(v, labeled) for k, v in graded.acg_at_k.items()})
        report = with_graded(report, graded)
    report = report.as_dict()
    if not plan.complete:
        report.update(map_tie_aware=None, map_stable=None, r_at_k=None, r_at_k_stable=None, ndcg_at_k=None, wmap=None,
                      n_queries_without_relevant=int(sum(not r.labeled for r in rankings)))
    report["ks"] = list(ks)
    return report


def precision_recall_by_radius(rankings: list[Ranking], bits: int, complete: bool) -> dict:
    """Mean precision and recall of "every item within Hamming radius r", r = 0..bits (ties are all in or all out).

    Precision averages over the queries that retrieve something at r, recall over those with a
    relevant item. A truncated ranking gives radii only up to the smallest last distance of any
    query's prefix, and no recall (its denominator lies beyond the prefix). `base_rate` is the chance
    level: the mean share of relevant items in the whole archive (what a random ranking's precision
    is at every depth); known only for complete rankings."""
    if not rankings:
        return {"radius": [], "precision": [], "recall": None, "queries_retrieving": [], "complete": complete,
                "base_rate": None}
    retrieved = np.zeros((len(rankings), bits + 1))
    relevant = np.zeros((len(rankings), bits + 1))
    for i, r in enumerate(rankings):
        retrieved[i] = np.cumsum(np.bincount(r.distances, minlength=bits + 1)[: bits + 1])
        relevant[i] = np.cumsum(np.bincount(r.distances, weights=r.relevant, minlength=bits + 1)[: bits + 1])
    top = bits if complete else int(min((r.distances.max() if r.distances.size else 0) for r in rankings))
    retrieving = retrieved[:, : top + 1] > 0
    precision = np.where(retrieving, relevant[:, : top + 1] / np.maximum(retrieved[:, : top + 1], 1), np.nan)
    curve = {"radius": list(range(top + 1)), "precision": _column_means(precision),
             "recall": None, "queries_retrieving": retrieving.sum(axis=0).tolist(), "complete": complete,
             "base_rate": None}
    if complete:
        curve["base_rate"] = round(float(np.mean(relevant[:, -1] / np.maximum(retrieved[:, -1], 1))), 6)
        total = relevant[:, -1:]
        answerable = np.broadcast_to(total > 0, relevant.shape)
        curve["recall"] = _column_means(np.where(answerable, relevant / np.maximum(total, 1), np.nan))
    return curve


def _column_means(values: np.ndarray) -> list[float | None]:
    counts = (~np.isnan(values)).sum(axis=0)
    sums = np.nansum(values, axis=0)
    return [round(float(s / c), 6) if c else None for s, c in zip(sums, counts)]


@dataclass
class QualityResult:
    report: dict  # retrieval_report + how it was measured
    curve: dict  # precision_recall_by_radius
    codes_hex: list[str] = field(default_factory=list)  # the queries' codes, for search-only latency


async def measure_quality(client, queries: QuerySet, info: dict, *, ks: tuple[int, ...], exclude_self: bool = True,
                          concurrency: int = 4, time_limit_s: float | None = None) -> QualityResult:
    """Upload every query, rank the database through the API, and score the rankings."""
    plan = plan_quality(int(info["count"]), int(info["max_k"]), exclude_self)
    rankings: dict[int, Ranking] = {}
    codes: dict[int, str] = {}

    def keep(i: int, body: dict) -> None:
        rankings[i] = ranking_from_response(body, queries.records[i], exclude_self)
        codes[i] = body["query"]["code_hex"]

    async def search(i: int) -> dict:
        return await client.search_image(queries.images[i], queries.name(i), plan.k_request, True)

    load = await run_load(search, len(queries), concurrency, time_limit_s=time_limit_s, on_response=keep)
    ordered = [rankings[i] for i in sorted(rankings)]
    report = {
        "ranking": "complete" if plan.complete else "truncated",
        "index_count": int(info["count"]),
        "k_requested": plan.k_request,
        "k_eval": plan.k_eval,
        "exclude_self": exclude_self,
        "self_excluded": sum(r.self_excluded for r in ordered),
        "ties_cut": sum(r.ties_cut for r in ordered),
        "relevance": "shares at least one of the 15 classes",
        "rerank": getattr(client, "rerank", None),
        "failed": load.failed,
        "errors": load.errors,
        "elapsed_s": round(load.elapsed_s, 3),
        **retrieval_report(ordered, ks, plan, int(info["count"])),
    }
    if not plan.complete:
        report["note"] = (f"the index holds {info['count']} items but the server returns at most {info['max_k']}: "
                          f"mAP over the whole ranking is not measurable, map_at_k[{plan.k_eval}] stands for it")
    curve = precision_recall_by_radius(ordered, int(info["bits"]), plan.complete)
    return QualityResult(report, curve, [codes[i] for i in sorted(codes)])
