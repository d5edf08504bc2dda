"""Batch augmentation of radiographs on tensors, where the model runs.

Two recipes, each one affine warp per image (a single grid_sample for the batch) plus exposure
jitter: `augment_batch`, the mild, anatomy-preserving one of supervised training (small rotation,
scale and shift, no flip by default); and `c2l_views`, the strong view augmentation of C2L
pretraining (random resized crop, flip, cutout), whose two views of an image must differ enough
for the contrastive task to teach anything. Random draws come from a CPU torch.Generator, so a
seeded run repeats on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medhash.train.config import AugmentConfig


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """[B, 1, H, W] in [0, 1] -> augmented copy (same size), drawn from `generator`."""
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180.0
    scale = uniform(*cfg.scale)
    tx, ty = uniform(-cfg.shift_frac, cfg.shift_frac) * 2, uniform(-cfg.shift_frac, cfg.shift_frac) * 2
    flip = (torch.rand(b, generator=generator) < 0.5) if cfg.hflip else torch.zeros(b, dtype=torch.bool)
    f = torch.where(flip, -1.0, 1.0)  # mirror the x axis of the sampling grid
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * f, -sin, tx], 1), torch.stack([sin * f, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(1 - cfg.contrast, 1 + cfg.contrast).view(b, 1, 1, 1).to(x.device)
    brightness = uniform(-cfg.brightness, cfg.brightness).view(b, 1, 1, 1).to(x.device)
    return ((out - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


@dataclass(frozen=True)
class PretrainAugment:
    """The C2L view augmentation, drawn per image on batched tensors."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # random resized crop: area fraction of the image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # and aspect ratio
    rotate_deg: float = 10.0
    hflip: bool = True  # C2L flips; the hashing model's supervised training does not
    brightness: float = 0.4  # intensity factor in [1 - b, 1 + b] (torchvision ColorJitter semantics)
    contrast: float = 0.4  # contrast factor around the image mean in [1 - c, 1 + c]
    cutout_holes: int = 3
    cutout_frac: float = 32 / 224  # side of each square hole as a fraction of the view (official: 32 px at 224)


def c2l_views(x: torch.Tensor, cfg: PretrainAugment, size: int, generator: torch.Generator, fill: float) -> torch.Tensor:
    """[B, 1, H, W] in [0, 1] -> one augmented view per image, [B, 1, size, size].

    Crop, rotation and flip are one affine warp per image (one grid_sample for the batch):
    a view pixel (u, v) in [-1, 1]^2 samples the source at c + diag(w, h) R(angle) (f u, v),
    i.e. the crop (centre c, half-sides w, h) is resized, then rotated, then mirrored, in the
    torchvision order. Then brightness/contrast jitter, then cutout holes filled with `fill`
    (the normalization mean: zero after normalization, as in the official code).
    """
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    area = uniform(*cfg.crop_scale)
    ratio = torch.exp(uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])))
    w, h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    cx, cy = uniform(-1, 1) * (1 - w), uniform(-1, 1) * (1 - h)  # the crop stays inside the image
    angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180.0
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(b)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([w * cos * flip, -w * sin, cx], 1),
                         torch.stack([h * sin * flip, h * cos, cy], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness = uniform(1 - cfg.brightness, 1 + cfg.brightness).view(b, 1, 1, 1).to(x.device)
    contrast = uniform(1 - cfg.contrast, 1 + cfg.contrast).view(b, 1, 1, 1).to(x.device)
    out = out * brightness
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean).clamp(0.0, 1.0)
    side = round(cfg.cutout_frac * size)
    if cfg.cutout_holes > 0 and side > 0:
        centres = (torch.rand(b, cfg.cutout_holes, 2, generator=generator) * size).floor().to(x.device)
        pos = torch.arange(size, device=x.device, dtype=centres.dtype)
        # Official Cutout: rows [y - side//2, y + side//2) clipped to the image, likewise columns.
        rows = (pos >= centres[..., 0:1] - side // 2) & (pos < centres[..., 0:1] + side // 2)  # [B, holes, size]
        cols = (pos >= centres[..., 1:2] - side // 2) & (pos < centres[..., 1:2] + side // 2)
        holes = (rows[..., :, None] & cols[..., None, :]).any(dim=1, keepdim=True)  # [B, 1, size, size]
        out = out.masked_fill(holes, fill)
    return out
