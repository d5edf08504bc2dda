"""ModelConfig: everything needed to rebuild a hashing model, stored in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from medhash.data.labels import CLASSES
from medhash.errors import CheckpointError, InvalidParameterError

BRANCHES = ("global", "local")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "densenet121"  # a name in medhash.model.backbone.BACKBONES
    classes: tuple[str, ...] = CLASSES
    bits: int = 64  # hash length K: a multiple of 8 in [8, 256]
    global_size: int = 224  # global-branch input side (pixels)
    local_size: int = 224  # local-branch input side: the crop is resized to this
    fusion_dim: int = 512  # width of the fused FC layer in front of the hash layer
    fusion_inputs: tuple[str, ...] = BRANCHES  # ("global",) / ("local",) are the ablations
    dropout: float = 0.2
    # Saliency -> crop (AG-CNN mask inference)
    tau: float = 0.7  # threshold on the [0, 1] class activation map
    cam_top_k: int = 3  # CAM is the probability-weighted sum over the top-k predicted findings
    min_box_frac: float = 0.25  # minimum crop side as a fraction of the image side
    margin_frac: float = 0.05  # margin added around the component's box, fraction of the side
    # Input normalization of the [0, 1] grayscale image
    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self) -> None:
        if self.bits % 8 or not 8 <= self.bits <= 256:
            raise InvalidParameterError(f"bits must be a multiple of 8 in [8, 256], got {self.bits}")
        if not 0.0 < self.tau < 1.0:
            raise InvalidParameterError(f"tau must lie in (0, 1), got {self.tau}")
        if not self.fusion_inputs or set(self.fusion_inputs) - set(BRANCHES):
            raise InvalidParameterError(f"fusion_inputs must be a non-empty subset of {BRANCHES}, got {self.fusion_inputs}")
        if len(set(self.classes)) != len(self.classes):
            raise InvalidParameterError("class list has duplicates")

    @property
    def code_bytes(self) -> int:
        return self.bits // 8

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["fusion_inputs"] = list(self.fusion_inputs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"model config has unknown fields {sorted(unknown)} (written by a newer medhash?)")
        d = dict(d)
        for key in ("classes", "fusion_inputs"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)
