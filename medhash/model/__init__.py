"""The hashing model: backbone, saliency, crop, fusion, hash head, losses, checkpoints and the encoder."""

from medhash.model.checkpoint import load_model, read_checkpoint, save_checkpoint, weights_id
from medhash.model.config import ModelConfig
from medhash.model.encoder import ENGINES, EncodeResult, HashEncoder, load_encoder
from medhash.model.hashnet import AGHashNet, ModelOutput, pack_codes

__all__ = [
    "AGHashNet",
    "ENGINES",
    "EncodeResult",
    "HashEncoder",
    "ModelConfig",
    "ModelOutput",
    "load_encoder",
    "load_model",
    "pack_codes",
    "read_checkpoint",
    "save_checkpoint",
    "weights_id",
]
