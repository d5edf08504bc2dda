"""Crop the attended region out of the input image and resize it for the local branch."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def crop_and_resize(images: torch.Tensor | Sequence[torch.Tensor], boxes: np.ndarray, size: int) -> torch.Tensor:
    """Crop box (x0, y0, x1, y1) of each [1, H, W] image and resize to [1, size, size].

    `images` is a batch tensor [B, 1, H, W] or a list of [1, H_i, W_i] tensors of
    different sizes (full-resolution sources). Antialiased bilinear resizing, so a
    large crop shrinks without aliasing; training and encoding share this path.
    """
    crops = []
    for image, (x0, y0, x1, y1) in zip(images, np.asarray(boxes).tolist()):
        patch = image[None, :, y0:y1, x0:x1].float()
        crops.append(F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(crops, dim=0)
