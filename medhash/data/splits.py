"""Patient-grouped folds: no patient ever lands in two folds, so no split built from folds leaks a patient.

Where a table carries `dev_fold` (the shared dev set, phantoms), folds are taken
from it; otherwise patients are hashed into folds with a seeded permutation.
Training and evaluation pick their train/validation/test sides by fold number.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medhash.data.labels import LabelRecord
from medhash.errors import InvalidParameterError


def assign_folds(records: Sequence[LabelRecord], n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold number per record, grouped by patient.

    Table folds are used when every record has one; a patient whose rows
    disagree is a data error and raises.
    """
    if records and all(r.fold is not None for r in records):
        folds = np.array([r.fold for r in records], dtype=np.int64)
        by_patient: dict[str, int] = {}
        for r in records:
            if by_patient.setdefault(r.patient_id, r.fold) != r.fold:
                raise InvalidParameterError(f"patient {r.patient_id} appears in folds {by_patient[r.patient_id]} and {r.fold}")
        return folds
    patients = sorted({r.patient_id for r in records})
    order = np.random.default_rng(seed).permutation(len(patients))
    patient_fold = {patients[i]: int(rank % n_folds) for rank, i in enumerate(order)}
    return np.array([patient_fold[r.patient_id] for r in records], dtype=np.int64)
