"""GPU paths: flat search on GpuIndexBinaryFlat, IVF quantizer training on a GPU k-means.

Both need a faiss build with GPU support (faiss-gpu-*) and a visible GPU; `gpu_support()` says
which is missing, so callers and tests can skip with that reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from medhash.errors import GpuUnavailableError
from medhash.index._search.neighbors import Neighbors, Searcher, SearchParams, knn_with_ties

__all__ = ["GpuFlatSearch", "GpuSupport", "gpu_support", "use_gpu_for_training"]

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # FAISS GPU k-selection limit


@dataclass(frozen=True)
class GpuSupport:
    available: bool
    reason: str


def gpu_support() -> GpuSupport:
    import faiss

    if not hasattr(faiss, "GpuIndexBinaryFlat") or not hasattr(faiss, "StandardGpuResources"):
        return GpuSupport(False, f"faiss {faiss.__version__} is a CPU-only build (install faiss-gpu-* for GPU search)")
    count = faiss.get_num_gpus()
    if count < 1:
        return GpuSupport(False, "faiss has GPU support but sees no GPU")
    return GpuSupport(True, f"{count} GPU(s) visible to faiss")


def require_gpu() -> None:
    support = gpu_support()
    if not support.available:
        raise GpuUnavailableError(support.reason)


_resources = None


def _gpu_resources():
    global _resources
    import faiss

    if _resources is None:
        _resources = faiss.StandardGpuResources()
    return _resources


def use_gpu_for_training(ivf_index, bits: int) -> None:
    """Make IndexBinaryIVF.train run its k-means on the GPU (binary IVF clusters in float space)."""
    import faiss

    require_gpu()
    ivf_index.clustering_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, faiss.IndexFlatL2(bits))


class GpuFlatSearch:
    """Exact search of a flat binary index on the GPU; fetches above GPU_MAX_K go to the CPU scan."""

    def __init__(self, cpu_flat, cpu_fallback: Searcher):
        import faiss

        require_gpu()
        self.gpu_index = faiss.GpuIndexBinaryFlat(_gpu_resources(), cpu_flat)
        self.ntotal = cpu_flat.ntotal
        self.cpu_fallback = cpu_fallback

    def search(self, queries: np.ndarray, k: int, with_ties: bool = False,
               params: SearchParams = SearchParams()) -> list[Neighbors]:
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        if (2 * k if with_ties else k) > GPU_MAX_K:
            return self.cpu_fallback.search(queries, k, with_ties, params)

        def search(qs, fetch):
            if fetch > GPU_MAX_K:
                raise _TooMany
            return self.gpu_index.search(qs, fetch)

        try:
            return knn_with_ties(search, queries, k, self.ntotal, with_ties)
        except _TooMany:  # so many ties that the GPU cannot return them all
            return self.cpu_fallback.search(queries, k, with_ties, params)


class _TooMany(Exception):
    pass
