"""HashEncoder: the one inference path (`encode`) that the pipeline, the query workflows and the server use.

It wraps a trained AGHashNet with an execution engine picked from the registry
medhash.encoding.ENGINES (torch-free, re-exported here): torch at fp32, or bf16 autocast +
channels_last (the fast path on CPUs with bf16 matrix units and on GPUs), or the model's two halves
exported to OpenVINO (`openvino-fp32`, `openvino-bf16`; medhash.model.openvino_engine), with the
saliency crop between them run by the same torch/numpy code. An OpenVINO engine is exported and
compiled lazily, on the first batch, then kept with the encoder; loaded from a checkpoint, its
export is also cached beside it (medhash.model.export). It satisfies medhash.encoding.ImageEncoder,
the contract its callers type against; EncodeResult lives there (torch-free) and is re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medhash.encoding import ENGINES, EncodeResult  # re-exported: medhash.model.ENGINES / EncodeResult
from medhash.errors import InvalidParameterError
from medhash.model.checkpoint import load_model
from medhash.model.export import export_halves, require_openvino
from medhash.model.hashnet import AGHashNet, ModelOutput, pack_codes
from medhash.model.openvino_engine import OpenVINOForward
from medhash.model.runtime import PRECISIONS, autocast, default_precision

__all__ = ["ENGINES", "EncodeResult", "HashEncoder", "load_encoder"]


class HashEncoder:
    def __init__(self, model: AGHashNet, model_id: str, device: str | torch.device = "cpu",
                 engine: str = "auto", batch_size: int = 32, extra: dict | None = None,
                 export_cache: str | Path | None = None):
        """export_cache: a folder where an OpenVINO engine may keep the model's export (keyed by model_id)."""
        self.device = torch.device(device)
        self.engine = default_precision(self.device) if engine == "auto" else engine
        if self.engine not in ENGINES:
            raise InvalidParameterError(f"unknown engine {self.engine!r}; known: {sorted(ENGINES)} or 'auto'")
        self.spec = ENGINES[self.engine]
        if self.spec.cuda_only and self.device.type != "cuda":
            raise InvalidParameterError(f"engine {self.engine} needs a CUDA device; use bf16 or fp32 on the CPU")
        if self.spec.cpu_only and self.device.type != "cpu":
            raise InvalidParameterError(f"engine {self.engine} runs on the CPU only; use bf16 or fp16 on {self.device.type}")
        if self.spec.runtime == "openvino":
            require_openvino()  # fail at load, with the extra's name, not on the first batch
        self.autocast_dtype = PRECISIONS[self.spec.precision]
        self.model = model.eval().to(self.device)
        self.model.use_channels_last(self.spec.channels_last)
        self.model_id = model_id
        self.batch_size = batch_size
        self.extra = extra or {}
        self.export_cache = export_cache
        self._openvino: OpenVINOForward | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", engine: str = "auto", batch_size: int = 32) -> "HashEncoder":
        model, payload = load_model(path)
        return cls(model, payload["model_id"], device, engine, batch_size, payload.get("extra"),
                   export_cache=Path(f"{path}.openvino"))

    @property
    def config(self):
        return self.model.config

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    @property
    def input_size(self) -> int:
        return self.config.global_size

    @torch.inference_mode()
    def encode(self, images: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
               with_features: bool = False) -> EncodeResult:
        """[0,1] images -> EncodeResult, in batches. Images: a [B,1,H,W], [B,H,W] or one [H,W] tensor or array,
        or a list of [H_i,W_i] / [1,H_i,W_i] tensors or arrays (any sizes)."""
        images = _as_batch(images)
        parts = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            chunk = chunk.to(self.device) if isinstance(chunk, torch.Tensor) else [t.to(self.device) for t in chunk]
            out = self._forward(chunk)
            parts.append(EncodeResult(
                codes=pack_codes(out.hash),
                boxes=out.boxes,
                saliency=out.saliency.float().cpu().numpy(),
                logits=out.hash_logits.float().cpu().numpy(),
                features=out.fused.float().cpu().numpy() if with_features else None,
                hash_values=out.hash.float().cpu().numpy(),
            ))
        if not parts:
            s = self.config.global_size
            return EncodeResult(np.zeros((0, self.bits // 8), np.uint8), np.zeros((0, 4), np.int32),
                                np.zeros((0, s, s), np.float32), np.zeros((0, len(self.classes)), np.float32),
                                np.zeros((0, self.config.fusion_dim), np.float32) if with_features else None,
                                np.zeros((0, self.bits), np.float32))
        return EncodeResult.concat(parts)

    def _forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> ModelOutput:
        if self.spec.runtime == "openvino":
            if self._openvino is None:
                halves = export_halves(self.model, self.export_cache, self.model_id)
                self._openvino = OpenVINOForward(self.model, halves, self.spec.precision)
            return self._openvino(images)
        with autocast(self.device, self.autocast_dtype):
            return self.model(images, stage="full")

    def encode_images(self, images: Sequence[np.ndarray], with_features: bool = False) -> EncodeResult:
        """Decoded [H, W] float32 arrays in [0, 1] (any sizes) -> EncodeResult (boxes in each source's pixels)."""
        tensors = [torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None] for img in images]
        same = len({t.shape for t in tensors}) == 1
        batch: torch.Tensor | list[torch.Tensor] = torch.stack(tensors) if tensors and same else tensors
        return self.encode(batch, with_features)


def _as_tensor(image) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if isinstance(image, torch.Tensor):
        return image
    raise InvalidParameterError(f"an image must be a tensor or a numpy array, got {type(image).__name__}")


def _as_batch(images) -> torch.Tensor | list[torch.Tensor]:
    """What `encode` takes, as the model takes it: a [B,1,H,W] tensor or a list of [1,H,W] tensors."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        batch = _as_tensor(images)
        if batch.dim() == 2:
            batch = batch[None, None]  # one [H, W] image
        elif batch.dim() == 3:
            batch = batch[:, None]  # [B, H, W]
        if batch.dim() != 4 or batch.shape[1] != 1:
            raise InvalidParameterError(f"images of shape {tuple(images.shape)}: expected [H, W], [B, H, W] or [B, 1, H, W]")
        return batch
    items = [_as_tensor(image) for image in images]
    items = [t[None] if t.dim() == 2 else t for t in items]
    bad = next((t for t in items if t.dim() != 3 or t.shape[0] != 1), None)
    if bad is not None:
        raise InvalidParameterError(f"an image of shape {tuple(bad.shape)} in the list: expected [H, W] or [1, H, W]")
    return items


def load_encoder(path: str | Path, device: str = "cpu", engine: str = "auto", batch_size: int = 32) -> HashEncoder:
    return HashEncoder.from_checkpoint(path, device, engine, batch_size)
