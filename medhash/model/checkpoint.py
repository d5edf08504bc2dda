"""One-file checkpoints: weights + full ModelConfig + model_id (hash of the weights), written atomically."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch

from medhash import __version__
from medhash.atomic import atomic_path
from medhash.errors import CheckpointError
from medhash.model.config import ModelConfig
from medhash.model.hashnet import AGHashNet

FORMAT = "medhash.checkpoint"
FORMAT_VERSION = 1


def weights_id(state_dict: dict[str, torch.Tensor]) -> str:
    """A stable 16-hex-digit id of the weights: names, dtypes, shapes and bytes in key order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def save_checkpoint(path: str | Path, model: AGHashNet, extra: dict[str, Any] | None = None) -> str:
    """Write model + config (+ extra metadata: init source, training summary) atomically; return model_id."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    model_id = weights_id(state)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medhash_version": __version__,
        "model_config": model.config.to_dict(),
        "model_id": model_id,
        "state_dict": state,
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return model_id


def read_payload(path: str | Path, fmt: str, version: int, id_key: str, what: str, hint: str = "") -> dict[str, Any]:
    """Load a medhash torch file of format `fmt` and check its version and weights hash.

    Shared by model checkpoints and pretrained backbone files; every failure is a
    CheckpointError naming the file and `what` it was expected to be.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    payload = _torch_load(path, what)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a medhash {what} (format {found!r}){hint}")
    if payload.get("format_version") != version:
        raise CheckpointError(f"{path}: {what} format version {payload.get('format_version')} is not supported (expected {version})")
    if weights_id(payload["state_dict"]) != payload.get(id_key):
        raise CheckpointError(f"{path}: weights do not match the recorded {id_key} (file altered or corrupt)")
    return payload


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format
_PICKLE_MAGIC = b"\x80"  # torch's legacy format starts with a pickle protocol byte


def _torch_load(path: Path, what: str) -> Any:
    """torch.load with weights only, its failures said in medhash's words: torch's own message advises
    retrying with weights_only=False, which would run whatever code an untrusted file holds."""
    with open(path, "rb") as fp:
        head = fp.read(4)
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise CheckpointError(f"{path}: not a {what}: not a PyTorch file at all (starts with {head!r})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: not a {what}: it holds Python objects other than tensors and plain data, "
                              f"which medhash never loads (unpickling them could run code)") from exc
    except Exception as exc:  # torch raises many types for truncated/garbled files
        raise CheckpointError(f"{path}: not a readable {what}: the file is corrupt or truncated "
                              f"({type(exc).__name__})") from exc


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a model checkpoint; every failure is a CheckpointError naming the file."""
    return read_payload(path, FORMAT, FORMAT_VERSION, "model_id", "model checkpoint")


def load_model(path: str | Path) -> tuple[AGHashNet, dict[str, Any]]:
    """Rebuild the model of a checkpoint; returns (model in eval mode, payload)."""
    payload = read_checkpoint(path)
    config = ModelConfig.from_dict(payload["model_config"])
    model = AGHashNet(config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the recorded config: {exc}") from exc
    return model.eval(), payload
