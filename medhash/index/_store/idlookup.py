"""IdLookup: image id -> ids.parquet row through a hash index, not a scan.

Each id is hashed to 64 bits (idset.hash_strings, vectorised over the Arrow buffers); the hashes are
sorted once with their rows (16 bytes per row, 16 MB per million). A lookup binary-searches the
hash and compares the id strings of the few rows that share it, so a hash collision never returns a
wrong row. The ids themselves stay in the Arrow array the index already holds.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from medhash.index._store.idset import hash_strings

__all__ = ["IdLookup"]


class IdLookup:
    def __init__(self, image_ids: pa.Array):
        self._ids = image_ids
        hashes = hash_strings(image_ids)
        self._order = np.argsort(hashes, kind="stable").astype(np.int64)
        self._hashes = hashes[self._order]

    def rows_of(self, image_ids: list[str]) -> list[int | None]:
        """The row of each id (None where the index does not hold it)."""
        if not image_ids:
            return []
        wanted = hash_strings(pa.array(image_ids, type=pa.string()))
        lo = np.searchsorted(self._hashes, wanted, side="left")
        hi = np.searchsorted(self._hashes, wanted, side="right")
        out: list[int | None] = []
        for image_id, a, b in zip(image_ids, lo, hi):
            rows = self._order[a:b]
            out.append(next((int(r) for r in rows if self._ids[int(r)].as_py() == image_id), None))
        return out

    def row_of(self, image_id: str) -> int | None:
        return self.rows_of([image_id])[0]
