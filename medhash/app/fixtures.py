"""A small served archive built from scratch: phantoms, a tiny model and a flat index, in one call.

The test suite's server tests and the serve-load benchmark need the same thing: an archive a
`medhash serve` can open, built in seconds without training or a cluster. `make_served_archive`
writes phantom PNGs, an untrained model whose BatchNorm statistics are set from one pass over
them (untrained statistics are the identity and every phantom would get the same code), the
codes as one Parquet shard with paths relative to the archive root (as an archive moved under
a root has) and metadata columns (view, age, sex, patient_key), and a flat index. Everything is seeded, so the codes are the same on every run.
It lives in the library rather than under tests/ so that the benchmarks import it as a module.
Nothing here imports the server: `ServedArchive` holds paths, and callers make a ServeConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from medhash.data import read_image, read_label_table
from medhash.data.phantoms import PhantomConfig, write_phantom_dataset
from medhash.index import BuildConfig, build_index
from medhash.codes_format import MetadataColumns, write_code_shard, write_codes_manifest
from medhash.data.keyed import keyed_hash
from medhash.model import AGHashNet, ModelConfig, load_encoder, save_checkpoint

__all__ = ["ARCHIVE_COLUMNS", "PATIENT_SECRET", "TINY_MODEL", "ServedArchive", "archive_metadata",
           "make_served_archive"]

TINY_MODEL = ModelConfig(backbone="tiny", bits=32, global_size=64, local_size=48, fusion_dim=32)
# Label-table columns and a patient key for every archived phantom (view, age, sex cycle; two images
# per patient), so filters and the page's per-hit facts have something to show.
ARCHIVE_COLUMNS = MetadataColumns(table=("view", "age", "sex"), patient_key=True)
PATIENT_SECRET = b"fixture-site-secret"


def archive_metadata(i: int) -> dict:
    return {"view": ("PA", "AP")[i % 2], "age": str(20 + (7 * i) % 70), "sex": ("F", "M", "F")[i % 3],
            "patient_key": keyed_hash(f"patient-{i // 2}", PATIENT_SECRET)}


@dataclass(frozen=True)
class ServedArchive:
    root: Path  # archive root: holds phantoms/images
    index_dir: Path
    model_path: Path
    labels_csv: Path
    image_paths: list[Path]  # every archived image, in index order


def _calibrate_batchnorm(model: AGHashNet, data: Path) -> AGHashNet:
    """Set BatchNorm statistics from one pass over the phantoms. Untrained, they are the identity, the fused
    features barely differ and every phantom gets the same code; calibrated, the 48 codes are distinct
    (median pairwise distance 12 of 32 bits), so ranking tests rank something."""
    images = torch.stack([torch.from_numpy(read_image(r.path))[None] for r in read_label_table(data / "labels.csv").records])
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one pass gives the batch's statistics
    model.train()
    with torch.no_grad():
        model(images, stage="full")
    return model.eval()


def make_served_archive(root: Path, n: int = 48, bits: int = 32, model: ModelConfig = TINY_MODEL,
                        image_size: int = 64) -> ServedArchive:
    """Phantoms, an untrained model (tiny by default: its codes are deterministic, which is all the API needs) and a
    flat index. Codes are written in-process (no Dask) with relative paths, as an archive moved under a root would have."""
    data = write_phantom_dataset(root / "phantoms", n, PhantomConfig(size=image_size, seed=11))
    torch.manual_seed(0)
    model_path = root / "model.pt"
    save_checkpoint(model_path, _calibrate_batchnorm(AGHashNet(replace(model, bits=bits)), data))
    encoder = load_encoder(model_path, engine="fp32")
    records = read_label_table(data / "labels.csv").records
    encoded = encoder.encode_images([read_image(r.path) for r in records])
    codes = root / "codes"
    write_code_shard(codes / "part-00000.parquet", model_id=encoder.model_id, bits=bits,
                     image_ids=[r.image_id for r in records], paths=[str(Path(r.path).relative_to(root)) for r in records],
                     codes=encoded.codes, boxes=encoded.boxes, labels=[r.labels for r in records],
                     columns=ARCHIVE_COLUMNS, values=[archive_metadata(i) for i in range(len(records))],
                     hash_values=encoded.hash_values)
    write_codes_manifest(codes, model_id=encoder.model_id, bits=bits)
    build_index(codes, root / "index", BuildConfig(kind="flat"))
    return ServedArchive(root, root / "index", model_path, data / "labels.csv", [Path(r.path) for r in records])
