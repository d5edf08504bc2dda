"""FAISS binary indexes over hash codes: build from a codes folder, search top-k, add/remove.

    from medhash.index import BuildConfig, HammingIndex, build_index
    build_index("codes/", "idx/", BuildConfig(kind="flat"))
    index = HammingIndex("idx/")                      # manifest + sha256 checked
    result = index.search(codes, k=10, with_ties=True)
    result[0].image_ids, result[0].distances, result[0].rows

The design, one module or subpackage each:
- kinds: the registry of index kinds (flat, multihash, ivf, hnsw): parameters from the index size,
  create / add / remove on the FAISS index, and the searcher of the kind's family;
- params: the declared parameters of each kind (types, bounds), checked before any FAISS call;
- _search: one searcher per family (exact scan, multi-index hashing, approximate, GPU), the shared
  neighbour ordering and tie rules, and the thread policy;
- _store: the index folder (index.faiss, ids.parquet, manifest.json with checksums);
- build: codes folder -> index folder, streaming; maintain: add and remove in place;
- autotune: the search knob (nprobe / ef_search) tuned at build time to a recall target measured
  on the archive's own codes, recorded in the manifest;
- filters: the filter syntax (labels, view, sex, age, not the same patient, any stored column);
  selection: a filter evaluated over ids.parquet into cached row selections;
- hamming_index: `HammingIndex`, an opened folder that answers searches, filtered or not.
Codes are read through medhash.codes_format. faiss is imported inside functions only, so importing
this package stays cheap; nothing here imports torch or the model.
"""

from medhash.index._search import DEFAULT_POLICY, SearchParams, ThreadPolicy, cosine_similarity, gpu_support
from medhash.index._store import IDS_FILE, INDEX_FILE, MANIFEST_FILE, IdRecord, IndexManifest, index_info, load_manifest
from medhash.index.autotune import DEFAULT_TARGET_RECALL, TuneConfig
from medhash.index.build import BuildConfig, build_index
from medhash.index.filters import Filter, FilterError, parse_filter
from medhash.index.hamming_index import HammingIndex, Hits, SearchResult
from medhash.index.kinds import KINDS, get_kind
from medhash.index.maintain import UpdateReport, add_codes, remove_images

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_TARGET_RECALL",
    "IDS_FILE",
    "INDEX_FILE",
    "KINDS",
    "MANIFEST_FILE",
    "BuildConfig",
    "Filter",
    "FilterError",
    "HammingIndex",
    "Hits",
    "IdRecord",
    "IndexManifest",
    "SearchParams",
    "SearchResult",
    "ThreadPolicy",
    "TuneConfig",
    "UpdateReport",
    "add_codes",
    "build_index",
    "cosine_similarity",
    "get_kind",
    "gpu_support",
    "index_info",
    "load_manifest",
    "parse_filter",
    "remove_images",
]
