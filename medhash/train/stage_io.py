"""What a training stage reads and how it is scored: batch sources and validations.

`Trainer.run_stage` takes one of each, so the stages differ only in these objects:
- batch sources (`BatchSource`): `ImageBatches` (decoded images, augmented on the device) for the
  backbone and joint stages, `FeatureBatches` (cached pooled features) for the hash stage;
- validations (`Validation`, called once per epoch, in eval mode): `BranchAUROC` for a backbone
  stage, `RetrievalMAP` for the hash stage, `FreshRetrievalMAP` for the joint stage (which moves
  the backbones, so the features are recomputed first); `no_validation` where a process does
  not score (ranks > 0, or no validation set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch

from medhash.eval.metrics import evaluate_codes, macro_auroc
from medhash.model.hashnet import AGHashNet, pack_codes
from medhash.model.runtime import autocast
from medhash.train.augment import augment_batch
from medhash.train.config import AugmentConfig
from medhash.train.data import ImageSet

__all__ = ["BatchSource", "BranchAUROC", "FeatureBatches", "Features", "FreshRetrievalMAP", "ImageBatches",
           "RetrievalMAP", "Validation", "features_to", "no_validation", "pooled_features"]

Features = dict[str, torch.Tensor]  # pooled features per branch ("global", "local"), [N, width] each
Validation = Callable[[], dict[str, float]]


@torch.no_grad()
def pooled_features(model: AGHashNet, data: ImageSet, device: torch.device, amp_dtype: torch.dtype | None,
                    batch_size: int = 64) -> Features:
    """Pooled features of both branches for every image of `data` (eval mode), on the CPU."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"global": [], "local": []}
    for start in range(0, len(data), batch_size):
        x, _ = data.batch(np.arange(start, min(start + batch_size, len(data))))
        with autocast(device, amp_dtype):
            feats = model.pooled_features(x.to(device))
        for k in parts:
            parts[k].append(feats[k].float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def features_to(feats: Features, device: torch.device) -> Features:
    return {k: v.to(device) for k, v in feats.items()}


# -- batch sources ----------------------------------------------------------------------------------

class BatchSource(Protocol):
    """Items a stage trains on: `len` of them, and the (inputs, targets) of a batch of item indices."""

    def __len__(self) -> int: ...

    def __call__(self, idx: np.ndarray, gen: torch.Generator) -> tuple[Any, torch.Tensor]: ...


@dataclass
class ImageBatches:
    """Batches of decoded images on the device, augmented there (the GPU when there is one) if `augment` is set."""

    data: ImageSet
    device: torch.device
    augment: AugmentConfig | None

    def __len__(self) -> int:
        return len(self.data)

    def __call__(self, idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.batch(idx)
        x = x.to(self.device, non_blocking=True)
        if self.augment is not None:
            x = augment_batch(x, self.augment, gen)
        return x, y.to(self.device)


@dataclass
class FeatureBatches:
    """Batches of cached pooled features (the hash stage): no augmentation, `gen` unused."""

    features: Features  # on the device
    targets: torch.Tensor  # on the device

    def __len__(self) -> int:
        return len(self.targets)

    def __call__(self, idx: np.ndarray, gen: torch.Generator) -> tuple[Features, torch.Tensor]:
        t = torch.as_tensor(idx, device=self.targets.device)
        return {k: v[t] for k, v in self.features.items()}, self.targets[t]


# -- validations ------------------------------------------------------------------------------------

def no_validation() -> dict[str, float]:
    return {}


@dataclass
class BranchAUROC:
    """Macro AUROC of one branch's classifier on the validation images."""

    model: AGHashNet
    val_set: ImageSet
    branch: str  # "global" | "local"
    device: torch.device
    amp_dtype: torch.dtype | None

    def __call__(self) -> dict[str, float]:
        feats = pooled_features(self.model, self.val_set, self.device, self.amp_dtype)
        clf = self.model.global_classifier if self.branch == "global" else self.model.local_classifier
        with torch.no_grad():
            scores = clf(feats[self.branch].to(self.device)).float().cpu().numpy()
        return {"val_auroc": macro_auroc(scores, self.val_set.targets.numpy())}


@dataclass
class RetrievalMAP:
    """Tie-aware mAP of validation codes searched among training codes (shared label = relevant)."""

    model: AGHashNet
    train_features: Features  # on the device
    val_features: Features
    train_targets: np.ndarray
    val_targets: np.ndarray

    def __call__(self) -> dict[str, float]:
        with torch.no_grad():
            db = pack_codes(self.model.hash_head(self.train_features)[1])
            q = pack_codes(self.model.hash_head(self.val_features)[1])
        report = evaluate_codes(q, db, self.val_targets > 0.5, self.train_targets > 0.5, ks=(10,))
        return {"val_map": float(report.map_tie_aware)}


@dataclass
class FreshRetrievalMAP:
    """RetrievalMAP on features recomputed at every call: the joint stage moves the backbones."""

    model: AGHashNet
    train_set: ImageSet
    val_set: ImageSet
    device: torch.device
    amp_dtype: torch.dtype | None

    def __call__(self) -> dict[str, float]:
        train_feats, val_feats = (features_to(pooled_features(self.model, data, self.device, self.amp_dtype), self.device)
                                  for data in (self.train_set, self.val_set))
        return RetrievalMAP(self.model, train_feats, val_feats, self.train_set.targets.numpy(), self.val_set.targets.numpy())()
