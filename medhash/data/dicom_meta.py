"""The non-identifying attributes of a DICOM header, and - only when asked - the identifiers to key-hash.

`read_dicom_meta(source)` returns a `DicomMeta`: modality, view, body part, sex, age in years,
photometric interpretation, size and pixel spacing. Names, ids, dates and UIDs are never in it: its
fields are fixed, so nothing else can slip in. `read_dicom_identifiers(source)` returns the
SOPInstanceUID and PatientID separately, for the caller to pass through `keyed_hash` before storing.

Choices:
- View: ViewPosition, else PatientPosition (older CR/DX writers put PA/AP there), else the
  ViewCodeSequence's first CodeMeaning, else "".
- Age: PatientAge `nnnD|W|M|Y` to whole years (floor; days and weeks at 365.25 days a year). A bare
  number is taken as years: archives and public sets (NIH ChestX-ray14's DICOMs among them) write
  `81` for 81 years. Anything else is None. Ages over 89 become 90, as HIPAA Safe Harbor requires
  for ages above 89.
- Text attributes are stripped and upper-cased (CS values are case-insensitive); missing ones are "".
- The header is read with `medhash.data.decode.read_dicom_header` (by content, without pixels), so
  failures are `ImageDecodeError`s like those of `read_image`.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import asdict, dataclass

from medhash.data.decode import read_dicom_header

__all__ = [
    "SAFE_HARBOR_MAX_AGE",
    "DicomIdentifiers",
    "DicomMeta",
    "parse_age_years",
    "read_dicom_identifiers",
    "read_dicom_meta",
]

SAFE_HARBOR_MAX_AGE = 90
"""Ages above 89 are reported as this (HIPAA Safe Harbor, 45 CFR 164.514(b)(2)(i)(C))."""

_AGE = re.compile(r"(\d{1,3})([DWMY]?)")
_YEARS_PER_UNIT = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}

Source = str | os.PathLike[str] | bytes | bytearray | memoryview


@dataclass(frozen=True)
class DicomMeta:
    """What a DICOM header says about the image, without anything that identifies the patient."""

    modality: str
    view_position: str
    body_part_examined: str
    patient_sex: str
    patient_age_years: int | None
    photometric_interpretation: str
    rows: int | None
    columns: int | None
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) in mm

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DicomIdentifiers:
    """Identifying values, for keyed hashing only (see `medhash.data.keyed.keyed_hash`); "" when absent."""

    sop_instance_uid: str
    patient_id: str


def read_dicom_meta(source: Source, *, name: str | None = None) -> DicomMeta:
    """The non-identifying attributes of the DICOM at `source` (a path or the file's bytes)."""
    header = read_dicom_header(source, name=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom converts values lazily and warns about odd ones
        return _meta_of(header)


def _meta_of(header) -> DicomMeta:
    return DicomMeta(
        modality=_text(header, "Modality"),
        view_position=_view_position(header),
        body_part_examined=_text(header, "BodyPartExamined"),
        patient_sex=_text(header, "PatientSex"),
        patient_age_years=parse_age_years(header.get("PatientAge")),
        photometric_interpretation=_text(header, "PhotometricInterpretation"),
        rows=_integer(header.get("Rows")),
        columns=_integer(header.get("Columns")),
        pixel_spacing=_pixel_spacing(header.get("PixelSpacing")),
    )


def read_dicom_identifiers(source: Source, *, name: str | None = None) -> DicomIdentifiers:
    """SOPInstanceUID and PatientID of the DICOM at `source`: hash them with `keyed_hash` before keeping."""
    header = read_dicom_header(source, name=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # such warnings would quote the identifiers
        return DicomIdentifiers(
            sop_instance_uid=str(header.get("SOPInstanceUID", "") or "").strip(),
            patient_id=str(header.get("PatientID", "") or "").strip(),
        )


def parse_age_years(value) -> int | None:
    """PatientAge (`045Y`, `006M`, `010D`, `003W`, or a bare `81`) in whole years, capped at 90; else None."""
    match = _AGE.fullmatch(str(value or "").strip().upper())
    if match is None:
        return None
    years = math.floor(int(match.group(1)) * _YEARS_PER_UNIT[match.group(2)])
    return min(years, SAFE_HARBOR_MAX_AGE)


def _text(header, keyword: str) -> str:
    return str(header.get(keyword, "") or "").strip().upper()


def _view_position(header) -> str:
    for keyword in ("ViewPosition", "PatientPosition"):
        value = _text(header, keyword)
        if value:
            return value
    sequence = header.get("ViewCodeSequence")
    if sequence:
        return str(sequence[0].get("CodeMeaning", "") or "").strip()
    return ""


def _integer(value) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _pixel_spacing(value) -> tuple[float, float] | None:
    try:
        row, column = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(row) and math.isfinite(column)) or row <= 0 or column <= 0:
        return None
    return (row, column)
