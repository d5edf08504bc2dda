"""Graded retrieval metrics (nDCG@k with Jaccard gain, ACG@k, weighted mAP): the tie-aware closed
forms against brute force over every order inside tie groups, and their place in the reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_metrics import tie_orders

from medhash.eval.metrics import (
    average_precision_tie_aware,
    evaluate_codes,
    evaluate_scores,
    graded_metrics,
    hamming_distances,
    label_overlap,
)


def ranked_graded(shared: np.ndarray, jaccard: np.ndarray, k: int) -> tuple[float, float, float]:
    """(nDCG@k, ACG@k, WAP) of one fixed ranking, straight from the definitions."""
    n = shared.size
    discount = 1.0 / np.log2(np.arange(2, n + 2))
    top = min(k, n)
    ideal = np.sort(jaccard)[::-1][:top] @ discount[:top]
    ndcg = (jaccard[:top] @ discount[:top]) / ideal
    acg = shared[:top].sum() / top
    relevant = shared > 0
    acg_at_rank = np.cumsum(shared) / np.arange(1, n + 1)
    wap = (acg_at_rank * relevant).sum() / relevant.sum()
    return ndcg, acg, wap


def brute_force(distances, shared, jaccard, k):
    values = np.array([ranked_graded(shared[order], jaccard[order], k) for order in tie_orders(distances)])
    return values.mean(axis=0)


def random_case(rng: np.random.Generator, n_db: int, n_classes: int = 4, levels: int = 3):
    """One query against n_db items: few distance levels (many ties), multi-label sets."""
    query = rng.random(n_classes) < 0.5
    query[rng.integers(n_classes)] = True  # at least one label, so that a relevant item can exist
    db = rng.random((n_db, n_classes)) < 0.4
    db[rng.integers(n_db)] = query  # at least one relevant item
    distances = rng.integers(0, levels, n_db)
    shared, jaccard = label_overlap(query[None], db)
    return distances, shared[0], jaccard[0], query, db


class TestGradedMetrics:
    @pytest.mark.parametrize("seed", range(12))
    def test_tie_aware_values_are_the_mean_over_all_tie_orders(self, seed):
        rng = np.random.default_rng(seed)
        distances, shared, jaccard, _, _ = random_case(rng, n_db=int(rng.integers(4, 8)))
        ks = (1, 2, 3, 5, 20)  # cut-offs inside, straddling and beyond the tie groups
        metrics = graded_metrics(distances[None], shared[None], jaccard[None], ks)
        for k in ks:
            ndcg, acg, wap = brute_force(distances, shared, jaccard, k)
            assert metrics.ndcg_at_k[k][0] == pytest.approx(ndcg, abs=1e-12)
            assert metrics.acg_at_k[k][0] == pytest.approx(acg, abs=1e-12)
            assert metrics.wap[0] == pytest.approx(wap, abs=1e-12)

    def test_without_ties_the_values_are_those_of_the_ranking(self):
        rng = np.random.default_rng(5)
        distances, shared, jaccard, _, _ = random_case(rng, n_db=30, levels=10)
        distances = rng.permutation(30).astype(np.float64)  # all distinct
        order = np.argsort(distances)
        metrics = graded_metrics(distances[None], shared[None], jaccard[None], (10,))
        ndcg, acg, wap = ranked_graded(shared[order], jaccard[order], 10)
        assert (metrics.ndcg_at_k[10][0], metrics.acg_at_k[10][0], metrics.wap[0]) == pytest.approx((ndcg, acg, wap), abs=1e-12)

    def test_with_single_labels_wap_is_ap(self):
        """One label per item: every relevant item shares exactly one label, so ACG@r is precision@r."""
        rng = np.random.default_rng(2)
        labels = np.eye(3, dtype=bool)[rng.integers(0, 3, 41)]
        distances = rng.integers(0, 4, 40)
        shared, jaccard = label_overlap(labels[:1], labels[1:])
        wap = graded_metrics(distances[None], shared, jaccard, ()).wap[0]
        assert wap == pytest.approx(average_precision_tie_aware(distances, shared[0] > 0), abs=1e-12)

    def test_rows_are_independent_and_query_without_relevant_is_nan(self):
        rng = np.random.default_rng(3)
        cases = [random_case(rng, n_db=6) for _ in range(3)]
        distances = np.stack([c[0] for c in cases])
        shared = np.stack([c[1] for c in cases])
        jaccard = np.stack([c[2] for c in cases])
        shared[1], jaccard[1] = 0, 0.0  # nothing shares a label with query 1
        together = graded_metrics(distances, shared, jaccard, (3,))
        assert np.isnan(together.wap[1]) and np.isnan(together.ndcg_at_k[3][1]) and np.isnan(together.acg_at_k[3][1])
        for row in (0, 2):
            alone = graded_metrics(distances[row:row + 1], shared[row:row + 1], jaccard[row:row + 1], (3,))
            assert together.wap[row] == alone.wap[0] and together.ndcg_at_k[3][row] == alone.ndcg_at_k[3][0]

    def test_jaccard_and_shared_counts(self):
        query = np.array([[1, 1, 0, 0]], dtype=bool)
        db = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=bool)
        shared, jaccard = label_overlap(query, db)
        assert shared.tolist() == [[2, 1, 0, 0]]
        assert jaccard[0] == pytest.approx([1.0, 1 / 3, 0.0, 0.0])

    @pytest.mark.parametrize("bits", [8, 24])
    def test_reports_of_codes_and_scores_hold_the_means(self, bits):
        rng = np.random.default_rng(bits)
        codes = rng.integers(0, 256, (60, bits // 8), dtype=np.uint8)
        labels = rng.random((60, 5)) < 0.3
        q, db = slice(0, 15), slice(15, 60)
        ks = (5, 100)
        report = evaluate_codes(codes[q], codes[db], labels[q], labels[db], ks=ks, workers=2)
        distances = hamming_distances(codes[q], codes[db])
        shared, jaccard = label_overlap(labels[q], labels[db])
        expected = graded_metrics(distances, shared, jaccard, ks)
        assert report.wmap == pytest.approx(np.nanmean(expected.wap), abs=1e-12)
        for k in ks:
            assert report.ndcg_at_k[k] == pytest.approx(np.nanmean(expected.ndcg_at_k[k]), abs=1e-12)
            assert report.acg_at_k[k] == pytest.approx(np.nanmean(expected.acg_at_k[k]), abs=1e-12)
        from_scores = evaluate_scores(distances.astype(np.float64), labels[q], labels[db], ks=ks)
        assert from_scores.wmap == pytest.approx(report.wmap, abs=1e-12)
        assert from_scores.ndcg_at_k == pytest.approx(report.ndcg_at_k, abs=1e-12)
        as_json = json.loads(json.dumps(report.as_dict()))
        assert set(as_json["ndcg_at_k"]) == {"5", "100"} and as_json["wmap"] == pytest.approx(report.wmap)

    def test_excluded_self_is_left_out(self):
        rng = np.random.default_rng(9)
        codes = rng.integers(0, 256, (25, 2), dtype=np.uint8)
        labels = rng.random((25, 4)) < 0.4
        report = evaluate_codes(codes, codes, labels, labels, ks=(5,), exclude_self=True)
        distances = hamming_distances(codes, codes)
        shared, jaccard = label_overlap(labels, labels)
        expected = graded_metrics(distances, shared, jaccard, (5,), valid=~np.eye(25, dtype=bool))
        assert report.wmap == pytest.approx(np.nanmean(expected.wap), abs=1e-12)
        assert report.acg_at_k[5] == pytest.approx(np.nanmean(expected.acg_at_k[5]), abs=1e-12)
        rows = [graded_metrics(np.delete(distances[i], i)[None], np.delete(shared[i], i)[None],
                               np.delete(jaccard[i], i)[None], (5,)) for i in range(25)]
        assert report.ndcg_at_k[5] == pytest.approx(np.nanmean([m.ndcg_at_k[5][0] for m in rows]), abs=1e-12)

    def test_no_relevant_query_anywhere_gives_nan_and_json_null(self):
        codes = np.zeros((3, 1), dtype=np.uint8)
        labels = np.array([[1, 0], [0, 1], [0, 1]], dtype=bool)
        report = evaluate_codes(codes[:1], codes[1:], labels[:1], labels[1:], ks=(2,))
        assert math.isnan(report.wmap) and math.isnan(report.ndcg_at_k[2])
        assert report.as_dict()["wmap"] is None and report.as_dict()["acg_at_k"] == {"2": None}


# max_k 24: the bench asks for half of it (the rest is room for ties), so k_eval = 11 covers k = 10
@pytest.mark.parametrize("max_k", [None, 24])
def test_bench_report_graded_figures_equal_evaluate_codes(max_k):
    """medhash bench scores the hits of the search API: complete rankings give evaluate_codes' graded
    means; a truncated one keeps ACG@k (exact up to k_eval) and nulls nDCG and wmap."""
    from medhash.bench.quality import plan_quality, ranking_from_response, retrieval_report
    from medhash.data.labels import CLASSES, LabelRecord

    rng = np.random.default_rng(4)
    n = 30
    codes = rng.integers(0, 256, (n, 1), dtype=np.uint8)
    labels = rng.random((n, len(CLASSES))) < 0.15
    names = [[c for c, on in zip(CLASSES, row) if on] for row in labels]
    records = [LabelRecord(f"img{i}", None, f"p{i}", tuple(names[i]), 0) for i in range(n)]
    distances = hamming_distances(codes, codes)
    plan = plan_quality(n, max_k or n, exclude_self=True)
    rankings = []
    for i in range(n):
        order = np.argsort(distances[i], kind="stable")
        order = order[distances[i, order] <= distances[i, order[plan.k_request - 1]]]  # with_ties: whole last group
        hits = [{"image_id": f"img{j}", "distance": int(distances[i, j]), "labels": names[j]} for j in order]
        rankings.append(ranking_from_response({"hits": hits}, records[i], exclude_self=True))
    ks = (5, 10)
    report = retrieval_report(rankings, ks, plan, n)
    expected = evaluate_codes(codes, codes, labels, labels, ks=ks, exclude_self=True)
    for k in ks:
        assert report["acg_at_k"][str(k)] == pytest.approx(expected.acg_at_k[k], abs=1e-9)
    if max_k is None:
        assert report["wmap"] == pytest.approx(expected.wmap, abs=1e-9)
        for k in ks:
            assert report["ndcg_at_k"][str(k)] == pytest.approx(expected.ndcg_at_k[k], abs=1e-9)
    else:
        assert report["wmap"] is None and report["ndcg_at_k"] is None
