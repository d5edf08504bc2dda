"""The metadata columns of one encoded image, computed in the worker beside its decoding.

`RowValues(output, patient_secret)(item, source)` returns column -> value for the columns the job
asked for (medhash.codes_format.MetadataColumns):
- label-table columns: planned with the item (`InputItem.values`), null when the image is not in
  the table;
- DICOM attributes: read from the header (`read_dicom_meta`: a fixed set of non-identifying
  fields, so no name, id, date or UID can slip into the output); null for other formats. The
  header is parsed without pixels, a small cost beside the decode;
- patient_key: the table's patient id hashed at planning time (the plan never holds the id), else
  the DICOM PatientID hashed here with `keyed_hash` under the site secret; null when neither exists.

The format is told by content (medhash.data.sniff), as `read_image` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medhash.codes_format import PATIENT_KEY_COLUMN, dicom_column_values
from medhash.data.dicom_meta import read_dicom_identifiers, read_dicom_meta
from medhash.data.keyed import keyed_hash
from medhash.data.sniff import SNIFF_BYTES, sniff_bytes, sniff_format
from medhash.pipeline.inputs import InputItem
from medhash.pipeline.plan import OutputSpec

__all__ = ["RowValues"]


@dataclass(frozen=True)
class RowValues:
    output: OutputSpec
    patient_secret: bytes | None = None

    def __call__(self, item: InputItem, source: Path | bytes) -> dict:
        output = self.output
        values: dict = dict(zip(output.table_columns, item.values or ()))
        if output.patient_key:
            values[PATIENT_KEY_COLUMN] = item.patient_key
        wants_dicom_key = output.patient_key and item.patient_key is None and self.patient_secret
        if (output.dicom_meta or wants_dicom_key) and _is_dicom(source):
            if output.dicom_meta:
                values.update(dicom_column_values(read_dicom_meta(source, name=item.path)))
            if wants_dicom_key:
                patient_id = read_dicom_identifiers(source, name=item.path).patient_id
                values[PATIENT_KEY_COLUMN] = keyed_hash(patient_id, self.patient_secret) if patient_id else None
        return values


def _is_dicom(source: Path | bytes) -> bool:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return sniff_bytes(bytes(source[:SNIFF_BYTES])) == "dicom"
    return sniff_format(source) == "dicom"
