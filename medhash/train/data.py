"""Training data: every image decoded once, in threads, and held as uint8 at `load_size`.

At the sizes medhash trains on (thousands of radiographs at a few hundred pixels), the decoded
pixels fit in memory, and decoding each PNG once beats decoding it again every epoch.
Supervised training reads the images of a label table (`load_image_set`, with their labels);
C2L pretraining reads a folder, or a table's images without their labels (`list_images`,
`decode_images`). Unreadable images are reported with their reason and left out, never fatal.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medhash.data.decode import read_image
from medhash.data.labels import LabelRecord, multi_hot, read_label_table
from medhash.errors import ImageDecodeError, InvalidParameterError

__all__ = ["IMAGE_SUFFIXES", "ImageSet", "decode_images", "list_images", "load_image_set", "to_square_uint8"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""}  # "": DICOM files often have no suffix
TABLE_SUFFIXES = (".csv", ".csv.gz")
_LOGGED_FAILURES = 20  # one warning each for the first unreadable images, then a count


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, 1, S, S]
    targets: torch.Tensor  # float32 [N, C] multi-hot
    records: list[LabelRecord]
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, indices: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx].float().div_(255.0), self.targets[idx]


def to_square_uint8(image: np.ndarray, size: int) -> torch.Tensor:
    """[H, W] float in [0, 1] -> uint8 [1, size, size] (antialiased resize; aspect not kept, as NIH images are square)."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (t[0].clamp(0, 1) * 255.0).round().to(torch.uint8)


def list_images(source: str | Path) -> list[Path]:
    """Every candidate image file of a folder (recursive, sorted), or every path of a label table."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")
                      and p.suffix.lower() in IMAGE_SUFFIXES)
    if source.is_file() and source.name.lower().endswith(TABLE_SUFFIXES):
        table = read_label_table(source, check_files=False)
        return [r.path for r in table.records if r.path is not None]
    raise InvalidParameterError(f"{source}: expected a folder of images or a label table (.csv)")


def decode_images(paths: Sequence[Path | None], size: int, workers: int = 0, names: Sequence[str] | None = None
                  ) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode images in threads -> (uint8 [K, 1, size, size], indices of the K decoded paths, [(path, reason)] of the rest).

    A missing path (None) is unreadable, reported under `names[i]` (e.g. the image id of a table row).
    `workers`: decode threads, 0 = one per CPU core.
    """
    def decode(i: int) -> torch.Tensor | str:
        try:
            if paths[i] is None:
                raise ImageDecodeError(names[i] if names else f"item {i}", "unreadable", "no image path in the label table")
            return to_square_uint8(read_image(paths[i]), size)
        except ImageDecodeError as exc:
            return str(exc)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the threads already share the cores; nested torch threads would oversubscribe them
    try:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            decoded = list(pool.map(decode, range(len(paths))))
    finally:
        torch.set_num_threads(threads)
    kept = [i for i, d in enumerate(decoded) if isinstance(d, torch.Tensor)]
    failures = [(str(p), d) for p, d in zip(paths, decoded) if isinstance(d, str)]
    for _, reason in failures[:_LOGGED_FAILURES]:
        log.warning("skipping %s", reason)
    if len(failures) > _LOGGED_FAILURES:
        log.warning("skipping %d more unreadable images", len(failures) - _LOGGED_FAILURES)
    pixels = torch.stack([decoded[i] for i in kept]) if kept else torch.zeros((0, 1, size, size), dtype=torch.uint8)
    return pixels, kept, failures


def load_image_set(records: list[LabelRecord], classes: tuple[str, ...], size: int, workers: int = 0) -> ImageSet:
    """The decodable images of label-table records, with their multi-hot targets."""
    pixels, kept, failures = decode_images([r.path for r in records], size, workers, [r.image_id for r in records])
    kept_records = [records[i] for i in kept]
    targets = torch.from_numpy(multi_hot([r.labels for r in kept_records], classes).astype(np.float32))
    return ImageSet(pixels, targets, kept_records, failures)
