"""glibc malloc settings for a worker process that runs the model.

Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (so that freed memory goes back to
the OS quickly). Setting it also turns off glibc's dynamic mmap threshold, so every buffer over
128 KiB (most activation tensors) is mmap'ed fresh and unmapped when freed: each forward pass of a
DenseNet-121 batch then pays about a million page faults, and the kernel time they cost is of the
order of the compute itself, so a worker ran far below the speed of the bare model in one process
(`python -m benchmarks.encode_throughput` measures both).

`tune_malloc_for_inference()` keeps freed blocks for reuse instead: no mmap for allocations
(M_MMAP_MAX=0, so even the >32 MiB activations are reused) and trimming only above 1 GiB, which
cuts the page faults by an order of magnitude, below a plain process with glibc's defaults. Peak
memory stays the steady-state working set of one batch. It is applied once per worker process,
before the first shard; not on non-glibc systems.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30

_applied: bool | None = None  # per process


def tune_malloc_for_inference() -> bool:
    """Apply the settings above once in this process; True where they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    log.info("malloc tuned for inference: %s", _applied)
    return _applied
