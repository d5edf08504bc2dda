"""Localization metrics: pointing game on saliency maps, box IoU, mean best IoU.

Boxes are (x0, y0, x1, y1) in pixel coordinates of the source image, x1/y1 exclusive, so a box
covers the pixels x0 <= x < x1, y0 <= y < y1 and has area (x1 - x0) * (y1 - y0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Box = Sequence[float]
ImageSize = tuple[int, int]


def _as_boxes(boxes, name: str) -> np.ndarray:
    """float64 [M, 4]; one box (4 numbers) becomes [1, 4]. Rejects boxes with x1 < x0 or y1 < y0."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must be (x0, y0, x1, y1) boxes [M, 4], got shape {array.shape}")
    inverted = (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1])
    if inverted.any():
        raise ValueError(f"{name} has boxes with x1 < x0 or y1 < y0: {array[inverted][:3].tolist()}")
    return array


def box_iou(a, b) -> np.ndarray | float:
    """Intersection over union. a: one box or [M, 4], b: one box or [K, 4] -> [M, K]
    (a float when both are single boxes). Two empty boxes have IoU 0."""
    single = np.ndim(a) == 1 and np.ndim(b) == 1
    boxes_a, boxes_b = _as_boxes(a, "a"), _as_boxes(b, "b")
    x0 = np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    y0 = np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    x1 = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2])
    y1 = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3])
    intersection = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    union = area_a[:, None] + area_b[None, :] - intersection
    iou = np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)
    return float(iou[0, 0]) if single else iou


@dataclass(frozen=True)
class PointingResult:
    """Pointing game: `hits` of `total` images with boxes had the saliency peak in a box.
    Images without any ground-truth box are not counted (`skipped_without_boxes`)."""

    hits: int
    total: int
    fraction: float
    skipped_without_boxes: int = 0
    per_image_hit: np.ndarray | None = None  # bool [B]; False for skipped images

    def as_dict(self) -> dict:
        return {
            "hits": self.hits,
            "total": self.total,
            "fraction": None if math.isnan(self.fraction) else self.fraction,
            "skipped_without_boxes": self.skipped_without_boxes,
        }


def _image_sizes(image_size, n_images: int, map_shape: ImageSize) -> np.ndarray:
    """[B, 2] (H, W) box-coordinate frame per image: None = the map's own grid, one (H, W) for
    all, or one (H, W) per image."""
    if image_size is None:
        return np.tile(np.asarray(map_shape, dtype=np.float64), (n_images, 1))
    sizes = np.asarray(image_size, dtype=np.float64)
    if sizes.shape == (2,):
        sizes = np.tile(sizes, (n_images, 1))
    if sizes.shape != (n_images, 2) or (sizes <= 0).any():
        raise ValueError(f"image_size must be (H, W) or [B={n_images}, 2] positive sizes, got {np.shape(image_size)}")
    return sizes


def _point_near_any_box(x: float, y: float, boxes: np.ndarray, tolerance: float) -> bool:
    if tolerance == 0:  # half-open boxes: x1 and y1 are outside
        return bool(((boxes[:, 0] <= x) & (x < boxes[:, 2]) & (boxes[:, 1] <= y) & (y < boxes[:, 3])).any())
    # slack is the Euclidean distance to the box, not a widened square
    dx = np.maximum(np.maximum(boxes[:, 0] - x, x - boxes[:, 2]), 0)
    dy = np.maximum(np.maximum(boxes[:, 1] - y, y - boxes[:, 3]), 0)
    return bool((np.hypot(dx, dy) <= tolerance).any())


def pointing_game(
    saliency_maps: np.ndarray,
    boxes_per_image: Sequence[Sequence[Box]],
    image_size: ImageSize | Sequence[ImageSize] | None = None,
    tolerance: float = 0.0,
) -> PointingResult:
    """Fraction of images whose saliency peak falls inside ANY of their ground-truth boxes.

    saliency_maps [B, h, w]; boxes_per_image[b]: boxes of image b in its pixel coordinates, whose
    frame is `image_size` (H, W) (one for all images or one per image; None: the map's grid).
    The peak cell (first maximum, row-major) maps to its centre in image coordinates,
    ((col + 0.5) * W / w, (row + 0.5) * H / h). tolerance: pixels of slack around each box (the
    original pointing game used 15). A constant map points nowhere and counts as a miss."""
    maps = np.asarray(saliency_maps)
    if maps.ndim != 3 or maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"saliency_maps must be non-empty [B, H, W], got shape {maps.shape}")
    if len(boxes_per_image) != maps.shape[0]:
        raise ValueError(f"{maps.shape[0]} saliency maps but boxes for {len(boxes_per_image)} images")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    n_images, map_h, map_w = maps.shape
    sizes = _image_sizes(image_size, n_images, (map_h, map_w))
    flat = maps.reshape(n_images, -1)
    peak_row, peak_col = np.divmod(np.argmax(flat, axis=1), map_w)
    hit = np.zeros(n_images, dtype=bool)
    skipped = 0
    for i, boxes in enumerate(boxes_per_image):
        gt = _as_boxes(boxes, f"boxes_per_image[{i}]")
        if gt.shape[0] == 0:
            skipped += 1
            continue
        if flat[i].max() == flat[i].min():
            continue
        y = (peak_row[i] + 0.5) * sizes[i, 0] / map_h
        x = (peak_col[i] + 0.5) * sizes[i, 1] / map_w
        hit[i] = _point_near_any_box(x, y, gt, tolerance)
    total = n_images - skipped
    hits = int(hit.sum())
    return PointingResult(hits, total, hits / total if total else float("nan"), skipped, hit)


@dataclass(frozen=True)
class BestIoUResult:
    """mean: mean over images with ground truth of the best IoU between the predicted box and any
    ground-truth box; per_image: that IoU, NaN for images without ground truth."""

    mean: float
    per_image: np.ndarray
    n_evaluated: int

    def __float__(self) -> float:  # callers that only want the figure: float(best_iou(...))
        return self.mean

    def as_dict(self) -> dict:
        return {"mean_best_iou": None if math.isnan(self.mean) else self.mean, "n_evaluated": self.n_evaluated}


def best_iou(pred_boxes, gt_boxes_per_image: Sequence[Sequence[Box]]) -> BestIoUResult:
    """pred_boxes [B, 4] (one predicted box per image, e.g. EncodeResult.boxes) against each
    image's ground-truth boxes, same pixel frame."""
    pred = _as_boxes(pred_boxes, "pred_boxes")
    if pred.shape[0] != len(gt_boxes_per_image):
        raise ValueError(f"{pred.shape[0]} predicted boxes but ground truth for {len(gt_boxes_per_image)} images")
    per_image = np.full(pred.shape[0], np.nan)
    for i, gt in enumerate(gt_boxes_per_image):
        gt_boxes = _as_boxes(gt, f"gt_boxes_per_image[{i}]")
        if gt_boxes.shape[0]:
            per_image[i] = box_iou(pred[i : i + 1], gt_boxes).max()
    evaluated = ~np.isnan(per_image)
    mean = float(per_image[evaluated].mean()) if evaluated.any() else float("nan")
    return BestIoUResult(mean, per_image, int(evaluated.sum()))
