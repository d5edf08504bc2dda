"""Reference lesion boxes for localization checks, from three tables, as {image_id: [(finding, box)]}.

Boxes come back as (x0, y0, x1, y1) ints (x1/y1 exclusive) in the pixels of the
images at hand: NIH and RSNA boxes are in 1024-px coordinates and are scaled by
`image_size / 1024`; phantom boxes are already in image pixels.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from medhash.data.labels import LABEL_ALIASES, _open_text
from medhash.errors import LabelTableError

Box = tuple[int, int, int, int]
NIH_SIDE = 1024  # NIH and RSNA boxes are given on the 1024-px originals


def _scaled(x: float, y: float, w: float, h: float, scale: float, side: int) -> Box:
    """1024-px (x, y, w, h) -> image-pixel (x0, y0, x1, y1), rounded outward and clamped to the image."""
    x0, y0 = max(0, int(math.floor(x * scale))), max(0, int(math.floor(y * scale)))
    x1, y1 = min(side, int(math.ceil((x + w) * scale))), min(side, int(math.ceil((y + h) * scale)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def read_reference_boxes(path: str | Path, image_size: int = 256) -> dict[str, list[tuple[str, Box]]]:
    """Detect the table kind by its header: NIH BBox_List_2017, medhash rsna_link.csv, or phantom boxes.csv."""
    path = Path(path)
    if not path.is_file():
        raise LabelTableError(f"{path}: box table not found")
    reader = csv.reader(_open_text(path))
    header = next(reader, [])
    scale = image_size / NIH_SIDE
    out: dict[str, list[tuple[str, Box]]] = {}

    def add(image_id: str, finding: str, box: Box) -> None:
        image_id = image_id[:-4] if image_id.lower().endswith(".png") else image_id
        out.setdefault(image_id, []).append((LABEL_ALIASES.get(finding, finding), box))

    if header[:2] == ["Image Index", "Finding Label"]:  # NIH BBox_List_2017
        for row in reader:
            if len(row) >= 6 and row[0]:
                add(row[0], row[1], _scaled(*(float(v) for v in row[2:6]), scale, image_size))
    elif "rsna_boxes_xywh" in header:  # RSNA opacity boxes joined to NIH ids
        col_id, col_boxes = header.index("image_id"), header.index("rsna_boxes_xywh")
        for row in reader:
            for x, y, w, h in json.loads(row[col_boxes] or "[]"):
                add(row[col_id], "Lung Opacity", _scaled(x, y, w, h, scale, image_size))
    elif {"image_id", "finding", "x0", "y0", "x1", "y1"} <= set(header):  # phantom boxes (image pixels)
        cols = {name: header.index(name) for name in ("image_id", "finding", "x0", "y0", "x1", "y1")}
        for row in reader:
            add(row[cols["image_id"]], row[cols["finding"]], tuple(int(row[cols[k]]) for k in ("x0", "y0", "x1", "y1")))
    else:
        raise LabelTableError(f"{path}: unknown box table (header {header[:6]})")
    return out
