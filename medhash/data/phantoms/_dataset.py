"""Phantom datasets on disk: images/<image_id>.png, labels.csv and boxes.csv, in the layout the readers take.

Files are written atomically and rows are gathered in index order, so the same config gives
byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from medhash.atomic import atomic_path, write_text_atomic
from medhash.data.labels import NO_FINDING
from medhash.data.phantoms._config import PhantomConfig
from medhash.data.phantoms._findings import PHANTOM_FINDINGS
from medhash.data.phantoms._phantom import generate_phantom, patient_slot
from medhash.errors import InvalidParameterError

__all__ = ["BOX_COLUMNS", "LABEL_COLUMNS", "phantom_label_counts", "write_phantom_dataset"]

LABEL_COLUMNS = ("image_id", "file", "patient_id", "labels", "dev_fold")
BOX_COLUMNS = ("image_id", "finding", "x0", "y0", "x1", "y1")


def _write_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, mode="L").save(tmp, format="PNG")


def _csv_text(header: Iterable[str], rows: Iterable[Iterable]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_slice(out: Path, config: PhantomConfig, indices: range, folds: int) -> tuple[list, list]:
    """Write the PNGs of `indices`; return their labels.csv and boxes.csv rows."""
    label_rows, box_rows = [], []
    for index in indices:
        phantom = generate_phantom(index, config)
        file = f"images/{phantom.image_id}.png"
        _write_png(phantom.image, out / file)
        fold = patient_slot(index, config.followup_every).ordinal % folds
        label_rows.append((phantom.image_id, file, phantom.patient_id, "|".join(phantom.labels), fold))
        box_rows.extend((phantom.image_id, name, *box) for name, box in phantom.boxes)
    return label_rows, box_rows


def write_phantom_dataset(
    out_dir: str | Path, n: int, config: PhantomConfig = PhantomConfig(), folds: int = 5, workers: int = 1
) -> Path:
    """Write n phantoms: images/<image_id>.png, labels.csv and boxes.csv under out_dir; returns out_dir.

    dev_fold is assigned per patient (patient ordinal mod folds), so both images
    of a follow-up pair fall in the same fold. Same config -> byte-identical files,
    whatever `workers` (processes; each renders a contiguous slice of indices).
    """
    if n < 0:
        raise InvalidParameterError(f"n must be >= 0, got {n}")
    if folds < 1:
        raise InvalidParameterError(f"folds must be >= 1, got {folds}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    chunk = max(1, math.ceil(n / max(1, workers * 4)))
    slices = [range(start, min(start + chunk, n)) for start in range(0, n, chunk)]
    if workers > 1 and len(slices) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_write_slice, *zip(*[(out, config, r, folds) for r in slices])))
    else:
        parts = [_write_slice(out, config, r, folds) for r in slices]
    label_rows = [row for rows, _ in parts for row in rows]
    box_rows = [row for _, rows in parts for row in rows]
    write_text_atomic(out / "labels.csv", _csv_text(LABEL_COLUMNS, label_rows))
    write_text_atomic(out / "boxes.csv", _csv_text(BOX_COLUMNS, box_rows))
    return out


def phantom_label_counts(out_dir: str | Path) -> dict[str, int]:
    """Images per label in a written phantom dataset (for summaries)."""
    with open(Path(out_dir) / "labels.csv", newline="", encoding="utf-8") as fh:
        counts = Counter(label for row in csv.DictReader(fh) for label in row["labels"].split("|"))
    return {name: counts.get(name, 0) for name in PHANTOM_FINDINGS + (NO_FINDING,)}
