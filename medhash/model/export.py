"""Export AGHashNet's two network halves to OpenVINO models, for the `openvino-*` engines.

The encoder's forward has a data-dependent step in its middle: the saliency box is found on the
global branch's class activation map (threshold, largest connected component) and the crop is cut
from the full-resolution source image. That step stays in numpy/torch, the same code the torch
engines run (AGHashNet.source_boxes, crop_and_resize); only the two dense halves are exported:

- global half: [B, 1, S, S] image in [0, 1] (already resized to global_size) -> global feature maps
  [B, W, h, w] (input normalisation and backbone). The pooling, the classifier and the class
  activation map stay in torch at fp32 (AGHashNet.global_head, saliency_maps): they cost little, and
  exported at bf16 the CAM's min-max scaling runs in bf16 too, whose 8-bit mantissa flattens the map
  and moves the box (tens of pixels on a test model);
- local half: crops [B, 1, L, L] in [0, 1] and/or the pooled global features, as config.fusion_inputs
  asks -> fused features, tanh hash values, hash logits (local backbone, fusion, hash layer, classifier).

Batch is dynamic. Conversion traces the modules, which takes seconds for DenseNet-121, so the
converted pair can be cached on disk beside the checkpoint (`<checkpoint>.openvino/<model_id>-ov<version>/`),
written into a temp folder that is renamed into place: a reader sees a complete pair or none, and
a folder that cannot be written (a read-only checkpoint) only means converting again in the next
process. Compilation (precision, threads) is not cached here: it depends on the machine.

openvino is an optional extra (`pip install 'medhash[openvino]'`), imported inside the functions
only; where it is missing, `require_openvino` raises an EngineUnavailableError that names the extra.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medhash.errors import EngineUnavailableError
from medhash.model.hashnet import AGHashNet

__all__ = ["ExportedHalves", "export_halves", "local_half_inputs", "require_openvino"]

log = logging.getLogger(__name__)

_EXPORT_BATCH = 2  # the trace's example batch; the exported input shapes leave the batch dynamic


def require_openvino() -> Any:
    """The openvino module, or an EngineUnavailableError naming the extra that provides it."""
    try:
        import openvino
    except ImportError:
        raise EngineUnavailableError(
            "the openvino engines need the optional extra: pip install 'medhash[openvino]'") from None
    return openvino


def local_half_inputs(model: AGHashNet) -> tuple[str, ...]:
    """Names of the local half's inputs, in order: "crops" if the local branch is fused, "pooled_global" if the global one is."""
    fused = model.config.fusion_inputs
    return tuple(name for name, branch in (("crops", "local"), ("pooled_global", "global")) if branch in fused)


class _GlobalHalf(nn.Module):
    def __init__(self, model: AGHashNet):
        super().__init__()
        self.model = model

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.model.global_branch(x01)[0]


class _LocalHalf(nn.Module):
    def __init__(self, model: AGHashNet):
        super().__init__()
        self.model = model
        self.inputs = local_half_inputs(model)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        given = dict(zip(self.inputs, tensors))
        pooled = {}
        if "pooled_global" in given:
            pooled["global"] = given["pooled_global"]
        if "crops" in given:
            pooled["local"], _ = self.model.local_branch(given["crops"])
        return self.model.hash_head(pooled)


@dataclass
class ExportedHalves:
    """The two halves as (uncompiled) openvino.Model objects; local_inputs names the local half's inputs."""

    global_half: Any
    local_half: Any
    local_inputs: tuple[str, ...]


def export_halves(model: AGHashNet, cache_dir: str | Path | None = None, model_id: str = "") -> ExportedHalves:
    """Convert the model's halves to OpenVINO, or read them from `cache_dir` where an earlier process left them."""
    ov = require_openvino()
    inputs = local_half_inputs(model)
    folder = Path(cache_dir) / f"{model_id}-ov{ov.__version__.split('-')[0]}" if cache_dir and model_id else None
    if folder is not None and (folder / "local.xml").is_file():
        core = ov.Core()
        return ExportedHalves(core.read_model(folder / "global.xml"), core.read_model(folder / "local.xml"), inputs)
    halves = ExportedHalves(*_convert(ov, model), inputs)
    if folder is not None:
        _save(ov, halves, folder)
    return halves


def _convert(ov: Any, model: AGHashNet) -> tuple[Any, Any]:
    cfg = model.config
    model = model.eval()
    width = model.global_backbone.out_channels
    examples = {"crops": torch.rand(_EXPORT_BATCH, 1, cfg.local_size, cfg.local_size),
                "pooled_global": torch.rand(_EXPORT_BATCH, width)}
    shapes = {"crops": [-1, 1, cfg.local_size, cfg.local_size], "pooled_global": [-1, width]}
    inputs = local_half_inputs(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on python-int shape arithmetic: the shapes are fixed per model
        global_half = ov.convert_model(_GlobalHalf(model), example_input=(torch.rand(_EXPORT_BATCH, 1, cfg.global_size, cfg.global_size),),
                                       input=[ov.PartialShape([-1, 1, cfg.global_size, cfg.global_size])])
        local_half = ov.convert_model(_LocalHalf(model), example_input=tuple(examples[n] for n in inputs),
                                      input=[ov.PartialShape(shapes[n]) for n in inputs])
    return global_half, local_half


def _save(ov: Any, halves: ExportedHalves, folder: Path) -> None:
    """Write the pair into a temp folder beside `folder`, then rename it into place (never a half-written pair)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as exc:
        log.info("not caching the OpenVINO export in %s: %s", folder.parent, exc)
        return
    try:
        ov.save_model(halves.global_half, tmp / "global.xml", compress_to_fp16=False)
        ov.save_model(halves.local_half, tmp / "local.xml", compress_to_fp16=False)
        os.replace(tmp, folder)
    except OSError as exc:  # another process renamed its copy first, or the disk is full
        log.info("not caching the OpenVINO export in %s: %s", folder, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
