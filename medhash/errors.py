"""The typed errors of medhash: each names the file (or object) and the reason.

Messages quote user input through `shorten`, so a 100 KB value never comes back in full.
"""

from __future__ import annotations

from pathlib import Path

ECHO_CHARS = 80  # the most characters of a user-given value an error message quotes


def shorten(text: object, limit: int = ECHO_CHARS) -> str:
    """`text` as a string of at most `limit` characters (an ellipsis and the full length mark a cut)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def one_line(exc: BaseException) -> str:
    """The error as one line: an OSError as "path: reason", anything else as its message."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


class MedhashError(Exception):
    """Base of every error medhash raises on purpose."""


class ImageDecodeError(MedhashError):
    """An image could not be decoded. `source` names the file, `kind` the reason class."""

    def __init__(self, source: str | Path, kind: str, reason: str):
        self.source = str(source)
        self.kind = kind
        self.reason = reason
        super().__init__(f"{self.source}: {kind}: {reason}")


class InvalidParameterError(MedhashError, ValueError):
    """A parameter or option value is outside what is allowed; the message names the value and what is allowed.

    Also a ValueError, so callers that validated with ValueError before keep working.
    """


class LabelTableError(MedhashError):
    """A label table is unreadable or lacks the columns medhash needs."""


class CheckpointError(MedhashError):
    """A checkpoint is corrupt, incomplete or incompatible with what was asked."""


class IndexManifestError(MedhashError):
    """An index folder's manifest, checksums, model_id or bit length do not match what was asked.

    `path` names the index folder (or file), `reason` says what disagrees.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CodeShardError(MedhashError):
    """A codes Parquet shard is unreadable or breaks the layout contract (names the file)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DuplicateImageIdError(MedhashError):
    """Image ids that are already in the index (or twice in the input) were given without replace."""

    def __init__(self, where: str | Path, image_ids: list[str], total: int):
        self.where = str(where)
        self.image_ids = list(image_ids)
        self.total = total
        shown = ", ".join(self.image_ids[:5]) + (" ..." if total > 5 else "")
        super().__init__(f"{self.where}: {total} duplicate image id(s): {shown}")


class PipelineError(MedhashError):
    """An encoding job cannot run or finish: bad inputs, an output folder of another model, failed shards."""


class GpuUnavailableError(MedhashError):
    """GPU work was asked for where faiss has no GPU support or no GPU is visible (the reason says which)."""


class ArchiveAccessError(MedhashError):
    """The server will not read an archived image: no archive root, outside it, or missing."""


class EngineUnavailableError(MedhashError):
    """An encoder engine cannot run here: its optional extra is not installed, or the device does not fit it."""
