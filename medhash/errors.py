"""The typed errors of medhash: each names the file (or object) and the reason."""

from __future__ import annotations

from pathlib import Path


class MedhashError(Exception):
    """Base of every error medhash raises on purpose."""


class ImageDecodeError(MedhashError):
    """An image could not be decoded. `source` names the file, `kind` the reason class."""

    def __init__(self, source: str | Path, kind: str, reason: str):
        self.source = str(source)
        self.kind = kind
        self.reason = reason
        super().__init__(f"{self.source}: {kind}: {reason}")


class LabelTableError(MedhashError):
    """A label table is unreadable or lacks the columns medhash needs."""


class CheckpointError(MedhashError):
    """A checkpoint is corrupt, incomplete or incompatible with what was asked."""
