"""IndexReloader: a running server picks up `medhash index add/remove` without a restart.

`index add/remove` rewrite index.faiss and ids.parquet by rename and write manifest.json last, with a
generation one higher. The reloader stats manifest.json at most every `poll_ms` (a stat is ~1 us;
nothing is read while it is unchanged), and when its inode, size or mtime moved it reads the
manifest; a new generation (or new file checksums, e.g. after a rebuild) opens the new version in
the reloader's thread, checksums verified, and swaps it in with one reference assignment. A folder
caught between renames fails verification and is retried at the next poll, so a half-written
version is never served. `reload()` does the same at once (POST /v1/reload).

Requests hold the version they started with (the old FAISS index and the old ids.parquet handle stay
valid after the files are replaced); the service re-runs a search that straddled a swap, so once the
swap happened no answer carries an id the new version removed.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

from medhash.errors import MedhashError
from medhash.index import MANIFEST_FILE, HammingIndex, load_manifest

__all__ = ["IndexReloader"]

log = logging.getLogger(__name__)


def _stat_key(path: Path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _version(manifest) -> tuple:
    return manifest.generation, tuple(sorted(manifest.files.items()))


class IndexReloader:
    """Owns the current HammingIndex of a folder; `on_swap(new)` runs after each swap."""

    def __init__(self, index: HammingIndex, open_index: Callable[[], HammingIndex], poll_ms: int = 1000,
                 on_swap: Callable[[HammingIndex], None] | None = None):
        self.index = index
        self._open, self._on_swap = open_index, on_swap
        self._manifest = Path(index.index_dir) / MANIFEST_FILE
        self._seen = _stat_key(self._manifest)
        self._lock = threading.Lock()  # one reload at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.poll_ms = poll_ms
        self.reloads = 0
        if poll_ms > 0:
            self._thread = threading.Thread(target=self._poll, name="medhash-reload", daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_ms / 1000):
            if _stat_key(self._manifest) != self._seen:
                self.reload()

    def reload(self) -> bool:
        """Open and swap in the folder's current version if it differs from the served one; True if swapped."""
        with self._lock:
            stat = _stat_key(self._manifest)
            try:
                on_disk = load_manifest(self.index.index_dir, verify=False)
                if _version(on_disk) == _version(self.index.manifest):
                    self._seen = stat
                    return False
                fresh = self._open()
            except (MedhashError, OSError) as exc:
                # Most likely caught between the renames of an update: the next poll tries again.
                log.warning("index reload deferred: %s", exc)
                return False
            self.index = fresh
            self._seen = stat
            self.reloads += 1
        log.info("index reloaded: generation %d, %d items", fresh.generation, len(fresh))
        if self._on_swap is not None:
            self._on_swap(fresh)
        return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
