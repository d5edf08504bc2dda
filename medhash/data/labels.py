"""Label tables: NIH `Data_Entry_2017` and the medhash/dev `labels.csv` into one record type.

Both formats become `LabelRecord`s; `multi_hot` maps them onto the class list
that travels with a model (`CLASSES` by default: 14 NIH findings + No Finding).
Problems (unknown labels, missing image files, malformed rows) are collected in
`LabelTable.problems` and never silently dropped; every command that reads a table reports them
through `report_label_problems` (the same lines everywhere; strict makes them fatal).
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from medhash.errors import LabelTableError

log = logging.getLogger(__name__)

NO_FINDING = "No Finding"
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
CLASSES: tuple[str, ...] = FINDINGS + (NO_FINDING,)

# Spellings seen in NIH side tables (BBox_List_2017 says "Infiltrate").
LABEL_ALIASES = {"Infiltrate": "Infiltration", "No_Finding": NO_FINDING, "Pleural Thickening": "Pleural_Thickening"}


@dataclass(frozen=True)
class LabelRecord:
    image_id: str
    path: Path | None
    patient_id: str
    labels: tuple[str, ...]
    fold: int | None = None
    # Every other column of the row, (name, value) in table order; the NIH columns also under the
    # dev format's names (view, age, sex), so `--columns view,age,sex` means the same in both.
    extra: tuple[tuple[str, str], ...] = ()

    def value(self, column: str) -> str | None:
        """The row's value in `column` (a table column or a NIH alias); None when the table has no such column."""
        if column == "patient_id":
            return self.patient_id
        return next((v for name, v in self.extra if name == column), None)


@dataclass(frozen=True)
class LabelProblem:
    row: int  # 1-based data row (header excluded); 0 for table-level problems
    image_id: str
    kind: str  # "unknown_label" | "empty_labels" | "missing_file" | "malformed_row" | "duplicate_id"
    detail: str

    def __str__(self) -> str:
        return f"row {self.row} ({self.image_id}): {self.kind}: {self.detail}"


SHOWN_PROBLEMS = 20


def report_label_problems(table: "LabelTable", *, strict: bool = False) -> None:
    """Log a label table's problems (the first `SHOWN_PROBLEMS` and a count by kind); strict: refuse the table.

    One way of reporting for every command that reads a table (train, evaluate, encode).
    """
    if not table.problems:
        return
    kinds = Counter(p.kind for p in table.problems)
    summary = f"{table.source}: {len(table.problems)} label table problem(s): " + ", ".join(
        f"{kind} {n}" for kind, n in sorted(kinds.items()))
    if strict:
        raise LabelTableError(f"{summary}; first: {table.problems[0]} (without --strict these are warnings)")
    for problem in table.problems[:SHOWN_PROBLEMS]:
        log.warning("%s: %s", table.source, problem)
    log.warning("%s", summary)


@dataclass
class LabelTable:
    source: Path
    records: list[LabelRecord]
    problems: list[LabelProblem] = field(default_factory=list)
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return len(self.records)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(label for r in self.records for label in r.labels)
        return {c: counts.get(c, 0) for c in self.classes}

    def multi_hot(self) -> np.ndarray:
        return multi_hot([r.labels for r in self.records], self.classes)

    def columns(self) -> list[str]:
        """The names `LabelRecord.value` answers: patient_id and every other column (NIH aliases included)."""
        return ["patient_id"] + ([name for name, _ in self.records[0].extra] if self.records else [])

    def by_id(self) -> dict[str, LabelRecord]:
        return {r.image_id: r for r in self.records}

    def subset(self, indices: Iterable[int]) -> "LabelTable":
        return LabelTable(self.source, [self.records[i] for i in indices], [], self.classes)


def split_labels(text: str) -> tuple[str, ...]:
    """'A|B' -> ('A', 'B') with aliases applied; empty -> ()."""
    parts = [p.strip() for p in (text or "").split("|")]
    return tuple(LABEL_ALIASES.get(p, p) for p in parts if p)


def multi_hot(label_sets: Sequence[Sequence[str]], classes: Sequence[str] = CLASSES) -> np.ndarray:
    """Bool matrix [N, C]; labels outside `classes` are ignored (reported at read time)."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(label_sets), len(classes)), dtype=bool)
    for row, labels in enumerate(label_sets):
        for label in labels:
            col = index.get(label)
            if col is not None:
                out[row, col] = True
    return out


# Column names of the two supported formats -> our fields.
_FORMATS = {
    "medhash": {"image_id": "image_id", "path": "file", "patient_id": "patient_id", "labels": "labels"},
    "nih": {"image_id": "Image Index", "path": "Image Index", "patient_id": "Patient ID", "labels": "Finding Labels"},
}
# NIH column -> the dev format's name for it (extra columns are also reachable under these).
_NIH_ALIASES = {"View Position": "view", "Patient Age": "age", "Patient Gender": "sex", "Follow-up #": "follow_up"}


def _extra_columns(row: dict, fmt: str) -> tuple[tuple[str, str], ...]:
    own = set(_FORMATS[fmt].values())
    pairs = [(name, (value or "").strip()) for name, value in row.items() if name is not None and name not in own]
    if fmt == "nih":
        pairs += [(_NIH_ALIASES[name], value) for name, value in pairs if name in _NIH_ALIASES]
    return tuple(pairs)


def _open_text(path: Path):
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return io.StringIO(raw.decode("utf-8-sig"))


def read_label_table(
    csv_path: str | Path,
    image_root: str | Path | None = None,
    classes: Sequence[str] = CLASSES,
    check_files: bool = True,
) -> LabelTable:
    """Read a label table in medhash/dev format or NIH `Data_Entry_2017` format (optionally .gz).

    `image_root` is where relative image paths resolve (default: the table's folder,
    and for NIH tables `<folder>/images` when that exists). Unknown labels are kept
    on the record (so nothing is lost) and listed in `problems`.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise LabelTableError(f"{csv_path}: label table not found")
    try:
        reader = csv.DictReader(_open_text(csv_path))
        header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelTableError(f"{csv_path}: unreadable label table: {exc}") from exc
    fmt = next((name for name, cols in _FORMATS.items() if {cols["image_id"], cols["labels"]} <= set(header)), None)
    if fmt is None:
        raise LabelTableError(
            f"{csv_path}: unknown label table format; need columns image_id,file,patient_id,labels "
            f"or NIH 'Image Index','Finding Labels','Patient ID' (found {header[:8]})"
        )
    cols = _FORMATS[fmt]
    root = Path(image_root) if image_root is not None else csv_path.parent
    if image_root is None and fmt == "nih" and (csv_path.parent / "images").is_dir():
        root = csv_path.parent / "images"
    known = set(classes)
    records: list[LabelRecord] = []
    problems: list[LabelProblem] = []
    seen: set[str] = set()
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise LabelTableError(f"{csv_path}: malformed CSV: {exc}") from exc
    for row_no, row in enumerate(rows, start=1):
        raw_id = (row.get(cols["image_id"]) or "").strip()
        if not raw_id:
            problems.append(LabelProblem(row_no, "", "malformed_row", "empty image id"))
            continue
        image_id = raw_id[:-4] if fmt == "nih" and raw_id.lower().endswith(".png") else raw_id
        if image_id in seen:
            problems.append(LabelProblem(row_no, image_id, "duplicate_id", "image id already listed; row skipped"))
            continue
        seen.add(image_id)
        labels = split_labels(row.get(cols["labels"], ""))
        if not labels:  # kept (as no label at all), but a normal study is written "No Finding"
            problems.append(LabelProblem(row_no, image_id, "empty_labels",
                                         f"the label field is empty (write {NO_FINDING!r} for a normal study)"))
        for label in labels:
            if label not in known:
                problems.append(LabelProblem(row_no, image_id, "unknown_label", f"{label!r} is not in the class list"))
        rel = (row.get(cols["path"]) or "").strip()
        path = (root / rel) if rel else None
        if check_files and (path is None or not path.is_file()):
            problems.append(LabelProblem(row_no, image_id, "missing_file", f"{path} does not exist"))
        fold_text = (row.get("dev_fold") or "").strip()
        try:
            fold = int(fold_text) if fold_text else None
        except ValueError:
            problems.append(LabelProblem(row_no, image_id, "malformed_row", f"dev_fold {fold_text!r} is not an integer"))
            fold = None
        patient = (row.get(cols["patient_id"]) or "").strip() or image_id
        records.append(LabelRecord(image_id, path, patient, labels, fold, _extra_columns(row, fmt)))
    return LabelTable(csv_path, records, problems, tuple(classes))


SHOWN_PROBLEMS = 10  # problems listed one per line; the rest are counted in the summary


def report_label_problems(table: LabelTable, strict: bool = False, shown: int = SHOWN_PROBLEMS) -> None:
    """Report a table's problems the same way in every command: one summary line counting them by kind,
    then the first `shown`, one line each, as warnings. With `strict`, a LabelTableError (the same summary
    and lines) instead, so nothing runs on a table with problems."""
    if not table.problems:
        return
    kinds = Counter(p.kind for p in table.problems)
    summary = (f"{table.source}: {len(table.problems)} label table problem(s): "
               + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())))
    lines = [f"{table.source}: {problem}" for problem in table.problems[:shown]]
    if len(table.problems) > shown:
        lines.append(f"{table.source}: ... and {len(table.problems) - shown} more")
    if strict:
        raise LabelTableError(f"{summary} (refused: --strict); first: {table.problems[0]}")
    log.warning("%s (rows kept as described; --strict refuses such a table)", summary)
    for line in lines:
        log.warning("%s", line)
