"""Batch augmentation for radiographs on tensors: one affine warp per image, exposure jitter."""

from __future__ import annotations

import math

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
