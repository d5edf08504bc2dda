"""The three losses of the hashing model: classification, quantization, bit balance."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    classification: float = 1.0
    quantization: float = 0.1
    # 0.1 let bits collapse to constants on phantoms and NIH features (most bits 0 or 1 for
    # every image); 1.0 kept every bit's mean within about 0.2-0.8 at no loss of mAP.
    bit_balance: float = 1.0


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-label BCE; `pos_weight` [C] up-weights positives of rare classes."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=pos_weight)


def quantization_loss(h: torch.Tensor) -> torch.Tensor:
    """Mean of (|h| - 1)^2: pushes each tanh output towards +-1 so sign(h) loses little."""
    return (h.float().abs() - 1.0).pow(2).mean()


def bit_balance_loss(h: torch.Tensor) -> torch.Tensor:
    """Mean over bits of (batch mean of h)^2: each bit is +1 for about half the images."""
    return h.float().mean(dim=0).pow(2).mean()


def pos_weight_from_labels(targets: torch.Tensor, clip: float = 20.0) -> torch.Tensor:
    """neg/pos ratio per class (clipped), the usual BCE weighting for class imbalance."""
    pos = targets.float().sum(dim=0)
    neg = targets.shape[0] - pos
    return (neg / pos.clamp_min(1.0)).clamp(1.0, clip)


def hashing_loss(
    hash_logits: torch.Tensor,
    h: torch.Tensor,
    targets: torch.Tensor,
    weights: LossWeights = LossWeights(),
    pos_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the three terms, and each term's value for logging."""
    terms = {
        "classification": classification_loss(hash_logits, targets, pos_weight),
        "quantization": quantization_loss(h),
        "bit_balance": bit_balance_loss(h),
    }
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()}
