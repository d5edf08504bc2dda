"""What an image encoder gives and what workflows need of one: `EncodeResult`, the `ImageEncoder`
protocol and the engines an encoder can run on (`ENGINES`).

Torch-free on purpose: the server, the query and evaluation workflows and tests with stand-in
encoders type against this contract, not against `medhash.model.HashEncoder`, so that only the
code that loads a checkpoint needs the model layer (and torch). HashEncoder satisfies the protocol.
The engine registry is plain data for the same reason: the CLI offers its names as choices
without importing torch, and medhash.model.encoder turns a name into a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol, Sequence

import numpy as np

__all__ = ["ENGINES", "EncodeResult", "EngineSpec", "ImageEncoder"]


@dataclass(frozen=True)
class EngineSpec:
    """How an engine runs the model: which runtime, at what precision, in which memory layout."""

    runtime: str  # "torch", or "openvino" (the model exported to OpenVINO; the optional extra)
    precision: str  # "fp32", "bf16" or "fp16" (a key of medhash.model.runtime.PRECISIONS)
    channels_last: bool = False  # torch only: weights and activations in channels_last
    cuda_only: bool = False
    cpu_only: bool = False


# engine name -> how it runs; `auto` (not listed) picks the fastest torch precision the device has.
ENGINES: dict[str, EngineSpec] = {
    "fp32": EngineSpec("torch", "fp32"),
    "fp32-cl": EngineSpec("torch", "fp32", channels_last=True),
    "bf16": EngineSpec("torch", "bf16", channels_last=True),
    "fp16": EngineSpec("torch", "fp16", channels_last=True, cuda_only=True),
    "openvino-fp32": EngineSpec("openvino", "fp32", cpu_only=True),
    "openvino-bf16": EngineSpec("openvino", "bf16", cpu_only=True),
}


@dataclass
class EncodeResult:
    codes: np.ndarray  # uint8 [B, bits/8], packed sign of the hash layer
    boxes: np.ndarray  # int32 [B, 4] (x0, y0, x1, y1) in each source image's pixels
    saliency: np.ndarray  # float32 [B, S, S] in [0, 1], S = global_size
    logits: np.ndarray  # float32 [B, C] classifier on the hash layer
    features: np.ndarray | None = None  # float32 [B, fusion_dim] continuous fused features
    # float32 [B, bits]: the hash layer's tanh outputs, whose signs are the codes. HashEncoder always
    # fills it (both engines have it for free); re-ranking a Hamming shortlist compares them by cosine.
    hash_values: np.ndarray | None = None

    @staticmethod
    def concat(parts: Sequence["EncodeResult"]) -> "EncodeResult":
        def cat(name: str):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        return EncodeResult(**{f.name: cat(f.name) for f in fields(EncodeResult)})


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
