"""What an image encoder gives and what workflows need of one: `EncodeResult` and the `ImageEncoder` protocol.

Torch-free on purpose: the server, the query and evaluation workflows and tests with stand-in
encoders type against this contract, not against `medhash.model.HashEncoder`, so that only the
code that loads a checkpoint needs the model layer (and torch). HashEncoder satisfies the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

__all__ = ["EncodeResult", "ImageEncoder"]


@dataclass
class EncodeResult:
    codes: np.ndarray  # uint8 [B, bits/8], packed sign of the hash layer
    boxes: np.ndarray  # int32 [B, 4] (x0, y0, x1, y1) in each source image's pixels
    saliency: np.ndarray  # float32 [B, S, S] in [0, 1], S = global_size
    logits: np.ndarray  # float32 [B, C] classifier on the hash layer
    features: np.ndarray | None = None  # float32 [B, fusion_dim] continuous fused features

    @staticmethod
    def concat(parts: Sequence["EncodeResult"]) -> "EncodeResult":
        def cat(name: str):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        return EncodeResult(**{name: cat(name) for name in ("codes", "boxes", "saliency", "logits", "features")})


class ImageEncoder(Protocol):
    """A loaded hashing model as the workflows and the server use it.

    model_id and bits name the Hamming space its codes live in (an index refuses another model's codes);
    classes order the logits; engine and device are reported by the server.
    """

    @property
    def model_id(self) -> str: ...

    @property
    def bits(self) -> int: ...

    @property
    def classes(self) -> tuple[str, ...]: ...

    @property
    def input_size(self) -> int: ...

    @property
    def engine(self) -> str: ...

    @property
    def device(self) -> Any: ...

    def encode_images(self, images: Sequence[np.ndarray], with_features: bool = False) -> EncodeResult:
        """Decoded [H, W] float32 arrays in [0, 1] (any sizes) -> EncodeResult (boxes in each source's pixels)."""
        ...
