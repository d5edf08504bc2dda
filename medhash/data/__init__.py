"""Data layer: image decoding, label tables, patient-grouped folds, synthetic phantoms (medhash.data.phantoms)."""

from medhash.data.decode import DEFAULT_MAX_PIXELS, ImageHeader, read_image, read_image_header
from medhash.data.labels import (CLASSES, FINDINGS, NO_FINDING, LabelRecord, LabelTable, multi_hot, read_label_table,
                                  report_label_problems)
from medhash.data.splits import assign_folds

__all__ = [
    "CLASSES",
    "DEFAULT_MAX_PIXELS",
    "FINDINGS",
    "ImageHeader",
    "NO_FINDING",
    "LabelRecord",
    "LabelTable",
    "assign_folds",
    "multi_hot",
    "read_image",
    "read_image_header",
    "read_label_table",
    "report_label_problems",
]
