"""Backbone files (`medhash.backbone`): the weights `medhash pretrain` produces and `train --init` loads.

A backbone file holds one backbone's `features` weights, the architecture name, a JSON-shaped
summary of the pretraining run and an id (hash of the weights). It is read with the same checks
as a model checkpoint (`read_payload`: format, version, weights hash), so a truncated or altered
file fails as a CheckpointError naming it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from medhash import __version__
from medhash.atomic import atomic_path
from medhash.errors import CheckpointError
from medhash.model.checkpoint import read_payload, weights_id
from medhash.model.hashnet import AGHashNet

__all__ = ["BACKBONE_FORMAT", "BACKBONE_FORMAT_VERSION", "apply_backbone_init", "load_backbone_init",
           "read_backbone", "save_backbone"]

log = logging.getLogger(__name__)

BACKBONE_FORMAT = "medhash.backbone"
BACKBONE_FORMAT_VERSION = 1


def _plain(value: Any) -> Any:
    """JSON-shaped copy (lists, dicts, numbers, strings) that torch.load(weights_only=True) accepts."""
    return json.loads(json.dumps(value, default=str))


def save_backbone(path: str | Path, arch: str, state_dict: dict[str, torch.Tensor], summary: dict[str, Any]) -> str:
    """Write a backbone file atomically; returns its id (hash of the weights)."""
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    backbone_id = weights_id(state)
    payload = {"format": BACKBONE_FORMAT, "format_version": BACKBONE_FORMAT_VERSION, "medhash_version": __version__,
               "arch": arch, "state_dict": state, "pretrain": _plain(summary), "id": backbone_id}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return backbone_id


def read_backbone(path: str | Path) -> dict[str, Any]:
    """Load and validate a backbone file; every failure is a CheckpointError naming the file."""
    return read_payload(path, BACKBONE_FORMAT, BACKBONE_FORMAT_VERSION, "id", "backbone file",
                        hint="; `medhash pretrain` writes them")


def load_backbone_init(path: str | Path, arch: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(features weights, file metadata without the weights) of a backbone file made for `arch`."""
    payload = read_backbone(path)
    if payload["arch"] != arch:
        raise CheckpointError(f"{path}: backbone was pretrained for architecture {payload['arch']!r}, "
                              f"but the model being trained uses {arch!r}; pretrain with --backbone {arch}")
    return payload["state_dict"], {k: v for k, v in payload.items() if k != "state_dict"}


def apply_backbone_init(model: AGHashNet, path: str | Path) -> dict[str, Any]:
    """Load a backbone file into both branches of an AGHashNet; returns the checkpoint's `init` record."""
    weights, info = load_backbone_init(path, model.config.backbone)
    for branch in (model.global_backbone, model.local_backbone):
        try:
            branch.features.load_state_dict(weights)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit a {info['arch']} backbone: {exc}") from exc
    norm = info.get("pretrain", {}).get("input_norm")
    if norm and (norm["mean"], norm["std"]) != (model.config.mean, model.config.std):
        log.warning("%s: pretrained with input mean/std %s/%s, model normalizes with %s/%s",
                    path, norm["mean"], norm["std"], model.config.mean, model.config.std)
    return {"source": "c2l", "path": str(path), "backbone_id": info["id"]}
