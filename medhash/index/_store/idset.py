"""Find repeated image ids across millions of rows with bounded memory.

Holding every id string in a Python set costs ~100 bytes per id (1 GB at 10M). Instead each id is
hashed to 64 bits, vectorised over the Arrow string buffers (8 bytes per id), the hashes are sorted,
and only ids whose hash repeats are re-read and compared as strings, so a hash collision never
reports a false duplicate.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa

__all__ = ["IdHashes", "confirm_duplicates", "find_duplicates", "hash_strings"]

_MULT = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime; positions weighted by its powers
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # Final avalanche so that similar ids ("img1", "img2") spread over all 64 bits.
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_strings(values: pa.Array) -> np.ndarray:
    """64-bit hash of each string (nulls hash like the empty string): uint64 [N]."""
    values = values.cast(pa.large_string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64, count=values.offset + n + 1)[values.offset:]
    lengths = np.diff(offsets)
    data = np.frombuffer(data_buf, dtype=np.uint8, count=int(offsets[-1])) if data_buf else np.empty(0, np.uint8)
    # FNV-1a over byte position p of every string at once: max_len passes over N, no per-byte temporaries.
    out = np.full(n, np.uint64(0xCBF29CE484222325), dtype=np.uint64)
    starts = offsets[:-1]
    with np.errstate(over="ignore"):
        for p in range(int(lengths.max(initial=0))):
            active = np.flatnonzero(lengths > p)
            out[active] = (out[active] ^ data[starts[active] + p]) * _MULT
    with np.errstate(over="ignore"):
        return _splitmix64(out ^ (lengths.astype(np.uint64) * _GOLDEN))


class IdHashes:
    """Collects 64-bit hashes of image ids (8 bytes per id) to find the ones that may repeat."""

    def __init__(self, capacity: int = 0):
        self._hashes = np.empty(max(capacity, 1), dtype=np.uint64)
        self._filled = 0

    def add(self, values: pa.Array) -> None:
        h = hash_strings(values)
        end = self._filled + len(h)
        if end > len(self._hashes):
            self._hashes = np.resize(self._hashes, max(2 * len(self._hashes), end))
        self._hashes[self._filled:end] = h
        self._filled = end

    def repeated(self) -> np.ndarray:
        """Sorted hashes seen more than once (frees the collected hashes)."""
        hashes = self._hashes[:self._filled]
        hashes.sort()
        out = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        self._hashes, self._filled = np.empty(1, dtype=np.uint64), 0
        return out


def confirm_duplicates(sources: Iterable[tuple[int, pa.Array]], repeated: np.ndarray) -> dict[str, list[int]]:
    """Re-read only ids whose hash repeats and compare the strings: id -> source numbers it occurs in."""
    if len(repeated) == 0:
        return {}
    seen: dict[str, list[int]] = defaultdict(list)
    for source, values in sources:
        hit = np.isin(hash_strings(values), repeated)
        if hit.any():
            for image_id in values.filter(pa.array(hit)).to_pylist():
                seen[image_id].append(source)
    return {image_id: where for image_id, where in seen.items() if len(where) > 1}


def find_duplicates(sources: Callable[[], Iterable[tuple[int, pa.Array]]], total_hint: int = 0) -> dict[str, list[int]]:
    """Ids that occur more than once over all sources -> the source numbers they occur in.

    `sources()` yields (source number, Arrow string array); it is called a second time only if
    some hash repeats.
    """
    hashes = IdHashes(total_hint)
    for _, values in sources():
        hashes.add(values)
    repeated = hashes.repeated()
    return confirm_duplicates(sources(), repeated) if len(repeated) else {}
