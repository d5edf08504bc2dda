"""AGHashNet: global branch -> saliency crop -> local branch -> fusion -> K-bit hash layer -> classifier.

Images enter as [0, 1] grayscale, either a batch tensor [B, 1, H, W] or a list of
[1, H_i, W_i] tensors of any sizes. The global branch sees each image resized to
`global_size`; its class activation map gives a box, which is cropped from the
*source* image (full resolution) and resized to `local_size` for the local branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medhash.data.labels import NO_FINDING
from medhash.model.backbone import build_backbone
from medhash.model.config import ModelConfig
from medhash.model.crop import crop_and_resize
from medhash.model.saliency import boxes_from_maps, class_activation_maps, normalize_maps, scale_boxes


@dataclass
class ModelOutput:
    global_logits: torch.Tensor  # [B, C]
    saliency: torch.Tensor  # [B, S, S] in [0, 1], S = global_size
    boxes: np.ndarray  # int32 [B, 4] in source-image pixels
    local_logits: torch.Tensor | None = None
    fused: torch.Tensor | None = None  # [B, fusion_dim], input of the hash layer
    hash: torch.Tensor | None = None  # [B, bits], tanh outputs in (-1, 1)
    hash_logits: torch.Tensor | None = None  # [B, C], classifier on the hash layer


def resize_square(images: torch.Tensor | Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """[B,1,H,W] or list of [1,H_i,W_i] -> [B, 1, size, size] (antialiased bilinear)."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        if images.shape[-2:] == (size, size):
            return images.float()
        return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return torch.cat([resize_square(img[None], size) for img in images], dim=0)


def pack_codes(hash_values: torch.Tensor) -> np.ndarray:
    """Sign of the hash layer -> packed uint8 codes [B, bits/8] (bit = 1 where h > 0; big-endian in each byte)."""
    bits = (hash_values.detach() > 0).cpu().numpy()
    return np.packbits(bits, axis=-1)


class AGHashNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        n_classes = len(config.classes)
        self.global_backbone = build_backbone(config.backbone)
        width = self.global_backbone.out_channels
        self.global_classifier = nn.Linear(width, n_classes)
        self.local_backbone = build_backbone(config.backbone)
        self.local_classifier = nn.Linear(width, n_classes)
        # BatchNorm in the fused FC layer: pooled post-ReLU features share a large positive
        # offset, and without normalization the hash bits start (and tend to stay) constant.
        self.fusion = nn.Sequential(
            nn.Linear(width * len(config.fusion_inputs), config.fusion_dim),
            nn.BatchNorm1d(config.fusion_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
        )
        self.hash_layer = nn.Linear(config.fusion_dim, config.bits)
        self.hash_classifier = nn.Linear(config.bits, n_classes)
        self._no_finding = config.classes.index(NO_FINDING) if NO_FINDING in config.classes else None
        self.channels_last = False

    # -- pieces -----------------------------------------------------------------------------------
    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.config.mean) / self.config.std

    def use_channels_last(self, enabled: bool = True) -> "AGHashNet":
        """Switch weights and inputs to channels_last (pays with bf16/AMX on CPU and on CUDA)."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def _to_layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def global_branch(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B,1,S,S] in [0,1] -> (feature maps, pooled features, logits)."""
        feats = self.global_backbone(self._to_layout(self._normalize(x01)))
        return (feats, *self.global_head(feats))

    def global_head(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global feature maps -> (pooled features, logits)."""
        pooled = feats.float().mean(dim=(2, 3))
        return pooled, self.global_classifier(pooled)

    def local_branch(self, crops01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B,1,L,L] crops in [0,1] -> (pooled features, logits)."""
        feats = self.local_backbone(self._to_layout(self._normalize(crops01)))
        pooled = feats.float().mean(dim=(2, 3))
        return pooled, self.local_classifier(pooled)

    def saliency_and_boxes(
        self, feats: torch.Tensor, logits: torch.Tensor, source_sizes: Sequence[tuple[int, int]]
    ) -> tuple[torch.Tensor, np.ndarray]:
        with torch.no_grad():
            maps = self.saliency_maps(feats, logits)
        return maps, self.source_boxes(maps.cpu().numpy(), source_sizes)

    def saliency_maps(self, feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Global feature maps and logits -> [B, S, S] class activation maps in [0, 1]."""
        cfg = self.config
        cam = class_activation_maps(feats, self.global_classifier, torch.sigmoid(logits.float()), cfg.cam_top_k, self._no_finding)
        return normalize_maps(cam, cfg.global_size)

    def source_boxes(self, maps: np.ndarray, source_sizes: Sequence[tuple[int, int]]) -> np.ndarray:
        """[B, S, S] saliency maps -> int32 [B, 4] crop boxes in each source image's pixels."""
        cfg = self.config
        boxes = boxes_from_maps(maps, cfg.tau, cfg.min_box_frac, cfg.margin_frac)
        grid = (cfg.global_size, cfg.global_size)
        source_boxes = np.stack([scale_boxes(b, grid, hw) for b, hw in zip(boxes, source_sizes)]) if len(boxes) else boxes
        return source_boxes.astype(np.int32)

    def hash_head(self, pooled: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pooled branch features -> (fused, tanh hash values, class logits on the hash layer)."""
        fused = self.fusion(torch.cat([pooled[name] for name in self.config.fusion_inputs], dim=1))
        h = torch.tanh(self.hash_layer(fused))
        return fused, h, self.hash_classifier(h)

    # -- whole model -------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor | Sequence[torch.Tensor], stage: str = "full") -> ModelOutput:
        """Run the branches a stage needs: "global", "local" (global + local) or "full" (+ hash head)."""
        cfg = self.config
        sizes = [tuple(img.shape[-2:]) for img in images]
        global_in = resize_square(images, cfg.global_size)
        if stage == "local":  # the global branch is frozen while the local branch trains
            with torch.no_grad():
                feats, pooled_g, logits_g = self.global_branch(global_in)
        else:
            feats, pooled_g, logits_g = self.global_branch(global_in)
        maps, boxes = self.saliency_and_boxes(feats, logits_g, sizes)
        out = ModelOutput(global_logits=logits_g, saliency=maps, boxes=boxes)
        if stage == "global":
            return out
        pooled = {"global": pooled_g}
        needs_local = stage == "local" or "local" in cfg.fusion_inputs
        if needs_local:
            crops = crop_and_resize(images, boxes, cfg.local_size)
            pooled["local"], out.local_logits = self.local_branch(crops)
        if stage == "full":
            out.fused, out.hash, out.hash_logits = self.hash_head(pooled)
        return out

    def pooled_features(self, images: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pooled features of both branches (for training the hash head on frozen backbones)."""
        cfg = self.config
        sizes = [tuple(img.shape[-2:]) for img in images]
        feats, pooled_g, logits_g = self.global_branch(resize_square(images, cfg.global_size))
        _, boxes = self.saliency_and_boxes(feats, logits_g, sizes)
        pooled_l, _ = self.local_branch(crop_and_resize(images, boxes, cfg.local_size))
        return {"global": pooled_g, "local": pooled_l}
