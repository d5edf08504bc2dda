"""Patient-grouped splits: no patient ever lands on two sides of a split.

Where a table carries `dev_fold` (the shared dev set, phantoms), folds are taken
from it; otherwise patients are hashed into folds with a seeded permutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from medhash.data.labels import LabelRecord


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices into the record list
    val: np.ndarray
    test: np.ndarray


def assign_folds(records: Sequence[LabelRecord], n_folds: int = 5, seed: int = 0, use_table_folds: bool = True) -> np.ndarray:
    """Fold number per record, grouped by patient.

    Table folds are used when every record has one (and `use_table_folds`); a
    patient whose rows disagree is a data error and raises.
    """
    if use_table_folds and records and all(r.fold is not None for r in records):
        folds = np.array([r.fold for r in records], dtype=np.int64)
        by_patient: dict[str, int] = {}
        for r in records:
            if by_patient.setdefault(r.patient_id, r.fold) != r.fold:
                raise ValueError(f"patient {r.patient_id} appears in folds {by_patient[r.patient_id]} and {r.fold}")
        return folds
    patients = sorted({r.patient_id for r in records})
    order = np.random.default_rng(seed).permutation(len(patients))
    patient_fold = {patients[i]: int(rank % n_folds) for rank, i in enumerate(order)}
    return np.array([patient_fold[r.patient_id] for r in records], dtype=np.int64)


def split_by_folds(folds: np.ndarray, val_folds: Sequence[int] = (3,), test_folds: Sequence[int] = (4,)) -> Split:
    """Train on the folds not named in val/test. Empty val/test sequences are allowed."""
    val_mask = np.isin(folds, list(val_folds))
    test_mask = np.isin(folds, list(test_folds))
    if np.any(val_mask & test_mask):
        raise ValueError("a fold cannot be both validation and test")
    train_mask = ~(val_mask | test_mask)
    return Split(np.flatnonzero(train_mask), np.flatnonzero(val_mask), np.flatnonzero(test_mask))


def patient_split(
    records: Sequence[LabelRecord],
    val_folds: Sequence[int] = (3,),
    test_folds: Sequence[int] = (4,),
    n_folds: int = 5,
    seed: int = 0,
) -> Split:
    return split_by_folds(assign_folds(records, n_folds, seed), val_folds, test_folds)
