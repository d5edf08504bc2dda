"""Overlay pictures of radiographs: the image, its saliency heat map blended in, the crop box drawn; PNG writing.

Drawing needs only numpy and PIL, so it sits with the other image helpers of the data layer: the
query workflow writes these PNGs, the server renders thumbnails with them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medhash.atomic import atomic_path

__all__ = ["BOX_COLOR", "render_overlay", "safe_name", "save_png"]

BOX_COLOR = (0, 255, 0)  # pure green: not produced by the grey image or the red heat map
HEAT_ALPHA = 0.45


def render_overlay(image: np.ndarray, box=None, saliency: np.ndarray | None = None) -> Image.Image:
    """image float [H, W] in [0, 1]; box (x0, y0, x1, y1) exclusive, in the image's pixels;
    saliency float [s, s] in [0, 1], stretched over the whole image."""
    grey = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    if saliency is not None:
        h, w = grey.shape
        heat = np.asarray(Image.fromarray(np.clip(saliency, 0, 1).astype(np.float32), mode="F")
                          .resize((w, h), Image.BILINEAR), dtype=np.float32)
        alpha = HEAT_ALPHA * heat[:, :, None]
        red = np.zeros_like(rgb)
        red[:, :, 0] = 255.0
        rgb = (1 - alpha) * rgb + alpha * red
    out = Image.fromarray(rgb.round().astype(np.uint8), mode="RGB")
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        width = max(1, min(out.size) // 150)
        ImageDraw.Draw(out).rectangle([x0, y0, x1 - 1, y1 - 1], outline=BOX_COLOR, width=width)
    return out


def safe_name(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:limit] or "item"


def save_png(img: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
