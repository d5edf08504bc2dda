"""Test support for the server: a small served archive, and a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from medhash.codes_format import write_code_shard, write_codes_manifest
from medhash.data import read_image, read_label_table
from medhash.data.phantoms import PhantomConfig, write_phantom_dataset
from medhash.index import BuildConfig, build_index
from medhash.model import AGHashNet, ModelConfig, load_encoder, save_checkpoint
from medhash.serve import SearchService, ServeConfig
from medhash.serve.background import serve_in_background


@dataclass(frozen=True)
class ServedArchive:
    root: Path  # archive root: holds phantoms/images
    index_dir: Path
    model_path: Path
    labels_csv: Path
    image_paths: list[Path]  # every archived image, in index order

    def config(self, **changes) -> ServeConfig:
        base = ServeConfig(index=str(self.index_dir), model=str(self.model_path), archive_root=str(self.root),
                           engine="fp32", torch_threads=1)
        return replace(base, **changes)


TINY_MODEL = ModelConfig(backbone="tiny", bits=32, global_size=64, local_size=48, fusion_dim=32)


def calibrated(model: AGHashNet, data: Path) -> AGHashNet:
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
    save_checkpoint(model_path, calibrated(AGHashNet(replace(model, bits=bits)), data))
    encoder = load_encoder(model_path, engine="fp32")
    records = read_label_table(data / "labels.csv").records
    encoded = encoder.encode_images([read_image(r.path) for r in records])
    codes = root / "codes"
    write_code_shard(codes / "part-00000.parquet", model_id=encoder.model_id, bits=bits,
                     image_ids=[r.image_id for r in records], paths=[str(Path(r.path).relative_to(root)) for r in records],
                     codes=encoded.codes, boxes=encoded.boxes, labels=[r.labels for r in records])
    write_codes_manifest(codes, model_id=encoder.model_id, bits=bits)
    build_index(codes, root / "index", BuildConfig(kind="flat"))
    return ServedArchive(root, root / "index", model_path, data / "labels.csv", [Path(r.path) for r in records])


@contextlib.contextmanager
def live_server(config: ServeConfig) -> Iterator[str]:
    """Run the app under uvicorn in a thread on 127.0.0.1; yields its base URL; stops it on exit."""
    with serve_in_background(SearchService.open(config)) as url:
        yield url


def archived_codes(archive: ServedArchive) -> np.ndarray:
    encoder = load_encoder(archive.model_path, engine="fp32")
    return encoder.encode_images([read_image(p) for p in archive.image_paths]).codes
