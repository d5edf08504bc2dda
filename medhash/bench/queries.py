"""The labeled query set of a bench: label-table records and the bytes of their images (uploaded as they are)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medhash.data.labels import LabelRecord


@dataclass
class QuerySet:
    source: str
    records: list[LabelRecord]  # the usable ones, each with its image bytes in `images`
    images: list[bytes]
    unreadable: list[str] = field(default_factory=list)  # "path: reason", for records left out
    table_problems: int = 0  # problems read_label_table reported (unknown labels, missing files, ...)

    def __len__(self) -> int:
        return len(self.records)

    def name(self, i: int) -> str:
        return Path(self.records[i].path).name

    def as_dict(self) -> dict:
        return {"source": self.source, "used": len(self.records), "unreadable": len(self.unreadable),
                "unreadable_first": self.unreadable[:5], "label_table_problems": self.table_problems}


def load_query_set(labels_csv: str | Path, image_root: str | Path | None = None,
                   max_queries: int | None = None) -> QuerySet:
    """Read a label table (medhash dev/phantom or NIH format) and the files of its first `max_queries` rows."""
    from medhash.data import read_label_table

    table = read_label_table(labels_csv, image_root)
    records, images, unreadable = [], [], []
    for record in table.records:
        if max_queries is not None and len(records) >= max_queries:
            break
        if record.path is None:
            unreadable.append(f"{record.image_id}: no image path")
            continue
        try:
            images.append(Path(record.path).read_bytes())
        except OSError as exc:
            unreadable.append(f"{record.path}: {exc.strerror or exc}")
            continue
        records.append(record)
    return QuerySet(str(labels_csv), records, images, unreadable, len(table.problems))
