"""ArchiveFiles: the only way the server turns an index record's path into a file it reads.

A path is served only if, after every symlink is followed, it lies under the archive root. The
request never names a path: it names an image id, looked up in the index's ids.parquet, so an id
like `../../etc/passwd` is just an unknown id. The root check guards against records (or symlinks
inside the archive) that point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from medhash.errors import ArchiveAccessError


class ArchiveFiles:
    def __init__(self, root: str | os.PathLike[str] | None):
        self.root = Path(root).resolve(strict=True) if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise NotADirectoryError(f"--archive-root {root} is not a folder")

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def resolve(self, recorded_path: str) -> Path:
        """The real file behind an ids.parquet path: relative paths resolve against the root."""
        if self.root is None:
            raise ArchiveAccessError("the server was started without --archive-root: images are not served")
        if not recorded_path or "\x00" in recorded_path:
            raise ArchiveAccessError("the index records no usable path for this image")
        path = Path(recorded_path)
        if not path.is_absolute():
            path = self.root / path
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing file, or a symlink loop
            raise ArchiveAccessError("the image file is not in the archive") from None
        if not real.is_relative_to(self.root) or not real.is_file():
            raise ArchiveAccessError("the image lies outside the archive root")
        return real
