"""Staged training of the hashing model (AG-CNN order), resumable, single process or torchrun DDP."""

from medhash.train.config import AugmentConfig, TrainConfig
from medhash.train.trainer import TrainResult, Trainer, train

__all__ = ["AugmentConfig", "TrainConfig", "TrainResult", "Trainer", "train"]
