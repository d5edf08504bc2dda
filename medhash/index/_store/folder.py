"""The on-disk index folder: layout, manifest, checksums, and FAISS read/write.

    IDX/index.faiss    faiss.write_index_binary of the index
    IDX/ids.parquet    one row per indexed item, in row order: label, image_id, path, labels, box, and the
                       codes folder's metadata columns
    IDX/hash_values.npy  optional: float16 [count, bits] hash-layer values per row (hash_values.py), for re-ranking
    IDX/manifest.json  what the files are, bound to (model_id, bits), with the sha256 of each file

The manifest is written last (atomically), after both data files were renamed into place, and it
carries their checksums: a crash between writes leaves a folder whose checksums disagree, which
`load_manifest(verify=True)` refuses instead of serving a half-updated index.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medhash import __version__ as MEDHASH_VERSION
from medhash.atomic import atomic_path, sha256_file, write_text_atomic
from medhash.errors import IndexManifestError

__all__ = ["DATA_FILES", "HASH_VALUES_FILE", "IDS_FILE", "INDEX_FILE", "MANIFEST_FILE", "IndexManifest", "check_compatible",
           "index_info", "load_manifest", "read_faiss", "sha256_file", "write_faiss", "write_manifest"]

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
MANIFEST_FILE = "manifest.json"
HASH_VALUES_FILE = "hash_values.npy"
DATA_FILES = (INDEX_FILE, IDS_FILE)  # every index has these; HASH_VALUES_FILE when manifest.hash_values
FORMAT_VERSION = 1


@dataclass
class IndexManifest:
    model_id: str
    bits: int
    kind: str
    params: dict
    count: int  # rows in ids.parquet == vectors in the index
    next_label: int  # first FAISS label not used yet (labels are never reused after a removal)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256 hex
    created_at: str = ""
    updated_at: str = ""
    medhash_version: str = MEDHASH_VERSION
    faiss_version: str = ""
    format_version: int = FORMAT_VERSION
    skipped_rows: int = 0  # input rows dropped (null code / image_id) over all builds and adds
    build_seconds: dict = field(default_factory=dict)  # stage -> seconds of the initial build
    generation: int = 0  # +1 per add / remove: a running server reloads when it changes
    # medhash.index.autotune's record: target, measured recall@k, latency, memory, values tried ({} untuned)
    tuning: dict = field(default_factory=dict)
    hash_values: bool = False  # HASH_VALUES_FILE holds each row's hash-layer values (re-ranking)

    def data_files(self) -> tuple[str, ...]:
        return DATA_FILES + ((HASH_VALUES_FILE,) if self.hash_values else ())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_manifest(index_dir: Path, manifest: IndexManifest) -> IndexManifest:
    """Fill in checksums and versions, then write manifest.json atomically (the commit point)."""
    import faiss

    manifest.files = {name: sha256_file(index_dir / name) for name in manifest.data_files()}
    manifest.faiss_version = faiss.__version__
    manifest.medhash_version = MEDHASH_VERSION
    manifest.updated_at = _now_iso()
    manifest.created_at = manifest.created_at or manifest.updated_at
    write_text_atomic(index_dir / MANIFEST_FILE, manifest.to_json())
    return manifest


def load_manifest(index_dir: str | Path, *, verify: bool = True) -> IndexManifest:
    """Read manifest.json; with verify, recompute every file's sha256 and refuse any mismatch."""
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST_FILE
    if not path.exists():
        raise IndexManifestError(index_dir, f"no {MANIFEST_FILE}: not an index folder (or a build never finished)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        manifest = IndexManifest(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise IndexManifestError(path, f"unreadable manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise IndexManifestError(path, f"format_version {manifest.format_version}, this medhash reads {FORMAT_VERSION}")
    missing = [name for name in manifest.data_files() if name not in manifest.files]
    if missing:
        raise IndexManifestError(path, f"manifest has no checksum for {missing}")
    if verify:
        for name in manifest.data_files():
            file = index_dir / name
            if not file.exists():
                raise IndexManifestError(file, "file listed in the manifest is missing")
            actual = sha256_file(file)
            if actual != manifest.files[name]:
                raise IndexManifestError(
                    file, f"sha256 mismatch: manifest says {manifest.files[name][:12]}..., file is {actual[:12]}... "
                    "(modified or partially written; rebuild the index)")
    return manifest


def check_compatible(where: str | Path, manifest: IndexManifest, *, model_id: str, bits: int) -> None:
    """Refuse codes or a model that do not belong to this index."""
    if bits != manifest.bits:
        raise IndexManifestError(where, f"bit length {bits} does not match the index's {manifest.bits}")
    if model_id != manifest.model_id:
        raise IndexManifestError(where, f"model_id {model_id!r} does not match the index's {manifest.model_id!r}")


def write_faiss(index, path: Path) -> None:
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index_binary(index, str(tmp))


def read_faiss(path: Path, io_flags: int = 0):
    import faiss

    try:
        return faiss.read_index_binary(str(path), io_flags)
    except RuntimeError as exc:
        raise IndexManifestError(path, f"FAISS could not read the index: {exc}") from exc


def index_info(index_dir: str | Path, *, verify: bool = True) -> dict:
    """The manifest plus file sizes, for `medhash index info` (checksums verified unless verify=False)."""
    index_dir = Path(index_dir)
    manifest = load_manifest(index_dir, verify=verify)
    info = asdict(manifest)
    info["file_bytes"] = {name: (index_dir / name).stat().st_size for name in manifest.data_files()}
    info["checksums_verified"] = verify
    return info
