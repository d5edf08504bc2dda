"""The index folder on disk and the streaming helpers that write it.

- folder: the layout (index.faiss, ids.parquet, manifest.json), the manifest with each file's
  sha256 (written last: the commit point), FAISS read/write, `index_info`;
- idmap: ids.parquet, the row -> (label, image_id, path, labels, box) map, streamed batch by batch;
- hash_values: hash_values.npy, each row's hash-layer values (float16) for re-ranking, row-aligned with ids.parquet;
- idset: duplicate image ids among millions with 8 bytes per id;
- idlookup: image id -> row by a hash index (16 bytes per row), not a scan;
- arrow_memory: an Arrow memory pool that returns freed batches to the OS during a build.
"""

from medhash.index._store.arrow_memory import lean_arrow_memory
from medhash.index._store.folder import (HASH_VALUES_FILE, IDS_FILE, INDEX_FILE, MANIFEST_FILE, IndexManifest,
                                         check_compatible, index_info, load_manifest, read_faiss, sha256_file,
                                         write_faiss, write_manifest)
from medhash.index._store.hash_values import copy_values_except, open_values, open_values_writer
from medhash.index._store.idlookup import IdLookup
from medhash.index._store.idmap import (IdRecord, copy_rows_except, id_rows, id_schema, iter_id_batches, open_id_writer,
                                        read_id_schema, records_at, rows_of_image_ids)
from medhash.index._store.idset import IdHashes, confirm_duplicates, find_duplicates

__all__ = [
    "HASH_VALUES_FILE",
    "IDS_FILE",
    "INDEX_FILE",
    "MANIFEST_FILE",
    "IdHashes",
    "IdLookup",
    "IdRecord",
    "IndexManifest",
    "check_compatible",
    "confirm_duplicates",
    "copy_rows_except",
    "copy_values_except",
    "find_duplicates",
    "id_rows",
    "id_schema",
    "index_info",
    "iter_id_batches",
    "lean_arrow_memory",
    "load_manifest",
    "open_id_writer",
    "open_values",
    "open_values_writer",
    "read_faiss",
    "read_id_schema",
    "records_at",
    "rows_of_image_ids",
    "sha256_file",
    "write_faiss",
    "write_manifest",
]
