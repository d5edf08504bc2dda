"""Training data: decode every image of a label table once, hold it as uint8 at `load_size`.

At the sizes medhash trains on (a few thousand 256-px radiographs per machine),
holding decoded pixels in memory beats re-decoding PNGs every epoch on 2 cores.
Unreadable images are reported with their reason and left out, never fatal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from medhash.data.decode import read_image
from medhash.data.labels import LabelRecord, multi_hot
from medhash.errors import ImageDecodeError

log = logging.getLogger(__name__)


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


def load_image_set(records: list[LabelRecord], classes: tuple[str, ...], size: int) -> ImageSet:
    kept, pixels, failures = [], [], []
    for rec in records:
        try:
            if rec.path is None:
                raise ImageDecodeError(rec.image_id, "unreadable", "no image path in the label table")
            pixels.append(to_square_uint8(read_image(rec.path), size))
            kept.append(rec)
        except ImageDecodeError as exc:
            failures.append((str(rec.path), str(exc)))
            log.warning("skipping %s", exc)
    images = torch.stack(pixels) if pixels else torch.zeros((0, 1, size, size), dtype=torch.uint8)
    targets = torch.from_numpy(multi_hot([r.labels for r in kept], classes).astype(np.float32))
    return ImageSet(images, targets, kept, failures)
