"""Saliency (class activation maps) and AG-CNN mask inference: map -> threshold -> largest component -> box.

The CAM needs no backward pass: it is the classifier's weights applied to the
last feature maps, so it costs one small einsum at inference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def class_activation_maps(
    feature_maps: torch.Tensor,
    classifier: torch.nn.Linear,
    probs: torch.Tensor,
    top_k: int = 3,
    exclude_class: int | None = None,
) -> torch.Tensor:
    """[B, C, h, w] features -> [B, h, w] CAM: probability-weighted sum over the top-k predicted classes.

    `exclude_class` (the "No Finding" column) never drives the map: it has no lesion to point at.
    """
    cams = torch.einsum("bchw,kc->bkhw", feature_maps.float(), classifier.weight.float())
    scores = probs.detach().float().clone()
    if exclude_class is not None:
        scores[:, exclude_class] = -1.0
    k = max(1, min(top_k, scores.shape[1] - int(exclude_class is not None)))
    top_p, top_i = scores.topk(k, dim=1)
    weights = top_p.clamp_min(0.0)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)
    picked = cams.gather(1, top_i[:, :, None, None].expand(-1, -1, *cams.shape[2:]))
    return torch.relu((picked * weights[:, :, None, None]).sum(dim=1))


def normalize_maps(cam: torch.Tensor, size: int) -> torch.Tensor:
    """Upsample [B, h, w] maps to [B, size, size] and min-max normalize each to [0, 1] (flat map -> 0)."""
    up = F.interpolate(cam[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    flat = up.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    span = hi - lo
    return torch.where(span > 1e-8, (up - lo) / span.clamp_min(1e-8), torch.zeros_like(up))


def box_from_map(saliency: np.ndarray, tau: float, min_box_frac: float, margin_frac: float) -> tuple[int, int, int, int]:
    """One [H, W] map in [0, 1] -> (x0, y0, x1, y1), x1/y1 exclusive.

    Mask = map >= tau; the largest connected component's bounding box, grown by a
    margin and to a minimum side, clamped inside the image. No mask -> whole image.
    """
    h, w = saliency.shape
    mask = saliency >= tau
    if not mask.any():
        return 0, 0, w, h
    labelled, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labelled.ravel())[1:]
        mask = labelled == (int(np.argmax(sizes)) + 1)
    ys, xs = np.nonzero(mask)
    x0, x1 = int(xs.min()), int(xs.max()) + 1
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    mx, my = int(round(margin_frac * w)), int(round(margin_frac * h))
    x0, y0, x1, y1 = x0 - mx, y0 - my, x1 + mx, y1 + my
    x0, x1 = _grow_to(x0, x1, int(round(min_box_frac * w)), w)
    y0, y1 = _grow_to(y0, y1, int(round(min_box_frac * h)), h)
    return x0, y0, x1, y1


def _grow_to(lo: int, hi: int, min_len: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) around its centre to at least min_len, then shift/clamp into [0, limit)."""
    length = max(hi - lo, min(max(min_len, 1), limit))
    centre = (lo + hi) / 2.0
    lo = int(round(centre - length / 2.0))
    lo = min(max(lo, 0), limit - min(length, limit))
    return lo, min(lo + length, limit)


def boxes_from_maps(maps: np.ndarray, tau: float, min_box_frac: float, margin_frac: float) -> np.ndarray:
    """[B, H, W] maps -> int32 [B, 4] boxes in map pixels."""
    return np.array([box_from_map(m, tau, min_box_frac, margin_frac) for m in maps], dtype=np.int32).reshape(-1, 4)


def scale_boxes(boxes: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Map boxes from a (H, W) grid to another (H, W) grid, rounding outward and clamping."""
    fh, fw = from_size
    th, tw = to_size
    sx, sy = tw / fw, th / fh
    out = np.empty_like(boxes)
    out[..., 0] = np.floor(boxes[..., 0] * sx)
    out[..., 1] = np.floor(boxes[..., 1] * sy)
    out[..., 2] = np.minimum(np.ceil(boxes[..., 2] * sx), tw)
    out[..., 3] = np.minimum(np.ceil(boxes[..., 3] * sy), th)
    out[..., 2] = np.maximum(out[..., 2], out[..., 0] + 1)
    out[..., 3] = np.maximum(out[..., 3], out[..., 1] + 1)
    return out
