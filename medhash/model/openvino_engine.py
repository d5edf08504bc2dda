"""The `openvino-*` engines' forward: compiled global backbone -> CAM, saliency box and crop (torch/numpy)
-> compiled local half.

It returns the same ModelOutput as AGHashNet.forward(stage="full"), so HashEncoder treats both
runtimes alike. Resizing to the global input, pooling, the global classifier, the CAM, the box
search and the crop from the source image run through the very functions the torch engines use (at fp32); only the two dense halves (medhash.model.export)
run in OpenVINO, compiled for the CPU at fp32 or bf16 with as many threads as torch is given
(torch.get_num_threads at compile time), so the pipeline's and the server's thread policies hold.
A compiled model keeps one inference request; a lock serialises callers that share the encoder.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np
import torch

from medhash.model.crop import crop_and_resize
from medhash.model.export import ExportedHalves
from medhash.model.hashnet import AGHashNet, ModelOutput, resize_square

__all__ = ["OpenVINOForward"]

_INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16"}


class OpenVINOForward:
    def __init__(self, model: AGHashNet, halves: ExportedHalves, precision: str, threads: int | None = None):
        import openvino as ov

        if precision not in _INFERENCE_PRECISION:
            raise ValueError(f"OpenVINO precision must be one of {sorted(_INFERENCE_PRECISION)}, got {precision!r}")
        self.model = model
        self.local_inputs = halves.local_inputs
        config = {"INFERENCE_PRECISION_HINT": _INFERENCE_PRECISION[precision],
                  "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
                  "PERFORMANCE_HINT": "LATENCY"}  # one stream: a batch is one request using every thread
        core = ov.Core()
        self._global = core.compile_model(halves.global_half, "CPU", config)
        self._local = core.compile_model(halves.local_half, "CPU", config)
        self._lock = threading.Lock()

    def __call__(self, images: torch.Tensor | Sequence[torch.Tensor]) -> ModelOutput:
        cfg = self.model.config
        sizes = [tuple(img.shape[-2:]) for img in images]
        global_in = resize_square(images, cfg.global_size)
        with self._lock:
            (feats,) = _run(self._global, [global_in.numpy()])
            feats = torch.from_numpy(feats)
            pooled_g, logits_g = self.model.global_head(feats)
            maps = self.model.saliency_maps(feats, logits_g)
            boxes = self.model.source_boxes(maps.numpy(), sizes)
            given = {"pooled_global": pooled_g.numpy()}
            if "crops" in self.local_inputs:
                given["crops"] = crop_and_resize(images, boxes, cfg.local_size).numpy()
            fused, h, logits = _run(self._local, [given[name] for name in self.local_inputs])
        as_tensor = torch.from_numpy
        return ModelOutput(global_logits=logits_g, saliency=maps, boxes=boxes,
                           fused=as_tensor(fused), hash=as_tensor(h), hash_logits=as_tensor(logits))


def _run(compiled: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of one inference, in the model's output order, as float32 arrays the caller owns."""
    results = compiled([np.ascontiguousarray(x, dtype=np.float32) for x in inputs])
    return [np.array(results[port], dtype=np.float32, copy=True) for port in compiled.outputs]
