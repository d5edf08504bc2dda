"""FAISS binary indexes over hash codes: build from Parquet shards, search top-k, add/remove, query images.

    from medhash.index import BuildConfig, HammingIndex, build_index
    build_index("codes/", "idx/", BuildConfig(kind="flat"))
    index = HammingIndex("idx/")                      # manifest + sha256 checked
    result = index.search(codes, k=10, with_ties=True)
    result[0].image_ids, result[0].distances, result[0].rows

faiss is imported lazily inside functions, so importing this package stays cheap.
"""

from medhash.index.build import BuildConfig, build_index
from medhash.index.hamming_index import HammingIndex, Hits, SearchResult
from medhash.index.idmap import IdRecord
from medhash.index.kinds import KINDS, get_kind
from medhash.index.maintain import UpdateReport, add_codes, remove_images
from medhash.index.neighbors import SearchParams
from medhash.index.store import IndexManifest, index_info, load_manifest
from medhash.index.threads import DEFAULT_POLICY, ThreadPolicy

__all__ = [
    "DEFAULT_POLICY",
    "KINDS",
    "BuildConfig",
    "HammingIndex",
    "Hits",
    "IdRecord",
    "IndexManifest",
    "SearchParams",
    "SearchResult",
    "ThreadPolicy",
    "UpdateReport",
    "add_codes",
    "build_index",
    "get_kind",
    "index_info",
    "load_manifest",
    "remove_images",
]
