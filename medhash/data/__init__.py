"""Data layer: image decoding, label tables, patient-grouped splits, synthetic phantoms."""

from medhash.data.decode import DEFAULT_MAX_PIXELS, read_image
from medhash.data.labels import CLASSES, FINDINGS, NO_FINDING, LabelRecord, LabelTable, multi_hot, read_label_table
from medhash.data.splits import Split, assign_folds, patient_split, split_by_folds

__all__ = [
    "CLASSES",
    "DEFAULT_MAX_PIXELS",
    "FINDINGS",
    "NO_FINDING",
    "LabelRecord",
    "LabelTable",
    "Split",
    "assign_folds",
    "multi_hot",
    "patient_split",
    "read_image",
    "read_label_table",
    "split_by_folds",
]
