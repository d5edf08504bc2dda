"""The losses of the hashing model: classification, quantization, bit balance (the paper's three) and
an optional pairwise multi-label similarity term (off by default)."""

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
    # Pairwise Jaccard similarity term (`similarity_loss`); 0 leaves the paper's three losses exactly.
    similarity: float = 0.0


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-label BCE; `pos_weight` [C] up-weights positives of rare classes."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=pos_weight)


def quantization_loss(h: torch.Tensor) -> torch.Tensor:
    """Mean of (|h| - 1)^2: pushes each tanh output towards +-1 so sign(h) loses little."""
    return (h.float().abs() - 1.0).pow(2).mean()


def bit_balance_loss(h: torch.Tensor) -> torch.Tensor:
    """Mean over bits of (batch mean of h)^2: each bit is +1 for about half the images."""
    return h.float().mean(dim=0).pow(2).mean()


def jaccard_similarity(targets: torch.Tensor) -> torch.Tensor:
    """[B, B] Jaccard similarity of the multi-hot label sets of a batch (0 where both are empty)."""
    y = targets.float()
    shared = y @ y.T
    union = y.sum(dim=1, keepdim=True) + y.sum(dim=1) - shared
    return torch.where(union > 0, shared / union.clamp_min(1.0), torch.zeros_like(shared))


def similarity_loss(h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the ordered pairs i != j of a batch of the squared error of s_ij = <h_i, h_j> / bits
    (the normalized inner product of the tanh hash vectors; for codes, Hamming distance = bits (1 - s) / 2)
    against a target set by the Jaccard similarity J_ij of the two label sets:

    * J > 0: s -> J, i.e. Hamming distance -> bits (1 - J) / 2: identical label sets give identical
      codes, and the more labels two images share, the closer their codes;
    * J = 0: s <= 0 (a hinge, no penalty below), i.e. at least bits / 2 apart, as far as random codes.

    Why not s -> 2J - 1: with 15 classes most pairs share no label, and 2J - 1 = -1 asks every such pair
    to be complementary codes, which no more than two codes can be at once; those infeasible targets
    then dominate the gradient. The hinge asks disjoint pairs only for what random codes already give,
    and the targets of sharing pairs (J in (0, 1]) map monotonically into [0, bits / 2) of Hamming
    distance. MSE rather than smooth L1: the errors lie in [-2, 2], where the two differ little, and
    the quadratic keeps the gradient proportional to the error near the target."""
    h = h.float()
    n, bits = h.shape
    if n < 2:
        return h.sum() * 0.0  # no pair: zero, still part of the graph
    inner = h @ h.T / bits
    target = jaccard_similarity(targets)
    error = torch.where(target > 0, inner - target, inner.clamp_min(0.0))
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=h.device)
    return error[off_diagonal].pow(2).mean()


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
    """Weighted sum of the terms, and each term's value for logging. The similarity term is computed
    (and logged) only when its weight is not 0, so that weight 0 is the three-term loss exactly."""
    terms = {
        "classification": classification_loss(hash_logits, targets, pos_weight),
        "quantization": quantization_loss(h),
        "bit_balance": bit_balance_loss(h),
    }
    if weights.similarity:
        terms["similarity"] = similarity_loss(h, targets)
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()}
