"""Atomic file writes: write to a temp file in the same folder, fsync, rename; and file checksums.

A reader (or a resumed job) therefore sees either the old file or the complete
new one, never a partial write.

Permissions: `tempfile.mkstemp` creates its file with mode 0600 whatever the umask (it is meant
for private temp files), and the rename keeps that mode, so every output would be unreadable to
other accounts (a server running as another user). The finished file gets the mode a plain
`open()` would give, 0666 less the process umask. The umask is read once, at import: reading it
means setting it, which is not thread-safe, and a process does not change it afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

__all__ = ["FILE_MODE", "atomic_path", "atomic_write", "sha256_file", "write_text_atomic"]


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_process_umask()
"""The mode of every file written here: what `open(path, "w")` would create under this umask."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is renamed onto `path`.

    For writers that want a path rather than a file object (torch.save,
    pyarrow.parquet.write_table, faiss.write_index_binary).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temp file for writing; rename it onto `path` when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The file's SHA-256 as hex (index and codes manifests record it to detect changed files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
