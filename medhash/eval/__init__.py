"""Evaluation: retrieval metrics (tie-aware and stable mAP, mAP@k, P@k, R@k) and localization."""

from medhash.eval.localization import (
    BestIoUResult,
    PointingResult,
    best_iou,
    box_iou,
    pointing_game,
)
from medhash.eval.metrics import (
    FEATURE_DISTANCES,
    NORMALIZATIONS,
    QueryMetrics,
    RetrievalReport,
    average_precision_at_k_tie_aware,
    average_precision_stable,
    average_precision_tie_aware,
    evaluate_codes,
    evaluate_scores,
    feature_distances,
    hamming_distances,
    macro_auroc,
    precision_recall_at_k_tie_aware,
    query_metrics,
    relevance,
)

__all__ = [
    "BestIoUResult",
    "FEATURE_DISTANCES",
    "NORMALIZATIONS",
    "PointingResult",
    "QueryMetrics",
    "RetrievalReport",
    "average_precision_at_k_tie_aware",
    "average_precision_stable",
    "average_precision_tie_aware",
    "best_iou",
    "box_iou",
    "evaluate_codes",
    "evaluate_scores",
    "feature_distances",
    "hamming_distances",
    "macro_auroc",
    "pointing_game",
    "precision_recall_at_k_tie_aware",
    "query_metrics",
    "relevance",
]
