"""One nn.Module per training stage, each returning its loss: what DDP wraps and what a step calls.

AG-CNN order: the global branch learns first; the local branch then learns on
crops that the (frozen) global branch attends to; the fusion + hash head learns
on frozen features of both; an optional joint stage fine-tunes everything.
"""

from __future__ import annotations

import torch
from torch import nn

from medhash.model.crop import crop_and_resize
from medhash.model.hashnet import AGHashNet, resize_square
from medhash.model.losses import LossWeights, classification_loss, hashing_loss


class GlobalStage(nn.Module):
    name = "global"

    def __init__(self, model: AGHashNet, pos_weight: torch.Tensor | None):
        super().__init__()
        self.model = model
        self.pos_weight = pos_weight

    def trainable(self) -> list[nn.Module]:
        return [self.model.global_backbone, self.model.global_classifier]

    def frozen_eval(self) -> list[nn.Module]:
        return []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        _, _, logits = self.model.global_branch(resize_square(x, self.model.config.global_size))
        loss = classification_loss(logits, y, self.pos_weight)
        return loss, {"bce": float(loss.detach())}


class LocalStage(GlobalStage):
    name = "local"

    def trainable(self) -> list[nn.Module]:
        return [self.model.local_backbone, self.model.local_classifier]

    def frozen_eval(self) -> list[nn.Module]:
        return [self.model.global_backbone]  # frozen: BN running stats must not drift

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        m = self.model
        with torch.no_grad():
            feats, _, logits_g = m.global_branch(resize_square(x, m.config.global_size))
        _, boxes = m.saliency_and_boxes(feats, logits_g, [tuple(x.shape[-2:])] * x.shape[0])
        _, logits = m.local_branch(crop_and_resize(x, boxes, m.config.local_size))
        loss = classification_loss(logits, y, self.pos_weight)
        return loss, {"bce": float(loss.detach())}


class HashStage(nn.Module):
    """Trains fusion FC + hash layer + classifier on cached pooled features (the backbones are frozen)."""

    name = "hash"

    def __init__(self, model: AGHashNet, pos_weight: torch.Tensor | None, weights: LossWeights):
        super().__init__()
        self.model = model
        self.pos_weight = pos_weight
        self.weights = weights

    def trainable(self) -> list[nn.Module]:
        return [self.model.fusion, self.model.hash_layer, self.model.hash_classifier]

    def frozen_eval(self) -> list[nn.Module]:
        return [self.model.global_backbone, self.model.local_backbone]

    def forward(self, feats: dict[str, torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        _, h, logits = self.model.hash_head(feats)
        return hashing_loss(logits, h, y, self.weights, self.pos_weight)


class JointStage(HashStage):
    """End-to-end fine-tune: hashing losses plus both branches' classification losses."""

    name = "joint"

    def trainable(self) -> list[nn.Module]:
        return [self.model]

    def frozen_eval(self) -> list[nn.Module]:
        return []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model(x, stage="full")
        loss, terms = hashing_loss(out.hash_logits, out.hash, y, self.weights, self.pos_weight)
        branch = classification_loss(out.global_logits, y, self.pos_weight) + classification_loss(out.local_logits, y, self.pos_weight)
        terms["branch_bce"] = float(branch.detach())
        return loss + 0.5 * branch, terms
