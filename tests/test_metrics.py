"""Retrieval and localization metrics, checked against brute force (every order inside tie groups)
and against straightforward per-query reference implementations."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from medhash.eval import (
    NORMALIZATIONS,
    average_precision_at_k_tie_aware,
    average_precision_stable,
    average_precision_tie_aware,
    best_iou,
    box_iou,
    evaluate_codes,
    evaluate_scores,
    feature_distances,
    hamming_distances,
    pointing_game,
    precision_recall_at_k_tie_aware,
    query_metrics,
    relevance,
)

# --------------------------------------------------------------------------- references


def tie_orders(distances: np.ndarray):
    """Every ranking that sorts by distance, over all orders inside each tie group."""
    groups = [np.flatnonzero(distances == value) for value in np.unique(distances)]
    for group_orders in itertools.product(*(itertools.permutations(group) for group in groups)):
        yield np.concatenate(group_orders)


def ranked_metrics(ranked_relevant: np.ndarray, k: int | None = None, normalization="relevant_retrieved"):
    """(AP or AP@k, relevant items in the top k) of one fixed ranking, straight from the definition."""
    n_relevant = ranked_relevant.sum()
    top = ranked_relevant if k is None else ranked_relevant[:k]
    precision = np.cumsum(top) / np.arange(1, top.size + 1)
    precision_sum = (precision * top).sum()
    if k is None:
        return precision_sum / n_relevant, top.sum()
    normalizer = top.sum() if normalization == "relevant_retrieved" else min(n_relevant, k)
    return (precision_sum / normalizer if normalizer else 0.0), top.sum()


def brute_force(distances, relevant, k=None, normalization="relevant_retrieved"):
    """Mean over all tie orders of (AP or AP@k, relevant in top k)."""
    values = [ranked_metrics(relevant[order], k, normalization) for order in tie_orders(distances)]
    return np.mean([v[0] for v in values]), np.mean([v[1] for v in values])


def stable_reference(distances, relevant, k=None, normalization="relevant_retrieved"):
    return ranked_metrics(relevant[np.argsort(distances, kind="stable")], k, normalization)


def heavy_tie_case(rng, n_max=8, n_values=3):
    n = int(rng.integers(1, n_max + 1))
    distances = rng.integers(0, n_values, size=n)
    relevant = rng.random(n) < 0.5
    relevant[rng.integers(n)] = True
    return distances, relevant


def nih_like_labels(rng, n, n_classes=15):
    labels = rng.random((n, n_classes)) < 0.12
    labels[~labels.any(1), -1] = True  # "No Finding"
    return labels


# --------------------------------------------------------------------------- single-query closed forms


@pytest.mark.parametrize("seed", range(6))
def test_tie_aware_ap_is_the_mean_over_all_tie_orders(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        distances, relevant = heavy_tie_case(rng)
        expected, _ = brute_force(distances, relevant)
        assert average_precision_tie_aware(distances, relevant) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("seed", range(4))
def test_tie_aware_ap_at_k_is_the_mean_over_all_tie_orders(seed, normalization):
    rng = np.random.default_rng(100 + seed)
    for _ in range(15):
        distances, relevant = heavy_tie_case(rng)
        for k in range(1, distances.size + 2):  # includes k > N and k straddling tie groups
            expected, _ = brute_force(distances, relevant, k, normalization)
            got = average_precision_at_k_tie_aware(distances, relevant, k, normalization)
            assert got == pytest.approx(expected, abs=1e-12), (distances, relevant, k)


@pytest.mark.parametrize("seed", range(4))
def test_tie_aware_precision_and_recall_at_k_are_expectations_over_tie_orders(seed):
    rng = np.random.default_rng(200 + seed)
    for _ in range(15):
        distances, relevant = heavy_tie_case(rng)
        for k in range(1, distances.size + 2):
            _, expected_hits = brute_force(distances, relevant, k)
            precision, recall = precision_recall_at_k_tie_aware(distances, relevant, k)
            assert precision == pytest.approx(expected_hits / min(k, distances.size), abs=1e-12)
            assert recall == pytest.approx(expected_hits / relevant.sum(), abs=1e-12)


def test_without_ties_tie_aware_equals_plain_ap():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        distances = rng.permutation(n).astype(np.float64)
        relevant = rng.random(n) < 0.4
        relevant[0] = True
        plain, _ = ranked_metrics(relevant[np.argsort(distances)])
        assert average_precision_tie_aware(distances, relevant) == pytest.approx(plain, abs=1e-12)
        assert average_precision_stable(distances, relevant) == pytest.approx(plain, abs=1e-12)
        for k in (1, 5, n):
            plain_k, _ = ranked_metrics(relevant[np.argsort(distances)], k)
            assert average_precision_at_k_tie_aware(distances, relevant, k) == pytest.approx(plain_k, abs=1e-12)


def test_stable_metrics_match_argsort_stable():
    rng = np.random.default_rng(4)
    for _ in range(30):
        n = int(rng.integers(1, 60))
        distances = rng.integers(0, 5, size=n)
        relevant = rng.random(n) < 0.3
        relevant[rng.integers(n)] = True
        assert average_precision_stable(distances, relevant) == pytest.approx(
            stable_reference(distances, relevant)[0], abs=1e-12
        )
        for normalization in NORMALIZATIONS:
            metrics = query_metrics(distances, relevant, ks=(1, 7, n + 3), normalization=normalization)
            for k in (1, 7, n + 3):
                ap_k, hits = stable_reference(distances, relevant, k, normalization)
                assert metrics.ap_at_k_stable[k][0] == pytest.approx(ap_k, abs=1e-12)
                assert metrics.p_at_k_stable[k][0] == pytest.approx(hits / min(k, n))
                assert metrics.r_at_k_stable[k][0] == pytest.approx(hits / relevant.sum())


def test_stable_order_breaks_ties_by_index_and_can_differ_from_tie_aware():
    distances = np.array([0, 0, 0, 0])
    relevant = np.array([False, False, False, True])
    assert average_precision_stable(distances, relevant) == pytest.approx(1 / 4)
    # uniform position of the single relevant item: E[1/p] = (1 + 1/2 + 1/3 + 1/4) / 4
    assert average_precision_tie_aware(distances, relevant) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_all_tied_ap_and_k_beyond_database():
    distances = np.zeros(6)
    relevant = np.array([True, False, True, False, False, True])
    expected, _ = brute_force(distances, relevant)
    assert average_precision_tie_aware(distances, relevant) == pytest.approx(expected, abs=1e-12)
    # every order retrieves the whole database when k > N: AP@k (relevant retrieved) is AP
    assert average_precision_at_k_tie_aware(distances, relevant, 50) == pytest.approx(expected, abs=1e-12)
    precision, recall = precision_recall_at_k_tie_aware(distances, relevant, 50)
    assert precision == pytest.approx(3 / 6) and recall == pytest.approx(1.0)
    # k = 2 inside the single group: expected relevant in the top 2 is 2 * 3/6
    assert precision_recall_at_k_tie_aware(distances, relevant, 2)[0] == pytest.approx(0.5)


def test_query_without_relevant_items_is_nan():
    distances = np.array([1, 2, 2, 3])
    relevant = np.zeros(4, dtype=bool)
    assert math.isnan(average_precision_tie_aware(distances, relevant))
    assert math.isnan(average_precision_stable(distances, relevant))
    assert all(math.isnan(v) for v in precision_recall_at_k_tie_aware(distances, relevant, 2))


# --------------------------------------------------------------------------- distances, relevance


@pytest.mark.parametrize("bits", [8, 16, 24, 64, 128, 256])
def test_hamming_distances_match_bitwise_count(bits):
    rng = np.random.default_rng(bits)
    query = rng.integers(0, 256, size=(7, bits // 8), dtype=np.uint8)
    db = rng.integers(0, 256, size=(31, bits // 8), dtype=np.uint8)
    db[0] = query[0]  # distance 0
    db[1] = ~query[0]  # distance = bits
    naive = (np.unpackbits(query, axis=1)[:, None, :] != np.unpackbits(db, axis=1)[None, :, :]).sum(-1)
    got = hamming_distances(query, db)
    assert got.dtype == np.uint16 and got.shape == (7, 31)
    np.testing.assert_array_equal(got, naive)
    assert got[0, 0] == 0 and got[0, 1] == bits


def test_hamming_distances_reject_mismatched_or_unpacked_codes():
    with pytest.raises(ValueError, match="code lengths differ"):
        hamming_distances(np.zeros((2, 8), np.uint8), np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="packed uint8"):
        hamming_distances(np.zeros((2, 64), np.float32), np.zeros((2, 64), np.float32))


def test_relevance_is_sharing_a_label():
    rng = np.random.default_rng(5)
    query_labels = rng.random((9, 70)) < 0.05  # 70 classes: several label words
    db_labels = rng.random((13, 70)) < 0.05
    expected = np.array([[bool((q & d).any()) for d in db_labels] for q in query_labels])
    np.testing.assert_array_equal(relevance(query_labels, db_labels), expected)
    with pytest.raises(ValueError, match="bool or 0/1"):
        relevance(np.full((2, 3), 0.5), np.ones((2, 3), bool))


# --------------------------------------------------------------------------- vectorized evaluation


def per_query_reference(distances, rel, ks, normalization, drop=None):
    """Metrics per query through the single-query functions; drop[i]: a database index to remove."""
    rows = []
    for i in range(distances.shape[0]):
        d, r = distances[i], rel[i]
        if drop is not None and drop[i] >= 0:
            d, r = np.delete(d, drop[i]), np.delete(r, drop[i])
        rows.append(query_metrics(d, r, ks, normalization))
    return rows


def assert_report_matches(report, rows, ks):
    per_query = report.per_query
    for i, row in enumerate(rows):
        np.testing.assert_allclose(per_query.ap_tie_aware[i], row.ap_tie_aware[0], atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(per_query.ap_stable[i], row.ap_stable[0], atol=1e-12, equal_nan=True)
        for k in ks:
            for name in ("ap_at_k", "ap_at_k_stable", "p_at_k", "p_at_k_stable", "r_at_k", "r_at_k_stable"):
                np.testing.assert_allclose(
                    getattr(per_query, name)[k][i], getattr(row, name)[k][0], atol=1e-12, equal_nan=True, err_msg=name
                )
    answerable = np.array([row.n_relevant[0] > 0 for row in rows])
    expected_map = np.mean([row.ap_tie_aware[0] for row, ok in zip(rows, answerable) if ok])
    assert report.map_tie_aware == pytest.approx(expected_map, abs=1e-12)
    assert report.n_queries_without_relevant == int((~answerable).sum())


@pytest.mark.parametrize("bits", [16, 24, 128, 256])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_evaluate_codes_matches_per_query_functions(bits, normalization):
    rng = np.random.default_rng(bits)
    n_queries, n_db = 23, 300
    query_codes = rng.integers(0, 256, size=(n_queries, bits // 8), dtype=np.uint8)
    db_codes = rng.integers(0, 256, size=(n_db, bits // 8), dtype=np.uint8)
    if bits == 16:  # few distinct distances: big tie groups, k=10 and 100 straddle them
        query_codes &= 0b00010001
        db_codes &= 0b00010001
    query_labels = nih_like_labels(rng, n_queries)
    query_labels[3] = False  # a query with no relevant item
    db_labels = nih_like_labels(rng, n_db)
    ks = (1, 10, 100, 1000)
    report = evaluate_codes(
        query_codes, db_codes, query_labels, db_labels, ks=ks, chunk=5, normalization=normalization, per_query=True
    )
    rows = per_query_reference(
        hamming_distances(query_codes, db_codes), relevance(query_labels, db_labels), ks, normalization
    )
    assert_report_matches(report, rows, ks)
    assert report.n_queries_without_relevant >= 1 and report.n_db == n_db


def test_evaluate_codes_excludes_self_and_given_indices():
    rng = np.random.default_rng(8)
    codes = rng.integers(0, 256, size=(40, 2), dtype=np.uint8) & 0b00110000
    labels = nih_like_labels(rng, 40)
    distances, rel = hamming_distances(codes, codes), relevance(labels, labels)
    ks = (5, 39, 40)
    report = evaluate_codes(codes, codes, labels, labels, ks=ks, exclude_self=True, chunk=7, per_query=True)
    assert_report_matches(report, per_query_reference(distances, rel, ks, "relevant_retrieved", np.arange(40)), ks)

    drop = np.where(np.arange(12) % 3 == 0, -1, np.arange(12) + 10)
    report = evaluate_codes(codes[:12], codes, labels[:12], labels, ks=ks, query_db_index=drop, per_query=True)
    assert_report_matches(report, per_query_reference(distances[:12], rel[:12], ks, "relevant_retrieved", drop), ks)
    with pytest.raises(ValueError, match="exclude_self"):
        evaluate_codes(codes[:12], codes, labels[:12], labels, exclude_self=True)


def test_evaluate_codes_threads_and_chunks_do_not_change_results():
    rng = np.random.default_rng(9)
    query_codes = rng.integers(0, 256, size=(50, 4), dtype=np.uint8)
    db_codes = rng.integers(0, 256, size=(200, 4), dtype=np.uint8)
    query_labels, db_labels = nih_like_labels(rng, 50), nih_like_labels(rng, 200)
    one = evaluate_codes(query_codes, db_codes, query_labels, db_labels, chunk=50, workers=1)
    many = evaluate_codes(query_codes, db_codes, query_labels, db_labels, chunk=3, workers=2)
    assert one.as_dict() == many.as_dict()


def test_evaluate_scores_matches_per_query_functions_with_exact_ties():
    rng = np.random.default_rng(10)
    distances = np.round(rng.random((15, 120)), 1)  # 11 distinct values: heavy exact ties
    query_labels, db_labels = nih_like_labels(rng, 15), nih_like_labels(rng, 120)
    ks = (3, 50)
    report = evaluate_scores(distances, query_labels, db_labels, ks=ks, chunk=4, per_query=True)
    assert_report_matches(report, per_query_reference(distances, relevance(query_labels, db_labels), ks, "relevant_retrieved"), ks)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores(np.full((15, 120), np.nan), query_labels, db_labels)


def test_evaluate_scores_on_hamming_distances_equals_evaluate_codes():
    rng = np.random.default_rng(11)
    query_codes = rng.integers(0, 256, size=(20, 2), dtype=np.uint8)
    db_codes = rng.integers(0, 256, size=(90, 2), dtype=np.uint8)
    query_labels, db_labels = nih_like_labels(rng, 20), nih_like_labels(rng, 90)
    from_codes = evaluate_codes(query_codes, db_codes, query_labels, db_labels)
    from_scores = evaluate_scores(hamming_distances(query_codes, db_codes), query_labels, db_labels)
    for key, value in from_codes.as_dict().items():
        if isinstance(value, dict):
            for k in value:
                assert from_scores.as_dict()[key][k] == pytest.approx(value[k], abs=1e-12)
        else:
            assert from_scores.as_dict()[key] == pytest.approx(value, abs=1e-12)


def test_report_without_any_relevant_query_and_json():
    codes = np.zeros((3, 1), dtype=np.uint8)
    query_labels = np.array([[1, 0], [1, 0], [1, 0]], dtype=bool)
    db_labels = np.array([[0, 1], [0, 1], [0, 1]], dtype=bool)
    report = evaluate_codes(codes, codes, query_labels, db_labels, ks=(2,))
    assert report.n_queries_without_relevant == 3
    assert math.isnan(report.map_tie_aware)
    as_json = json.loads(json.dumps(report.as_dict(), allow_nan=False))
    assert as_json["map_tie_aware"] is None and as_json["p_at_k"] == {"2": None}


def test_evaluate_codes_rejects_bad_inputs():
    codes = np.zeros((3, 2), dtype=np.uint8)
    labels = np.ones((3, 4), dtype=bool)
    with pytest.raises(ValueError, match="label rows"):
        evaluate_codes(codes, codes, labels[:2], labels)
    with pytest.raises(ValueError, match="k must be >= 1"):
        evaluate_codes(codes, codes, labels, labels, ks=(0,))
    with pytest.raises(ValueError, match="normalization"):
        evaluate_codes(codes, codes, labels, labels, normalization="per_query")


# --------------------------------------------------------------------------- feature distances


def test_feature_distances_cosine_and_euclidean():
    rng = np.random.default_rng(12)
    query, db = rng.normal(size=(4, 6)), rng.normal(size=(5, 6))
    euclidean = np.linalg.norm(query[:, None] - db[None], axis=-1)
    np.testing.assert_allclose(feature_distances(query, db, "euclidean"), euclidean, atol=1e-9)
    cosine = 1 - (query @ db.T) / np.outer(np.linalg.norm(query, axis=1), np.linalg.norm(db, axis=1))
    np.testing.assert_allclose(feature_distances(query, db, "cosine"), cosine, atol=1e-12)
    with pytest.raises(ValueError, match="unknown metric"):
        feature_distances(query, db, "manhattan")


# --------------------------------------------------------------------------- localization


def test_box_iou_hand_made():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # x1 exclusive: touching boxes share nothing
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    matrix = box_iou([(0, 0, 4, 4), (2, 2, 6, 6)], [(0, 0, 4, 4), (0, 0, 2, 2), (100, 100, 101, 101)])
    np.testing.assert_allclose(matrix, [[1, 4 / 16, 0], [4 / 28, 0, 0]])
    with pytest.raises(ValueError, match="x1 < x0"):
        box_iou((5, 0, 1, 1), (0, 0, 1, 1))


def test_best_iou_is_the_mean_of_per_image_max():
    pred = np.array([(0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 4, 4)])
    gt = [[(5, 0, 15, 10), (0, 0, 10, 10)], [(0, 0, 5, 10)], []]
    result = best_iou(pred, gt)
    assert result.n_evaluated == 2
    assert result.mean == pytest.approx((1.0 + 0.5) / 2) == float(result)
    assert math.isnan(result.per_image[2])


def test_pointing_game_scales_the_peak_into_box_coordinates():
    maps = np.zeros((4, 8, 8), dtype=np.float32)
    maps[0, 1, 6] = 1.0  # cell centre (6.5, 1.5) -> image (832, 192) at 1024x1024
    maps[1, 1, 6] = 1.0
    maps[2, 7, 0] = 1.0  # -> (64, 960)
    boxes = [
        [(800, 100, 900, 300)],  # hit
        [(0, 0, 100, 100), (832, 192, 900, 300)],  # second box, peak exactly on its corner: hit
        [(0, 0, 64, 960)],  # x1/y1 exclusive: peak centre on the edge is outside
        [(0, 0, 1024, 1024)],  # constant map: points nowhere
    ]
    result = pointing_game(maps, boxes, image_size=(1024, 1024))
    np.testing.assert_array_equal(result.per_image_hit, [True, True, False, False])
    assert (result.hits, result.total, result.fraction) == (2, 4, 0.5)
    # 15 px of slack catches the edge case of image 2
    assert pointing_game(maps, boxes, image_size=(1024, 1024), tolerance=15).per_image_hit[2]


def test_pointing_game_per_image_sizes_and_images_without_boxes():
    maps = np.zeros((2, 4, 4))
    maps[:, 0, 3] = 1.0  # cell centre (3.5, 0.5)
    # image 0 is 400x200 (H, W): peak -> (175, 50); image 1 has no boxes
    result = pointing_game(maps, [[(150, 0, 200, 100)], []], image_size=[(400, 200), (10, 10)])
    assert (result.hits, result.total, result.skipped_without_boxes) == (1, 1, 1)
    assert json.dumps(result.as_dict())
    with pytest.raises(ValueError, match="saliency maps but boxes"):
        pointing_game(maps, [[]])
