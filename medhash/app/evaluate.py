"""`evaluate_model`: encode a labeled set with a checkpoint and report retrieval and localization figures.

Queries are the images of `query_folds`, the database every other image of the
table (or `db_folds`); relevance = sharing at least one label. A workflow above eval: it
combines decoding (data) and the encoder (model) with the metrics of medhash.eval, which
work on codes and boxes alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medhash.data.boxes import read_reference_boxes
from medhash.data.decode import read_image
from medhash.data.labels import LabelRecord, multi_hot, read_label_table, report_label_problems
from medhash.data.splits import assign_folds
from medhash.encoding import EncodeResult, ImageEncoder
from medhash.errors import ImageDecodeError
from medhash.eval import best_iou, evaluate_codes, pointing_game
from medhash.model import load_encoder

__all__ = ["EncodedSet", "EvaluateConfig", "encode_records", "evaluate_model", "localization_report"]


@dataclass(frozen=True)
class EvaluateConfig:
    model: str
    labels: str
    image_root: str | None = None
    query_folds: tuple[int, ...] = (4,)
    db_folds: tuple[int, ...] | None = None  # None: every fold that is not a query fold
    ks: tuple[int, ...] = (10, 100)
    boxes: tuple[str, ...] = ()  # reference box tables for the pointing game / IoU
    device: str = "cpu"
    engine: str = "auto"
    batch_size: int = 32
    seed: int = 0
    strict_labels: bool = False  # label-table problems are fatal, not warnings


@dataclass
class EncodedSet:
    records: list[LabelRecord]
    result: EncodeResult
    sizes: list[tuple[int, int]]
    failures: list[tuple[str, str]] = field(default_factory=list)

    def subset(self, rows: Sequence[int]) -> "EncodedSet":
        rows = list(rows)
        picked = {name: (value[rows] if value is not None else None) for name, value in vars(self.result).items()}
        return EncodedSet([self.records[i] for i in rows], EncodeResult(**picked), [self.sizes[i] for i in rows])


def encode_records(encoder: ImageEncoder, records: Sequence[LabelRecord], batch_size: int = 32) -> EncodedSet:
    """Decode and encode records in batches; unreadable images are reported and left out."""
    kept, parts, sizes, failures = [], [], [], []
    for start in range(0, len(records), batch_size):
        images = []
        for rec in records[start:start + batch_size]:
            try:
                img = read_image(rec.path) if rec.path is not None else None
                if img is None:
                    raise ImageDecodeError(rec.image_id, "unreadable", "no image path")
            except ImageDecodeError as exc:
                failures.append((str(rec.path), str(exc)))
                continue
            images.append(img)
            kept.append(rec)
            sizes.append(img.shape)
        if images:
            parts.append(encoder.encode_images(images))
    result = EncodeResult.concat(parts) if parts else encoder.encode_images([])
    return EncodedSet(kept, result, sizes, failures)


def localization_report(encoded: EncodedSet, box_tables: Sequence[str]) -> dict[str, Any]:
    """Pointing game (saliency peak inside a reference box) and IoU of the crop box, per box table."""
    report = {}
    for table in box_tables:
        side = encoded.sizes[0][0] if encoded.sizes else 256
        ref = read_reference_boxes(table, image_size=side)
        rows = [i for i, r in enumerate(encoded.records) if r.image_id in ref]
        if not rows:
            report[Path(table).name] = {"n_images": 0}
            continue
        gt = [[box for _, box in ref[encoded.records[i].image_id]] for i in rows]
        pg = pointing_game(encoded.result.saliency[rows], gt, image_size=encoded.sizes[rows[0]])
        report[Path(table).name] = {
            "n_images": len(rows),
            "pointing_game": pg.fraction,
            "pointing_hits": pg.hits,
            "crop_box_best_iou": float(best_iou(encoded.result.boxes[rows], gt)),
        }
    return report


def evaluate_model(config: EvaluateConfig) -> dict[str, Any]:
    encoder = load_encoder(config.model, config.device, config.engine, config.batch_size)
    table = read_label_table(config.labels, config.image_root, encoder.classes)
    report_label_problems(table, strict=config.strict_labels)
    folds = assign_folds(table.records, seed=config.seed)
    q_mask = np.isin(folds, list(config.query_folds))
    db_mask = np.isin(folds, list(config.db_folds)) if config.db_folds is not None else ~q_mask
    queries = encode_records(encoder, [r for r, m in zip(table.records, q_mask) if m], config.batch_size)
    database = encode_records(encoder, [r for r, m in zip(table.records, db_mask) if m], config.batch_size)
    q_labels = multi_hot([r.labels for r in queries.records], encoder.classes)
    db_labels = multi_hot([r.labels for r in database.records], encoder.classes)
    retrieval = evaluate_codes(queries.result.codes, database.result.codes, q_labels, db_labels, ks=config.ks)
    report = {
        "model_id": encoder.model_id,
        "bits": encoder.bits,
        "engine": encoder.engine,
        "n_queries": len(queries.records),
        "n_database": len(database.records),
        "retrieval": retrieval.as_dict(),
        "failed_images": queries.failures + database.failures,
    }
    if config.boxes:
        both = EncodedSet(queries.records + database.records,
                          EncodeResult.concat([queries.result, database.result]),
                          queries.sizes + database.sizes)
        report["localization"] = localization_report(both, config.boxes)
    return report
